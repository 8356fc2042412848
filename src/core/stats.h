/* stats.h - process-wide counters, printed as one machine-readable line. */
#ifndef EP_STATS_H
#define EP_STATS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

struct ep_stats {
    atomic_uint_least64_t accepted;       /* connections handed to the core */
    atomic_uint_least64_t closed;         /* connections freed by the core */
    atomic_uint_least64_t refused;        /* closed at once: max-conns, no memory, stopping */
    atomic_uint_least64_t accept_errors;  /* accept operations that failed and were re-posted */
    atomic_uint_least64_t admin_waits;    /* admin accepts that found no descriptor even after
                                             the reserve was given up: the client waits a retry */
    atomic_uint_least64_t recv_fallbacks; /* receives that found the provided-buffer ring empty
                                             and fell back to a plain receive (0 on IOCP) */
    atomic_uint_least64_t buffer_waits;   /* receives parked because the buffer budget was spent */
    atomic_uint_least64_t bytes_in;
    atomic_uint_least64_t bytes_out;
    atomic_uint_least64_t sockets_opened; /* every socket of the data port: its listener, accept
                                             sockets, connections */
    atomic_uint_least64_t sockets_closed;
    atomic_uint_least64_t admin_sockets_opened; /* the admin port's: listener, reserve, clients */
    atomic_uint_least64_t admin_sockets_closed;
    atomic_uint_least64_t ctx_alloc; /* connection contexts */
    atomic_uint_least64_t ctx_free;
    atomic_uint_least64_t faults; /* injected faults, all kinds */
};

extern struct ep_stats ep_stats;

#define stats_add(field, n) atomic_fetch_add_explicit(&ep_stats.field, (n), memory_order_relaxed)
#define stats_get(field) atomic_load_explicit(&ep_stats.field, memory_order_relaxed)

/* Zeroes every counter (tests run several servers in one process). */
void stats_reset(void);

/* Appends extra " key=value" pairs to the stats line (the fault module's per-kind counts). */
typedef size_t (*stats_extra_fn)(char *buf, size_t len);
void stats_set_extra(stats_extra_fn fn);

/* Writes "stats key=value ..." (no newline) into buf; returns its length. */
size_t stats_format(char *buf, size_t len);

#endif
