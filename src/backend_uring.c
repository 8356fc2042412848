/* backend_uring.c - the Linux backend: one io_uring per worker thread.
 *
 * Each ring multishot-accepts on the shared listener, receives through a ring of
 * provided buffers (so an idle connection pins no data buffer), sends with
 * IORING_OP_SEND and wakes through an eventfd. A received buffer is lent to its
 * connection (conn_lend_buffer) and the echo sent from it, no copy; it returns to the
 * ring once sent. Only a quarter of the ring is lent at once, and nothing while it
 * runs dry (an -ENOBUFS in this tick period or the one before): the kernel takes a
 * buffer per receive before we see it, and an empty ring turns receives into -ENOBUFS
 * and a plain one (recv_fallbacks), a loop turn later: at 500 x 128 B lending cost
 * 30 % of p99 before it stopped when the ring ran dry. Everything a ring owns is touched
 * only by its worker thread; other threads reach it only through its eventfd.
 * Model: liburing examples/ and test/, libuv src/unix.
 */
#include <errno.h>
#include <liburing.h>
#include <sched.h>
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
#include <sys/syscall.h>
#include <unistd.h>

#include "backend.h"
#include "core/ep.h"
#include "core/stats.h"
#include "fault.h"
#include "net.h"
#include "uring_ops.h"

#define RING_ENTRIES 1024u /* SQ size; the CQ is CQ_FACTOR times larger */
#define CQ_FACTOR 8u
#define CQE_BATCH 64   /* CQEs copied out per batch */
#define MAX_BATCHES 64 /* batches per loop turn, so ticks keep their pace */
#define BUF_GROUP 0
#define BUF_BUDGET (8u << 20)    /* provided-buffer bytes a ring asks for, at most */
#define BUF_SIZE_MAX (64u << 10) /* a provided buffer: larger chunks gain nothing */
#define BUF_MIN 2u
#define BUF_MAX 256u
#define NO_BUFFER (-1)
/* Buffers a ring lends at most, of nbufs: the rest keep receives going when many
 * connections complete in one batch (a lent buffer is out until its echo is sent;
 * a half made 500 x 128 B fall back on a quarter of its receives). */
#define LEND_MAX(nbufs) ((nbufs) / 4)

/* What a completion is for; stored in the request that user_data points to. */
enum op_kind {
    OPK_NONE,
    OPK_RECV,
    OPK_RECV_PLAIN,
    OPK_RECV_HELD, /* a receive served from the bytes c holds: a synthesized completion */
    OPK_SEND,
    OPK_ACCEPT,
    OPK_BACKOFF,
    OPK_WAKE
};

/* One posted operation. user_data points here; 0 marks completions we ignore. */
struct ureq {
    unsigned char kind;
    unsigned char fail_reset; /* fault: report -ECONNRESET whatever the kernel says */
    int res;                  /* result of a synthesized (deferred) completion */
    struct ureq *next;        /* in the ring's deferred list */
};

struct uworker;

/* Per-connection backend state (conn_bk): the core posts one operation at a time.
 * Bytes of a provided buffer that did not fit the connection's buffer are held (the
 * buffer not recycled) and delivered by the next receives before any new one is
 * posted, so budget backpressure never loses data taken off the socket. */
struct uconn {
    int fd;
    struct uworker *w;
    struct ureq req;
    int held_bid;                /* the provided buffer held, or NO_BUFFER */
    unsigned held_off, held_len; /* its bytes still to deliver */
};

/* One ring and everything only its worker thread touches. */
struct uworker {
    struct io_uring ring;
    struct server *srv;
    struct uring_state *st;
    int index;
    int ring_ok, disabled;        /* ring created; created disabled (enable on its thread) */
    int efd;                      /* wake eventfd, polled by the ring */
    struct io_uring_buf_ring *br; /* provided buffers: nbufs of buf_size bytes in bufs */
    unsigned char *bufs;
    unsigned nbufs, entries; /* buffers, and ring entries (a power of two >= nbufs) */
    unsigned lent;           /* buffers lent to connections (conn_lend_buffer), at most LEND_MAX */
    int dry;     /* the ring ran dry (-ENOBUFS) since the last tick: lend nothing till one passes */
    int was_dry; /* it ran dry in the tick period before */
    size_t buf_size;
    struct ureq accept_req, backoff_req, wake_req;
    struct __kernel_timespec backoff_ts;    /* read by the kernel while the timeout is armed */
    int accept_armed, backoff_armed;        /* their final CQE is still to come */
    int rearm_accept, cancel_accept;        /* retries the loop owes after a full SQ */
    int stop, stop_counted;                 /* stop_accepting seen; counted in rings_stopped */
    unsigned err_streak;                    /* accept errors since the last success */
    int tick_now;                           /* woken: tick without waiting for the period */
    struct ureq *deferred, **deferred_tail; /* synthesized completions, FIFO */
};

