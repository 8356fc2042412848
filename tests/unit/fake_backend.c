/* fake_backend.c - the scripted backend of fake_backend.h. */
#include "fake_backend.h"

#include <stdlib.h>
#include <string.h>

#include "core/ep.h"
#include "core/stats.h"
#include "fault.h"

/* The fake socket behind a connection. */
static struct fake_sock *sock_of(struct conn *c)
{
    return *(struct fake_sock **)conn_bk(c);
}

/* Realises a fault action on the operation being posted: a forced result (the
 * failure or EOF it completes with) or a shorter send. */
static void realise(struct fake_sock *s, struct fault_action a)
{
    if (a.effect == FAULT_SHORTEN) {
        s->send_len = a.len;
    } else if (a.effect != FAULT_PASS) {
        s->has_forced = 1;
        s->forced = a.effect == FAULT_EOF ? 0 : a.error;
    }
}

static void fake_recv(struct conn *c)
{
    struct fake_sock *s = sock_of(c);
    s->op = FAKE_OP_RECV;
    realise(s, fault_recv_action(s->id, c->recv_ops));
}

static void fake_send(struct conn *c, const char *buf, size_t len)
{
    struct fake_sock *s = sock_of(c);
    s->op = FAKE_OP_SEND;
    s->send_buf = buf;
    s->send_len = len;
    realise(s, fault_send_action(s->id, c->send_ops, len));
}

static void fake_cancel(struct conn *c)
{
    sock_of(c)->cancels++;
}

static void fake_release(struct conn *c)
{
    struct fake_sock *s = sock_of(c);
    s->closes++;
    s->conn = NULL;
    stats_add(sockets_closed, 1);
}

static void fake_stop_accepting(struct server *srv, int worker)
{
    (void)worker;
    container_of(srv, struct fake, srv)->stop_accepting_calls++;
}

static void fake_wake(struct server *srv)
{
    container_of(srv, struct fake, srv)->wakes++;
}

/* Counts the call: srv_run's threads are the test's subject, not a loop. */
static void fake_run_worker(struct server *srv, int worker)
{
    struct fake *f = container_of(srv, struct fake, srv);
    if (worker >= 0 && worker < (int)EP_ARRAY_LEN(f->worker_runs))
        atomic_fetch_add(&f->worker_runs[worker], 1);
}

const struct bk_ops bk_fake = {
    .name = "fake",
    .conn_size = sizeof(struct fake_sock *),
    .run_worker = fake_run_worker,
    .recv = fake_recv,
    .send = fake_send,
    .cancel = fake_cancel,
    .release = fake_release,
    .stop_accepting = fake_stop_accepting,
    .wake = fake_wake,
};

void fake_init(struct fake *f)
{
    memset(f, 0, sizeof(*f));
    config_defaults(&f->cfg);
    f->cfg.threads = 1;
}

void fake_start(struct fake *f)
{
    stats_reset();
    srv_init(&f->srv, &f->cfg, &bk_fake);
}

void fake_destroy(struct fake *f)
{
    for (int i = 0; i < f->nsocks; i++) {
        free(f->socks[i].in);
        free(f->socks[i].echoed);
    }
    srv_destroy(&f->srv);
}

struct fake_sock *fake_accept(struct fake *f)
{
    if (f->nsocks == FAKE_MAX_SOCKS)
        abort();
    struct fake_sock *s = &f->socks[f->nsocks++];
    uint64_t op = (uint64_t)f->accepts++;
    stats_add(sockets_opened, 1);
    if (fault_accept_action(op).effect != FAULT_PASS) {
        /* the accept failed: its socket is closed and the listener keeps going */
        stats_add(accept_errors, 1);
        s->closes++;
        stats_add(sockets_closed, 1);
        return s;
    }
    s->conn = srv_conn_new(&f->srv, 0);
    if (!s->conn) {
        s->closes++;
        stats_add(sockets_closed, 1);
        return s;
    }
    s->id = s->conn->id;
    *(struct fake_sock **)conn_bk(s->conn) = s;
    conn_start(s->conn);
    return s;
}

