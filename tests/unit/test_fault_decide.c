/* test_fault_decide.c - fault decisions (pure per call, exhaustive nth walks, filters)
 * and the fault log: counting, the counter hook, log lines, the per-kind counts. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ep.h"
#include "fault.h"
#include "platform.h"

static atomic_ulong hook_calls[FAULT_KINDS]; /* what the counter hook saw (any thread) */

/* The counter hook under test: counts per kind. */
static void count_in_test(enum fault_kind kind)
{
    atomic_fetch_add(&hook_calls[kind], 1);
}

/* Zeroes the hook's counts and installs it, as main.c installs its own. */
static void log_setup(void)
{
    for (int k = 0; k < FAULT_KINDS; k++)
        atomic_store(&hook_calls[k], 0);
    fault_set_counter(count_in_test);
}

/* Removes the plan and the hook. */
static void log_teardown(void)
{
    fault_disable();
    fault_set_counter(NULL);
}

TestSuite(fault_decide, .fini = fault_disable);
TestSuite(fault_log, .init = log_setup, .fini = log_teardown);

/* Parses text and makes it the active plan (no log). */
static void enable(const char *text)
{
    struct fault_plan plan;
    char err[256] = "";
    cr_assert_eq(fault_plan_parse(text, &plan, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(fault_enable(&plan, NULL, err, sizeof(err)), 0, "%s", err);
}

/* A tiny deterministic generator for the tests' own shuffles (not the module's hash). */
static uint64_t test_rand(uint64_t *state)
{
    *state = *state * UINT64_C(6364136223846793005) + UINT64_C(1442695040888963407);
    return *state >> 33;
}

/* The hard-failure kind nth=N gives each site. */
static const enum fault_kind hard_kind[FAULT_SITES] = {
    [FAULT_SITE_RECV] = FAULT_CONNRESET,     [FAULT_SITE_SEND] = FAULT_CONNRESET,
    [FAULT_SITE_ACCEPT] = FAULT_ACCEPT_FAIL, [FAULT_SITE_SETSOCKOPT] = FAULT_SETSOCKOPT_FAIL,
    [FAULT_SITE_ALLOC] = FAULT_ALLOC_FAIL,
};

/* Nonzero when x is within k standard deviations (variance var) of mean, plus slack;
 * squares instead of sqrt so the tests need no libm. */
static int within_sigmas(double x, double mean, double var, double k, double slack)
{
    double d = x > mean ? x - mean : mean - x;
    d = d > slack ? d - slack : 0.0;
    return d * d <= k * k * var;
}

/* ---- decisions are a pure function of (seed, site, conn, op) ---- */

#define GRID_CONNS 48
#define GRID_OPS 48
#define GRID_CALLS (FAULT_SITES * GRID_CONNS * GRID_OPS)

struct decision {
    enum fault_kind kind;
    uint64_t aux;
};

/* Decides grid call i: site, conn and op unpacked from its index. */
static struct decision decide_cell(int i)
{
    struct decision d = {FAULT_NONE, 0};
    enum fault_site site = (enum fault_site)(i / (GRID_CONNS * GRID_OPS));
    uint64_t conn = (uint64_t)(i / GRID_OPS % GRID_CONNS), op = (uint64_t)(i % GRID_OPS);
    d.kind = fault_decide(site, conn, op, &d.aux);
    return d;
}

#define GRID_PLAN                                                                                  \
    "seed=42,connreset=0.1,partial_send=0.3,zero_read=0.05,accept_fail=0.2,"                       \
    "setsockopt_fail=0.15,alloc_fail=0.1"

Test(fault_decide, same_seed_same_decisions_whatever_the_order)
{
    static struct decision forwards[GRID_CALLS], shuffled[GRID_CALLS];
    static int order[GRID_CALLS];
    uint64_t rng = 7;
    int faults = 0;

    enable(GRID_PLAN);
    for (int i = 0; i < GRID_CALLS; i++)
        forwards[i] = decide_cell(i);
    for (int i = 0; i < GRID_CALLS; i++)
        order[i] = i;
    for (int i = GRID_CALLS - 1; i > 0; i--) {
        int j = (int)(test_rand(&rng) % (uint64_t)(i + 1)), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    enable(GRID_PLAN);
    for (int i = 0; i < GRID_CALLS; i++)
        shuffled[order[i]] = decide_cell(order[i]);
    for (int i = 0; i < GRID_CALLS; i++) {
        cr_assert_eq(shuffled[i].kind, forwards[i].kind, "call %d", i);
        if (forwards[i].kind != FAULT_NONE) {
            cr_assert_eq(shuffled[i].aux, forwards[i].aux, "call %d", i);
            faults++;
        }
    }
    cr_assert(faults > GRID_CALLS / 20 && faults < GRID_CALLS / 2, "%d faults", faults);
}

#define THREADS 4

struct grid_worker {
    int index;
    struct decision *out;
};

/* Decides, backwards, every grid call whose index is the worker's modulo THREADS. */
static void grid_worker_run(void *arg)
{
    struct grid_worker *w = arg;
    for (int i = GRID_CALLS - 1 - w->index; i >= 0; i -= THREADS)
        w->out[i] = decide_cell(i);
}

Test(fault_decide, same_seed_same_decisions_across_threads)
{
    static struct decision alone[GRID_CALLS], threaded[GRID_CALLS];
    struct grid_worker workers[THREADS];
    ep_thread threads[THREADS];

    enable(GRID_PLAN);
    for (int i = 0; i < GRID_CALLS; i++)
        alone[i] = decide_cell(i);
    enable(GRID_PLAN);
    for (int t = 0; t < THREADS; t++) {
        workers[t] = (struct grid_worker){t, threaded};
        cr_assert_eq(ep_thread_start(&threads[t], grid_worker_run, &workers[t]), 0);
    }
    for (int t = 0; t < THREADS; t++)
        ep_thread_join(threads[t]);
    for (int i = 0; i < GRID_CALLS; i++) {
        cr_assert_eq(threaded[i].kind, alone[i].kind, "call %d", i);
        cr_assert_eq(threaded[i].aux, alone[i].aux, "call %d", i);
    }
    cr_assert_eq(fault_calls(), GRID_CALLS);
}

/* Fraction of n recv calls on which the active plan and `other` plan disagree, where
 * call i is at (conn_of(i), op_of(i)) under the first and swapped under `swap`. */
static double recv_disagreement(const char *plan, const char *other, int swap)
{
    enum { N = 20000 };
    static enum fault_kind first[N];
    int differ = 0;
    enable(plan);
    for (int i = 0; i < N; i++)
        first[i] = fault_decide(FAULT_SITE_RECV, (uint64_t)(i / 100), (uint64_t)(i % 100), NULL);
    enable(other);
    for (int i = 0; i < N; i++) {
        uint64_t a = (uint64_t)(i / 100), b = (uint64_t)(i % 100);
        enum fault_kind k = swap ? fault_decide(FAULT_SITE_RECV, b, a, NULL)
                                 : fault_decide(FAULT_SITE_RECV, a, b, NULL);
        differ += k != first[i];
    }
    return (double)differ / N;
}

/* Asserts a disagreement rate is 0.5 within 5 sigma of 20000 fair coin flips. */
static void assert_independent(double rate)
{
    cr_assert(within_sigmas(rate, 0.5, 0.25 / 20000, 5, 0), "disagreement %f, expected 0.5", rate);
}

Test(fault_decide, different_seeds_give_different_decisions)
{
    assert_independent(recv_disagreement("seed=1,connreset=0.5", "seed=2,connreset=0.5", 0));
    assert_independent(recv_disagreement("connreset=0.5", "seed=1,connreset=0.5", 0));
}

Test(fault_decide, conn_and_op_are_not_interchangeable)
{
    assert_independent(recv_disagreement("seed=3,connreset=0.5", "seed=3,connreset=0.5", 1));
}

Test(fault_decide, site_is_part_of_the_hash)
{
    enum { N = 20000 };
    int differ = 0;
    enable("seed=4,connreset=0.5");
    for (int i = 0; i < N; i++)
        differ += fault_decide(FAULT_SITE_RECV, (uint64_t)i, 0, NULL) !=
                  fault_decide(FAULT_SITE_SEND, (uint64_t)i, 0, NULL);
    assert_independent((double)differ / N);
}

struct prob_case {
    char plan[64];
    enum fault_site site;
    enum fault_kind kind;
    double p; /* the share of calls that must get `kind` */
};

ParameterizedTestParameters(fault_decide, probabilities_hold_on_100k_draws)
{
    static struct prob_case cases[] = {
        {"seed=1,connreset=0.02", FAULT_SITE_RECV, FAULT_CONNRESET, 0.02},
        {"seed=1,connreset=0.02", FAULT_SITE_SEND, FAULT_CONNRESET, 0.02},
        {"seed=2,connreset=0.3,zero_read=0.01", FAULT_SITE_RECV, FAULT_ZERO_READ, 0.01},
        {"seed=2,connreset=0.3,zero_read=0.01", FAULT_SITE_RECV, FAULT_CONNRESET, 0.3},
        {"seed=3,partial_send=0.3", FAULT_SITE_SEND, FAULT_PARTIAL_SEND, 0.3},
        {"seed=4,connreset=0.05,partial_send=0.5", FAULT_SITE_SEND, FAULT_PARTIAL_SEND, 0.5},
        {"seed=4,connreset=0.05,partial_send=0.5", FAULT_SITE_SEND, FAULT_CONNRESET, 0.05},
        {"seed=5,accept_fail=0.05", FAULT_SITE_ACCEPT, FAULT_ACCEPT_FAIL, 0.05},
        {"seed=6,setsockopt_fail=0.5", FAULT_SITE_SETSOCKOPT, FAULT_SETSOCKOPT_FAIL, 0.5},
        {"seed=7,alloc_fail=0.001", FAULT_SITE_ALLOC, FAULT_ALLOC_FAIL, 0.001},
        {"seed=8,connreset=0.3,zero_read=0.7", FAULT_SITE_RECV, FAULT_ZERO_READ, 0.7},
        /* the second kind of a site gets what the first leaves when the sum exceeds 1 */
        {"seed=9,connreset=0.8,zero_read=0.5", FAULT_SITE_RECV, FAULT_ZERO_READ, 0.2},
        {"seed=10,connreset=0", FAULT_SITE_RECV, FAULT_CONNRESET, 0.0},
        {"seed=11,partial_send=1", FAULT_SITE_SEND, FAULT_PARTIAL_SEND, 1.0},
    };
    return cr_make_param_array(struct prob_case, cases, EP_ARRAY_LEN(cases));
}

ParameterizedTest(struct prob_case *c, fault_decide, probabilities_hold_on_100k_draws)
{
    enum { N = 100000 };
    int hits = 0;
    enable(c->plan);
    for (int i = 0; i < N; i++) {
        uint64_t conn = c->site == FAULT_SITE_ACCEPT ? 0 : (uint64_t)(i / 1000);
        uint64_t op = c->site == FAULT_SITE_ACCEPT ? (uint64_t)i : (uint64_t)(i % 1000);
        hits += fault_decide(c->site, conn, op, NULL) == c->kind;
    }
    double mean = N * c->p;
    cr_assert(within_sigmas(hits, mean, mean * (1 - c->p), 5, 1),
              "%s at %s: %d %s, expected %.0f within 5 sigma", c->plan, fault_site_name(c->site),
              hits, fault_kind_name(c->kind), mean);
}

Test(fault_decide, kinds_of_one_site_share_one_draw)
{
    int counts[FAULT_KINDS] = {0};
    enable("seed=5,connreset=0.4,zero_read=0.6");
    for (int i = 0; i < 10000; i++) {
        enum fault_kind k = fault_decide(FAULT_SITE_RECV, 1, (uint64_t)i, NULL);
        cr_assert(k == FAULT_CONNRESET || k == FAULT_ZERO_READ, "call %d got %d", i, k);
        counts[k]++;
    }
    cr_assert(within_sigmas(counts[FAULT_CONNRESET], 4000, 10000 * 0.4 * 0.6, 5, 0), "%d resets",
              counts[FAULT_CONNRESET]);
}

ParameterizedTestParameters(fault_decide, kinds_fire_only_at_their_sites)
{
    static enum fault_kind kinds[] = {FAULT_CONNRESET,   FAULT_PARTIAL_SEND,    FAULT_ZERO_READ,
                                      FAULT_ACCEPT_FAIL, FAULT_SETSOCKOPT_FAIL, FAULT_ALLOC_FAIL};
    return cr_make_param_array(enum fault_kind, kinds, EP_ARRAY_LEN(kinds));
}

ParameterizedTest(enum fault_kind *kind, fault_decide, kinds_fire_only_at_their_sites)
{
    static const unsigned sites_of[FAULT_KINDS] = {
        [FAULT_CONNRESET] = 1u << FAULT_SITE_RECV | 1u << FAULT_SITE_SEND,
        [FAULT_PARTIAL_SEND] = 1u << FAULT_SITE_SEND,
        [FAULT_ZERO_READ] = 1u << FAULT_SITE_RECV,
        [FAULT_ACCEPT_FAIL] = 1u << FAULT_SITE_ACCEPT,
        [FAULT_SETSOCKOPT_FAIL] = 1u << FAULT_SITE_SETSOCKOPT,
        [FAULT_ALLOC_FAIL] = 1u << FAULT_SITE_ALLOC,
    };
    char text[64];
    snprintf(text, sizeof(text), "%s=1", fault_kind_name(*kind));
    enable(text);
    for (int s = 0; s < FAULT_SITES; s++) {
        enum fault_kind want = sites_of[*kind] & (1u << s) ? *kind : FAULT_NONE;
        for (uint64_t op = 0; op < 200; op++)
            cr_assert_eq(fault_decide((enum fault_site)s, 2, op, NULL), want, "%s at %s", text,
                         fault_site_name((enum fault_site)s));
    }
}

Test(fault_decide, aux_is_a_pure_hash_of_the_call)
{
    enum { N = 20000 };
    static uint64_t aux[N];
    int odd = 0, repeats = 0;
    enable("seed=12,partial_send=1");
    for (int i = 0; i < N; i++) {
        cr_assert_eq(
            fault_decide(FAULT_SITE_SEND, (uint64_t)(i / 100), (uint64_t)(i % 100), &aux[i]),
            FAULT_PARTIAL_SEND);
        odd += (int)(aux[i] & 1);
    }
    for (int i = 0; i < N; i++) {
        uint64_t again = 0;
        fault_decide(FAULT_SITE_SEND, (uint64_t)(i / 100), (uint64_t)(i % 100), &again);
        cr_assert_eq(again, aux[i], "call %d", i);
        repeats += i > 0 && aux[i] == aux[i - 1];
    }
    cr_assert_eq(repeats, 0);
    cr_assert(within_sigmas(odd, N / 2.0, N / 4.0, 5, 0), "%d odd aux values", odd);
}

Test(fault_decide, leaves_aux_alone_without_a_fault)
{
    uint64_t aux = 99;
    enable("seed=1,connreset=0");
    cr_assert_eq(fault_decide(FAULT_SITE_RECV, 1, 1, &aux), FAULT_NONE);
    cr_assert_eq(aux, 99);
    enable("seed=1,connreset=1");
    cr_assert_eq(fault_decide(FAULT_SITE_RECV, 1, 1, NULL), FAULT_CONNRESET);
}

Test(fault_decide, injects_nothing_without_a_plan)
{
    cr_assert_eq(fault_active(), 0);
    for (int s = 0; s < FAULT_SITES; s++)
        cr_assert_eq(fault_decide((enum fault_site)s, 1, 1, NULL), FAULT_NONE);
    cr_assert_eq(fault_calls(), 0);
}

Test(fault_decide, active_follows_enable_and_disable)
{
    enable("connreset=1");
    cr_assert_neq(fault_active(), 0);
    cr_assert_eq(fault_decide(FAULT_SITE_RECV, 1, 1, NULL), FAULT_CONNRESET);
    fault_disable();
    cr_assert_eq(fault_active(), 0);
    cr_assert_eq(fault_decide(FAULT_SITE_RECV, 1, 1, NULL), FAULT_NONE);
    cr_assert_eq(fault_calls(), 0);
}

Test(fault_decide, ignores_out_of_range_sites)
{
    enable("nth=1,persist,connreset=1");
    cr_assert_eq(fault_decide((enum fault_site)FAULT_SITES, 1, 1, NULL), FAULT_NONE);
    cr_assert_eq(fault_decide((enum fault_site) - 1, 1, 1, NULL), FAULT_NONE);
    cr_assert_eq(fault_calls(), 0);
}

Test(fault_decide, decisions_match_the_pinned_hash)
{
    /* A digest of 100k decisions and their aux values, the same on every platform
     * (checked on Linux and on the mingw build under Wine). If it changes, every
     * recorded seed replays differently: change it only on purpose. */
    uint64_t digest = 0;
    enable("seed=42,connreset=0.1,partial_send=0.3,zero_read=0.05,accept_fail=0.2");
    for (uint64_t i = 0; i < 100000; i++) {
        uint64_t aux = 0;
        enum fault_kind k = fault_decide((enum fault_site)(i % 3), i / 100, i % 100, &aux);
        digest = digest * 31 + (uint64_t)(k + 1) + aux;
    }
    cr_assert_eq(digest, UINT64_C(0x5a38747a09879a9a), "digest %08x%08x", (unsigned)(digest >> 32),
                 (unsigned)digest);
}

/* ---- exhaustive mode: nth, count, persist ---- */

/* Makes `calls` calls cycling through the sites; fired[i] = the kind call i+1 got. */
static void run_calls(int calls, enum fault_kind *fired)
{
    for (int i = 0; i < calls; i++)
        fired[i] =
            fault_decide((enum fault_site)(i % FAULT_SITES), (uint64_t)(i % 3), (uint64_t)i, NULL);
}

Test(fault_decide, nth_fails_exactly_the_nth_call)
{
    enum fault_kind fired[20];
    enable("nth=7");
    run_calls(20, fired);
    for (int i = 0; i < 20; i++)
        cr_assert_eq(fired[i], i + 1 == 7 ? hard_kind[i % FAULT_SITES] : FAULT_NONE, "call %d",
                     i + 1);
    cr_assert_eq(fault_calls(), 20);
}

ParameterizedTestParameters(fault_decide, nth_uses_the_sites_hard_kind)
{
    static enum fault_site sites[] = {FAULT_SITE_RECV, FAULT_SITE_SEND, FAULT_SITE_ACCEPT,
                                      FAULT_SITE_SETSOCKOPT, FAULT_SITE_ALLOC};
    return cr_make_param_array(enum fault_site, sites, EP_ARRAY_LEN(sites));
}

ParameterizedTest(enum fault_site *site, fault_decide, nth_uses_the_sites_hard_kind)
{
    uint64_t aux = 0;
    enable("nth=1");
    cr_assert_eq(fault_decide(*site, 0, 0, &aux), hard_kind[*site], "%s", fault_site_name(*site));
    cr_assert_eq(fault_decide(*site, 0, 1, NULL), FAULT_NONE);
}

Test(fault_decide, nth_walk_fails_each_call_once_then_nothing)
{
    enum { CALLS = 12 };
    enum fault_kind fired[CALLS];
    for (int n = 1; n <= CALLS + 1; n++) {
        char text[32];
        int faults = 0;
        snprintf(text, sizeof(text), "nth=%d", n);
        enable(text);
        run_calls(CALLS, fired);
        for (int i = 0; i < CALLS; i++) {
            faults += fired[i] != FAULT_NONE;
            if (fired[i] != FAULT_NONE)
                cr_assert_eq(i + 1, n, "nth=%d failed call %d", n, i + 1);
        }
        cr_assert_eq(faults, n <= CALLS, "nth=%d: %d faults", n, faults);
        cr_assert_eq(fault_calls(), CALLS);
    }
}

Test(fault_decide, count_fails_a_burst_of_consecutive_calls)
{
    enum fault_kind fired[20];
    enable("nth=3,count=4");
    run_calls(20, fired);
    for (int i = 0; i < 20; i++) {
        int n = i + 1;
        cr_assert_eq(fired[i], n >= 3 && n <= 6 ? hard_kind[i % FAULT_SITES] : FAULT_NONE,
                     "call %d", n);
    }
}

Test(fault_decide, persist_fails_every_call_from_the_nth)
{
    enum fault_kind fired[1000];
    enable("nth=5,persist");
    run_calls(1000, fired);
    for (int i = 0; i < 1000; i++)
        cr_assert_eq(fired[i], i + 1 >= 5 ? hard_kind[i % FAULT_SITES] : FAULT_NONE, "call %d",
                     i + 1);
}

Test(fault_decide, count_near_the_top_of_the_range_does_not_wrap)
{
    enable("nth=2,count=18446744073709551615");
    cr_assert_eq(fault_decide(FAULT_SITE_RECV, 1, 0, NULL), FAULT_NONE);
    for (uint64_t op = 1; op < 100; op++)
        cr_assert_eq(fault_decide(FAULT_SITE_RECV, 1, op, NULL), FAULT_CONNRESET);
}

Test(fault_decide, enable_restarts_the_call_count)
{
    enable("nth=2");
    cr_assert_eq(fault_decide(FAULT_SITE_RECV, 1, 0, NULL), FAULT_NONE);
    cr_assert_eq(fault_decide(FAULT_SITE_RECV, 1, 1, NULL), FAULT_CONNRESET);
    enable("nth=2");
    cr_assert_eq(fault_calls(), 0);
    cr_assert_eq(fault_decide(FAULT_SITE_RECV, 1, 2, NULL), FAULT_NONE);
    cr_assert_eq(fault_decide(FAULT_SITE_RECV, 1, 3, NULL), FAULT_CONNRESET);
}

Test(fault_decide, nth_overrides_probabilities_on_its_call)
{
    enable("nth=2,partial_send=1");
    cr_assert_eq(fault_decide(FAULT_SITE_SEND, 1, 0, NULL), FAULT_PARTIAL_SEND);
    cr_assert_eq(fault_decide(FAULT_SITE_SEND, 1, 1, NULL), FAULT_CONNRESET);
    cr_assert_eq(fault_decide(FAULT_SITE_SEND, 1, 2, NULL), FAULT_PARTIAL_SEND);
}

struct counting_worker {
    int fired;
};

/* Makes 5000 send calls on its own connection; counts the faults it got. */
static void counting_worker_run(void *arg)
{
    struct counting_worker *w = arg;
    for (uint64_t op = 0; op < 5000; op++)
        w->fired += fault_decide(FAULT_SITE_SEND, (uint64_t)(uintptr_t)w, op, NULL) != FAULT_NONE;
}

/* Runs THREADS counting workers under plan text; returns the faults they got together. */
static int faults_across_threads(const char *text)
{
    struct counting_worker workers[THREADS] = {{0}};
    ep_thread threads[THREADS];
    int total = 0;
    enable(text);
    for (int t = 0; t < THREADS; t++)
        cr_assert_eq(ep_thread_start(&threads[t], counting_worker_run, &workers[t]), 0);
    for (int t = 0; t < THREADS; t++) {
        ep_thread_join(threads[t]);
        total += workers[t].fired;
    }
    cr_assert_eq(fault_calls(), THREADS * 5000);
    return total;
}

Test(fault_decide, nth_counts_calls_exactly_across_threads)
{
    cr_assert_eq(faults_across_threads("nth=1000,count=777"), 777);
    cr_assert_eq(faults_across_threads("nth=15001,persist"), 5000);
    cr_assert_eq(faults_across_threads("nth=20000"), 1);
    cr_assert_eq(faults_across_threads("nth=20001,persist"), 0);
}

/* ---- filters ---- */

Test(fault_decide, sites_filter_keeps_other_sites_out_of_the_count)
{
    enable("nth=2,sites=send|alloc");
    cr_assert_eq(fault_decide(FAULT_SITE_RECV, 1, 0, NULL), FAULT_NONE);
    cr_assert_eq(fault_decide(FAULT_SITE_SEND, 1, 0, NULL), FAULT_NONE);
    cr_assert_eq(fault_decide(FAULT_SITE_ACCEPT, 0, 0, NULL), FAULT_NONE);
    cr_assert_eq(fault_decide(FAULT_SITE_RECV, 1, 1, NULL), FAULT_NONE);
    cr_assert_eq(fault_calls(), 1);
    cr_assert_eq(fault_decide(FAULT_SITE_ALLOC, 1, 0, NULL), FAULT_ALLOC_FAIL);
    cr_assert_eq(fault_decide(FAULT_SITE_SEND, 1, 1, NULL), FAULT_NONE);
    cr_assert_eq(fault_calls(), 3);
}

Test(fault_decide, conn_filter_keeps_other_connections_out_of_the_count)
{
    enable("nth=2,conn=3");
    cr_assert_eq(fault_decide(FAULT_SITE_RECV, 1, 0, NULL), FAULT_NONE);
    cr_assert_eq(fault_decide(FAULT_SITE_RECV, 3, 0, NULL), FAULT_NONE);
    cr_assert_eq(fault_decide(FAULT_SITE_ACCEPT, 0, 0, NULL), FAULT_NONE);
    cr_assert_eq(fault_decide(FAULT_SITE_SEND, 2, 0, NULL), FAULT_NONE);
    cr_assert_eq(fault_decide(FAULT_SITE_SEND, 3, 0, NULL), FAULT_CONNRESET);
    cr_assert_eq(fault_decide(FAULT_SITE_SEND, 3, 1, NULL), FAULT_NONE);
    cr_assert_eq(fault_calls(), 3);
}

Test(fault_decide, sites_filter_masks_probabilities)
{
    enable("connreset=1,accept_fail=1,sites=send");
    for (uint64_t op = 0; op < 100; op++) {
        cr_assert_eq(fault_decide(FAULT_SITE_RECV, 1, op, NULL), FAULT_NONE);
        cr_assert_eq(fault_decide(FAULT_SITE_ACCEPT, 0, op, NULL), FAULT_NONE);
        cr_assert_eq(fault_decide(FAULT_SITE_SEND, 1, op, NULL), FAULT_CONNRESET);
    }
}

Test(fault_decide, conn_filter_masks_probabilities)
{
    enable("zero_read=1,accept_fail=1,conn=3");
    for (uint64_t conn = 0; conn < 10; conn++)
        cr_assert_eq(fault_decide(FAULT_SITE_RECV, conn, 0, NULL),
                     conn == 3 ? FAULT_ZERO_READ : FAULT_NONE, "conn %d", (int)conn);
    cr_assert_eq(fault_decide(FAULT_SITE_ACCEPT, 0, 0, NULL), FAULT_NONE);
}

/* ---- counting and logging ---- */

/* Writes a file name unique to this test run into buf. */
static void temp_path(char *buf, size_t len, const char *tag)
{
    static int local;
    snprintf(buf, len, "fault_test_%s_%lx_%lx_%lx.log", tag, (unsigned long)time(NULL),
             (unsigned long)clock(), (unsigned long)((uintptr_t)&local >> 4));
}

/* Reads the whole of path (text mode) into buf; returns its length. */
static size_t read_text(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "cannot open %s", path);
    size_t n = fread(buf, 1, len - 1, f);
    buf[n] = '\0';
    fclose(f);
    return n;
}

/* Parses text and makes it the active plan logging to path. */
static void enable_logging(const char *text, const char *path)
{
    struct fault_plan plan;
    char err[256] = "";
    cr_assert_eq(fault_plan_parse(text, &plan, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(fault_enable(&plan, path, err, sizeof(err)), 0, "%s", err);
}

Test(fault_log, record_counts_per_kind_and_in_total)
{
    enable("seed=1");
    fault_record(FAULT_SITE_RECV, 3, 5, FAULT_CONNRESET, 10054);
    fault_record(FAULT_SITE_SEND, 3, 6, FAULT_CONNRESET, 10054);
    fault_record(FAULT_SITE_SEND, 4, 1, FAULT_PARTIAL_SEND, 0);
    fault_record(FAULT_SITE_ALLOC, 5, 0, FAULT_ALLOC_FAIL, EP_ENOMEM);
    cr_assert_eq(fault_count(FAULT_CONNRESET), 2);
    cr_assert_eq(fault_count(FAULT_PARTIAL_SEND), 1);
    cr_assert_eq(fault_count(FAULT_ALLOC_FAIL), 1);
    cr_assert_eq(fault_count(FAULT_ZERO_READ), 0);
    cr_assert_eq(fault_count(FAULT_NONE), 0);
    cr_assert_eq(fault_count((enum fault_kind)FAULT_KINDS), 0);
    cr_assert_eq(hook_calls[FAULT_CONNRESET], 2);
    cr_assert_eq(hook_calls[FAULT_PARTIAL_SEND] + hook_calls[FAULT_ALLOC_FAIL], 2);
}

Test(fault_log, record_ignores_out_of_range_kinds)
{
    fault_record(FAULT_SITE_RECV, 1, 1, FAULT_NONE, 0);
    fault_record(FAULT_SITE_RECV, 1, 1, (enum fault_kind)FAULT_KINDS, 0);
    for (int k = 0; k < FAULT_KINDS; k++)
        cr_assert_eq(hook_calls[k], 0);
}

Test(fault_log, record_writes_one_line_per_fault)
{
    char path[128], text[512];
    temp_path(path, sizeof(path), "lines");
    enable_logging("seed=3,connreset=0.5", path);
    fault_record(FAULT_SITE_RECV, 3, 5, FAULT_CONNRESET, 10054);
    fault_record(FAULT_SITE_SEND, 7, 0, FAULT_PARTIAL_SEND, 0);
    fault_record(FAULT_SITE_ACCEPT, 0, 12, FAULT_ACCEPT_FAIL, -4);
    read_text(path, text, sizeof(text)); /* flushed per line: readable before disable */
    fault_disable();
    remove(path);
    cr_assert_str_eq(text, "fault site=recv conn=3 op=5 kind=connreset code=10054\n"
                           "fault site=send conn=7 op=0 kind=partial_send code=0\n"
                           "fault site=accept conn=0 op=12 kind=accept_fail code=-4\n");
}

Test(fault_log, enable_truncates_the_log)
{
    char path[128], text[512];
    temp_path(path, sizeof(path), "truncate");
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs("stale line\n", f);
    fclose(f);
    enable_logging("nth=1", path);
    fault_record(FAULT_SITE_SETSOCKOPT, 2, 1, FAULT_SETSOCKOPT_FAIL, 10022);
    fault_disable();
    read_text(path, text, sizeof(text));
    remove(path);
    cr_assert_str_eq(text, "fault site=setsockopt conn=2 op=1 kind=setsockopt_fail code=10022\n");
}

Test(fault_log, disable_closes_the_log_and_resets_counts)
{
    char path[128], text[512];
    temp_path(path, sizeof(path), "disable");
    enable_logging("nth=1", path);
    fault_record(FAULT_SITE_RECV, 1, 1, FAULT_ZERO_READ, 0);
    fault_disable();
    cr_assert_eq(fault_count(FAULT_ZERO_READ), 0);
    fault_record(FAULT_SITE_RECV, 1, 2, FAULT_ZERO_READ, 0);
    read_text(path, text, sizeof(text));
    remove(path);
    cr_assert_str_eq(text, "fault site=recv conn=1 op=1 kind=zero_read code=0\n");
    cr_assert_eq(hook_calls[FAULT_ZERO_READ], 2, "the hook counts with or without a plan");
}

Test(fault_log, enable_reports_a_log_it_cannot_open)
{
    struct fault_plan plan;
    char err[256] = "";
    cr_assert_eq(fault_plan_parse("nth=1", &plan, err, sizeof(err)), 0);
    cr_assert_eq(fault_enable(&plan, "no_such_dir_for_fault_tests/x/fault.log", err, sizeof(err)),
                 EP_EIO);
    cr_assert_not_null(strstr(err, "'no_such_dir_for_fault_tests/x/fault.log'"), "%s", err);
    cr_assert_null(strchr(err, '\n'));
    cr_assert_eq(fault_active(), 0);
}

struct log_worker {
    int index;
};

/* Records 250 faults as connection `index`, ops 0..249. */
static void log_worker_run(void *arg)
{
    struct log_worker *w = arg;
    for (uint64_t op = 0; op < 250; op++)
        fault_record(FAULT_SITE_SEND, (uint64_t)w->index, op, FAULT_CONNRESET, 10054);
}

Test(fault_log, records_from_many_threads_stay_whole_lines)
{
    static char text[THREADS * 250 * 64];
    struct log_worker workers[THREADS];
    ep_thread threads[THREADS];
    int next_op[THREADS] = {0}, lines = 0;
    char path[128];

    temp_path(path, sizeof(path), "threads");
    enable_logging("nth=1", path);
    for (int t = 0; t < THREADS; t++) {
        workers[t].index = t;
        cr_assert_eq(ep_thread_start(&threads[t], log_worker_run, &workers[t]), 0);
    }
    for (int t = 0; t < THREADS; t++)
        ep_thread_join(threads[t]);
    cr_assert_eq(fault_count(FAULT_CONNRESET), THREADS * 250);
    fault_disable();
    read_text(path, text, sizeof(text));
    remove(path);
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"), lines++) {
        unsigned conn, op;
        int end = 0;
        cr_assert_eq(sscanf(line, "fault site=send conn=%u op=%u kind=connreset code=10054%n",
                            &conn, &op, &end),
                     2, "line '%s'", line);
        cr_assert(end > 0 && line[end] == '\0' && conn < THREADS, "line '%s'", line);
        cr_assert_eq(op, (unsigned)next_op[conn]++, "line '%s' out of order", line);
    }
    cr_assert_eq(lines, THREADS * 250);
}

Test(fault_log, formatted_counts_name_every_kind)
{
    char line[1024];
    enable("seed=1,connreset=0.1");
    fault_record(FAULT_SITE_RECV, 1, 1, FAULT_CONNRESET, 0);
    fault_record(FAULT_SITE_SEND, 1, 2, FAULT_CONNRESET, 0);
    fault_record(FAULT_SITE_SEND, 1, 3, FAULT_PARTIAL_SEND, 0);
    fault_record(FAULT_SITE_ALLOC, 2, 0, FAULT_ALLOC_FAIL, 0);
    size_t n = fault_format_counts(line, sizeof(line));
    cr_assert_eq(n, strlen(line));
    cr_assert_str_eq(line, " faults_connreset=2 faults_partial_send=1 faults_zero_read=0"
                           " faults_accept_fail=0 faults_setsockopt_fail=0 faults_alloc_fail=1");
}

Test(fault_log, formatted_counts_are_empty_without_a_plan)
{
    char line[64] = "x";
    enable("seed=1");
    fault_disable();
    cr_assert_eq(fault_format_counts(line, sizeof(line)), 0);
    cr_assert_str_eq(line, "");
}

Test(fault_log, formatted_counts_stop_at_the_buffer_end)
{
    char line[20];
    enable("seed=1");
    size_t n = fault_format_counts(line, sizeof(line));
    cr_assert_eq(n, sizeof(line) - 1);
    cr_assert_eq(strlen(line), n);
}
