/* test_uring.c - the io_uring backend (src/backend_uring.c) unit-tested on its own, Linux
 * only. Every ring and socket call the backend makes goes through uring_ops
 * (src/uring_ops.h); here its entries are a scripted fake kernel: get_sqe hands out SQEs
 * from a test array, submit turns each prepared SQE into a pending operation, and the
 * test completes operations by appending CQEs (accepted fds with IORING_CQE_F_MORE,
 * data placed in the provided buffer the kernel would pick, with IORING_CQE_F_BUFFER,
 * -ENOBUFS when the buffer ring is empty, short sends, resets, cancellations, EOF).
 * The buffer ring is the backend's own memory, registered through register_buf_ring:
 * the fake consumes buffers from its head and the backend must put each back at its
 * tail. Accepted sockets are fake numbers (setsockopt, shutdown and close are in the
 * table); the listener and the wake eventfd are real. No worker thread runs: the test
 * drives one worker pass at a time (uring_test_pass), so nothing sleeps.
 *
 * The fakes record the first violation of the kernel's rules: a call on a closed socket,
 * a socket closed twice or with an operation still pending on it, two receives or two
 * sends pending on one socket, a CQ advanced past its tail. After every test
 * (finish_and_check): no violation, each socket closed exactly once, every provided
 * buffer back in the ring, ctx_alloc == ctx_free, sockets_opened == sockets_closed and
 * no operation outstanding but the wake poll (the ring's exit ends it). */
#include "uring_ops.h"

#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "core/alloc.h"
#include "core/config.h"
#include "core/ep.h"
#include "core/server.h"
#include "core/stats.h"
#include "fault.h"
#include "nth_walk.h"

#define FD0 100000 /* fake socket numbers: never a real descriptor */
#define MAX_SOCKS 512
#define MAX_OPS 4096
#define MAX_SQ 64
#define MAX_CQ 256
#define PEER_BYTES 16384
#define PUMP_PASSES 64
#define BUFFER_SIZE 64 /* cfg.buffer_size: provided buffers of 64 bytes */

/* A socket of the fake kernel (the listener included), with what its peer got. */
struct fsock {
    int fd;
    int listener;
    int open;
    int closes;  /* must end at exactly 1 */
    int nodelay; /* TCP_NODELAY was set */
    int shut;    /* shutdown(SHUT_RDWR) was called */
    char out[PEER_BYTES];
    size_t out_len;
};

enum op_kind { OP_ACCEPT, OP_RECV, OP_SEND, OP_TIMEOUT, OP_POLL };

/* An operation the backend submitted and the kernel holds until the test completes it. */
struct fop {
    int kind;
    int pending;
    uint64_t user_data;
    int fd;
    char *buf;    /* a plain receive's buffer, a send's bytes */
    unsigned len; /* a receive's capacity, a send's length */
    int buffer_select;
    long long timeout_ns;
};

static struct {
    struct ep_config cfg;
    struct server srv;
    struct io_uring_sqe sq[MAX_SQ];
    int nsq;
    struct io_uring_cqe cq[MAX_CQ];
    unsigned cq_head, cq_tail;
    struct fop ops[MAX_OPS];
    int nops;
    struct fsock socks[MAX_SOCKS];
    int nsocks;
    struct io_uring_buf_ring *br; /* as registered */
    unsigned nbufs;
    unsigned short buf_head; /* the kernel's head of the buffer ring */
    int exits;
    unsigned bufs_at_exit; /* buffers in the ring when it was exited (then it is freed) */
    char violation[256];
    int violations;
    /* scripts */
    int sq_full;         /* this many next get_sqe calls find the SQ full */
    int setsockopt_fail; /* this many next setsockopt calls fail with EINVAL */
} k;

/* Records the first violation of the kernel's rules; the test fails on it at its end. */
static void violate(const char *fmt, ...)
{
    if (k.violations++ == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(k.violation, sizeof(k.violation), fmt, ap);
        va_end(ap);
    }
}

static struct fsock *find_sock(int fd)
{
    for (int i = 0; i < k.nsocks; i++)
        if (k.socks[i].fd == fd)
            return &k.socks[i];
    return NULL;
}

/* A socket that must be open for the call `what`; NULL (and a violation) if not. */
static struct fsock *open_sock(int fd, const char *what)
{
    struct fsock *fs = find_sock(fd);
    if (!fs || !fs->open) {
        violate("%s on a socket that is not open (%d)", what, fd);
        return NULL;
    }
    return fs;
}

static struct fsock *new_sock(int fd)
{
    cr_assert_lt(k.nsocks, MAX_SOCKS);
    struct fsock *fs = &k.socks[k.nsocks++];
    memset(fs, 0, sizeof(*fs));
    fs->fd = fd;
    fs->open = 1;
    return fs;
}

/* The pending operation of `kind` on fd (any fd when fd < 0), NULL if none. */
static struct fop *pending_op(int kind, int fd)
{
    for (int i = 0; i < k.nops; i++)
        if (k.ops[i].pending && k.ops[i].kind == kind && (fd < 0 || k.ops[i].fd == fd))
            return &k.ops[i];
    return NULL;
}

static int count_pending(int kind)
{
    int n = 0;
    for (int i = 0; i < k.nops; i++)
        n += k.ops[i].pending && k.ops[i].kind == kind;
    return n;
}

/* Appends a CQE; the backend sees it at its next reap. */
static void post_cqe(uint64_t user_data, int res, unsigned flags)
{
    if (k.cq_tail - k.cq_head == MAX_CQ) {
        violate("CQ overflow");
        return;
    }
    struct io_uring_cqe *c = &k.cq[k.cq_tail++ % MAX_CQ];
    c->user_data = user_data;
    c->res = res;
    c->flags = flags;
}

/* The kernel completes op with res; multishot ones stay pending when flags has F_MORE. */
static void complete(struct fop *op, int res, unsigned flags)
{
    if (!op->pending)
        violate("the test completed an operation twice");
    if (!(flags & IORING_CQE_F_MORE))
        op->pending = 0;
    post_cqe(op->user_data, res, flags);
}

/* Ends what is pending on fd with res (a receive gets eof_res instead). */
static int end_ops_of(int fd, int res, int recv_res)
{
    int n = 0;
    for (int i = 0; i < k.nops; i++) {
        struct fop *op = &k.ops[i];
        if (op->pending && op->fd == fd && op->kind != OP_ACCEPT) {
            complete(op, op->kind == OP_RECV ? recv_res : res, 0);
            n++;
        }
    }
    return n;
}

/* Cancels the pending operation with user_data ud: 0, or -ENOENT if none. */
static int cancel_user_data(uint64_t ud)
{
    for (int i = 0; i < k.nops; i++) {
        if (k.ops[i].pending && k.ops[i].user_data == ud) {
            complete(&k.ops[i], -ECANCELED, 0);
            return 0;
        }
    }
    return -ENOENT;
}

static struct fop *new_op(int kind, const struct io_uring_sqe *sqe)
{
    static struct fop overflow;
    if (k.nops == MAX_OPS) {
        violate("more than %d operations", MAX_OPS);
        return &overflow;
    }
    struct fop *op = &k.ops[k.nops++];
    memset(op, 0, sizeof(*op));
    op->kind = kind;
    op->pending = 1;
    op->user_data = sqe->user_data;
    op->fd = sqe->fd;
    op->buf = (char *)(uintptr_t)sqe->addr;
    op->len = sqe->len;
    return op;
}