void fake_client_send(struct fake_sock *s, const void *data, size_t len)
{
    s->in = realloc(s->in, s->in_len + len + 1);
    memcpy(s->in + s->in_len, data, len);
    s->in_len += len;
}

void fake_client_shutdown(struct fake_sock *s)
{
    s->client_eof = 1;
}

/* Takes the posted operation off s and returns what it was. */
static enum fake_op take_op(struct fake_sock *s)
{
    enum fake_op op = s->op;
    s->op = FAKE_OP_NONE;
    return op;
}

/* Delivers result n to the completion callback of op. */
static void complete(struct conn *c, enum fake_op op, long n)
{
    if (op == FAKE_OP_RECV)
        conn_on_recv(c, n);
    else
        conn_on_sent(c, n);
}

void fake_fail(struct fake_sock *s, long err)
{
    complete(s->conn, take_op(s), err);
}

/* Delivers the client's pending bytes to a posted receive; 0 if none are there. */
static int step_recv(struct fake_sock *s)
{
    size_t avail = s->in_len - s->in_off, cap;
    if (avail == 0 && !s->client_eof)
        return 0;
    struct conn *c = s->conn;
    take_op(s);
    if (avail == 0) {
        conn_on_recv(c, 0);
        return 1;
    }
    unsigned char *buf = conn_recv_buffer(c, &cap);
    if (!buf) {
        conn_on_recv(c, EP_ENOMEM);
        return 1;
    }
    size_t n = avail < cap ? avail : cap;
    if (s->recv_chunk && n > s->recv_chunk)
        n = s->recv_chunk;
    memcpy(buf, s->in + s->in_off, n);
    s->in_off += n;
    conn_on_recv(c, (long)n);
    return 1;
}

/* Completes a posted send, honouring send_limit. */
static void step_send(struct fake_sock *s)
{
    size_t n = s->send_len;
    if (s->send_limit && n > s->send_limit)
        n = s->send_limit;
    s->echoed = realloc(s->echoed, s->echoed_len + n + 1);
    memcpy(s->echoed + s->echoed_len, s->send_buf, n);
    s->echoed_len += n;
    take_op(s);
    conn_on_sent(s->conn, (long)n);
}

int fake_step(struct fake_sock *s)
{
    if (!s->conn || s->op == FAKE_OP_NONE)
        return 0;
    if (s->has_forced || s->cancels) {
        long n = s->has_forced ? s->forced : EP_ECANCELED;
        s->has_forced = 0;
        complete(s->conn, take_op(s), n);
        return 1;
    }
    if (s->op == FAKE_OP_RECV)
        return step_recv(s);
    step_send(s);
    return 1;
}

int fake_run(struct fake *f, int max_steps)
{
    int steps = 0, progressed = 1;
    while (progressed && steps < max_steps) {
        progressed = 0;
        for (int i = 0; i < f->nsocks && steps < max_steps; i++)
            if (fake_step(&f->socks[i])) {
                progressed = 1;
                steps++;
            }
    }
    return steps;
}

int fake_alloc_fails(uint64_t conn, uint64_t op)
{
    (void)conn;
    (void)op;
    return 1;
}

void fake_tick(struct fake *f)
{
    for (int w = 0; w < f->srv.nworkers; w++)
        srv_tick(&f->srv, w);
}

const char *fake_check_cleanup(struct fake *f)
{
    for (int i = 0; i < f->nsocks; i++) {
        const struct fake_sock *s = &f->socks[i];
        if (s->closes != 1)
            return "a socket was not closed exactly once";
        if (s->conn)
            return "a connection context was not freed";
        if (s->op != FAKE_OP_NONE)
            return "an operation is still outstanding";
    }
    if (stats_get(sockets_opened) != stats_get(sockets_closed))
        return "sockets_opened != sockets_closed";
    if (stats_get(ctx_alloc) != stats_get(ctx_free))
        return "ctx_alloc != ctx_free";
    return NULL;
}
