/* decide.c - which fault, if any, a shimmed call gets: a counter-based hash of the
 * call's identity for the probabilistic kinds, a global call counter for nth=N. */
#include <stdatomic.h>

#include "fault.h"
#include "fault_int.h"

#define GOLDEN_GAMMA UINT64_C(0x9e3779b97f4a7c15) /* splitmix64's increment */

/* The kinds each site can get, the first being its hard failure (nth=N). */
static const enum fault_kind site_kinds[FAULT_SITES][2] = {
    [FAULT_SITE_RECV] = {FAULT_CONNRESET, FAULT_ZERO_READ},
    [FAULT_SITE_SEND] = {FAULT_CONNRESET, FAULT_PARTIAL_SEND},
    [FAULT_SITE_ACCEPT] = {FAULT_ACCEPT_FAIL, FAULT_NONE},
    [FAULT_SITE_SETSOCKOPT] = {FAULT_SETSOCKOPT_FAIL, FAULT_NONE},
    [FAULT_SITE_ALLOC] = {FAULT_ALLOC_FAIL, FAULT_NONE},
};

static struct fault_plan plan_store;              /* written only by fault_decide_install */
static _Atomic(const struct fault_plan *) active; /* &plan_store or NULL */
static atomic_uint_least64_t calls;               /* counted calls since install */

/* splitmix64's output function: a bijective 64-bit mix. */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

/* The hash of one call's identity: splitmix64 steps absorbing each value in turn. */
static uint64_t call_hash(uint64_t seed, unsigned site, uint64_t conn, uint64_t op)
{
    uint64_t h = mix64(seed + GOLDEN_GAMMA);
    h = mix64((h ^ site) + GOLDEN_GAMMA);
    h = mix64((h ^ conn) + GOLDEN_GAMMA);
    return mix64((h ^ op) + GOLDEN_GAMMA);
}

void fault_decide_install(const struct fault_plan *plan)
{
    atomic_store_explicit(&active, NULL, memory_order_relaxed);
    atomic_store_explicit(&calls, 0, memory_order_relaxed);
    if (plan) {
        plan_store = *plan;
        atomic_store_explicit(&active, &plan_store, memory_order_release);
    }
}

int fault_active(void)
{
    return atomic_load_explicit(&active, memory_order_relaxed) != NULL;
}

uint64_t fault_calls(void)
{
    return atomic_load_explicit(&calls, memory_order_relaxed);
}

enum fault_kind fault_decide(enum fault_site site, uint64_t conn, uint64_t op, uint64_t *aux)
{
    const struct fault_plan *p = atomic_load_explicit(&active, memory_order_acquire);
    if (!p || (unsigned)site >= FAULT_SITES || !(p->sites & (1u << site)) ||
        (p->conn >= 0 && conn != (uint64_t)p->conn))
        return FAULT_NONE;

    uint64_t n = atomic_fetch_add_explicit(&calls, 1, memory_order_relaxed) + 1;
    uint64_t h = call_hash(p->seed, (unsigned)site, conn, op);
    enum fault_kind kind = FAULT_NONE;
    if (p->nth && n >= p->nth && (p->persist || n - p->nth < p->count)) {
        kind = site_kinds[site][0];
    } else {
        double u = (double)(h >> 11) * 0x1.0p-53, edge = 0.0;
        for (int i = 0; i < 2 && site_kinds[site][i] != FAULT_NONE; i++) {
            edge += p->prob[site_kinds[site][i]];
            if (u < edge) {
                kind = site_kinds[site][i];
                break;
            }
        }
    }
    if (kind != FAULT_NONE && aux)
        *aux = mix64(h + GOLDEN_GAMMA);
    return kind;
}

int fault_alloc_fails(uint64_t conn, uint64_t op)
{
    enum fault_kind kind = fault_decide(FAULT_SITE_ALLOC, conn, op, NULL);
    if (kind == FAULT_NONE)
        return 0;
    fault_record(FAULT_SITE_ALLOC, conn, op, kind, 0);
    return 1;
}