/* The kernel takes one submitted SQE. */
static void take_sqe(const struct io_uring_sqe *sqe)
{
    struct fop *op;
    switch (sqe->opcode) {
    case IORING_OP_ACCEPT:
        if (!find_sock(sqe->fd) || !find_sock(sqe->fd)->listener)
            violate("accept on a socket that is not the listener");
        if (!(sqe->ioprio & IORING_ACCEPT_MULTISHOT))
            violate("a single-shot accept");
        if (pending_op(OP_ACCEPT, -1))
            violate("two accepts armed at once");
        new_op(OP_ACCEPT, sqe);
        break;
    case IORING_OP_RECV:
        open_sock(sqe->fd, "recv");
        if (pending_op(OP_RECV, sqe->fd))
            violate("two receives pending on socket %d", sqe->fd);
        op = new_op(OP_RECV, sqe);
        op->buffer_select = (sqe->flags & IOSQE_BUFFER_SELECT) != 0;
        if (op->buffer_select && (sqe->buf_group != 0 || sqe->addr))
            violate("a buffer-select receive with another group or a buffer");
        break;
    case IORING_OP_SEND:
        open_sock(sqe->fd, "send");
        if (pending_op(OP_SEND, sqe->fd))
            violate("two sends pending on socket %d", sqe->fd);
        if (!(sqe->msg_flags & MSG_NOSIGNAL))
            violate("a send without MSG_NOSIGNAL");
        new_op(OP_SEND, sqe);
        break;
    case IORING_OP_TIMEOUT: {
        const struct __kernel_timespec *ts = (const void *)(uintptr_t)sqe->addr;
        new_op(OP_TIMEOUT, sqe)->timeout_ns = ts->tv_sec * 1000000000LL + ts->tv_nsec;
        break;
    }
    case IORING_OP_POLL_ADD:
        new_op(OP_POLL, sqe);
        break;
    case IORING_OP_ASYNC_CANCEL:
        if (sqe->cancel_flags & IORING_ASYNC_CANCEL_FD)
            post_cqe(sqe->user_data, end_ops_of(sqe->fd, -ECANCELED, -ECANCELED) ? 0 : -ENOENT, 0);
        else
            post_cqe(sqe->user_data, cancel_user_data(sqe->addr), 0);
        break;
    default:
        violate("an unexpected opcode %u", sqe->opcode);
    }
}

/* ---- the fake uring_ops entries ---- */

static int fake_queue_init_params(unsigned entries, struct io_uring *ring,
                                  struct io_uring_params *p)
{
    (void)entries, (void)p;
    memset(ring, 0, sizeof(*ring));
    ring->ring_fd = -1;
    return 0;
}

static unsigned buffers_in_ring(void);

static void fake_queue_exit(struct io_uring *ring)
{
    (void)ring;
    k.exits++;
    k.bufs_at_exit = buffers_in_ring();
    for (int i = 0; i < k.nops; i++)
        if (k.ops[i].kind == OP_POLL)
            k.ops[i].pending = 0; /* the ring's exit ends the wake poll */
}

static int fake_register_buf_ring(struct io_uring *ring, struct io_uring_buf_reg *reg,
                                  unsigned flags)
{
    (void)ring, (void)flags;
    if (reg->bgid != 0 || (reg->ring_entries & (reg->ring_entries - 1)))
        violate("a buffer ring of group %u with %u entries", reg->bgid, reg->ring_entries);
    k.br = (struct io_uring_buf_ring *)(uintptr_t)reg->ring_addr;
    k.nbufs = reg->ring_entries;
    k.buf_head = 0;
    return 0;
}

static struct io_uring_sqe *fake_get_sqe(struct io_uring *ring)
{
    (void)ring;
    if (k.sq_full > 0) {
        k.sq_full--;
        return NULL;
    }
    if (k.nsq == MAX_SQ)
        return NULL;
    struct io_uring_sqe *sqe = &k.sq[k.nsq++];
    memset(sqe, 0, sizeof(*sqe));
    return sqe;
}

static int fake_submit(struct io_uring *ring)
{
    (void)ring;
    int n = k.nsq;
    k.nsq = 0;
    for (int i = 0; i < n; i++)
        take_sqe(&k.sq[i]);
    return n;
}

/* Submits and returns at once: the test, not time, produces completions. */
static int fake_submit_and_wait_timeout(struct io_uring *ring, struct io_uring_cqe **cqe,
                                        unsigned n, struct __kernel_timespec *ts, sigset_t *mask)
{
    (void)n, (void)ts, (void)mask;
    fake_submit(ring);
    *cqe = k.cq_tail != k.cq_head ? &k.cq[k.cq_head % MAX_CQ] : NULL;
    return *cqe ? 0 : -ETIME;
}

static unsigned fake_peek_batch_cqe(struct io_uring *ring, struct io_uring_cqe **cqes,
                                    unsigned count)
{
    (void)ring;
    unsigned n = 0;
    for (; n < count && k.cq_head + n != k.cq_tail; n++)
        cqes[n] = &k.cq[(k.cq_head + n) % MAX_CQ];
    return n;
}

static void fake_cq_advance(struct io_uring *ring, unsigned n)
{
    (void)ring;
    if (n > k.cq_tail - k.cq_head)
        violate("the CQ was advanced past its tail");
    k.cq_head += n;
}

static int fake_setsockopt(int fd, int level, int name, const void *val, socklen_t len)
{
    (void)val, (void)len;
    struct fsock *fs = open_sock(fd, "setsockopt");
    if (!fs) {
        errno = EBADF;
        return -1;
    }
    if (k.setsockopt_fail > 0) {
        k.setsockopt_fail--;
        errno = EINVAL;
        return -1;
    }
    if (level == IPPROTO_TCP && name == TCP_NODELAY)
        fs->nodelay = 1;
    return 0;
}

/* As the kernel does: a pending receive ends with 0 (EOF), a pending send with -EPIPE. */
static int fake_shutdown(int fd, int how)
{
    struct fsock *fs = open_sock(fd, "shutdown");
    if (!fs || how != SHUT_RDWR)
        return -1;
    fs->shut = 1;
    end_ops_of(fd, -EPIPE, 0);
    return 0;
}

static int fake_close(int fd)
{
    struct fsock *fs = find_sock(fd);
    if (!fs) {
        violate("close of an unknown socket %d", fd);
        return -1;
    }
    fs->closes++;
    if (!fs->open) {
        violate("socket %d closed twice", fd);
        return -1;
    }
    fs->open = 0;
    for (int i = 0; i < k.nops; i++)
        if (k.ops[i].pending && k.ops[i].fd == fd && k.ops[i].kind != OP_ACCEPT)
            violate("socket %d closed with an operation (kind %d) pending", fd, k.ops[i].kind);
    return fs->listener ? close(fd) : 0;
}

/* ---- driving the backend ---- */

static void setup(void)
{
    memset(&k, 0, sizeof(k));
    uring_ops_reset();
    uring_ops.queue_init_params = fake_queue_init_params;
    uring_ops.queue_exit = fake_queue_exit;
    uring_ops.register_buf_ring = fake_register_buf_ring;
    uring_ops.get_sqe = fake_get_sqe;
    uring_ops.submit = fake_submit;
    uring_ops.submit_and_wait_timeout = fake_submit_and_wait_timeout;
    uring_ops.peek_batch_cqe = fake_peek_batch_cqe;
    uring_ops.cq_advance = fake_cq_advance;
    uring_ops.setsockopt = fake_setsockopt;
    uring_ops.shutdown = fake_shutdown;
    uring_ops.close = fake_close;
    ep_alloc_fail = NULL;
    stats_reset();
}

