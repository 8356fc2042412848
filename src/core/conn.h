/* conn.h - one client connection: the echo state machine the backends drive.
 *
 * Life: a backend accepts a socket, asks srv_conn_new() for a context, stores its
 * socket in conn_bk(), then calls conn_start(). From then on the core posts exactly
 * one operation at a time (receive, then send until everything received was sent,
 * then receive again) and the backend reports each completion exactly once through
 * conn_on_recv() / conn_on_sent(). A connection is freed only when it is closing
 * and no posted operation is outstanding.
 */
#ifndef EP_CONN_H
#define EP_CONN_H

#include <stddef.h>
#include <stdint.h>

#include "platform.h"

struct server;
struct worker;

struct conn {
    /* Lives in a slot of its worker's pool (conn_pool.h), which finds it for the tick
     * and gives its worker from its address: no owner pointer, no list links. */
    ep_mutex lock;                      /* guards everything below */
    uint64_t id;                        /* 1-based accept ordinal; fault decisions key on it */
    char *buf;                          /* allocated on the first data, not at accept */
    struct conn *park_prev, *park_next; /* in the parked list, under worker->park_lock */
    /* Sizes, counters and flags are narrow: this struct is most of an idle connection's
     * memory. */
    uint32_t cap;            /* bytes of buf: full or small (the budget's reserve) */
    uint32_t len;            /* bytes received and not yet echoed */
    uint32_t off;            /* bytes of buf already sent */
    uint32_t last_active_ms; /* ep_now_ms() of the last data, mod 2^32: compared as a difference */
    uint32_t recv_ops, send_ops; /* operations posted so far, per direction, mod 2^32 */
    unsigned char lent;          /* buf is the backend's (conn_lend_buffer), not the budget's */
    unsigned char pending;       /* posted operations not yet completed */
    unsigned char closing;       /* conn_close() was called: post nothing more */
    unsigned char freed;         /* the free was claimed (by the one who saw pending reach 0) */
    unsigned char wants_buffer;  /* the last conn_recv_buffer() found the budget spent */
    unsigned char parked;        /* on worker->park list: nothing posted, waiting for budget */
    signed char close_reason;    /* 0 = graceful (peer EOF, shutdown, idle) or an EP_E* code */
    /* backend state, bk_ops.conn_size bytes: pointers, SOCKETs, an OVERLAPPED */
    _Alignas(void *) _Alignas(uint64_t) unsigned char bk[];
};

/* The backend's per-connection state. */
static inline void *conn_bk(struct conn *c)
{
    return c->bk;
}

/* The connection owning backend state `bk`. */
static inline struct conn *conn_from_bk(void *bk)
{
    return (struct conn *)(void *)((unsigned char *)bk - offsetof(struct conn, bk));
}

/* Posts the first receive of a connection returned by srv_conn_new(). */
void conn_start(struct conn *c);

/* Writable space for the next receive (taken on first use), NULL when there is none:
 * the backend then completes the receive with EP_ENOMEM without taking any data
 * from the socket, and the core decides - it parks the connection when the buffer
 * budget (--max-buffer-bytes) is spent and posts the receive again once budget is
 * free, or closes it when allocation failed. Only valid while a receive is posted. */
void *conn_recv_buffer(struct conn *c, size_t *cap);

/* Gives back the buffer conn_recv_buffer() returned, for a posted receive the backend
 * re-posts without it (an active connection gone quiet, back to zero-byte receives):
 * it took no data, so nothing is lost. Only while that receive is posted. */
void conn_recv_buffer_return(struct conn *c);

/* For a receive completing into a buffer of the backend's own pool (buf, cap bytes):
 * 1 when c takes the buffer as its own, so the bytes are echoed from it without a
 * copy, and conn_on_recv() follows; 0 when c already has a buffer or the budget has
 * no room for the full-size one it stands in for (a lent buffer counts as one), and
 * the backend copies into conn_recv_buffer() instead. c gives a lent buffer back
 * through bk_ops.buffer_return once it is echoed or c is freed. Worker thread only. */
int conn_lend_buffer(struct conn *c, void *buf, size_t cap);

/* Completion of a receive: n > 0 bytes were placed in conn_recv_buffer(),
 * 0 = the peer closed its sending side, < 0 = an EP_E* error. */
void conn_on_recv(struct conn *c, long n);

/* Completion of a send: 0 < n <= requested bytes were sent, or n < 0 = EP_E* error. */
void conn_on_sent(struct conn *c, long n);

/* Starts closing (from the core's own decisions and ticks): cancels what is
 * posted; the context is freed when the last completion arrives. Lock held. */
void conn_close_locked(struct conn *c, int reason);

#endif
