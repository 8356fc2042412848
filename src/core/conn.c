/* conn.c - the echo state machine of one connection.
 *
 * One operation is posted at a time: receive, then send until everything received
 * was sent, then receive again. That bounds memory to one buffer per connection and
 * makes short sends and half-close fall out naturally. */
#include "conn.h"

#include "alloc.h"
#include "backend.h"
#include "core_int.h"
#include "ep.h"
#include "server.h"
#include "stats.h"

ep_alloc_fail_fn ep_alloc_fail;

int ep_alloc_allowed(uint64_t conn, uint64_t op)
{
    return !ep_alloc_fail || !ep_alloc_fail(conn, op);
}

/* Posts a receive. Lock held. */
static void post_recv(struct conn *c)
{
    c->pending++;
    c->recv_ops++;
    conn_srv(c)->bk->recv(c);
}

/* Posts a send of what is still owed. Lock held. */
static void post_send(struct conn *c)
{
    c->pending++;
    c->send_ops++;
    conn_srv(c)->bk->send(c, c->buf + c->off, c->len - c->off);
}

void conn_close_locked(struct conn *c, int reason)
{
    if (c->closing)
        return;
    c->closing = 1;
    c->close_reason = (signed char)reason;
    if (c->pending > 0)
        conn_srv(c)->bk->cancel(c);
}

int conn_claim_free(struct conn *c)
{
    if (!c->closing || c->pending > 0 || c->freed)
        return 0;
    c->freed = 1;
    return 1;
}

/* Drops the lock and frees the connection if this completion was its last. */
static void unlock_and_maybe_free(struct conn *c)
{
    int free_now = conn_claim_free(c);
    ep_mutex_unlock(&c->lock);
    if (free_now)
        srv_conn_free(c);
}

/* Notes activity for the idle timeout; the clock is only read when one is set. */
static void touch(struct conn *c)
{
    if (conn_srv(c)->cfg->idle_timeout_s)
        c->last_active_ms = (uint32_t)ep_now_ms();
}

void conn_start(struct conn *c)
{
    ep_mutex_lock(&c->lock);
    if (c->closing || srv_stopping(conn_srv(c)))
        conn_close_locked(c, 0); /* closed by a tick before it started */
    else
        post_recv(c);
    unlock_and_maybe_free(c);
}

void *conn_recv_buffer(struct conn *c, size_t *cap)
{
    if (!c->buf) {
        size_t got = 0;
        c->buf = srv_buffer_get(c, &got);
        c->cap = (uint32_t)got; /* --buffer-size is at most 64 MiB */
    }
    *cap = c->buf ? c->cap : 0;
    return c->buf;
}

void conn_buffer_release(struct conn *c)
{
    if (!c->buf)
        return;
    if (c->lent) {
        conn_srv(c)->bk->buffer_return(c, c->buf);
        srv_buffer_uncharge(c);
    } else {
        srv_buffer_put(c, c->buf, c->cap);
    }
    c->buf = NULL;
    c->lent = 0;
}

/* Gives c's data buffer back: nothing in it is owed any more. */
static void drop_buffer(struct conn *c)
{
    conn_buffer_release(c);
    c->len = c->off = 0;
}

int conn_lend_buffer(struct conn *c, void *buf, size_t cap)
{
    ep_mutex_lock(&c->lock);
    int take = !c->buf && !c->closing && srv_buffer_charge(c);
    if (take) {
        c->buf = buf;
        c->cap = (uint32_t)cap;
        c->lent = 1;
    }
    ep_mutex_unlock(&c->lock);
    return take;
}

void conn_recv_buffer_return(struct conn *c)
{
    if (c->buf && c->len == 0)
        drop_buffer(c);
}

void conn_resume(struct conn *c)
{
    ep_mutex_lock(&c->lock);
    c->parked = 0;
    post_recv(c);
    ep_mutex_unlock(&c->lock);
}

void conn_on_recv(struct conn *c, long n)
{
    ep_mutex_lock(&c->lock);
    c->pending--;
    touch(c);
    if (c->closing) {
        /* a late completion after our own close: nothing more to do */
    } else if (n == EP_ENOMEM && c->wants_buffer) {
        srv_park(c); /* backpressure: the data stays in the socket until budget frees */
    } else if (n < 0) {
        conn_close_locked(c, (int)n);
    } else if (n == 0) {
        conn_close_locked(c, 0); /* peer's half-close: nothing is owed, we only read when idle */
    } else {
        stats_add(bytes_in, (uint64_t)n);
        c->len = (uint32_t)n;
        c->off = 0;
        post_send(c);
    }
    unlock_and_maybe_free(c);
}

void conn_on_sent(struct conn *c, long n)
{
    ep_mutex_lock(&c->lock);
    c->pending--;
    touch(c);
    if (c->closing) {
        /* a late completion after our own close */
    } else if (n <= 0) {
        conn_close_locked(c, n < 0 ? (int)n : EP_EIO);
    } else {
        stats_add(bytes_out, (uint64_t)n);
        c->off += (uint32_t)n;
        if (c->off < c->len)
            post_send(c); /* short send: finish it */
        else if (srv_stopping(conn_srv(c)))
            conn_close_locked(c, 0); /* drained: the echo in flight is complete */
        else {
            drop_buffer(c); /* everything echoed: an idle connection holds no buffer */
            post_recv(c);
        }
    }
    unlock_and_maybe_free(c);
}