static void teardown(void)
{
    ep_alloc_fail = NULL;
    uring_ops_reset();
}

static void pump(void);

/* Starts the backend: one worker on a real listener, --buffer-size buffer_size and
 * --max-buffer-bytes max_bytes (0: the default). */
static void start_with(size_t buffer_size, size_t max_bytes)
{
    char err[256] = "";
    config_defaults(&k.cfg);
    snprintf(k.cfg.listen_host, sizeof(k.cfg.listen_host), "127.0.0.1");
    k.cfg.listen_port = 0;
    k.cfg.threads = 1;
    k.cfg.buffer_size = buffer_size;
    if (max_bytes)
        k.cfg.max_buffer_bytes = max_bytes;
    cr_assert_eq(srv_init(&k.srv, &k.cfg, &bk_uring), 0);
    cr_assert_eq(bk_uring.start(&k.srv, err, sizeof(err)), 0, "start: %s", err);
    for (int i = 0; i < k.nsq; i++)
        if (k.sq[i].opcode == IORING_OP_ACCEPT)
            new_sock(k.sq[i].fd)->listener = 1; /* the real listener the accept is on */
    cr_assert_eq(k.nsocks, 1, "start prepared no accept");
    cr_assert_not_null(k.br, "start registered no buffer ring");
    pump(); /* the worker's first pass submits the accept and the wake poll */
}

/* Starts the backend with connection buffers of BUFFER_SIZE and the default budget. */
static void start(void)
{
    start_with(BUFFER_SIZE, 0);
}

static int pass(void)
{
    return uring_test_pass(&k.srv, 0);
}

/* Worker passes until two in a row find no CQE and submit nothing. */
static void pump(void)
{
    int idle = 0;
    for (int i = 0; i < PUMP_PASSES && idle < 2; i++) {
        int before = k.nops;
        unsigned cqes = k.cq_tail - k.cq_head;
        pass();
        idle = cqes == 0 && k.nops == before ? idle + 1 : 0;
    }
    cr_assert_eq(idle, 2, "the backend kept working for %d passes", PUMP_PASSES);
}

/* Provided buffers the backend has handed back and the kernel has not taken. */
static unsigned buffers_in_ring(void)
{
    unsigned short tail = __atomic_load_n(&k.br->tail, __ATOMIC_ACQUIRE);
    return (unsigned short)(tail - k.buf_head);
}

/* A client connects: the armed multishot accept yields a new socket (F_MORE: it stays
 * armed unless `more` is 0). */
static struct fsock *client_connects_more(int more)
{
    struct fop *op = pending_op(OP_ACCEPT, -1);
    cr_assert_not_null(op, "no accept is armed");
    struct fsock *fs = new_sock(FD0 + k.nsocks);
    complete(op, fs->fd, more ? IORING_CQE_F_MORE : 0);
    return fs;
}

/* A client connects and the backend serves it: a receive is posted on its socket. */
static struct fsock *connected(void)
{
    struct fsock *fs = client_connects_more(1);
    pump();
    cr_assert(fs->nodelay, "TCP_NODELAY was not set on the accepted socket");
    cr_assert_not_null(pending_op(OP_RECV, fs->fd), "the accepted client got no receive");
    return fs;
}

/* The peer's bytes arrive for fs's pending receive: into the provided buffer at the
 * ring's head (-ENOBUFS when it is empty), or the plain receive's own buffer. */
static void peer_sends_bytes(struct fsock *fs, const char *data, unsigned n)
{
    struct fop *op = pending_op(OP_RECV, fs->fd);
    cr_assert_not_null(op, "no receive is posted on socket %d", fs->fd);
    cr_assert_leq(n, op->len, "%u bytes for a receive of %u", n, op->len);
    if (!op->buffer_select) {
        memcpy(op->buf, data, n);
        complete(op, (int)n, 0);
        return;
    }
    if (buffers_in_ring() == 0) {
        complete(op, -ENOBUFS, 0);
        return;
    }
    struct io_uring_buf *b = &k.br->bufs[k.buf_head++ & (k.nbufs - 1)];
    cr_assert_geq(b->len, n);
    memcpy((void *)(uintptr_t)b->addr, data, n);
    complete(op, (int)n, IORING_CQE_F_BUFFER | ((unsigned)b->bid << IORING_CQE_BUFFER_SHIFT));
}

/* The peer's string `data` arrives for fs's pending receive, as peer_sends_bytes. */
static void peer_sends(struct fsock *fs, const char *data)
{
    peer_sends_bytes(fs, data, (unsigned)strlen(data));
}

/* fs's pending receive ends with res (0: EOF, or -errno) and no data. */
static void recv_ends(struct fsock *fs, int res)
{
    struct fop *op = pending_op(OP_RECV, fs->fd);
    cr_assert_not_null(op, "no receive is posted on socket %d", fs->fd);
    complete(op, res, 0);
}

/* fs's pending receive reads EOF into a provided buffer it picked: 0 with the buffer
 * flagged, as kernels report a buffer-select receive that found the peer gone. */
static void recv_eof_in_buffer(struct fsock *fs)
{
    struct fop *op = pending_op(OP_RECV, fs->fd);
    cr_assert_not_null(op, "no receive is posted on socket %d", fs->fd);
    cr_assert(op->buffer_select);
    struct io_uring_buf *b = &k.br->bufs[k.buf_head++ & (k.nbufs - 1)];
    complete(op, 0, IORING_CQE_F_BUFFER | ((unsigned)b->bid << IORING_CQE_BUFFER_SHIFT));
}

/* fs's pending send completes with n bytes, which the peer gets. */
static void complete_send(struct fsock *fs, unsigned n)
{
    struct fop *op = pending_op(OP_SEND, fs->fd);
    cr_assert_not_null(op, "no send is posted on socket %d", fs->fd);
    cr_assert_leq(n, op->len);
    for (unsigned i = 0; i < buffers_in_ring(); i++) {
        const struct io_uring_buf *b = &k.br->bufs[(k.buf_head + i) & (k.nbufs - 1)];
        const char *start = (const char *)(uintptr_t)b->addr;
        if (op->buf >= start && op->buf < start + b->len)
            violate("a send's bytes are in provided buffer %u, back in the ring", b->bid);
    }
    cr_assert_leq(fs->out_len + n, sizeof(fs->out));
    memcpy(fs->out + fs->out_len, op->buf, n);
    fs->out_len += n;
    complete(op, (int)n, 0);
}

/* A connection that received `data` and has its echo posted. */
static struct fsock *echoing(const char *data)
{
    struct fsock *fs = connected();
    peer_sends(fs, data);
    pump();
    struct fop *op = pending_op(OP_SEND, fs->fd);
    cr_assert_not_null(op, "the received bytes were not sent back");
    cr_assert_eq(op->len, strlen(data));
    return fs;
}

/* Graceful stop as a worker thread runs it: the peers read whatever is sent, the
 * worker passes until it may leave, then destroy. */
static void finish(void)
{
    int done = 0;
    srv_request_stop(&k.srv);
    for (int i = 0; i < 1000 && !done; i++) {
        for (int j = 0; j < k.nops; j++)
            if (k.ops[j].pending && k.ops[j].kind == OP_SEND)
                complete_send(find_sock(k.ops[j].fd), k.ops[j].len);
        done = pass() == 1;
    }
    cr_assert(done, "the worker never finished after the stop");
    bk_uring.destroy(&k.srv);
    srv_destroy(&k.srv);
    k.br = NULL; /* freed by destroy */
}

