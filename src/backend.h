/* backend.h - the completion-oriented I/O backend interface: a table of functions,
 * one implementation per platform (backend_iocp.c, backend_uring.c), in the manner
 * of redis ae.c and nginx's event modules.
 *
 * Contract:
 * - The backend performs, the core decides. The backend never posts an operation
 *   on a connection by itself, except its own accepts.
 * - Every recv/send the core posts completes exactly once, through conn_on_recv /
 *   conn_on_sent, called from a worker thread with no lock held - never from
 *   inside the posting call. A call that fails synchronously is queued as a
 *   failed completion (one error path per operation).
 * - Platform errors are translated once, by the backend's translate_error(), to
 *   EP_E* codes. Aborted / cancelled / net-name-deleted / reset are ordinary
 *   closes.
 * - Each worker thread calls srv_tick() every SRV_TICK_MS, and soon after wake(),
 *   and leaves when srv_worker_done() holds and its own accepts have all completed.
 * - A failed accept is re-posted after srv_accept_retry_ms(consecutive failures).
 * - When conn_recv_buffer() returns NULL, the receive completes with EP_ENOMEM and
 *   no data is taken from the socket (the core parks the connection or closes it).
 *   Pools a backend fills up front are sized by srv_pool_reserve().
 */
#ifndef EP_BACKEND_H
#define EP_BACKEND_H

#include <stddef.h>

#include "core/conn.h"
#include "core/server.h"

struct bk_ops {
    const char *name;
    size_t conn_size; /* bytes of backend state per connection (conn_bk) */

    /* Creates the port/rings, binds and listens on cfg->listen_host:port, fills
     * s->bound_addr, posts the initial accepts. 0, or EP_E* with a one-line
     * message in err. */
    int (*start)(struct server *s, char *err, size_t errlen);
    /* Runs worker `worker`'s loop on the calling thread (srv_run gives each its own)
     * until srv_worker_done holds and its own accept operations have completed. */
    void (*run_worker)(struct server *s, int worker);
    /* Posts a receive; data goes into conn_recv_buffer(c) once it is there. */
    void (*recv)(struct conn *c);
    /* Posts a send of buf[0..len); may complete short. */
    void (*send)(struct conn *c, const char *buf, size_t len);
    /* Makes the posted operations of c complete soon (closing the socket is
     * allowed). Called with c->lock held: must not call back into the core. */
    void (*cancel)(struct conn *c);
    /* Called once when c is freed: close the socket if still open. */
    void (*release)(struct conn *c);
    /* Takes back a buffer of the backend's that c held since conn_lend_buffer(), on
     * c's worker thread; NULL for a backend that never lends. */
    void (*buffer_return)(struct conn *c, void *buf);
    /* Stops accepting new connections (closes the listener, cancels accepts).
     * Called once per worker, from that worker's thread; must be idempotent. */
    void (*stop_accepting)(struct server *s, int worker);
    /* Wakes every worker so it ticks soon; async-signal-safe. */
    void (*wake)(struct server *s);
    /* Releases what start created, after run returned (or instead of it). */
    void (*destroy)(struct server *s);
};

/* The backend of this platform. */
extern const struct bk_ops bk_iocp;
extern const struct bk_ops bk_uring;

#endif
