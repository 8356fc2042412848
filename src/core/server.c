/* server.c - workers, the connection registry, ticks and graceful shutdown. */
#include "server.h"

#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "backend.h"
#include "ep.h"
#include "stats.h"

int srv_init(struct server *s, const struct ep_config *cfg, const struct bk_ops *bk)
{
    memset(s, 0, sizeof(*s));
    s->cfg = cfg;
    s->bk = bk;
    s->nworkers = cfg->threads > 0 ? cfg->threads : 1;
    s->workers = calloc((size_t)s->nworkers, sizeof(*s->workers));
    if (!s->workers)
        return EP_ENOMEM;
    for (int i = 0; i < s->nworkers; i++) {
        s->workers[i].srv = s;
        s->workers[i].index = i;
        ep_mutex_init(&s->workers[i].lock);
        ep_mutex_init(&s->workers[i].cache_lock);
    }
    return 0;
}

void srv_destroy(struct server *s)
{
    for (int i = 0; i < s->nworkers; i++) {
        struct worker *w = &s->workers[i];
        while (w->nbuf_cache > 0)
            free(w->buf_cache[--w->nbuf_cache]);
        ep_mutex_destroy(&w->cache_lock);
        ep_mutex_destroy(&w->lock);
    }
    free(s->workers);
    s->workers = NULL;
}

/* Counts a refused socket and says so to the caller (who closes it). */
static struct conn *refuse(void)
{
    stats_add(refused, 1);
    return NULL;
}

struct conn *srv_conn_new(struct server *s, int worker)
{
    if (srv_stopping(s))
        return refuse();
    long live = atomic_fetch_add(&s->live_conns, 1) + 1;
    if (s->cfg->max_conns && (unsigned long)live > s->cfg->max_conns) {
        atomic_fetch_sub(&s->live_conns, 1);
        return refuse();
    }
    uint64_t id = atomic_fetch_add(&s->next_conn_id, 1) + 1;
    struct conn *c = ep_alloc(sizeof(*c) + s->bk->conn_size, id, 0);
    if (!c) {
        atomic_fetch_sub(&s->live_conns, 1);
        return refuse();
    }
    stats_add(ctx_alloc, 1);
    stats_add(accepted, 1);
    struct worker *w = &s->workers[worker % s->nworkers];
    c->srv = s;
    c->worker = w;
    c->id = id;
    c->last_active_ms = ep_now_ms();
    ep_mutex_init(&c->lock);
    ep_mutex_lock(&w->lock);
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    w->nconns++;
    ep_mutex_unlock(&w->lock);
    return c;
}

void srv_conn_free(struct conn *c)
{
    struct worker *w = c->worker;
    ep_mutex_lock(&w->lock);
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    w->nconns--;
    ep_mutex_unlock(&w->lock);
    c->srv->bk->release(c);
    atomic_fetch_sub(&c->srv->live_conns, 1);
    ep_mutex_destroy(&c->lock);
    if (c->buf)
        srv_buffer_put(c, c->buf);
    free(c);
    stats_add(ctx_free, 1);
    stats_add(closed, 1);
}

void srv_request_stop(struct server *s)
{
    int expected = 0;
    if (atomic_compare_exchange_strong(&s->stop_requested, &expected, 1)) {
        atomic_store(&s->stop_deadline_ms, ep_now_ms() + (long long)s->cfg->drain_timeout_ms);
        if (s->bk->wake)
            s->bk->wake(s);
    }
}

int srv_stopping(const struct server *s)
{
    return atomic_load_explicit(&s->stop_requested, memory_order_relaxed) != 0;
}

/* Decides whether tick closes c now: idle too long, or shutting down and either
 * waiting for data (nothing owed) or past the drain deadline. Lock held. */
static int tick_should_close(const struct conn *c, int64_t now, int stopping, int64_t deadline,
                             int64_t idle_ms)
{
    if (c->closing)
        return 0;
    if (stopping && (c->len == 0 || now >= deadline))
        return 1;
    return idle_ms > 0 && now - c->last_active_ms >= idle_ms;
}

void srv_tick(struct server *s, int worker)
{
    struct worker *w = &s->workers[worker];
    int stopping = srv_stopping(s);
    int64_t idle_ms = (int64_t)s->cfg->idle_timeout_s * 1000;
    if (stopping && !w->stop_seen) {
        w->stop_seen = 1;
        s->bk->stop_accepting(s, worker);
    }
    if (!stopping && idle_ms == 0)
        return;
    int64_t now = ep_now_ms(), deadline = atomic_load(&s->stop_deadline_ms);
    ep_mutex_lock(&w->lock);
    for (struct conn *c = w->conns; c; c = c->next) {
        ep_mutex_lock(&c->lock);
        if (tick_should_close(c, now, stopping, deadline, idle_ms))
            conn_close_locked(c, stopping ? 0 : EP_ETIMEDOUT);
        ep_mutex_unlock(&c->lock);
    }
    ep_mutex_unlock(&w->lock);
}

int srv_worker_done(struct server *s, int worker)
{
    struct worker *w = &s->workers[worker];
    if (!srv_stopping(s) || !w->stop_seen)
        return 0;
    ep_mutex_lock(&w->lock);
    size_t n = w->nconns;
    ep_mutex_unlock(&w->lock);
    return n == 0;
}

void *srv_buffer_get(struct conn *c)
{
    struct worker *w = c->worker;
    void *buf = NULL;
    if (!ep_alloc_allowed(c->id, c->recv_ops))
        return NULL;
    ep_mutex_lock(&w->cache_lock);
    if (w->nbuf_cache > 0)
        buf = w->buf_cache[--w->nbuf_cache];
    ep_mutex_unlock(&w->cache_lock);
    return buf ? buf : malloc(c->srv->cfg->buffer_size);
}

void srv_buffer_put(struct conn *c, void *buf)
{
    struct worker *w = c->worker;
    ep_mutex_lock(&w->cache_lock);
    if (w->nbuf_cache < WORKER_BUF_CACHE) {
        w->buf_cache[w->nbuf_cache++] = buf;
        buf = NULL;
    }
    ep_mutex_unlock(&w->cache_lock);
    free(buf);
}
