/* server.h - the portable server: workers, connection registry, ticks, shutdown. */
#ifndef EP_SERVER_H
#define EP_SERVER_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "conn.h"
#include "platform.h"

struct bk_ops;

/* Idle buffers a worker keeps: a busy connection takes one per echo, and giving it
 * back to malloc each time made glibc trim and regrow the heap (page faults). */
#define WORKER_BUF_CACHE 64

struct worker {
    struct server *srv;
    int index;
    ep_mutex lock;        /* guards conns and nconns */
    struct conn *conns;   /* connections owned by this worker */
    size_t nconns;
    int stop_seen;        /* this worker has told the backend to stop accepting */
    ep_mutex cache_lock;  /* guards the buffer cache; never held while taking another lock */
    void *buf_cache[WORKER_BUF_CACHE]; /* idle data buffers, reused instead of malloc/free */
    int nbuf_cache;
};

struct server {
    const struct ep_config *cfg;
    const struct bk_ops *bk;
    void *bk_state;             /* the backend's own, set by bk->start */
    int nworkers;
    struct worker *workers;
    atomic_int stop_requested;
    atomic_llong stop_deadline_ms; /* when draining gives up and closes everything */
    atomic_uint_least64_t next_conn_id;
    atomic_long live_conns;
    char bound_addr[80];        /* "127.0.0.1:PORT" / "[::1]:PORT", set by bk->start */
};

/* Prepares s for `cfg` and backend `bk` (nothing is opened yet). 0 or EP_ENOMEM. */
int srv_init(struct server *s, const struct ep_config *cfg, const struct bk_ops *bk);

/* Frees what srv_init allocated; every connection must be gone. */
void srv_destroy(struct server *s);

/* A context for a freshly accepted socket on `worker`, or NULL when the core
 * refuses it (max-conns, stopping, no memory): the backend then closes the socket. */
struct conn *srv_conn_new(struct server *s, int worker);

/* Asks for a graceful shutdown; safe from a signal handler or any thread. */
void srv_request_stop(struct server *s);

/* Nonzero once a shutdown was requested. */
int srv_stopping(const struct server *s);

/* Housekeeping for `worker`: idle timeouts and shutdown. Each worker calls it at
 * least every 100 ms, from its own thread. Never calls back into the backend's
 * completion path. */
void srv_tick(struct server *s, int worker);

/* Nonzero when `worker` may exit: stopping and it owns no connection. The backend
 * also waits for its own accept operations before leaving. */
int srv_worker_done(struct server *s, int worker);

/* Removes and frees a connection whose last operation completed (internal to the core). */
void srv_conn_free(struct conn *c);

/* A data buffer of cfg->buffer_size for c, from its worker's cache or the
 * allocator (NULL when allocation fails or the alloc fault site says so). */
void *srv_buffer_get(struct conn *c);

/* Gives c's data buffer back to its worker's cache (or frees it when full). */
void srv_buffer_put(struct conn *c, void *buf);

#endif