/* Shared by all rings: immutable after start, or atomic. */
struct uring_state {
    atomic_int lfd;           /* the listener; -1 once closed */
    atomic_int rings_stopped; /* rings whose accepting is over for good */
    atomic_uint_least64_t accept_ordinal;
    int nworkers;
    struct uworker *w;
};

/* ---- the call table (uring_ops.h) ------------------------------------------------- */

/* Defaults for the entries liburing declares inline. */
static struct io_uring_sqe *real_get_sqe(struct io_uring *ring)
{
    return io_uring_get_sqe(ring);
}

static void real_cq_advance(struct io_uring *ring, unsigned n)
{
    io_uring_cq_advance(ring, n);
}

#define URING_OPS_DEFAULTS                                                                         \
    {                                                                                              \
        .queue_init_params = io_uring_queue_init_params, .queue_exit = io_uring_queue_exit,        \
        .register_buf_ring = io_uring_register_buf_ring, .get_sqe = real_get_sqe,                  \
        .submit = io_uring_submit, .submit_and_wait_timeout = io_uring_submit_and_wait_timeout,    \
        .peek_batch_cqe = io_uring_peek_batch_cqe, .cq_advance = real_cq_advance,                  \
        .setsockopt = setsockopt, .shutdown = shutdown, .close = close,                            \
    }

struct uring_ops uring_ops = URING_OPS_DEFAULTS;

/* Restores every entry to its default. */
void uring_ops_reset(void)
{
    static const struct uring_ops defaults = URING_OPS_DEFAULTS;
    uring_ops = defaults;
}

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
    uring_ops.close(fd);
    stats_add(sockets_closed, 1);
}

