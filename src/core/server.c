/* server.c - workers, the connection registry, ticks and graceful shutdown. */
#include "server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "backend.h"
#include "core_int.h"
#include "ep.h"
#include "stats.h"

/* The small buffer a connection gets from the budget's reserve once full-size buffers
 * are spent, so that a few clients that never read cannot starve the others. */
#define SMALL_BUF 4096
#define RESERVE_SHARE 8 /* the reserve, and the workers' caches, are 1/8 of the budget */
#define RESUME_MAX 256  /* parked receives re-posted per tick, so a tick stays short */

/* Each worker's share of the budget's reserved eighth: what its buffer cache may hold,
 * and what its backend may fill a receive pool with (srv_pool_reserve). */
static size_t worker_share(const struct ep_config *cfg, int nworkers)
{
    return cfg->max_buffer_bytes / RESERVE_SHARE / (size_t)nworkers;
}

/* What full-size buffers may add up to: the budget less its reserved eighth. */
static size_t full_tier_limit(const struct ep_config *cfg)
{
    return cfg->max_buffer_bytes - cfg->max_buffer_bytes / RESERVE_SHARE;
}

/* Idle buffers worker caches may hold, each: bounded so the budget stays usable. */
static int cache_cap(const struct ep_config *cfg, int nworkers)
{
    size_t n = worker_share(cfg, nworkers) / cfg->buffer_size;
    return n > WORKER_BUF_CACHE ? WORKER_BUF_CACHE : (int)n;
}

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
        s->workers[i].cache_cap = cache_cap(cfg, s->nworkers);
        ep_mutex_init(&s->workers[i].lock);
        ep_mutex_init(&s->workers[i].cache_lock);
        ep_mutex_init(&s->workers[i].park_lock);
        conn_pool_init(&s->workers[i].pool, sizeof(struct conn) + bk->conn_size);
    }
    return 0;
}