/* The invariants every test ends with. */
static void check(void)
{
    cr_assert_eq(k.violations, 0, "%d violation(s), the first: %s", k.violations, k.violation);
    for (int i = 0; i < k.nsocks; i++)
        cr_assert_eq(k.socks[i].closes, 1, "socket %d (%s) was closed %d times", i,
                     k.socks[i].listener ? "listener" : "accepted", k.socks[i].closes);
    for (int i = 0; i < k.nops; i++)
        cr_assert_not(k.ops[i].pending, "operation %d (kind %d) never completed", i, k.ops[i].kind);
    cr_assert_eq(k.exits, 1, "the ring was not exited once");
    cr_assert_eq(k.bufs_at_exit, k.nbufs, "provided buffers lost: %u of %u in the ring",
                 k.bufs_at_exit, k.nbufs);
    cr_assert_eq(stats_get(sockets_opened), (uint64_t)k.nsocks);
    cr_assert_eq(stats_get(sockets_opened), stats_get(sockets_closed), "opened %lu, closed %lu",
                 (unsigned long)stats_get(sockets_opened),
                 (unsigned long)stats_get(sockets_closed));
    cr_assert_eq(stats_get(ctx_alloc), stats_get(ctx_free), "contexts: %lu allocated, %lu freed",
                 (unsigned long)stats_get(ctx_alloc), (unsigned long)stats_get(ctx_free));
}

static void finish_and_check(void)
{
    finish();
    check();
}

TestSuite(uring, .init = setup, .fini = teardown, .timeout = 60);

Test(uring, start_arms_a_multishot_accept_and_fills_the_buffer_ring)
{
    start();
    pump();
    cr_assert_eq(count_pending(OP_ACCEPT), 1);
    cr_assert_eq(count_pending(OP_POLL), 1, "the wake eventfd is not polled");
    cr_assert_eq(buffers_in_ring(), k.nbufs);
    cr_assert_geq(k.nbufs, 2);
    finish_and_check();
}

/* A kernel that refuses io_uring to this process (kernel.io_uring_disabled, seccomp). */
static int refused_queue_init_params(unsigned entries, struct io_uring *ring,
                                     struct io_uring_params *p)
{
    (void)entries, (void)ring, (void)p;
    return -EPERM;
}

Test(uring, a_kernel_refusing_io_uring_fails_start_with_the_reason_and_closes_the_listener)
{
    char err[256] = "";
    uring_ops.queue_init_params = refused_queue_init_params;
    config_defaults(&k.cfg);
    snprintf(k.cfg.listen_host, sizeof(k.cfg.listen_host), "127.0.0.1");
    k.cfg.listen_port = 0;
    k.cfg.threads = 1;
    cr_assert_eq(srv_init(&k.srv, &k.cfg, &bk_uring), 0);
    cr_assert_neq(bk_uring.start(&k.srv, err, sizeof(err)), 0);
    cr_expect(strstr(err, strerror(EPERM)) && strstr(err, "io_uring not available here"),
              "the error should say what failed and why: \"%s\"", err);
    cr_expect_eq(k.exits, 0, "no ring was created, none may be exited");
    cr_expect_eq(stats_get(sockets_opened), 1, "the listener was opened");
    cr_expect_eq(stats_get(sockets_closed), 1, "and closed again");
    srv_destroy(&k.srv);
}

Test(uring, echo_of_a_message)
{
    start();
    struct fsock *fs = echoing("hello, ring");
    complete_send(fs, 11);
    pump();
    cr_assert_eq(fs->out_len, 11);
    cr_assert_eq(memcmp(fs->out, "hello, ring", 11), 0);
    cr_assert_eq(buffers_in_ring(), k.nbufs, "the buffer was not returned after the copy");
    cr_assert_not_null(pending_op(OP_RECV, fs->fd), "no receive after the echo");
    cr_assert_eq(fs->closes, 0);
    finish_and_check();
}

Test(uring, echo_is_sent_from_the_provided_buffer_it_arrived_in)
{
    start();
    struct fsock *fs = connected();
    const struct io_uring_buf *next = &k.br->bufs[k.buf_head & (k.nbufs - 1)];
    const char *arrived_in = (const char *)(uintptr_t)next->addr;
    peer_sends(fs, "zero-copy");
    pump();
    struct fop *send = pending_op(OP_SEND, fs->fd);
    cr_assert_not_null(send);
    cr_assert_eq(send->buf, arrived_in, "the echo was copied out of the provided buffer");
    cr_assert_eq(buffers_in_ring(), k.nbufs - 1, "the buffer is back before its bytes are sent");
    complete_send(fs, 4); /* short: the rest goes from the same buffer */
    pump();
    cr_assert_eq(pending_op(OP_SEND, fs->fd)->buf, arrived_in + 4);
    complete_send(fs, 5);
    pump();
    cr_assert_eq(buffers_in_ring(), k.nbufs, "the buffer did not go back once echoed");
    cr_assert_eq(memcmp(fs->out, "zero-copy", 9), 0);
    finish_and_check();
}

Test(uring, a_connection_closed_while_echoing_a_lent_buffer_returns_it)
{
    start();
    struct fsock *fs = connected();
    peer_sends(fs, "lent");
    pump();
    cr_assert_eq(buffers_in_ring(), k.nbufs - 1);
    complete(pending_op(OP_SEND, fs->fd), -ECONNRESET, 0);
    pump();
    cr_assert_eq(fs->closes, 1);
    cr_assert_eq(buffers_in_ring(), k.nbufs, "the freed connection kept its lent buffer");
    cr_assert_eq(stats_get(ctx_free), 1);
    finish_and_check();
}

Test(uring, a_ring_lends_at_most_a_quarter_of_its_buffers_so_receives_keep_going)
{
    start_with(BUFFER_SIZE, 8192); /* a pool of 16 buffers */
    unsigned n = k.nbufs;
    cr_assert_geq(n, 4);
    for (unsigned i = 0; i < n; i++) {
        struct fsock *fs = connected();
        peer_sends(fs, "stalled");
        pump();
        cr_assert_not_null(pending_op(OP_SEND, fs->fd), "connection %u was not served", i);
    }
    cr_assert_geq(buffers_in_ring(), n - n / 4, "%u of %u buffers left for receives",
                  buffers_in_ring(), n);
    cr_assert_eq(stats_get(recv_fallbacks), 0, "the ring ran dry");
    finish_and_check();
}

Test(uring, a_ring_that_ran_dry_copies_until_a_tick_period_passes_without)
{
    start();
    struct fsock *a = connected(), *b = connected();
    unsigned short saved = k.buf_head;
    k.buf_head = (unsigned short)(k.buf_head + buffers_in_ring()); /* the ring is empty */
    peer_sends(a, "dry");
    pass(); /* -ENOBUFS: a falls back to a plain receive; the period ends dry */
    cr_assert_eq(stats_get(recv_fallbacks), 1);
    k.buf_head = saved;
    peer_sends(b, "copied");
    pass(); /* the period after a dry one: b's bytes are copied, the buffer recycled */
    cr_assert_eq(buffers_in_ring(), k.nbufs, "a buffer was lent while the ring ran dry");
    pump();
    cr_assert_not_null(pending_op(OP_SEND, b->fd));
    complete_send(b, 6);
    pump();
    const struct io_uring_buf *next = &k.br->bufs[k.buf_head & (k.nbufs - 1)];
    const char *arrived_in = (const char *)(uintptr_t)next->addr;
    peer_sends(b, "lent");
    pump();
    cr_assert_eq(pending_op(OP_SEND, b->fd)->buf, arrived_in, "lending did not resume");
    complete_send(b, 4);
    pump();
    cr_assert_eq(memcmp(b->out, "copiedlent", 10), 0);
    finish_and_check();
}