/* An SQE of w's ring, submitting once to make room; NULL if the ring stays full. */
static struct io_uring_sqe *get_sqe(struct uworker *w)
{
    struct io_uring_sqe *sqe = uring_ops.get_sqe(&w->ring);
    if (!sqe) {
        uring_ops.submit(&w->ring);
        sqe = uring_ops.get_sqe(&w->ring);
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

/* Hands a provided buffer back to the ring, its bytes all delivered or no longer wanted. */
static void recycle_buffer(struct uworker *w, unsigned bid)
{
    io_uring_buf_ring_add(w->br, w->bufs + (size_t)bid * w->buf_size, (unsigned)w->buf_size,
                          (unsigned short)bid, io_uring_buf_ring_mask(w->entries), 0);
    io_uring_buf_ring_advance(w->br, 1);
}

/* ---- accepts ---------------------------------------------------------------------- */

/* Closes the shared listener once, whoever gets here first. Shut down first: the admin
 * thread's descriptor table holds a copy of it (admin_loop), and a close alone would
 * leave the port listening, so that new clients wait out the drain and are then reset
 * instead of being refused at once. */
static void close_listener(struct uring_state *st)
{
    int fd = atomic_exchange(&st->lfd, -1);
    if (fd >= 0) {
        uring_ops.shutdown(fd, SHUT_RDWR);
        close_socket(fd);
    }
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

/* Re-arms the accept after delay_ms, so a persistent error cannot spin. */
static void arm_backoff(struct uworker *w, int64_t delay_ms)
{
    struct io_uring_sqe *sqe = get_sqe(w);
    if (!sqe) {
        w->rearm_accept = 1;
        return;
    }
    w->backoff_ts.tv_sec = delay_ms / 1000;
    w->backoff_ts.tv_nsec = (delay_ms % 1000) * 1000000L;
    io_uring_prep_timeout(sqe, &w->backoff_ts, 0, 0);
    io_uring_sqe_set_data(sqe, &w->backoff_req);
    w->backoff_armed = 1;
}

/* The multishot accept ended: re-arm it, after the core's retry delay when it ended
 * on errors, or finish accepting. */
static void accept_ended(struct uworker *w)
{
    int64_t delay = srv_accept_retry_ms(w->err_streak);
    if (w->stop)
        maybe_finish_accepting(w);
    else if (delay > 0)
        arm_backoff(w, delay);
    else
        arm_accept(w);
}

/* The -errno that realises a fault action's EP_E* error (translate_error reversed). */
static int fault_errno(int ep_error)
{
    return ep_error == EP_EMFILE ? -EMFILE : ep_error == EP_ENOBUFS ? -ENOBUFS : -ECONNRESET;
}

/* Realises an accept-side fault action on a fresh socket: closes it and returns the
 * action's error as -errno when one fires, else returns fd. */
static int fail_fresh_socket(struct fault_action a, int fd)
{
    if (a.effect == FAULT_PASS)
        return fd;
    close_socket(fd);
    return fault_errno(a.error);
}

/* Readies an accepted socket (faults, TCP_NODELAY): fd, or -errno once it is closed.
 * Accept ordinals are global, as accepts race across rings. */
static int prepare_socket(struct uworker *w, int fd)
{
    int one = 1;
    if (fault_active()) {
        uint64_t op = atomic_fetch_add(&w->st->accept_ordinal, 1) + 1;
        fd = fail_fresh_socket(fault_accept_action(op), fd);
        if (fd >= 0)
            fd = fail_fresh_socket(fault_setsockopt_action(op), fd);
    }
    if (fd >= 0 && uring_ops.setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))) {
        int code = errno;
        close_socket(fd);
        return -code;
    }
    return fd;
}

/* Gives a ready socket to the core, or closes it when the core refuses. */
static void hand_off(struct uworker *w, int fd)
{
    struct conn *c = srv_conn_new(w->srv, w->index);
    if (!c) {
        close_socket(fd);
        return;
    }
    struct uconn *u = conn_bk(c);
    u->fd = fd;
    u->w = w;
    u->held_bid = NO_BUFFER;
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
        res = prepare_socket(w, res);
        if (res >= 0)
            hand_off(w, res);
    }
    if (res < 0 && !(w->stop && res == -ECANCELED)) {
        stats_add(accept_errors, 1);
        w->err_streak++;
    }
    if (!more)
        accept_ended(w);
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

/* Posts the cancellation of this ring's accept and back-off timer; retried by the
 * loop while the SQ is full. */
static void cancel_accepting(struct uworker *w)
{
    struct ureq *targets[2] = {w->accept_armed ? &w->accept_req : NULL,
                               w->backoff_armed ? &w->backoff_req : NULL};
    w->cancel_accept = 0;
    for (int i = 0; i < 2; i++) {
        struct io_uring_sqe *sqe = targets[i] ? get_sqe(w) : NULL;
        if (targets[i] && !sqe) {
            w->cancel_accept = 1;
            continue;
        }
        if (sqe) {
            io_uring_prep_cancel(sqe, targets[i], 0);
            io_uring_sqe_set_data(sqe, NULL);
        }
    }
}

/* ---- connection operations -------------------------------------------------------- */

/* Realises the fault action of a recv/send about to be posted; may shorten *len.
 * Returns 1 when the operation was replaced by a synthesized completion. */
static int realise(struct uconn *u, struct fault_action a, size_t *len)
{
    switch (a.effect) {
    case FAULT_FAIL_NOW:
        defer(u->w, &u->req, fault_errno(a.error));
        return 1;
    case FAULT_FAIL_LATER:
        u->req.fail_reset = 1; /* after the real I/O */
        return 0;
    case FAULT_EOF:
        defer(u->w, &u->req, 0);
        return 1;
    case FAULT_SHORTEN:
        *len = a.len;
        return 0;
    default:
        return 0;
    }
}

/* Resets c's request for a new operation of `kind`. */
static struct ureq *begin_op(struct uconn *u, unsigned char kind)
{
    u->req.kind = kind;
    u->req.fail_reset = 0;
    return &u->req;
}

/* Posts a receive into a provided buffer of the ring (nothing is pinned while idle),
 * or, when c holds bytes, queues their delivery instead. */
static void uring_recv(struct conn *c)
{
    struct uconn *u = conn_bk(c);
    size_t len = u->w->buf_size;
    struct ureq *r = begin_op(u, OPK_RECV);
    if (fault_active() && realise(u, fault_recv_action(c->id, c->recv_ops), &len))
        return;
    if (u->held_bid != NO_BUFFER) {
        r->kind = OPK_RECV_HELD;
        defer(u->w, r, 0);
        return;
    }
    struct io_uring_sqe *sqe = get_sqe(u->w);
    if (!sqe) {
        defer(u->w, r, -EBUSY);
        return;
    }
    io_uring_prep_recv(sqe, u->fd, NULL, len, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = BUF_GROUP;
    io_uring_sqe_set_data(sqe, r);
}

/* Posts a receive straight into the connection's buffer: the fallback when the
 * provided-buffer ring ran dry (-ENOBUFS is not an error). */
static void recv_plain(struct uconn *u, struct conn *c)
{
    size_t cap;
    struct ureq *r = begin_op(u, OPK_RECV_PLAIN);
    void *dst = conn_recv_buffer(c, &cap);
    struct io_uring_sqe *sqe = dst ? get_sqe(u->w) : NULL;
    if (!sqe) {
        defer(u->w, r, dst ? -EBUSY : -ENOMEM);
        return;
    }
    io_uring_prep_recv(sqe, u->fd, dst, cap, 0);
    io_uring_sqe_set_data(sqe, r);
}

/* Posts a send of buf[0..len); the core finishes short sends. */
static void uring_send(struct conn *c, const char *buf, size_t len)
{
    struct uconn *u = conn_bk(c);
    struct ureq *r = begin_op(u, OPK_SEND);
    if (len > INT32_MAX)
        len = INT32_MAX; /* a CQE result is an int: report a short send instead */
    if (fault_active() && realise(u, fault_send_action(c->id, c->send_ops, len), &len))
        return;
    struct io_uring_sqe *sqe = get_sqe(u->w);
    if (!sqe) {
        defer(u->w, r, -EBUSY);
        return;
    }
    io_uring_prep_send(sqe, u->fd, buf, len, MSG_NOSIGNAL);
    io_uring_sqe_set_data(sqe, r);
}

/* Copies what fits of the held bytes into the connection's buffer, recycling the
 * provided buffer once all are delivered: bytes copied, or EP_ENOMEM when there is
 * no connection buffer (the bytes stay held). */
static long deliver_held(struct uconn *u, struct conn *c)
{
    size_t cap;
    void *dst = conn_recv_buffer(c, &cap);
    if (!dst)
        return EP_ENOMEM;
    size_t n = u->held_len < cap ? u->held_len : cap;
    memcpy(dst, u->w->bufs + (size_t)u->held_bid * u->w->buf_size + u->held_off, n);
    u->held_off += (unsigned)n;
    u->held_len -= (unsigned)n;
    if (u->held_len == 0) {
        recycle_buffer(u->w, (unsigned)u->held_bid);
        u->held_bid = NO_BUFFER;
    }
    return (long)n;
}

/* Gives back the provided buffer c holds, if any, its bytes no longer wanted. */
static void drop_held(struct uconn *u)
{
    if (u->held_bid != NO_BUFFER)
        recycle_buffer(u->w, (unsigned)u->held_bid);
    u->held_bid = NO_BUFFER;
    u->held_len = 0;
}

/* Whether w may lend one more provided buffer: under LEND_MAX, and the ring did not
 * run dry in this tick period or the one before. */
static int may_lend(const struct uworker *w)
{
    return !w->dry && !w->was_dry && w->lent < LEND_MAX(w->nbufs);
}

/* Completes c's posted operation with a kernel result (or a synthesized one). */
static void complete_op(struct uworker *w, struct ureq *r, int res, unsigned flags)
{
    struct uconn *u = container_of(r, struct uconn, req);
    struct conn *c = conn_from_bk(u);
    long n = res < 0 ? translate_error(res) : res;
    if (flags & IORING_CQE_F_BUFFER) {
        unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
        void *data = w->bufs + (size_t)bid * w->buf_size;
        if (res > 0 && !r->fail_reset && may_lend(w) && conn_lend_buffer(c, data, w->buf_size)) {
            w->lent++; /* echoed from the provided buffer; uring_buffer_return recycles it */
        } else if (res > 0) {
            u->held_bid = (int)bid;
            u->held_off = 0;
            u->held_len = (unsigned)res;
            n = deliver_held(u, c);
        } else {
            recycle_buffer(w, bid);
        }
    } else if (r->kind == OPK_RECV_HELD) {
        n = deliver_held(u, c);
    }
    if (r->fail_reset)
        n = EP_ECONNRESET;
    else if (r->kind == OPK_RECV && res == -ENOBUFS) {
        stats_add(recv_fallbacks, 1);
        w->dry = 1;
        recv_plain(u, c);
        return;
    }
    if (r->kind == OPK_SEND)
        conn_on_sent(c, n);
    else
        conn_on_recv(c, n);
}

/* Makes c's posted operation complete soon. Lock held: never calls the core. */
static void uring_cancel(struct conn *c)
{
    struct uconn *u = conn_bk(c);
    if (u->fd < 0)
        return;
    uring_ops.shutdown(u->fd, SHUT_RDWR); /* wakes a pending recv (0) or send (-EPIPE) */
    struct io_uring_sqe *sqe = uring_ops.get_sqe(&u->w->ring);
    if (!sqe)
        return; /* shutdown alone suffices */
    io_uring_prep_cancel_fd(sqe, u->fd, IORING_ASYNC_CANCEL_ALL);
    io_uring_sqe_set_data(sqe, NULL);
    /* submit now, while fd is still c's: a later cancel could hit a reused fd */
    uring_ops.submit(&u->w->ring);
}

/* bk buffer_return: a provided buffer c was lent (complete_op) goes back to the ring. */
static void uring_buffer_return(struct conn *c, void *buf)
{
    struct uworker *w = ((struct uconn *)conn_bk(c))->w;
    size_t off = (size_t)((unsigned char *)buf - w->bufs);
    recycle_buffer(w, (unsigned)(off / w->buf_size));
    w->lent--;
}

/* Closes c's socket once and gives back the buffer it holds, when the core frees c. */
static void uring_release(struct conn *c)
{
    struct uconn *u = conn_bk(c);
    drop_held(u);
    if (u->fd >= 0)
        close_socket(u->fd);
    u->fd = -1;
}

/* ---- the worker loop -------------------------------------------------------------- */

/* Polls the wake eventfd (multishot: stays armed). */
static void arm_wake(struct uworker *w)
{
    struct io_uring_sqe *sqe = get_sqe(w);
    if (!sqe)
        return; /* ticks still come every SRV_TICK_MS */
    io_uring_prep_poll_multishot(sqe, w->efd, POLLIN);
    io_uring_sqe_set_data(sqe, &w->wake_req);
}

/* wake() was called: drain the eventfd and tick at once. */
static void on_wake(struct uworker *w, int res, unsigned flags)
{
    uint64_t v;
    ssize_t rc = read(w->efd, &v, sizeof(v));
    (void)rc;
    w->tick_now = 1;
    if (!(flags & IORING_CQE_F_MORE) && res >= 0)
        arm_wake(w);
}

/* Delivers the synthesized completions queued so far (not those they queue). */
static void run_deferred(struct uworker *w)
{
    struct ureq *r = w->deferred;
    w->deferred = NULL;
    w->deferred_tail = &w->deferred;
    while (r) {
        struct ureq *next = r->next;
        r->next = NULL;
        complete_op(w, r, r->res, 0);
        r = next;
    }
}

/* The fields of a CQE we use, copied out so the CQ can be advanced first. */
struct cqe_copy {
    uint64_t user_data;
    int res;
    unsigned flags;
};

/* Routes one completion to its handler. */
static void dispatch(struct uworker *w, const struct cqe_copy *e)
{
    struct ureq *r = (struct ureq *)(uintptr_t)e->user_data;
    if (!r || e->user_data == LIBURING_UDATA_TIMEOUT)
        return; /* cancel requests and liburing's own timeouts */
    switch (r->kind) {
    case OPK_ACCEPT:
        on_accept(w, e->res, e->flags);
        break;
    case OPK_BACKOFF:
        on_backoff(w);
        break;
    case OPK_WAKE:
        on_wake(w, e->res, e->flags);
        break;
    default:
        complete_op(w, r, e->res, e->flags);
    }
}

/* Processes the completions that are there, in bounded batches. */
static void reap(struct uworker *w)
{
    struct cqe_copy batch[CQE_BATCH];
    for (int b = 0; b < MAX_BATCHES; b++) {
        struct io_uring_cqe *cqes[CQE_BATCH];
        unsigned n = uring_ops.peek_batch_cqe(&w->ring, cqes, CQE_BATCH);
        if (n == 0)
            return;
        for (unsigned i = 0; i < n; i++) {
            batch[i].user_data = cqes[i]->user_data;
            batch[i].res = cqes[i]->res;
            batch[i].flags = cqes[i]->flags;
        }
        uring_ops.cq_advance(&w->ring, n);
        for (unsigned i = 0; i < n; i++)
            dispatch(w, &batch[i]);
    }
}

/* Submits what was prepared and waits up to one tick for a completion (not at all
 * when synthesized completions are waiting). */
static void submit_and_wait(struct uworker *w)
{
    struct __kernel_timespec ts = {.tv_sec = 0, .tv_nsec = SRV_TICK_MS * 1000000L};
    struct io_uring_cqe *cqe;
    if (w->deferred)
        uring_ops.submit(&w->ring);
    else if (uring_ops.submit_and_wait_timeout(&w->ring, &cqe, 1, &ts, NULL) < 0)
        sched_yield(); /* idle: valgrind serialises threads and does not see
                          io_uring_enter as blocking, so the admin thread starved */
}

/* Nonzero when w may leave: the core is done with it and its accepting is over. */
static int worker_finished(struct uworker *w)
{
    return !w->deferred && w->stop_counted && srv_worker_done(w->srv, w->index);
}

/* Enables a ring created disabled, making the calling thread its single issuer.
 * liburing 2.3 declares io_uring_enable_rings() but does not export it. */
static int enable_ring(struct uworker *w)
{
    return (int)syscall(__NR_io_uring_register, w->ring.ring_fd, IORING_REGISTER_ENABLE_RINGS, NULL,
                        0);
}

/* One turn of w's loop: owed retries, deferred completions, submit and wait, reap,
 * tick when due (by *next_tick, which it advances). Nonzero when w may leave. */
static int worker_pass(struct uworker *w, int64_t *next_tick)
{
    if (w->rearm_accept && !w->stop)
        arm_accept(w);
    if (w->cancel_accept)
        cancel_accepting(w);
    run_deferred(w);
    submit_and_wait(w);
    reap(w);
    int64_t now = ep_now_ms();
    if (w->tick_now || now >= *next_tick) {
        w->tick_now = 0;
        *next_tick = now + SRV_TICK_MS;
        w->was_dry = w->dry;
        w->dry = 0;
        srv_tick(w->srv, w->index);
    }
    return worker_finished(w);
}

/* bk run_worker: worker `index`'s ring loop on the calling thread, its single issuer,
 * until shutdown has drained it. */
static void uring_run_worker(struct server *s, int index)
{
    struct uworker *w = &((struct uring_state *)s->bk_state)->w[index];
    int64_t next_tick = 0;
    if (w->disabled && enable_ring(w) < 0) {
        fprintf(stderr, "echoport: io_uring_enable_rings failed\n");
        abort(); /* the kernel accepted R_DISABLED moments ago */
    }
    while (!worker_pass(w, &next_tick)) {
    }
}

/* Test hook (uring_ops.h): one pass of worker w's loop, ticking every time. */
int uring_test_pass(struct server *s, int w)
{
    struct uring_state *st = s->bk_state;
    int64_t next_tick = 0;
    return worker_pass(&st->w[w], &next_tick);
}

/* ---- the bk_ops entry points ------------------------------------------------------ */

/* Stops this worker's accepting; the last ring to finish closes the listener. */
static void uring_stop_accepting(struct server *s, int worker)
{
    struct uring_state *st = s->bk_state;
    struct uworker *w = &st->w[worker];
    if (w->stop)
        return;
    w->stop = 1;
    w->rearm_accept = 0;
    cancel_accepting(w);
    maybe_finish_accepting(w);
}

/* Wakes every worker through its eventfd; async-signal-safe. */
static void uring_wake(struct server *s)
{
    struct uring_state *st = s->bk_state;
    uint64_t one = 1;
    if (!st)
        return;
    for (int i = 0; i < st->nworkers; i++) {
        if (st->w[i].efd >= 0) {
            ssize_t rc = write(st->w[i].efd, &one, sizeof(one));
            (void)rc; /* a full counter already means "wake up" */
        }
    }
}

/* Creates w's ring: single issuer (enabled later on its own thread), cooperative
 * task running and a large CQ; plain flags on kernels that refuse them. */
static int init_ring(struct uworker *w)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN |
              IORING_SETUP_TASKRUN_FLAG | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_R_DISABLED;
    p.cq_entries = RING_ENTRIES * CQ_FACTOR;
    int rc = uring_ops.queue_init_params(RING_ENTRIES, &w->ring, &p);
    w->disabled = rc == 0;
    if (rc == -EINVAL) {
        memset(&p, 0, sizeof(p));
        p.flags = IORING_SETUP_CQSIZE;
        p.cq_entries = RING_ENTRIES * CQ_FACTOR;
        rc = uring_ops.queue_init_params(RING_ENTRIES, &w->ring, &p);
    }
    w->ring_ok = rc == 0;
    return rc;
}

/* Sizes w's provided buffers within the share of the buffer budget srv_pool_reserve
 * grants: up to BUF_MAX buffers of min(buffer_size, BUF_SIZE_MAX) bytes, smaller ones
 * when the grant cannot hold BUF_MIN of those (a connection's buffer of any size
 * works: what does not fit it is held). */
static void size_buffers(struct uworker *w)
{
    size_t size = w->srv->cfg->buffer_size < BUF_SIZE_MAX ? w->srv->cfg->buffer_size : BUF_SIZE_MAX;
    size_t n = BUF_BUDGET / size < BUF_MAX ? BUF_BUDGET / size : BUF_MAX;
    size_t granted = srv_pool_reserve(w->srv, (n < BUF_MIN ? BUF_MIN : n) * size);
    n = granted / size;
    if (n < BUF_MIN) {
        n = BUF_MIN;
        size = granted / BUF_MIN > 0 ? granted / BUF_MIN : 1; /* a budget of a few bytes */
    }
    w->nbufs = (unsigned)n;
    w->buf_size = size;
    for (w->entries = 1; w->entries < w->nbufs; w->entries <<= 1) {
    }
}

/* Registers w's provided-buffer ring and fills it. */
static int init_buffers(struct uworker *w)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_buffers(w);
    size_t ring_bytes = w->entries * sizeof(struct io_uring_buf);
    void *mem = NULL;
    if (posix_memalign(&mem, page, ring_bytes < page ? page : ring_bytes))
        return -ENOMEM;
    w->br = mem;
    w->bufs = malloc(w->nbufs * w->buf_size);
    if (!w->bufs)
        return -ENOMEM;
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (uint64_t)(uintptr_t)w->br;
    reg.ring_entries = w->entries;
    reg.bgid = BUF_GROUP;
    int rc = uring_ops.register_buf_ring(&w->ring, &reg, 0);
    if (rc)
        return rc;
    io_uring_buf_ring_init(w->br);
    for (unsigned i = 0; i < w->nbufs; i++)
        io_uring_buf_ring_add(w->br, w->bufs + (size_t)i * w->buf_size, (unsigned)w->buf_size,
                              (unsigned short)i, io_uring_buf_ring_mask(w->entries), (int)i);
    io_uring_buf_ring_advance(w->br, (int)w->nbufs);
    return 0;
}

