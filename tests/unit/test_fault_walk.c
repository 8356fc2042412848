/* test_fault_walk.c - every fault kind through the core, and the exhaustive walk:
 * for each scenario, fail the 1st, 2nd, 3rd ... shimmed call (once, or from then on)
 * until a run injects nothing, checking after every run that each client got back
 * a correct prefix of what it sent (all of it when nothing closed it), that each
 * socket was closed once, each context freed and no operation left outstanding. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/stats.h"
#include "fake_backend.h"
#include "nth_walk.h"
#include "fault.h"

#define PAYLOAD 300
#define WALK_LIMIT 400

static struct fake f;

static void setup(void)
{
    fake_init(&f);
    f.cfg.buffer_size = 64;
    fake_start(&f);
}

static void teardown(void)
{
    ep_alloc_fail = NULL;
    fault_disable();
    fake_destroy(&f);
}

/* The client's bytes for connection i: distinct per client so a mix-up shows. */
static void payload(unsigned char *buf, size_t len, int client)
{
    for (size_t k = 0; k < len; k++)
        buf[k] = (unsigned char)(k * 7 + (size_t)client * 101 + 3);
}

/* Connects a client that sends `len` bytes in `chunks` writes, optionally half-closing. */
static struct fake_sock *client(int index, size_t len, size_t recv_chunk, int half_close)
{
    unsigned char data[PAYLOAD];
    struct fake_sock *s = fake_accept(&f);
    payload(data, len, index);
    s->recv_chunk = recv_chunk;
    fake_client_send(s, data, len);
    if (half_close)
        fake_client_shutdown(s);
    return s;
}

static void single_echo(void)
{
    client(0, 100, 0, 0);
}

static void pipelined_echo(void)
{
    client(0, PAYLOAD, 17, 0);
}

static void half_close(void)
{
    client(0, 150, 0, 1);
}

static void two_clients_interleaved(void)
{
    client(0, 200, 13, 1);
    client(1, 200, 29, 0);
}

static void accept_storm(void)
{
    for (int i = 0; i < 12; i++)
        client(i, 20 + (size_t)i, 0, i % 2);
}

static void (*const scenarios[])(void) = {single_echo, pipelined_echo, half_close,
                                          two_clients_interleaved, accept_storm};
static const char *const scenario_names[] = {"single_echo", "pipelined_echo", "half_close",
                                             "two_clients_interleaved", "accept_storm"};

/* Drives everything to the end: echoes, then a graceful stop that closes the rest. */
static void run_to_end(void)
{
    fake_run(&f, 100000);
    srv_request_stop(&f.srv);
    fake_tick(&f);
    fake_run(&f, 100000);
}

/* Asserts the invariants after a run; `exact` = every accepted client got all its bytes back. */
static void check_run(const char *what, int exact)
{
    const char *bad = fake_check_cleanup(&f);
    cr_assert_null(bad, "%s: %s", what, bad);
    cr_assert(srv_worker_done(&f.srv, 0), "%s: the worker cannot finish", what);
    for (int i = 0; i < f.nsocks; i++) {
        struct fake_sock *s = &f.socks[i];
        cr_assert_leq(s->echoed_len, s->in_len, "%s: client %d got more than it sent", what, i);
        cr_assert(s->echoed_len == 0 || memcmp(s->echoed, s->in, s->echoed_len) == 0,
                  "%s: client %d got bytes that are not a prefix of what it sent", what, i);
        if (exact && s->id)
            cr_assert_eq(s->echoed_len, s->in_len, "%s: client %d: %zu of %zu bytes echoed", what,
                         i, s->echoed_len, s->in_len);
    }
}