void srv_destroy(struct server *s)
{
    for (int i = 0; i < s->nworkers; i++) {
        struct worker *w = &s->workers[i];
        while (w->nbuf_cache > 0)
            free(w->buf_cache[--w->nbuf_cache]);
        conn_pool_destroy(&w->pool);
        ep_mutex_destroy(&w->park_lock);
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
    struct worker *w = &s->workers[worker % s->nworkers];
    struct conn *c = NULL;
    if (ep_alloc_allowed(id, 0)) {
        ep_mutex_lock(&w->lock);
        c = conn_pool_take(&w->pool);
        if (c) {
            c->id = id;
            c->last_active_ms = (uint32_t)ep_now_ms();
            ep_mutex_init(&c->lock);
        }
        ep_mutex_unlock(&w->lock);
    }
    if (!c) {
        atomic_fetch_sub(&s->live_conns, 1);
        return refuse();
    }
    stats_add(ctx_alloc, 1);
    stats_add(accepted, 1);
    return c;
}

void srv_conn_free(struct conn *c)
{
    struct worker *w = conn_worker(c);
    struct server *s = w->srv;
    /* still in the pool, where the tick may look at it: under its lock */
    ep_mutex_lock(&c->lock);
    conn_buffer_release(c); /* before release: a lent buffer goes back to the backend */
    s->bk->release(c);
    ep_mutex_unlock(&c->lock);
    ep_mutex_lock(&w->lock); /* no one else can be locking c now: they walk under this */
    ep_mutex_destroy(&c->lock);
    conn_pool_put(&w->pool, c);
    ep_mutex_unlock(&w->lock);
    atomic_fetch_sub(&s->live_conns, 1);
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

void srv_request_stop_now(struct server *s)
{
    srv_request_stop(s);
    atomic_store(&s->stop_deadline_ms, ep_now_ms());
    if (s->bk->wake)
        s->bk->wake(s);
}

int srv_stopping(const struct server *s)
{
    return atomic_load_explicit(&s->stop_requested, memory_order_relaxed) != 0;
}

/* Decides whether tick closes c now: idle too long, or shutting down and either
 * waiting for data (nothing owed) or past the drain deadline. Lock held. c may have
 * been active after `now` was read (IOCP workers share one port: another worker's
 * completion touches c during this walk); such a "negative" quiet time, a wrapped
 * huge one as unsigned, is no idleness. */
static int tick_should_close(const struct conn *c, int64_t now, int stopping, int64_t deadline,
                             int64_t idle_ms)
{
    if (c->closing)
        return 0;
    if (stopping && (c->len == 0 || now >= deadline))
        return 1;
    uint32_t quiet = (uint32_t)now - c->last_active_ms;
    return idle_ms > 0 && quiet < UINT32_C(0x80000000) && quiet >= idle_ms;
}

/* Unlinks c from w's parked list. park_lock held. */
static void unlink_parked(struct worker *w, struct conn *c)
{
    if (c->park_prev)
        c->park_prev->park_next = c->park_next;
    else
        w->park_head = c->park_next;
    if (c->park_next)
        c->park_next->park_prev = c->park_prev;
    else
        w->park_tail = c->park_prev;
    c->park_prev = c->park_next = NULL;
    atomic_fetch_sub(&w->srv->parked, 1);
}

/* Takes c off its worker's parked list. */
static void unpark(struct worker *w, struct conn *c)
{
    ep_mutex_lock(&w->park_lock);
    unlink_parked(w, c);
    ep_mutex_unlock(&w->park_lock);
}

/* Takes the oldest parked connection off w's list; NULL when there is none. */
static struct conn *unpark_oldest(struct worker *w)
{
    ep_mutex_lock(&w->park_lock);
    struct conn *c = w->park_head;
    if (c)
        unlink_parked(w, c);
    ep_mutex_unlock(&w->park_lock);
    return c;
}

void srv_park(struct conn *c)
{
    struct worker *w = conn_worker(c);
    c->parked = 1;
    c->wants_buffer = 0;
    stats_add(buffer_waits, 1);
    atomic_fetch_add(&conn_srv(c)->parked, 1);
    ep_mutex_lock(&w->park_lock);
    c->park_next = NULL;
    c->park_prev = w->park_tail;
    if (w->park_tail)
        w->park_tail->park_next = c;
    else
        w->park_head = c;
    w->park_tail = c;
    ep_mutex_unlock(&w->park_lock);
}

/* Nonzero while a buffer of some size can be had on worker w. */
static int budget_left(struct server *s, struct worker *w)
{
    size_t small = s->cfg->buffer_size < SMALL_BUF ? s->cfg->buffer_size : SMALL_BUF;
    if (atomic_load(&s->buffer_bytes) + small <= s->cfg->max_buffer_bytes)
        return 1;
    ep_mutex_lock(&w->cache_lock);
    int cached = w->nbuf_cache > 0;
    ep_mutex_unlock(&w->cache_lock);
    return cached;
}

/* Re-posts the receives of parked connections, oldest first, while budget is free.
 * Only this worker's thread frees its parked connections (in srv_tick), so a
 * connection taken off the list is still there when it is resumed. */
static void resume_parked(struct server *s, struct worker *w)
{
    atomic_store(&s->resume_wake, 0);
    struct conn *c;
    for (int i = 0; i < RESUME_MAX && budget_left(s, w) && (c = unpark_oldest(w)); i++)
        conn_resume(c);
}

static void cache_trim(struct server *s, struct worker *w);

/* What one tick's walk over a worker's connections knows. */
struct tick_pass {
    struct worker *w;
    int64_t now, deadline, idle_ms;
    int stopping;
    struct conn *to_free; /* parked ones it closed, linked through park_next */
};

/* Closes c if tick_should_close says so; a parked one has nothing posted, so it is
 * freed after the walk. conn_pool_for_each callback, under the worker's lock. */
static void tick_one(struct conn *c, void *arg)
{
    struct tick_pass *t = arg;
    ep_mutex_lock(&c->lock);
    if (tick_should_close(c, t->now, t->stopping, t->deadline, t->idle_ms)) {
        conn_close_locked(c, t->stopping ? 0 : EP_ETIMEDOUT);
        if (c->parked) {
            unpark(t->w, c);
            c->parked = 0;
            if (conn_claim_free(c)) {
                c->park_next = t->to_free;
                t->to_free = c;
            }
        }
    }
    ep_mutex_unlock(&c->lock);
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
    cache_trim(s, w);
    if (!stopping && atomic_load(&s->parked) > 0)
        resume_parked(s, w);
    if (!stopping && idle_ms == 0)
        return;
    struct tick_pass t = {w,       ep_now_ms(), atomic_load(&s->stop_deadline_ms),
                          idle_ms, stopping,    NULL};
    ep_mutex_lock(&w->lock);
    conn_pool_for_each(&w->pool, tick_one, &t);
    ep_mutex_unlock(&w->lock);
    while (t.to_free) {
        struct conn *c = t.to_free;
        t.to_free = c->park_next;
        srv_conn_free(c);
    }
}

void srv_for_each_conn(struct server *s, int worker, void (*fn)(struct conn *, void *), void *arg)
{
    struct worker *w = &s->workers[worker];
    ep_mutex_lock(&w->lock);
    conn_pool_for_each(&w->pool, fn, arg);
    ep_mutex_unlock(&w->lock);
}

int srv_worker_done(struct server *s, int worker)
{
    struct worker *w = &s->workers[worker];
    if (!srv_stopping(s) || !w->stop_seen)
        return 0;
    ep_mutex_lock(&w->lock);
    size_t n = w->pool.live;
    ep_mutex_unlock(&w->lock);
    return n == 0;
}

/* Adds n to the budget's count if that keeps it within limit; 1 if it did. */
static int budget_take(struct server *s, size_t n, size_t limit)
{
    size_t cur = atomic_load(&s->buffer_bytes);
    do {
        if (cur + n > limit)
            return 0;
    } while (!atomic_compare_exchange_weak(&s->buffer_bytes, &cur, cur + n));
    return 1;
}

/* A full-size buffer from w's cache, or NULL. */
static void *cache_take(struct worker *w)
{
    void *buf = NULL;
    ep_mutex_lock(&w->cache_lock);
    if (w->nbuf_cache > 0)
        buf = w->buf_cache[--w->nbuf_cache];
    if (w->nbuf_cache < w->cache_low)
        w->cache_low = w->nbuf_cache;
    ep_mutex_unlock(&w->cache_lock);
    return buf;
}

void *srv_buffer_get(struct conn *c, size_t *cap)
{
    struct server *s = conn_srv(c);
    size_t size = s->cfg->buffer_size, max = s->cfg->max_buffer_bytes;
    size_t small = size < SMALL_BUF ? size : SMALL_BUF;
    c->wants_buffer = 0;
    if (!ep_alloc_allowed(c->id, c->recv_ops))
        return NULL;
    void *buf = cache_take(conn_worker(c));
    if (buf) {
        *cap = size;
        return buf;
    }
    if (budget_take(s, size, full_tier_limit(s->cfg)))
        *cap = size;
    else if (small < size && budget_take(s, small, max))
        *cap = small;
    else {
        c->wants_buffer = 1;
        return NULL;
    }
    buf = malloc(*cap);
    if (!buf)
        atomic_fetch_sub(&s->buffer_bytes, *cap);
    return buf;
}

/* Wakes the workers when connections wait for budget, once until one resumes them. */
static void wake_parked(struct server *s)
{
    if (atomic_load(&s->parked) > 0 && !atomic_exchange(&s->resume_wake, 1) && s->bk->wake)
        s->bk->wake(s);
}

/* Frees the buffers w's cache held all through the last tick period: no echo needed them. */
static void cache_trim(struct server *s, struct worker *w)
{
    ep_mutex_lock(&w->cache_lock);
    int idle = w->cache_low;
    for (int i = 0; i < idle; i++)
        free(w->buf_cache[i]);
    w->nbuf_cache -= idle;
    memmove(w->buf_cache, w->buf_cache + idle, (size_t)w->nbuf_cache * sizeof(w->buf_cache[0]));
    w->cache_low = w->nbuf_cache;
    ep_mutex_unlock(&w->cache_lock);
    if (idle > 0) {
        atomic_fetch_sub(&s->buffer_bytes, (size_t)idle * s->cfg->buffer_size);
        wake_parked(s);
    }
}

int srv_buffer_charge(struct conn *c)
{
    struct server *s = conn_srv(c);
    return budget_take(s, s->cfg->buffer_size, full_tier_limit(s->cfg));
}

void srv_buffer_uncharge(struct conn *c)
{
    struct server *s = conn_srv(c);
    atomic_fetch_sub(&s->buffer_bytes, s->cfg->buffer_size);
    wake_parked(s);
}

void srv_buffer_put(struct conn *c, void *buf, size_t cap)
{
    struct worker *w = conn_worker(c);
    struct server *s = w->srv;
    if (cap == s->cfg->buffer_size) {
        ep_mutex_lock(&w->cache_lock);
        if (w->nbuf_cache < w->cache_cap) {
            w->buf_cache[w->nbuf_cache++] = buf;
            buf = NULL;
        }
        ep_mutex_unlock(&w->cache_lock);
    }
    if (buf) {
        free(buf);
        atomic_fetch_sub(&s->buffer_bytes, cap);
    }
    wake_parked(s);
}

int64_t srv_accept_retry_ms(unsigned failures)
{
    if (failures <= 1)
        return 0;
    unsigned shift = failures - 2; /* the 2nd failure waits 1 ms */
    return shift >= 10 ? 1000 : (int64_t)1 << shift;
}

size_t srv_pool_reserve(struct server *s, size_t want)
{
    size_t share = worker_share(s->cfg, s->nworkers);
    size_t n = want < share ? want : share;
    atomic_fetch_add(&s->buffer_bytes, n);
    return n;
}

/* What one thread of srv_run runs. */
struct run_arg {
    struct server *s;
    int worker;
};

/* A worker thread's body. */
static void run_one(void *p)
{
    struct run_arg *a = p;
    a->s->bk->run_worker(a->s, a->worker);
}

void srv_run(struct server *s)
{
    int n = s->nworkers;
    struct run_arg *args = calloc((size_t)n, sizeof(*args));
    ep_thread *threads = calloc((size_t)n, sizeof(*threads));
    unsigned char *started = calloc((size_t)n, 1);
    for (int i = 1; i < n && args && threads && started; i++) {
        args[i].s = s;
        args[i].worker = i;
        started[i] = ep_thread_start(&threads[i], run_one, &args[i]) == 0;
        if (!started[i])
            fprintf(stderr, "echoport: cannot start worker %d: it runs after worker 0\n", i);
    }
    s->bk->run_worker(s, 0);
    for (int i = 1; i < n; i++) {
        if (started && started[i])
            ep_thread_join(threads[i]);
        else
            s->bk->run_worker(s, i); /* drains what it owns (nothing new: stopping) */
    }
    free(args);
    free(threads);
    free(started);
}