Test(uring, short_send_posts_the_rest)
{
    start();
    struct fsock *fs = echoing("0123456789");
    complete_send(fs, 3);
    pump();
    struct fop *rest = pending_op(OP_SEND, fs->fd);
    cr_assert_not_null(rest, "the rest of a short send was not posted");
    cr_assert_eq(rest->len, 7);
    complete_send(fs, 7);
    pump();
    cr_assert_eq(fs->out_len, 10);
    cr_assert_eq(memcmp(fs->out, "0123456789", 10), 0);
    finish_and_check();
}

Test(uring, half_close_echoes_what_was_owed_then_closes)
{
    start();
    struct fsock *fs = echoing("bye");
    complete_send(fs, 3);
    pump();
    recv_eof_in_buffer(fs); /* the peer shut down its sending side */
    pump();
    cr_assert_eq(buffers_in_ring(), k.nbufs, "the buffer of the EOF was kept");
    cr_assert_eq(fs->out_len, 3);
    cr_assert_eq(fs->closes, 1, "EOF closes the connection");
    cr_assert_eq(stats_get(ctx_free), 1);
    finish_and_check();
}

Test(uring, reset_on_recv_closes_the_connection_once)
{
    start();
    struct fsock *fs = connected();
    recv_ends(fs, -ECONNRESET);
    pump();
    cr_assert_eq(fs->closes, 1);
    cr_assert_eq(stats_get(ctx_free), 1);
    finish_and_check();
}

Test(uring, reset_on_send_closes_the_connection_once)
{
    start();
    struct fsock *fs = echoing("lost");
    complete(pending_op(OP_SEND, fs->fd), -ECONNRESET, 0);
    pump();
    cr_assert_eq(fs->closes, 1);
    cr_assert_eq(fs->out_len, 0);
    finish_and_check();
}

Test(uring, recv_cancelled_is_a_close)
{
    start();
    struct fsock *fs = connected();
    recv_ends(fs, -ECANCELED);
    pump();
    cr_assert_eq(fs->closes, 1);
    finish_and_check();
}

/* Catalogue 8: every path that ends a buffer-select receive gives the buffer back. */
Test(uring, provided_buffer_returned_on_every_path)
{
    start();
    unsigned cycles = k.nbufs + 2;
    for (unsigned i = 0; i < cycles; i++) {
        struct fsock *fs = connected();
        peer_sends(fs, "x");
        pump();
        if (i % 2 == 0) {
            complete(pending_op(OP_SEND, fs->fd), -ECONNRESET, 0); /* closes on the send */
        } else {
            complete_send(fs, 1);
            pump();
            recv_ends(fs, -ECONNRESET);
        }
        pump();
        cr_assert_eq(fs->closes, 1, "cycle %u", i);
        cr_assert_eq(buffers_in_ring(), k.nbufs, "cycle %u: a buffer was kept", i);
    }
    struct fsock *fs = echoing("still echoes");
    complete_send(fs, 12);
    pump();
    cr_assert_eq(stats_get(recv_fallbacks), 0, "the ring ran dry: buffers leaked");
    finish_and_check();
}

/* Catalogue 8: a buffer is returned even when the receive it carries is reported as a
 * failure (a reset fault on completion) and when data comes to a closing connection. */
Test(uring, provided_buffer_returned_when_the_connection_closes_on_completion)
{
    start();
    struct fsock *fs = connected();
    srv_request_stop(&k.srv);
    pass(); /* the stop cancels the connection: shutdown ends the receive */
    cr_assert(fs->shut, "the stop did not shut the connection down");
    struct fop *recv = NULL;
    for (int i = k.nops - 1; i >= 0 && !recv; i--)
        if (k.ops[i].kind == OP_RECV && k.ops[i].fd == fs->fd)
            recv = &k.ops[i];
    cr_assert_not_null(recv);
    struct io_uring_cqe *cqe = NULL;
    for (unsigned i = k.cq_head; i != k.cq_tail; i++)
        if (k.cq[i % MAX_CQ].user_data == recv->user_data)
            cqe = &k.cq[i % MAX_CQ];
    cr_assert_not_null(cqe, "the shutdown did not end the receive");
    /* the kernel had put data in a buffer before the shutdown: the CQE carries it */
    struct io_uring_buf *b = &k.br->bufs[k.buf_head++ & (k.nbufs - 1)];
    cqe->res = 2;
    cqe->flags = IORING_CQE_F_BUFFER | ((unsigned)b->bid << IORING_CQE_BUFFER_SHIFT);
    cr_assert_eq(buffers_in_ring(), k.nbufs - 1);
    finish();
    cr_assert_eq(fs->closes, 1);
    check();
}

/* Catalogue 9: an empty buffer ring is not an error: receive into the connection's
 * own buffer, then back to provided buffers. */
Test(uring, enobufs_falls_back_to_a_plain_receive)
{
    start();
    struct fsock *fs = connected();
    unsigned short saved = k.buf_head;
    k.buf_head = (unsigned short)(k.buf_head + buffers_in_ring()); /* the ring is empty */
    peer_sends(fs, "dry");
    pump();
    cr_assert_eq(stats_get(recv_fallbacks), 1);
    struct fop *plain = pending_op(OP_RECV, fs->fd);
    cr_assert_not_null(plain, "no receive after -ENOBUFS");
    cr_assert_not(plain->buffer_select, "the fallback receive selects a buffer again");
    cr_assert_geq(plain->len, 3);
    k.buf_head = saved;
    peer_sends(fs, "dry");
    pump();
    complete_send(fs, 3);
    pump();
    cr_assert_eq(fs->out_len, 3);
    cr_assert_eq(memcmp(fs->out, "dry", 3), 0);
    struct fop *next = pending_op(OP_RECV, fs->fd);
    cr_assert_not_null(next);
    cr_assert(next->buffer_select, "provided buffers are not used again after the fallback");
    finish_and_check();
}

Test(uring, multishot_accept_is_rearmed_when_f_more_is_clear)
{
    start();
    struct fsock *fs = client_connects_more(0); /* the kernel ended the multishot */
    pump();
    cr_assert_not_null(pending_op(OP_RECV, fs->fd), "the last accepted socket was not served");
    cr_assert_eq(count_pending(OP_ACCEPT), 1, "the accept was not re-armed");
    connected();
    finish_and_check();
}

/* The accept's multishot ends on `res`; returns the back-off timer it armed, or NULL
 * when the accept was re-armed at once. */
static struct fop *accept_ends_with(int res)
{
    complete(pending_op(OP_ACCEPT, -1), res, 0);
    pump();
    struct fop *t = pending_op(OP_TIMEOUT, -1);
    cr_assert_eq(count_pending(OP_ACCEPT), t ? 0 : 1, "an accept armed with a back-off pending");
    return t;
}

/* srv_accept_retry_ms: the first consecutive failure re-arms at once, then the
 * back-off doubles from 1 ms to 1 s; a success starts the count again. */