/* Enables `plan_text` as the active plan. */
static void plan(const char *plan_text)
{
    struct fault_plan p;
    char err[256];
    cr_assert_eq(fault_plan_parse(plan_text, &p, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(fault_enable(&p, NULL, err, sizeof(err)), 0, "%s", err);
    ep_alloc_fail = fault_alloc_fails; /* the "alloc" site, as the server wires it */
}

TestSuite(fault_kind, .init = setup, .fini = teardown);

Test(fault_kind, partial_send_on_every_send_still_echoes_every_byte)
{
    plan("seed=1,partial_send=1");
    struct fake_sock *s = client(0, PAYLOAD, 0, 1);
    run_to_end();
    check_run("partial_send=1", 1);
    cr_expect_eq(s->echoed_len, PAYLOAD);
    cr_expect_gt(fault_count(FAULT_PARTIAL_SEND), 4);
    cr_expect_eq(stats_get(bytes_in), stats_get(bytes_out));
}

Test(fault_kind, zero_read_closes_the_connection_as_a_peer_eof)
{
    plan("seed=1,zero_read=1");
    struct fake_sock *s = client(0, 100, 0, 0);
    cr_assert(fake_step(s));
    cr_expect_null(s->conn, "a zero-byte read closes the connection");
    cr_expect_eq(s->echoed_len, 0);
    cr_expect_eq(fault_count(FAULT_ZERO_READ), 1);
    run_to_end();
    check_run("zero_read=1", 0);
}

Test(fault_kind, connreset_on_a_send_keeps_what_was_sent_and_frees_once)
{
    plan("seed=1,connreset=1,sites=send");
    struct fake_sock *s = client(0, 100, 0, 0);
    run_to_end();
    check_run("connreset on send", 0);
    cr_expect_eq(s->echoed_len, 0);
    cr_expect_eq(fault_count(FAULT_CONNRESET), 1);
    cr_expect_eq(stats_get(closed), 1);
}

Test(fault_kind, accept_fail_closes_the_accept_socket_and_the_next_accept_works)
{
    plan("seed=1,nth=1,sites=accept");
    struct fake_sock *first = client(0, 10, 0, 1), *second = client(1, 10, 0, 1);
    cr_expect_null(first->conn);
    cr_expect_eq(first->closes, 1);
    cr_expect_not_null(second->conn, "the listener keeps serving after a failed accept");
    run_to_end();
    check_run("accept_fail", 1);
    cr_expect_eq(second->echoed_len, 10);
    cr_expect_eq(stats_get(accept_errors), 1);
}

TestSuite(fault_walk, .fini = teardown);

struct walk {
    int scenario;
    int persist;
};

ParameterizedTestParameters(fault_walk, nth_call_walk_keeps_the_invariants)
{
    static struct walk walks[2 * sizeof(scenarios) / sizeof(scenarios[0])];
    for (size_t i = 0; i < sizeof(walks) / sizeof(walks[0]); i++)
        walks[i] = (struct walk){(int)(i / 2), (int)(i % 2)};
    return cr_make_param_array(struct walk, walks, sizeof(walks) / sizeof(walks[0]));
}

ParameterizedTest(struct walk *w, fault_walk, nth_call_walk_keeps_the_invariants)
{
    char text[64], what[96];
    int n;
    for (n = 1; n <= WALK_LIMIT; n++) {
        fake_init(&f);
        f.cfg.buffer_size = 64;
        fake_start(&f);
        snprintf(text, sizeof(text), "nth=%d%s", n, w->persist ? ",persist" : "");
        snprintf(what, sizeof(what), "%s with %s", scenario_names[w->scenario], text);
        plan(text);
        scenarios[w->scenario]();
        run_to_end();
        uint64_t faults = nth_walk_injected();
        check_run(what, faults == 0);
        ep_alloc_fail = NULL;
        fault_disable();
        fake_destroy(&f);
        if (faults == 0)
            break;
    }
    cr_assert_gt(n, 1, "the walk must inject at least one fault");
    cr_assert_leq(n, WALK_LIMIT, "%s: the walk never reached a fault-free run",
                  scenario_names[w->scenario]);
    fake_init(&f); /* the suite's teardown destroys it */
    fake_start(&f);
}
