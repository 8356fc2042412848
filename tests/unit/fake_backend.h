/* fake_backend.h - a scripted backend for unit tests: operations the core posts
 * are recorded, and the test (or fake_run) completes them one by one, playing the
 * client: bytes it sent, its half-close, resets. Faults of the active plan are
 * realised at post time, as the real backends do. */
#ifndef EP_FAKE_BACKEND_H
#define EP_FAKE_BACKEND_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "core/config.h"
#include "core/server.h"

#define FAKE_MAX_SOCKS 64

enum fake_op { FAKE_OP_NONE, FAKE_OP_RECV, FAKE_OP_SEND };

struct fake_sock {
    struct conn *conn; /* NULL once the core freed the context */
    uint64_t id;
    int closes; /* times the socket was closed: must end at exactly 1 */
    int cancels;
    enum fake_op op; /* the operation posted, if any */
    const char *send_buf;
    size_t send_len;
    int has_forced; /* a fault decided this op's result at post time */
    long forced;
    unsigned char *in; /* what the client sent */
    size_t in_len, in_off;
    int client_eof;        /* the client shut down its sending side */
    unsigned char *echoed; /* what the server sent back */
    size_t echoed_len;
    size_t recv_chunk; /* bytes delivered per receive, 0 = as much as fits */
    size_t send_limit; /* a send completes with at most this many bytes, 0 = all */
};

struct fake {
    struct ep_config cfg;
    struct server srv;
    struct fake_sock socks[FAKE_MAX_SOCKS];
    int nsocks;
    int accepts; /* accept ordinal: fault decisions key on it */
    int stop_accepting_calls;
    int wakes;
    atomic_int worker_runs[8]; /* bk run_worker calls per worker index */
};

extern const struct bk_ops bk_fake;

/* Sets up f with default config adjusted by the caller afterwards (call fake_start then). */
void fake_init(struct fake *f);
/* Creates the server over the fake backend; stats are reset. */
void fake_start(struct fake *f);
/* Releases the fake's memory (the server must have no connection left). */
void fake_destroy(struct fake *f);

/* A client connects: returns its socket record (conn NULL if the core refused it). */
struct fake_sock *fake_accept(struct fake *f);
/* The client sends bytes / shuts down its side. */
void fake_client_send(struct fake_sock *s, const void *data, size_t len);
void fake_client_shutdown(struct fake_sock *s);

/* Completes the posted operation of s if it can make progress; 1 if it did. */
int fake_step(struct fake_sock *s);
/* Completes the posted operation of s with an error code. */
void fake_fail(struct fake_sock *s, long err);
/* Steps every socket round-robin until nothing progresses or max_steps; returns steps. */
int fake_run(struct fake *f, int max_steps);

/* An allocator hook (ep_alloc_fail) that fails every allocation. */
int fake_alloc_fails(uint64_t conn, uint64_t op);

/* Runs every worker's tick (as the backend's loop would). */
void fake_tick(struct fake *f);

/* Checks the cleanup invariants for every socket: closed exactly once, context
 * freed, nothing posted; counters opened == closed, ctx_alloc == ctx_free.
 * Returns NULL when they hold, else a description. */
const char *fake_check_cleanup(struct fake *f);

#endif