Test(uring, accept_emfile_backs_off_then_rearms)
{
    start();
    cr_assert_null(accept_ends_with(-EMFILE), "the first failure must re-arm at once");
    long long want = 1000000LL;
    for (int failure = 2; failure <= 13; failure++) {
        struct fop *t = accept_ends_with(-EMFILE);
        cr_assert_not_null(t, "failure %d: re-armed at once: a persistent EMFILE spins", failure);
        cr_assert_eq(t->timeout_ns, want, "failure %d: %lld ns", failure, t->timeout_ns);
        complete(t, -ETIME, 0);
        pump();
        cr_assert_eq(count_pending(OP_ACCEPT), 1, "not re-armed after the back-off");
        want = want * 2 > 1000000000LL ? 1000000000LL : want * 2;
    }
    cr_assert_eq(want, 1000000000LL, "the walk did not reach the 1 s cap");
    cr_assert_eq(stats_get(accept_errors), 13);
    connected(); /* a success resets the streak */
    cr_assert_null(accept_ends_with(-EMFILE), "a failure after a success must re-arm at once");
    connected();
    finish_and_check();
}

Test(uring, accept_error_with_f_more_keeps_the_accept_armed)
{
    start();
    complete(pending_op(OP_ACCEPT, -1), -ECONNABORTED, IORING_CQE_F_MORE);
    pump();
    cr_assert_eq(stats_get(accept_errors), 1);
    cr_assert_eq(count_pending(OP_ACCEPT), 1);
    cr_assert_eq(count_pending(OP_TIMEOUT), 0);
    connected();
    finish_and_check();
}

/* A copy of the listener's descriptor (the admin thread's table holds one) must not keep
 * the port listening once the server stops accepting. */
Test(uring, the_listener_is_shut_down_before_it_is_closed)
{
    start();
    pump();
    struct fsock *listener = NULL;
    for (int i = 0; i < k.nsocks && !listener; i++)
        if (k.socks[i].listener)
            listener = &k.socks[i];
    cr_assert_not_null(listener, "no accept was armed on a listener");
    finish_and_check();
    cr_assert(listener->shut, "the listener was closed without a shutdown");
}

Test(uring, back_off_pending_at_stop_is_cancelled)
{
    start();
    cr_assert_null(accept_ends_with(-EMFILE));
    cr_assert_not_null(accept_ends_with(-EMFILE), "the second failure arms no back-off");
    finish_and_check();
    cr_assert_eq(count_pending(OP_ACCEPT), 0, "an accept was armed during the stop");
}

/* Catalogue 10: an accept that completes while the stop's cancellation is on its way
 * closes its socket; no connection is started. */
Test(uring, accept_completing_at_shutdown_closes_its_fd)
{
    start();
    pump();
    srv_request_stop(&k.srv);
    struct fop *acc = pending_op(OP_ACCEPT, -1);
    cr_assert_not_null(acc);
    struct fsock *late = new_sock(FD0 + k.nsocks);
    post_cqe(acc->user_data, late->fd, IORING_CQE_F_MORE); /* before the cancel is taken */
    finish();
    cr_assert_eq(late->closes, 1, "the fd accepted at shutdown leaked (compio #315)");
    cr_assert_eq(stats_get(ctx_alloc), 0, "a connection was started during shutdown");
    check();
}

Test(uring, full_sq_defers_the_receive_and_still_serves)
{
    start();
    struct fsock *fs = client_connects_more(1);
    k.sq_full = 2; /* get_sqe, then get_sqe after a submit, both find it full */
    pump();
    cr_assert_eq(fs->closes, 1, "a receive that could not be posted must end the connection");
    connected();
    finish_and_check();
}

/* ---- the active fault plan ---- */

