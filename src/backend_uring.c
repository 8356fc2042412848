/* backend_uring.c - the Linux backend: one io_uring per worker thread.
 *
 * Each ring multishot-accepts on the shared listener, receives through a ring of
 * provided buffers (so an idle connection pins no data buffer), sends with
 * IORING_OP_SEND and wakes through an eventfd. Everything a ring owns is touched
 * only by its worker thread; other threads reach it only through its eventfd.
 * Model: liburing examples/ and test/, libuv src/unix.
 */
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "backend.h"
#include "core/ep.h"
#include "core/stats.h"
#include "fault.h"
#include "net.h"

#define RING_ENTRIES 1024u        /* SQ size; the CQ is CQ_FACTOR times larger */
#define CQ_FACTOR 8u
#define CQE_BATCH 64              /* CQEs copied out per batch */
#define MAX_BATCHES 64            /* batches per loop turn, so ticks keep their pace */
#define TICK_MS 50                /* srv_tick every 50 ms: well inside the 100 ms bound */
#define BACKOFF_MS 50             /* accept retry delay after EMFILE & co. */
#define ERROR_STREAK 8            /* consecutive accept errors before backing off anyway */
#define BUF_GROUP 0
#define BUF_BUDGET (8u << 20)     /* provided-buffer bytes per ring, roughly */
#define BUF_MIN 8u
#define BUF_MAX 256u

/* What a completion is for; stored in the request that user_data points to. */
enum op_kind { OPK_NONE, OPK_RECV, OPK_RECV_PLAIN, OPK_SEND, OPK_ACCEPT, OPK_BACKOFF, OPK_WAKE };

/* One posted operation. user_data points here; 0 marks completions we ignore. */
struct ureq {
    unsigned char kind;
    unsigned char fail_reset; /* fault: report -ECONNRESET whatever the kernel says */
    int res;                  /* result of a synthesized (deferred) completion */
    struct ureq *next;        /* in the ring's deferred list */
};

struct uworker;

/* Per-connection backend state (conn_bk): the core posts one operation at a time. */
struct uconn {
    int fd;
    struct uworker *w;
    struct ureq req;
};

struct uworker {
    struct io_uring ring;
    struct server *srv;
    struct uring_state *st;
    int index;
    int ring_ok, disabled; /* ring created; created disabled (enable on its thread) */
    int efd;               /* wake eventfd, polled by the ring */
    struct io_uring_buf_ring *br;
    unsigned char *bufs;
    unsigned nbufs;
    struct ureq accept_req, backoff_req, wake_req;
    struct __kernel_timespec backoff_ts;
    int accept_armed, backoff_armed, rearm_accept;
    int stop, stop_counted;
    unsigned err_streak;
    int tick_now;
    struct ureq *deferred, **deferred_tail;
};

struct uring_state {
    atomic_int lfd;           /* the listener; -1 once closed */
    atomic_int rings_stopped; /* rings whose accepting is over for good */
    atomic_uint_least64_t accept_ordinal;
    int nworkers;
    struct uworker *w;
};

/* Translates a negative errno from a CQE or a call into an EP_E* code. */
static int translate_error(int neg_errno)
{
    switch (neg_errno) {
    case -ECONNRESET:
    case -ECONNABORTED:
        return EP_ECONNRESET;
    case -EPIPE:
        return EP_EPIPE;
    case -ECANCELED:
        return EP_ECANCELED;
    case -ENOBUFS:
        return EP_ENOBUFS;
    case -EMFILE:
    case -ENFILE:
        return EP_EMFILE;
    case -ENOMEM:
        return EP_ENOMEM;
    case -ETIMEDOUT:
        return EP_ETIMEDOUT;
    default:
        return EP_EIO;
    }
}

/* Closes a socket the server opened and counts it. */
static void close_socket(int fd)
{
    close(fd);
    stats_add(sockets_closed, 1);
}

/* An SQE of w's ring, submitting once to make room; NULL if the ring stays full. */
static struct io_uring_sqe *get_sqe(struct uworker *w)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);
    if (!sqe) {
        io_uring_submit(&w->ring);
        sqe = io_uring_get_sqe(&w->ring);
    }
    return sqe;
}

/* Queues a synthesized completion: delivered by the worker loop, never by the poster. */
static void defer(struct uworker *w, struct ureq *r, int res)
{
    r->res = res;
    r->next = NULL;
    *w->deferred_tail = r;
    w->deferred_tail = &r->next;
}

