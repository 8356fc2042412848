/* nth_walk.h - the exhaustive fault walk every backend's unit tests run (SQLite's test
 * harness idea): the same scenario under nth=N (and nth=N,persist) for N = 1, 2, 3 ...
 * until a run injects nothing, with the invariants checked after every run. */
#ifndef EP_NTH_WALK_H
#define EP_NTH_WALK_H

#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>

#include "fault.h"

/* One backend's walk: begin(plan) starts a fresh server with the plan active, scenario()
 * plays the clients, check(plan, exact) asserts the invariants (exact: nothing was
 * injected, so every echo must be whole), end() disables the plan and releases the run. */
struct nth_walk {
    void (*begin)(const char *plan);
    void (*scenario)(void);
    void (*check)(const char *plan, int exact);
    void (*end)(void);
};

/* Byte `at` of walk client i's stream: distinct per client, so a mixed-up echo shows. */
static inline char nth_walk_byte(int i, unsigned at)
{
    return (char)('A' + (at * 7 + (unsigned)i * 11) % 50);
}

/* Asserts that walk client i got back a prefix of the `fed` bytes it wrote (all `total`
 * of them when exact). */
static inline void nth_walk_check_echo(const char *what, int i, const char *out, size_t out_len,
                                       size_t fed, size_t total, int exact)
{
    cr_assert_leq(out_len, fed, "%s: client %d got more than it wrote", what, i);
    for (size_t j = 0; j < out_len; j++)
        cr_assert_eq(out[j], nth_walk_byte(i, (unsigned)j),
                     "%s: client %d: byte %zu is not its own", what, i, j);
    if (exact)
        cr_assert_eq(out_len, total, "%s: client %d: %zu of %zu bytes", what, i, out_len, total);
}

/* Faults injected since the plan was enabled, all kinds. */
static inline uint64_t nth_walk_injected(void)
{
    uint64_t n = 0;
    for (int kind = 0; kind < FAULT_KINDS; kind++)
        n += fault_count((enum fault_kind)kind);
    return n;
}

/* Walks N from 1 up to `limit`; asserts that the walk outlasts `min_runs` runs (the
 * scenario makes enough calls to mean something), ends, and that its fault-free run is
 * the first past the horizon of counted calls. */
static inline void nth_walk_run(const struct nth_walk *w, int persist, int min_runs, int limit)
{
    char text[64];
    int n;
    uint64_t calls = 0;
    for (n = 1; n <= limit; n++) {
        snprintf(text, sizeof(text), "nth=%d%s", n, persist ? ",persist" : "");
        w->begin(text);
        w->scenario();
        uint64_t faults = nth_walk_injected();
        calls = fault_calls();
        w->check(text, faults == 0);
        cr_assert_eq(faults == 0, calls < (uint64_t)n, "%s: %lu faults in %lu calls", text,
                     (unsigned long)faults, (unsigned long)calls);
        w->end();
        if (faults == 0)
            break;
    }
    cr_assert_gt(n, min_runs, "the walk ended after %d runs: the scenario makes few calls", n);
    cr_assert_leq(n, limit, "the walk never reached a fault-free run");
    cr_assert_eq((uint64_t)n, calls + 1, "the fault-free run is the first past the horizon");
}

#endif