/* Makes `text` the active fault plan. */
static void plan(const char *text)
{
    struct fault_plan p;
    char err[256] = "";
    cr_assert_eq(fault_plan_parse(text, &p, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(fault_enable(&p, NULL, err, sizeof(err)), 0, "%s", err);
}

static void faults_teardown(void)
{
    fault_disable();
    teardown();
}

TestSuite(uring_faults, .init = setup, .fini = faults_teardown, .timeout = 60);

/* A connreset fault on `site` fails at once (no SQE) or on completion (after the real
 * I/O, its buffer returned); seeds reach both. */
static void connreset_both_ways(const char *site)
{
    int at_once = 0, on_completion = 0;
    int on_send = strcmp(site, "send") == 0;
    for (int seed = 1; seed <= 64 && !(at_once && on_completion); seed++) {
        char text[64];
        snprintf(text, sizeof(text), "seed=%d,nth=1,sites=%s", seed, site);
        if (seed > 1)
            setup();
        plan(text);
        start();
        struct fsock *fs = client_connects_more(1);
        pump();
        if (on_send && !fs->closes) {
            peer_sends(fs, "reset");
            pump();
        }
        if (!fs->closes) {
            on_completion++;
            struct fop *op = pending_op(on_send ? OP_SEND : OP_RECV, fs->fd);
            cr_assert_not_null(op, "%s: neither failed at once nor posted", text);
            if (on_send)
                complete_send(fs, op->len);
            else
                peer_sends(fs, "data");
            pump();
        } else {
            at_once++;
            cr_assert_null(pending_op(on_send ? OP_SEND : OP_RECV, fs->fd), "%s", text);
        }
        cr_assert_eq(fault_count(FAULT_CONNRESET), 1, "%s", text);
        cr_assert_eq(fs->closes, 1, "%s", text);
        cr_assert_null(pending_op(OP_SEND, fs->fd), "%s: sent after the reset", text);
        cr_assert_eq(stats_get(ctx_free), 1, "%s", text);
        cr_assert_eq(buffers_in_ring(), k.nbufs, "%s: a buffer was kept (head %u)", text,
                     k.buf_head);
        finish_and_check();
        fault_disable();
    }
    cr_assert(at_once && on_completion, "64 seeds did not reach both ways of failing");
}

Test(uring_faults, connreset_on_recv_at_once_or_on_completion)
{
    connreset_both_ways("recv");
}

Test(uring_faults, connreset_on_send_at_once_or_on_completion)
{
    connreset_both_ways("send");
}

Test(uring_faults, partial_sends_still_echo_every_byte)
{
    static const char msg[] = "partial sends: every byte";
    plan("seed=5,partial_send=1,sites=send");
    start();
    struct fsock *fs = connected();
    peer_sends(fs, msg);
    pump();
    int sends = 0;
    for (struct fop *op; sends < 64 && (op = pending_op(OP_SEND, fs->fd)); sends++) {
        complete_send(fs, op->len);
        pump();
    }
    cr_assert_gt(sends, 1);
    cr_assert_eq(fault_count(FAULT_PARTIAL_SEND), (uint64_t)sends - 1, "all but the 1-byte tail");
    cr_assert_eq(fs->out_len, sizeof(msg) - 1);
    cr_assert_eq(memcmp(fs->out, msg, sizeof(msg) - 1), 0);
    finish_and_check();
}

Test(uring_faults, zero_read_is_a_peer_eof_that_never_reaches_the_ring)
{
    plan("seed=1,zero_read=1,sites=recv");
    start();
    struct fsock *fs = client_connects_more(1);
    pump();
    cr_assert_eq(fault_count(FAULT_ZERO_READ), 1);
    cr_assert_eq(count_pending(OP_RECV), 0);
    for (int i = 0; i < k.nops; i++)
        cr_assert_neq(k.ops[i].kind, OP_RECV, "the faulted receive reached the ring");
    cr_assert_eq(fs->closes, 1);
    cr_assert_eq(stats_get(ctx_free), 1);
    finish_and_check();
}

/* A fault on a fresh socket (accept or setsockopt) closes it and keeps the accept armed. */
static void fresh_socket_fault(const char *text, enum fault_kind kind)
{
    plan(text);
    start();
    struct fsock *fs = client_connects_more(1);
    pump();
    cr_assert_eq(fault_count(kind), 1, "%s", text);
    cr_assert_eq(fs->closes, 1, "%s: the faulted socket was not closed", text);
    cr_assert_eq(stats_get(accept_errors), 1, "%s", text);
    cr_assert_eq(stats_get(ctx_alloc), 0, "%s", text);
    cr_assert_eq(count_pending(OP_ACCEPT), 1, "%s: the accept is no longer armed", text);
    connected();
    finish_and_check();
}

Test(uring_faults, accept_fail_closes_the_socket_and_keeps_accepting)
{
    fresh_socket_fault("seed=1,nth=1,sites=accept", FAULT_ACCEPT_FAIL);
}

Test(uring_faults, setsockopt_fail_closes_the_socket_and_keeps_accepting)
{
    fresh_socket_fault("seed=1,nth=1,sites=setsockopt", FAULT_SETSOCKOPT_FAIL);
}

Test(uring, real_setsockopt_failure_closes_the_socket_and_keeps_accepting)
{
    start();
    k.setsockopt_fail = 1;
    struct fsock *fs = client_connects_more(1);
    pump();
    cr_assert_eq(fs->closes, 1);
    cr_assert_eq(stats_get(accept_errors), 1);
    cr_assert_eq(count_pending(OP_ACCEPT), 1);
    connected();
    finish_and_check();
}

Test(uring_faults, alloc_fail_refuses_the_socket_and_keeps_accepting)
{
    plan("seed=1,nth=1,sites=alloc");
    ep_alloc_fail = fault_alloc_fails;
    start();
    struct fsock *fs = client_connects_more(1);
    pump();
    cr_assert_eq(fault_count(FAULT_ALLOC_FAIL), 1);
    cr_assert_eq(fs->closes, 1, "the refused socket is not closed");
    cr_assert_eq(stats_get(refused), 1);
    cr_assert_eq(count_pending(OP_ACCEPT), 1);
    connected();
    finish_and_check();
}

Test(uring, stop_with_a_full_sq_still_ends_the_pending_receive_by_shutdown)
{
    start();
    struct fsock *fs = connected();
    srv_request_stop(&k.srv);
    k.sq_full = 1; /* the cancel finds no SQE: the shutdown alone must end the receive */
    pass();
    cr_assert(fs->shut, "the connection was not shut down");
    finish();
    cr_assert_eq(fs->closes, 1);
    check();
}

/* ---- the buffer budget: bytes a provided buffer carries that find no room are held ---- */

/* n bytes of a pattern that shows a lost or reordered chunk, NUL-terminated. */
static char *pattern(char *buf, size_t n, unsigned salt)
{
    for (size_t i = 0; i < n; i++)
        buf[i] = (char)('a' + (i * 7 + i / 26 + salt) % 26);
    buf[n] = 0;
    return buf;
}

/* Completes every send fs has posted, and the receives that serve it, until the echo
 * stops; returns the sends completed. */
static int drain_echoes(struct fsock *fs)
{
    int sends = 0;
    pump();
    for (struct fop *op; sends < 64 && (op = pending_op(OP_SEND, fs->fd)); sends++) {
        complete_send(fs, op->len);
        pump();
    }
    return sends;
}

/* Total bytes of the provided buffers the backend registered. */
static size_t provided_bytes(unsigned *count)
{
    size_t total = 0;
    *count = buffers_in_ring();
    for (unsigned i = 0; i < *count; i++)
        total += k.br->bufs[(k.buf_head + i) & (k.nbufs - 1)].len;
    return total;
}

/* A budget of 128 KiB grants the pool 16 KiB (two provided buffers of 8 KiB) and leaves
 * a --buffer-size of 96 KiB + 1 no room for a full buffer: connections get the reserve's
 * 4 KiB buffers, smaller than what one provided buffer carries. */
#define TIGHT_BUDGET (128u << 10)
#define NO_FULL_BUFFER (96u * 1024 + 1)

Test(uring, bytes_beyond_a_small_buffer_arrive_whole_and_in_order)
{
    static char first[8192 + 1], second[6000 + 1], want[sizeof(first) + sizeof(second)];
    start_with(NO_FULL_BUFFER, TIGHT_BUDGET);
    cr_assert_eq(k.br->bufs[0].len, 8192, "provided buffers of %u bytes", k.br->bufs[0].len);
    struct fsock *fs = connected();
    peer_sends(fs, pattern(first, sizeof(first) - 1, 1));
    struct fop *op;
    pump();
    cr_assert_not_null(op = pending_op(OP_SEND, fs->fd), "the connection was not served");
    cr_assert_eq(op->len, 4096, "not the small buffer's worth: %u", op->len);
    cr_assert_eq(buffers_in_ring(), k.nbufs - 1, "the rest of the buffer was not held");
    int sends = drain_echoes(fs);
    peer_sends(fs, pattern(second, sizeof(second) - 1, 2));
    sends += drain_echoes(fs);
    cr_assert_eq(sends, 4, "8192 + 6000 bytes through 4 KiB buffers: %d echoes", sends);
    memcpy(want, first, sizeof(first) - 1);
    memcpy(want + sizeof(first) - 1, second, sizeof(second) - 1);
    cr_assert_eq(fs->out_len, sizeof(first) + sizeof(second) - 2);
    cr_assert_eq(memcmp(fs->out, want, fs->out_len), 0, "the echo is not the stream in order");
    cr_assert_eq(buffers_in_ring(), k.nbufs, "a held buffer was not recycled once consumed");
    cr_assert_not_null(op = pending_op(OP_RECV, fs->fd));
    cr_assert(op->buffer_select, "a receive posted while bytes are held");
    finish_and_check();
}

/* A budget of 16 KiB: the pool gets 2 KiB (two provided buffers of 1 KiB), a first
 * connection's 12 KiB buffer leaves no room even for a small one. */
#define SPENT_BUDGET (16u << 10)
#define ONE_BUFFER (12u << 10)

/* Connection `a` holds the one buffer the budget has (its echo stalled), then `b`'s
 * bytes arrive and find none: b's receive ends in EP_ENOMEM and b is parked. */
static void budget_spent(struct fsock **a, struct fsock **b, const char *data)
{
    start_with(ONE_BUFFER, SPENT_BUDGET);
    *a = echoing("a");
    *b = connected();
    peer_sends(*b, data);
    pump();
    cr_assert_eq(atomic_load(&k.srv.parked), 1, "the connection without a buffer is not parked");
    cr_assert_not_null(k.srv.workers[0].park_head);
    cr_assert(k.srv.workers[0].park_head->parked);
    cr_assert_eq(stats_get(buffer_waits), 1);
    cr_assert_null(pending_op(OP_RECV, (*b)->fd), "a receive posted for a parked connection");
    cr_assert_null(pending_op(OP_SEND, (*b)->fd));
    cr_assert_eq((*b)->closes, 0, "the connection was closed instead of parked");
    cr_assert_eq(buffers_in_ring(), k.nbufs - 1, "the bytes without a buffer were not held");
}

Test(uring, no_buffer_parks_and_the_held_bytes_come_after_the_resume)
{
    struct fsock *a, *b;
    budget_spent(&a, &b, "waited for budget");
    complete_send(a, 1); /* a's buffer goes back to the budget: srv_tick resumes b */
    pump();
    cr_assert_eq(atomic_load(&k.srv.parked), 0, "the parked connection was not resumed");
    struct fop *op = pending_op(OP_SEND, b->fd);
    cr_assert_not_null(op, "the held bytes were not delivered after the resume");
    cr_assert_eq(op->len, 17);
    complete_send(b, 17);
    pump();
    cr_assert_eq(b->out_len, 17);
    cr_assert_eq(memcmp(b->out, "waited for budget", 17), 0);
    cr_assert_eq(buffers_in_ring(), k.nbufs);
    finish_and_check();
}

Test(uring, a_parked_connection_freed_at_stop_returns_its_held_buffer)
{
    struct fsock *a, *b;
    budget_spent(&a, &b, "never echoed");
    finish(); /* the stop's tick frees the parked connection */
    cr_assert_eq(b->closes, 1);
    check(); /* every provided buffer back in the ring at exit */
}

Test(uring, a_connection_reset_while_holding_returns_the_buffer)
{
    static char data[8192 + 1];
    start_with(NO_FULL_BUFFER, TIGHT_BUDGET);
    struct fsock *fs = connected();
    peer_sends(fs, pattern(data, sizeof(data) - 1, 3));
    pump();
    cr_assert_eq(buffers_in_ring(), k.nbufs - 1, "nothing was held");
    complete(pending_op(OP_SEND, fs->fd), -ECONNRESET, 0);
    pump();
    cr_assert_eq(fs->closes, 1);
    cr_assert_eq(buffers_in_ring(), k.nbufs, "the closed connection kept its held buffer");
    connected();
    finish_and_check();
}

/* The pool takes its grant from the budget, whatever --buffer-size asks: 64 MiB buffers
 * and the default budget give one ring at most an eighth of it, in buffers of 64 KiB. */
Test(uring, provided_buffers_stay_within_the_granted_reserve)
{
    start_with((size_t)64 << 20, 0);
    unsigned count;
    size_t total = provided_bytes(&count);
    size_t reserved = atomic_load(&k.srv.buffer_bytes);
    cr_assert_gt(count, 1);
    cr_assert_leq(total, reserved, "%zu bytes in the ring, %zu reserved", total, reserved);
    cr_assert_leq(reserved, k.cfg.max_buffer_bytes / 8, "the pool took %zu bytes", reserved);
    cr_assert_leq(k.br->bufs[0].len, 64u << 10, "provided buffers of %u bytes", k.br->bufs[0].len);
    struct fsock *fs = echoing("a big buffer echoes small messages");
    complete_send(fs, 34);
    pump();
    cr_assert_eq(fs->out_len, 34);
    finish_and_check();
}

Test(uring, provided_buffers_shrink_to_fit_a_small_grant)
{
    start_with(ONE_BUFFER, SPENT_BUDGET);
    unsigned count;
    size_t total = provided_bytes(&count);
    cr_assert_geq(count, 2);
    cr_assert_leq(total, SPENT_BUDGET / 8, "%zu bytes of provided buffers", total);
    cr_assert_eq(atomic_load(&k.srv.buffer_bytes), SPENT_BUDGET / 8);
    finish_and_check();
}

/* ---- the Nth-call walk (issue 11): every counted call failed in turn ---- */

#define WALK_CLIENTS 3
#define WALK_BYTES 90 /* per client: several receives of at most BUFFER_SIZE */
#define WALK_CHUNK 37 /* bytes a client writes at a time */
#define WALK_SHORT 5  /* bytes a send takes at most: every echo is a run of short sends */
#define WALK_STEPS 1000
#define WALK_LIMIT 600

/* One client of the walk: its socket and how much of its stream it has written. */
struct walk_client {
    struct fsock *fs;
    unsigned fed;
    int eof; /* it half-closed after writing everything */
};

static struct walk_client walkers[WALK_CLIENTS];

/* One step of every client: write the next chunk (or half-close once all is written)
 * into a pending receive, let a pending send take WALK_SHORT bytes. Returns what it did. */
static int walk_clients_step(void)
{
    int acted = 0;
    for (int i = 0; i < WALK_CLIENTS; i++) {
        struct walk_client *wc = &walkers[i];
        struct fsock *fs = wc->fs;
        if (!fs || !fs->open)
            continue;
        struct fop *op = pending_op(OP_SEND, fs->fd);
        if (op) {
            complete_send(fs, op->len < WALK_SHORT ? op->len : WALK_SHORT);
            acted++;
        }
        if ((op = pending_op(OP_RECV, fs->fd)) && !wc->eof) {
            char chunk[WALK_CHUNK];
            unsigned n = WALK_BYTES - wc->fed < WALK_CHUNK ? WALK_BYTES - wc->fed : WALK_CHUNK;
            n = n < op->len ? n : op->len;
            for (unsigned j = 0; j < n; j++)
                chunk[j] = nth_walk_byte(i, wc->fed + j);
            if (n)
                peer_sends_bytes(fs, chunk, n);
            else
                recv_ends(fs, 0);
            wc->fed += n;
            wc->eof = n == 0;
            acted++;
        }
    }
    return acted;
}

/* The scenario: clients connect one by one, each writes its stream in chunks, gets it
 * back through short sends and half-closes; then a graceful stop. */
static void walk_scenario(void)
{
    memset(walkers, 0, sizeof(walkers));
    start();
    int clients = 0, acted = 1;
    for (int step = 0; step < WALK_STEPS && (acted || clients < WALK_CLIENTS); step++) {
        acted = walk_clients_step();
        if (clients < WALK_CLIENTS && pending_op(OP_ACCEPT, -1)) {
            walkers[clients++].fs = client_connects_more(1);
            acted++;
        }
        pump();
    }
    cr_assert_not(acted, "the walk scenario did not settle in %d steps", WALK_STEPS);
    finish();
}

/* What every run must keep: the ring's invariants (check), and each client got back a
 * prefix of its stream, all of it when no fault was injected. */
static void walk_check(const char *what, int exact)
{
    check();
    for (int i = 0; i < WALK_CLIENTS; i++) {
        struct fsock *fs = walkers[i].fs;
        cr_assert_not_null(fs, "%s: client %d never connected", what, i);
        nth_walk_check_echo(what, i, (const char *)fs->out, fs->out_len, walkers[i].fed, WALK_BYTES,
                            exact);
    }
}

/* One walk run's start: a fresh server, the plan, the alloc site wired in. */
static void walk_begin(const char *text)
{
    setup();
    plan(text);
    ep_alloc_fail = fault_alloc_fails;
}

/* One walk run's end. */
static void walk_end(void)
{
    fault_disable();
}

static const struct nth_walk walk = {walk_begin, walk_scenario, walk_check, walk_end};

ParameterizedTestParameters(uring_faults, nth_call_walk_keeps_the_invariants)
{
    static int persist[] = {0, 1};
    return cr_make_param_array(int, persist, 2);
}

ParameterizedTest(int *persist, uring_faults, nth_call_walk_keeps_the_invariants)
{
    nth_walk_run(&walk, *persist, 20, WALK_LIMIT);
}
