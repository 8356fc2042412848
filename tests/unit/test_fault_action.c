/* test_fault_action.c - the one place a fault kind gets its meaning per operation:
 * which effect, which error, how short; recorded once when it fires, silent otherwise. */
#include <criterion/criterion.h>

#include "ep.h"
#include "fault.h"

TestSuite(fault_action, .fini = fault_disable);

/* Parses text and makes it the active plan (no log). */
static void enable(const char *text)
{
    struct fault_plan plan;
    char err[256] = "";
    cr_assert_eq(fault_plan_parse(text, &plan, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(fault_enable(&plan, NULL, err, sizeof(err)), 0, "%s", err);
}

Test(fault_action, everything_passes_without_a_plan)
{
    cr_assert_eq(fault_recv_action(1, 1).effect, FAULT_PASS);
    cr_assert_eq(fault_send_action(1, 1, 100).effect, FAULT_PASS);
    cr_assert_eq(fault_accept_action(1).effect, FAULT_PASS);
    cr_assert_eq(fault_setsockopt_action(1).effect, FAULT_PASS);
}

Test(fault_action, connreset_on_recv_fails_with_a_reset_now_and_later)
{
    int now = 0, later = 0;
    enable("seed=5,connreset=1");
    for (uint64_t op = 0; op < 64; op++) {
        struct fault_action a = fault_recv_action(3, op);
        cr_assert(a.effect == FAULT_FAIL_NOW || a.effect == FAULT_FAIL_LATER, "op %lu",
                  (unsigned long)op);
        cr_assert_eq(a.error, EP_ECONNRESET);
        now += a.effect == FAULT_FAIL_NOW;
        later += a.effect == FAULT_FAIL_LATER;
    }
    cr_assert(now > 0 && later > 0, "both timings occur: now=%d later=%d", now, later);
    cr_assert_eq(fault_count(FAULT_CONNRESET), 64);
}

Test(fault_action, zero_read_is_an_eof_without_error)
{
    enable("seed=5,zero_read=1");
    struct fault_action a = fault_recv_action(2, 7);
    cr_assert_eq(a.effect, FAULT_EOF);
    cr_assert_eq(a.error, 0);
    cr_assert_eq(fault_count(FAULT_ZERO_READ), 1);
}

Test(fault_action, partial_send_keeps_at_least_one_byte_and_fewer_than_asked)
{
    enable("seed=9,partial_send=1");
    for (size_t len = 2; len < 300; len++) {
        struct fault_action a = fault_send_action(4, len, len);
        cr_assert_eq(a.effect, FAULT_SHORTEN);
        cr_assert(a.len >= 1 && a.len < len, "len %zu -> %zu", len, a.len);
    }
}

Test(fault_action, partial_send_leaves_a_one_byte_send_whole_and_unrecorded)
{
    enable("seed=9,partial_send=1");
    cr_assert_eq(fault_send_action(4, 1, 1).effect, FAULT_PASS);
    cr_assert_eq(fault_count(FAULT_PARTIAL_SEND), 0);
}

Test(fault_action, accept_fail_uses_reset_out_of_handles_and_out_of_buffers)
{
    int seen_reset = 0, seen_emfile = 0, seen_enobufs = 0;
    enable("seed=11,accept_fail=1");
    for (uint64_t op = 1; op <= 96; op++) {
        struct fault_action a = fault_accept_action(op);
        cr_assert(a.effect == FAULT_FAIL_NOW || a.effect == FAULT_FAIL_LATER);
        seen_reset += a.error == EP_ECONNRESET;
        seen_emfile += a.error == EP_EMFILE;
        seen_enobufs += a.error == EP_ENOBUFS;
    }
    cr_assert_eq(seen_reset + seen_emfile + seen_enobufs, 96, "no other error");
    cr_assert(seen_reset && seen_emfile && seen_enobufs);
}

Test(fault_action, setsockopt_fail_fails_now_with_out_of_buffers)
{
    enable("nth=1,sites=setsockopt");
    struct fault_action a = fault_setsockopt_action(5);
    cr_assert_eq(a.effect, FAULT_FAIL_NOW);
    cr_assert_eq(a.error, EP_ENOBUFS);
    cr_assert_eq(fault_setsockopt_action(6).effect, FAULT_PASS, "nth=1 fails one call");
}

Test(fault_action, nth_walk_fails_the_nth_operation_whatever_its_kind)
{
    enable("nth=3");
    cr_assert_eq(fault_recv_action(1, 0).effect, FAULT_PASS);
    cr_assert_eq(fault_send_action(1, 0, 10).effect, FAULT_PASS);
    struct fault_action a = fault_accept_action(2);
    cr_assert_neq(a.effect, FAULT_PASS, "the third counted call fails");
    cr_assert_eq(fault_recv_action(1, 1).effect, FAULT_PASS);
    cr_assert_eq(fault_calls(), 4);
}

Test(fault_action, same_identity_gets_the_same_action)
{
    enable("seed=21,connreset=0.3,partial_send=0.3,zero_read=0.2");
    struct fault_action first[40];
    for (uint64_t op = 0; op < 40; op++)
        first[op] = op % 2 ? fault_send_action(6, op, 500) : fault_recv_action(6, op);
    enable("seed=21,connreset=0.3,partial_send=0.3,zero_read=0.2");
    for (uint64_t op = 40; op-- > 0;) {
        struct fault_action a = op % 2 ? fault_send_action(6, op, 500) : fault_recv_action(6, op);
        cr_assert_eq(a.effect, first[op].effect, "op %lu", (unsigned long)op);
        cr_assert_eq(a.error, first[op].error);
        cr_assert_eq(a.len, first[op].len);
    }
}