/* Creates worker w's ring, eventfd and buffers, and prepares its first accept. */
static int init_worker(struct uworker *w, char *err, size_t errlen)
{
    const char *what = "io_uring_queue_init";
    int rc = init_ring(w);
    if (!rc) {
        what = "eventfd";
        w->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        rc = w->efd < 0 ? -errno : 0;
    }
    if (!rc) {
        what = "provided buffers";
        rc = init_buffers(w);
    }
    if (rc) {
        /* a kernel without io_uring, or one that forbids it to this process */
        int refused = !w->ring_ok && (rc == -EPERM || rc == -ENOSYS || rc == -EACCES);
        snprintf(err, errlen, "%s (worker %d): %s%s", what, w->index, strerror(-rc),
                 refused ? " (io_uring not available here: see sysctl kernel.io_uring_disabled,"
                           " seccomp, container policy)"
                         : "");
        return rc == -ENOMEM ? EP_ENOMEM : EP_EIO;
    }
    arm_accept(w); /* submitted by the worker, the ring's single issuer */
    arm_wake(w);
    return 0;
}

/* Opens, binds and listens on the configured address; fills s->bound_addr. */
static int open_listener(struct server *s, struct uring_state *st, char *err, size_t errlen)
{
    const struct ep_config *cfg = s->cfg;
    struct sockaddr_storage addr;
    socklen_t len = sizeof(addr);
    int addrlen, one = 1;
    int rc = net_resolve(cfg->listen_host[0] ? cfg->listen_host : NULL, cfg->listen_port, &addr,
                         &addrlen, err, errlen);
    if (rc)
        return rc;
    int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return errno == EMFILE || errno == ENFILE ? EP_EMFILE : EP_EIO;
    }
    stats_add(sockets_opened, 1);
    atomic_store(&st->lfd, fd);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&addr, (socklen_t)addrlen) || listen(fd, SOMAXCONN) ||
        getsockname(fd, (struct sockaddr *)&addr, &len)) {
        snprintf(err, errlen, "cannot listen on %s port %u: %s", cfg->listen_host, cfg->listen_port,
                 strerror(errno));
        return EP_EADDR;
    }
    net_format((struct sockaddr *)&addr, s->bound_addr, sizeof(s->bound_addr));
    return 0;
}

