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
 * and "conn=3". 0, or EP_EINVAL with a one-line message naming the bad token in err. */
int fault_plan_parse(const char *text, struct fault_plan *plan, char *err, size_t errlen);

/* Installs `plan` as the process's active plan; log_path (may be NULL) receives one
 * line per injected fault. 0 or EP_EIO with err set. */
int fault_enable(const struct fault_plan *plan, const char *log_path, char *err, size_t errlen);

/* Removes the active plan, closes the log, resets the counters. */
void fault_disable(void);

/* Nonzero when a plan is active (a cheap check for the hot path). */
int fault_active(void);

/* The fault to inject for this call at `site`, or FAULT_NONE. `conn` is the
 * connection ordinal (0 for accepts), `op` the per-connection, per-site
 * operation ordinal. *aux receives a hash for the caller's sub-choices (how many
 * bytes a partial send keeps, immediate vs on-completion failure, which error). */
enum fault_kind fault_decide(enum fault_site site, uint64_t conn, uint64_t op, uint64_t *aux);

/* Counts an injected fault (ep_stats.faults and per kind) and logs it as
 * "fault site=recv conn=3 op=5 kind=connreset code=10054". */
void fault_record(enum fault_site site, uint64_t conn, uint64_t op, enum fault_kind kind,
                  int code);

/* Number of faults injected of `kind` since fault_enable. */
uint64_t fault_count(enum fault_kind kind);

const char *fault_kind_name(enum fault_kind kind);
const char *fault_site_name(enum fault_site site);

#endif
