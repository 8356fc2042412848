/* fault.h - seeded fault plans: parse, decide, log. Portable, no socket code.
 *
 * A decision is a pure function of (seed, site, connection ordinal, operation
 * ordinal) through a counter-based hash, so the same seed injects the same faults
 * whatever the thread interleaving. The exhaustive form (nth=N) fails the Nth
 * shimmed call instead, as SQLite's test harness does.
 */
#ifndef EP_FAULT_H
#define EP_FAULT_H

#include <stddef.h>
#include <stdint.h>

enum fault_site {
    FAULT_SITE_RECV,
    FAULT_SITE_SEND,
    FAULT_SITE_ACCEPT,
    FAULT_SITE_SETSOCKOPT, /* SO_UPDATE_ACCEPT_CONTEXT and friends */
    FAULT_SITE_ALLOC,      /* the core's context / buffer allocations */
    FAULT_SITES
};

#define FAULT_SITES_ALL ((1u << FAULT_SITES) - 1) /* fault_plan.sites: every site */

enum fault_kind {
    FAULT_NONE = -1,
    FAULT_CONNRESET = 0, /* recv/send fail with a reset */
    FAULT_PARTIAL_SEND,  /* send reports fewer bytes than asked (>= 1) */
    FAULT_ZERO_READ,     /* recv completes with 0 bytes: as if the peer closed */
    FAULT_ACCEPT_FAIL,   /* accept fails (reset, out of handles, out of buffers) */
    FAULT_SETSOCKOPT_FAIL,
    FAULT_ALLOC_FAIL,
    FAULT_KINDS
};

struct fault_plan {
    uint64_t seed;
    double prob[FAULT_KINDS]; /* per-kind probability in [0,1] */
    uint64_t nth;             /* 0 = off; else fail the nth shimmed call (1-based) */
    uint64_t count;           /* with nth: fail this many consecutive calls (default 1) */
    int persist;              /* with nth: fail every call from the nth on */
    unsigned sites;           /* bit mask of enum fault_site allowed; all by default */
    int64_t conn;             /* only this connection ordinal; -1 = all */
};

/* Parses "seed=42,connreset=0.02,partial_send=0.3,zero_read=0.01,accept_fail=0.05",
 * "nth=17", "nth=17,persist", "nth=3,count=5", with optional "sites=recv|send|accept"
 * and "conn=3". 0, or EP_EINVAL with a one-line message naming the bad token in err.
 *
 * Grammar: comma-separated tokens, no blanks, each key at most once.
 *   seed=U64            hash seed (decimal); 0 when absent
 *   <kind>=P            connreset, partial_send, zero_read, accept_fail, setsockopt_fail,
 *                       alloc_fail: probability, a decimal number in [0,1]; 0 when absent
 *   nth=N               N >= 1: fail the Nth counted call (see fault_decide)
 *   count=K             K >= 1, needs nth: fail calls N..N+K-1; 1 when absent
 *   persist             needs nth, not with count: fail every call from the Nth on
 *   sites=S|S...        recv, send, accept, setsockopt, alloc; all when absent
 *   conn=C              only connection ordinal C (accepts are connection 0); all when absent
 * Numbers are read in the C locale. `plan` is written only on success; err may be NULL. */
int fault_plan_parse(const char *text, struct fault_plan *plan, char *err, size_t errlen);

/* Installs `plan` as the process's active plan, replacing any other; log_path (may
 * be NULL) is truncated and receives one line per injected fault. 0, or EP_EIO with
 * err set and no plan active. Setup only: not concurrent with the other fault_* calls. */
int fault_enable(const struct fault_plan *plan, const char *log_path, char *err, size_t errlen);

/* Removes the active plan, closes the log and resets the counters. Teardown only,
 * like fault_enable. */
void fault_disable(void);

/* Nonzero when a plan is active (a cheap check for the hot path). */
int fault_active(void);

