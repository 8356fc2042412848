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
 * be NULL) is truncated and receives one line per injected fault; the stats line gains
 * per-kind counts. 0, or EP_EIO with err set and no plan active. Setup only: not
 * concurrent with the other fault_* calls. */
int fault_enable(const struct fault_plan *plan, const char *log_path, char *err, size_t errlen);

/* Removes the active plan, closes the log, resets the counters and drops the per-kind
 * counts from the stats line. Teardown only, like fault_enable. */
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

/* Counts an injected fault (ep_stats.faults and per kind) and logs it as
 * "fault site=recv conn=3 op=5 kind=connreset code=10054"; ignores FAULT_NONE and
 * other out-of-range kinds. Thread-safe; each line is written and flushed whole. */
void fault_record(enum fault_site site, uint64_t conn, uint64_t op, enum fault_kind kind, int code);

/* Number of faults injected of `kind` since fault_enable. */
uint64_t fault_count(enum fault_kind kind);

/* The plan-key / log name of a kind ("none" for FAULT_NONE) or site; "?" if out of range. */
const char *fault_kind_name(enum fault_kind kind);
const char *fault_site_name(enum fault_site site);

#endif