/* Releases rings, eventfds, buffers and the listener (if still open). */
static void uring_destroy(struct server *s)
{
    struct uring_state *st = s->bk_state;
    if (!st)
        return;
    for (int i = 0; i < st->nworkers; i++) {
        struct uworker *w = &st->w[i];
        if (w->ring_ok)
            uring_ops.queue_exit(&w->ring); /* also drops the buffer ring */
        if (w->efd >= 0)
            close(w->efd);
        free(w->br);
        free(w->bufs);
    }
    close_listener(st);
    s->bk_state = NULL;
    free(st->w);
    free(st);
}

/* Creates the listener and one ring per worker; cleans up after itself on failure. */
static int uring_start(struct server *s, char *err, size_t errlen)
{
    struct uring_state *st = calloc(1, sizeof(*st));
    if (!st || !(st->w = calloc((size_t)s->nworkers, sizeof(*st->w)))) {
        free(st);
        snprintf(err, errlen, "out of memory");
        return EP_ENOMEM;
    }
    atomic_init(&st->lfd, -1);
    st->nworkers = s->nworkers;
    for (int i = 0; i < st->nworkers; i++) {
        struct uworker *w = &st->w[i];
        w->srv = s;
        w->st = st;
        w->index = i;
        w->efd = -1;
        w->deferred_tail = &w->deferred;
        w->accept_req.kind = OPK_ACCEPT;
        w->backoff_req.kind = OPK_BACKOFF;
        w->wake_req.kind = OPK_WAKE;
    }
    s->bk_state = st;
    int rc = open_listener(s, st, err, errlen);
    for (int i = 0; i < st->nworkers && !rc; i++)
        rc = init_worker(&st->w[i], err, errlen);
    if (rc)
        uring_destroy(s);
    return rc;
}

const struct bk_ops bk_uring = {
    .name = "io_uring",
    .conn_size = sizeof(struct uconn),
    .start = uring_start,
    .run_worker = uring_run_worker,
    .recv = uring_recv,
    .send = uring_send,
    .cancel = uring_cancel,
    .release = uring_release,
    .buffer_return = uring_buffer_return,
    .stop_accepting = uring_stop_accepting,
    .wake = uring_wake,
    .destroy = uring_destroy,
};
