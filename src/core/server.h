/* server.h - the portable server: workers, connection registry, ticks, shutdown,
 * the buffer budget and the accept retry policy every backend follows. */
#ifndef EP_SERVER_H
#define EP_SERVER_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "conn.h"
#include "conn_pool.h"
#include "ep.h"
#include "platform.h"

struct bk_ops;

/* How often each worker calls srv_tick (ms); the core's timers are this coarse. */
#define SRV_TICK_MS 50

/* Most idle buffers a worker keeps: a busy connection takes one per echo, and giving it
 * back to malloc each time made glibc trim and regrow the heap (page faults; at 500
 * connections a batch of receives holds a few hundred at once). Buffers that sat in the
 * cache through a whole tick period are freed on the tick: a burst's go back once over. */
#define WORKER_BUF_CACHE 512

struct worker {
    struct server *srv;
    int index;
    ep_mutex lock;         /* guards the pool */
    struct conn_pool pool; /* connections owned by this worker: pool.live of them */
    int stop_seen;         /* this worker has told the backend to stop accepting */
    ep_mutex cache_lock;   /* guards the buffer cache; a leaf: no lock is taken under it */
    void *buf_cache[WORKER_BUF_CACHE]; /* idle full-size buffers, reused instead of malloc */
    int nbuf_cache, cache_cap;
    int cache_low; /* fewest buffers in the cache since the last tick: [0, cache_low) sat idle */
    ep_mutex park_lock;                 /* guards the parked list; a leaf, like cache_lock */
    struct conn *park_head, *park_tail; /* waiting for buffer budget, oldest first */
};

/* The worker owning c: the one whose pool holds it. */
static inline struct worker *conn_worker(const struct conn *c)
{
    return container_of(conn_pool_of(c), struct worker, pool);
}

/* The server c belongs to (through its worker: no pointer in each connection). */
static inline struct server *conn_srv(const struct conn *c)
{
    return conn_worker(c)->srv;
}

struct server {
    const struct ep_config *cfg;
    const struct bk_ops *bk;
    void *bk_state; /* the backend's own, set by bk->start */
    int nworkers;
    struct worker *workers;
    atomic_int stop_requested;
    atomic_llong stop_deadline_ms; /* when draining gives up and closes everything */
    atomic_uint_least64_t next_conn_id;
    atomic_long live_conns;
    atomic_size_t buffer_bytes; /* data buffers allocated (held or cached) */
    atomic_long parked;         /* connections waiting for buffer budget */
    atomic_int resume_wake;     /* a wake for the parked connections is on its way */
    char bound_addr[80];        /* "127.0.0.1:PORT" / "[::1]:PORT", set by bk->start */
};

/* Prepares s for `cfg` and backend `bk` (nothing is opened yet). 0 or EP_ENOMEM. */
int srv_init(struct server *s, const struct ep_config *cfg, const struct bk_ops *bk);

/* Frees what srv_init allocated; every connection must be gone. */
void srv_destroy(struct server *s);

/* Runs bk->run_worker for every worker: worker 0 on the calling thread, the others on
 * threads of their own; one that cannot start runs on the calling thread after worker 0
 * returned, so it still drains and leaves. Returns when all have returned. */
void srv_run(struct server *s);

/* A context for a freshly accepted socket on `worker`, or NULL when the core
 * refuses it (max-conns, stopping, no memory): the backend then closes the socket. */
struct conn *srv_conn_new(struct server *s, int worker);

/* Asks for a graceful shutdown; safe from a signal handler or any thread. */
void srv_request_stop(struct server *s);

/* Asks for a shutdown that waits for no echo in flight: the drain ends at the next
 * tick (a second Ctrl-C). Safe from a signal handler or any thread. */
void srv_request_stop_now(struct server *s);

/* Nonzero once a shutdown was requested. */
int srv_stopping(const struct server *s);

/* Housekeeping for `worker`, from its own thread, at least every SRV_TICK_MS and soon
 * after bk->wake: idle timeouts, shutdown, and re-posting the receives of connections
 * parked for buffer budget. Never calls back into the backend's completion path. */
void srv_tick(struct server *s, int worker);

/* Calls fn(c, arg) for each connection `worker` owns, with that worker's lock held (so
 * none is freed meanwhile; fn may take c->lock, the order srv_tick uses). fn must not
 * call into the core (no conn_on_*, no close) nor take a worker's lock. For a backend's
 * periodic bookkeeping on its tick: the core keeps no other iterator. */
void srv_for_each_conn(struct server *s, int worker, void (*fn)(struct conn *, void *), void *arg);

/* Nonzero when `worker` may exit: stopping and it owns no connection. The backend
 * also waits for its own accept operations before leaving. */
int srv_worker_done(struct server *s, int worker);

/* How long a backend waits before re-posting an accept after `failures` consecutive
 * failures (1 = the first): 0 for the first, so one transient failure never stops the
 * listener (tinymux #1830), then 1 ms doubling to 1 s, so a persistent one (out of
 * descriptors) does not spin. */
int64_t srv_accept_retry_ms(unsigned failures);

/* Takes up to `want` bytes of the buffer budget for a receive pool a backend's worker
 * fills at start (at most an eighth of --max-buffer-bytes, shared by the workers), so
 * no --buffer-size and --threads reserve more than the budget; returns the bytes
 * granted, which stay counted in the budget for the server's life. */
size_t srv_pool_reserve(struct server *s, size_t want);

#endif