/* The fault to inject for this call at `site`, or FAULT_NONE. `conn` is the
 * connection ordinal (0 for accepts), `op` the per-connection, per-site
 * operation ordinal. *aux (aux may be NULL) receives, when a fault is returned, a
 * hash for the caller's sub-choices (how many bytes a partial send keeps, immediate
 * vs on-completion failure, which error). Thread-safe.
 *
 * Calls outside the plan's sites/conn filters get FAULT_NONE and are not counted.
 * Every other call is counted (fault_calls); with nth=N the counted calls N..N+K-1
 * (count=K; every one from N with persist) fail with the site's hard kind: connreset
 * (recv, send), accept_fail, setsockopt_fail, alloc_fail. Otherwise a probabilistic
 * kind of the site may fire: one uniform draw from the hash of (seed, site, conn, op)
 * is split into [0,p1) for the first kind and [p1,p1+p2) for the second (recv:
 * connreset then zero_read; send: connreset then partial_send; other sites: their
 * one kind), so the outcome is a pure function of those four values. */
enum fault_kind fault_decide(enum fault_site site, uint64_t conn, uint64_t op, uint64_t *aux);

/* Number of calls fault_decide has counted since fault_enable (the exhaustive walk's
 * horizon: a run with nth greater than this injects nothing). */
uint64_t fault_calls(void);

/* The core's allocator hook (ep_alloc_fail) for the "alloc" site: decides, and
 * records the fault when the allocation is to fail. */
int fault_alloc_fails(uint64_t conn, uint64_t op);

/* Counts an injected fault (per kind, then the counter hook) and logs it as
 * "fault site=recv conn=3 op=5 kind=connreset code=-1"; ignores FAULT_NONE and other
 * out-of-range kinds. Thread-safe: each line is written by one fwrite (stdio locks the
 * stream) and flushed. */
void fault_record(enum fault_site site, uint64_t conn, uint64_t op, enum fault_kind kind, int code);

/* Called once for every fault recorded, from the recording thread; NULL = none. The
 * fault module keeps no other counters than its own: main.c points this at the
 * server's stats, so fault/ depends on nothing of the core. Setup only. */
typedef void (*fault_counter_fn)(enum fault_kind kind);
void fault_set_counter(fault_counter_fn fn);

/* Writes " faults_<kind>=N" for every kind into buf (a stats_extra_fn): nothing when
 * no plan is active. Returns the length written. */
size_t fault_format_counts(char *buf, size_t len);

/* Number of faults injected of `kind` since fault_enable. */
uint64_t fault_count(enum fault_kind kind);

/* The plan-key / log name of a kind ("none" for FAULT_NONE) or site; "?" if out of range. */
const char *fault_kind_name(enum fault_kind kind);
const char *fault_site_name(enum fault_site site);

/* ---- fault actions: what a backend does to one operation ----
 * The plan's meaning is written here once; each backend only realises the action in
 * its own terms (a Winsock error, a fabricated completion, a CQE result). Every
 * function decides, records the fault when one fires, and returns FAULT_PASS for a
 * call the plan leaves alone. Errors are EP_E* codes, translated back by the backend. */
enum fault_effect {
    FAULT_PASS = 0,   /* perform the operation as asked */
    FAULT_FAIL_NOW,   /* do not perform it: the post itself fails with .error */
    FAULT_FAIL_LATER, /* the post succeeds, its completion reports .error */
    FAULT_EOF,        /* do not perform it: it completes with 0 bytes (the peer closed) */
    FAULT_SHORTEN,    /* perform it with .len bytes (1 <= len < asked) instead */
};

struct fault_action {
    enum fault_effect effect;
    int error;  /* EP_E* code with FAULT_FAIL_NOW / FAULT_FAIL_LATER, else 0 */
    size_t len; /* with FAULT_SHORTEN */
};

/* Receive `op` of connection `conn`: connreset (now or later) or zero_read (EOF). */
struct fault_action fault_recv_action(uint64_t conn, uint64_t op);

/* Send `op` of `len` bytes of connection `conn`: connreset (now or later) or
 * partial_send (shorten; a send of fewer than 2 bytes is left whole). */
struct fault_action fault_send_action(uint64_t conn, uint64_t op, size_t len);

/* Accept with global ordinal `op` (connection 0): accept_fail now or later, with a
 * reset, out of handles or out of buffers. A backend whose accept has already produced
 * a socket realises both as "that socket failed": close it, count an accept error. */
struct fault_action fault_accept_action(uint64_t op);

/* SO_UPDATE_ACCEPT_CONTEXT (or the backend's accepted-socket setup) of accept `op`:
 * setsockopt_fail, always FAULT_FAIL_NOW with EP_ENOBUFS. */
struct fault_action fault_setsockopt_action(uint64_t op);

#endif