/* Hands a provided buffer back to the ring at once, whatever becomes of its data. */
static void recycle_buffer(struct uworker *w, unsigned bid)
{
    size_t size = w->srv->cfg->buffer_size;
    io_uring_buf_ring_add(w->br, w->bufs + (size_t)bid * size, (unsigned)size,
                          (unsigned short)bid, io_uring_buf_ring_mask(w->nbufs), 0);
    io_uring_buf_ring_advance(w->br, 1);
}

/* ---- accepts ---------------------------------------------------------------------- */

static void close_listener(struct uring_state *st)
{
    int fd = atomic_exchange(&st->lfd, -1);
    if (fd >= 0)
        close_socket(fd);
}

/* Notes that w accepts no more; the last ring to stop closes the shared listener. */
static void maybe_finish_accepting(struct uworker *w)
{
    if (!w->stop || w->accept_armed || w->backoff_armed || w->stop_counted)
        return;
    w->stop_counted = 1;
    if (atomic_fetch_add(&w->st->rings_stopped, 1) + 1 == w->st->nworkers)
        close_listener(w->st);
}

/* Arms this ring's multishot accept, or flags a retry when the SQ is full. */
static void arm_accept(struct uworker *w)
{
    struct io_uring_sqe *sqe = get_sqe(w);
    w->rearm_accept = !sqe;
    if (!sqe)
        return;
    io_uring_prep_multishot_accept(sqe, atomic_load(&w->st->lfd), NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data(sqe, &w->accept_req);
    w->accept_armed = 1;
}

/* Re-arms the accept after a bounded delay, so a persistent error cannot spin. */
static void arm_backoff(struct uworker *w)
{
    struct io_uring_sqe *sqe = get_sqe(w);
    if (!sqe) {
        w->rearm_accept = 1;
        return;
    }
    w->backoff_ts.tv_sec = 0;
    w->backoff_ts.tv_nsec = BACKOFF_MS * 1000000L;
    io_uring_prep_timeout(sqe, &w->backoff_ts, 0, 0);
    io_uring_sqe_set_data(sqe, &w->backoff_req);
    w->backoff_armed = 1;
}

/* The multishot accept ended (res is its last result): re-arm, back off, or finish. */
static void accept_ended(struct uworker *w, int res)
{
    if (w->stop) {
        maybe_finish_accepting(w);
    } else if (res == -EMFILE || res == -ENFILE || res == -ENOBUFS || res == -ENOMEM ||
               w->err_streak > ERROR_STREAK) {
        w->err_streak = 0;
        arm_backoff(w);
    } else {
        arm_accept(w);
    }
}

/* Applies the accept_fail fault to a fresh socket: closes it and returns -errno,
 * or returns fd untouched. Accept ordinals are global, as accepts race across rings. */
static int accept_fault(struct uworker *w, int fd)
{
    static const int codes[] = {ECONNABORTED, EMFILE, ENOBUFS};
    uint64_t aux = 0;
    if (!fault_active())
        return fd;
    uint64_t op = atomic_fetch_add(&w->st->accept_ordinal, 1) + 1;
    if (fault_decide(FAULT_SITE_ACCEPT, 0, op, &aux) != FAULT_ACCEPT_FAIL)
        return fd;
    int code = codes[aux % EP_ARRAY_LEN(codes)];
    fault_record(FAULT_SITE_ACCEPT, 0, op, FAULT_ACCEPT_FAIL, code);
    close_socket(fd);
    return -code;
}

/* Gives an accepted socket to the core, or closes it when the core refuses. */
static void hand_off(struct uworker *w, int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct conn *c = srv_conn_new(w->srv, w->index);
    if (!c) {
        close_socket(fd);
        return;
    }
    struct uconn *u = conn_bk(c);
    u->fd = fd;
    u->w = w;
    conn_start(c);
}

/* A completion of the multishot accept: a new socket or an error. */
static void on_accept(struct uworker *w, int res, unsigned flags)
{
    int more = (flags & IORING_CQE_F_MORE) != 0;
    if (!more)
        w->accept_armed = 0;
    if (res >= 0) {
        stats_add(sockets_opened, 1);
        w->err_streak = 0;
        res = accept_fault(w, res);
        if (res >= 0)
            hand_off(w, res);
    }
    if (res < 0 && !(w->stop && res == -ECANCELED)) {
        stats_add(accept_errors, 1);
        w->err_streak++;
    }
    if (!more)
        accept_ended(w, res);
}

/* The back-off delay elapsed (or was cancelled at stop). */
static void on_backoff(struct uworker *w)
{
    w->backoff_armed = 0;
    if (w->stop)
        maybe_finish_accepting(w);
    else
        arm_accept(w);
}
