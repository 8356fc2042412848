/* test_fault_plan.c - the fault-plan grammar: every accepted form with the fields it
 * sets, every rejection with a one-line message naming the offending token. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <stdio.h>
#include <string.h>

#include "ep.h"
#include "fault.h"

/* Parses text, which must be accepted, and returns the plan. */
static struct fault_plan parse_ok(const char *text)
{
    struct fault_plan plan;
    char err[256] = "";
    int rc = fault_plan_parse(text, &plan, err, sizeof(err));
    cr_assert_eq(rc, 0, "'%s' rejected: %s", text, err);
    return plan;
}

/* Asserts every field of plan but the probabilities has its default. */
static void assert_defaults_but_probs(const struct fault_plan *plan)
{
    cr_assert_eq(plan->nth, 0);
    cr_assert_eq(plan->count, 1);
    cr_assert_eq(plan->persist, 0);
    cr_assert_eq(plan->sites, FAULT_SITES_ALL);
    cr_assert_eq(plan->conn, -1);
}

/* Parses text, which must be rejected with a one-line message holding 'token' and
 * reason, leaving the plan untouched. */
static void parse_rejects(const char *text, const char *token, const char *reason)
{
    struct fault_plan plan, before;
    char err[256] = "", quoted[160];
    memset(&plan, 0x5a, sizeof(plan));
    before = plan;
    cr_assert_eq(fault_plan_parse(text, &plan, err, sizeof(err)), EP_EINVAL, "'%s' accepted", text);
    snprintf(quoted, sizeof(quoted), "'%s'", token);
    cr_assert_not_null(strstr(err, quoted), "message \"%s\" does not name %s", err, quoted);
    cr_assert_not_null(strstr(err, reason), "message \"%s\" lacks \"%s\"", err, reason);
    cr_assert_eq(strncmp(err, "bad fault plan", 14), 0, "message \"%s\"", err);
    cr_assert_null(strpbrk(err, "\r\n"), "message \"%s\" is not one line", err);
    cr_assert_eq(memcmp(&plan, &before, sizeof(plan)), 0, "plan written on failure");
}

/* ---- accepted forms ---- */

Test(fault_plan, accepts_the_design_example)
{
    struct fault_plan p =
        parse_ok("seed=42,connreset=0.02,partial_send=0.3,zero_read=0.01,accept_fail=0.05");
    cr_assert_eq(p.seed, 42);
    cr_assert_eq(p.prob[FAULT_CONNRESET], 0.02);
    cr_assert_eq(p.prob[FAULT_PARTIAL_SEND], 0.3);
    cr_assert_eq(p.prob[FAULT_ZERO_READ], 0.01);
    cr_assert_eq(p.prob[FAULT_ACCEPT_FAIL], 0.05);
    cr_assert_eq(p.prob[FAULT_SETSOCKOPT_FAIL], 0.0);
    cr_assert_eq(p.prob[FAULT_ALLOC_FAIL], 0.0);
    assert_defaults_but_probs(&p);
}

Test(fault_plan, uses_seed_zero_when_none_is_given)
{
    struct fault_plan p = parse_ok("connreset=0.5");
    cr_assert_eq(p.seed, 0);
    cr_assert_eq(p.prob[FAULT_CONNRESET], 0.5);
    assert_defaults_but_probs(&p);
}

Test(fault_plan, accepts_a_seed_alone)
{
    struct fault_plan p = parse_ok("seed=7");
    cr_assert_eq(p.seed, 7);
    for (int k = 0; k < FAULT_KINDS; k++)
        cr_assert_eq(p.prob[k], 0.0);
    assert_defaults_but_probs(&p);
}

Test(fault_plan, accepts_the_largest_seed)
{
    cr_assert_eq(parse_ok("seed=18446744073709551615").seed, UINT64_MAX);
}

Test(fault_plan, accepts_leading_zeros)
{
    struct fault_plan p = parse_ok("seed=007,nth=0012");
    cr_assert_eq(p.seed, 7);
    cr_assert_eq(p.nth, 12);
}

ParameterizedTestParameters(fault_plan, accepts_each_kind_probability)
{
    static enum fault_kind kinds[] = {FAULT_CONNRESET,   FAULT_PARTIAL_SEND,    FAULT_ZERO_READ,
                                      FAULT_ACCEPT_FAIL, FAULT_SETSOCKOPT_FAIL, FAULT_ALLOC_FAIL};
    return cr_make_param_array(enum fault_kind, kinds, EP_ARRAY_LEN(kinds));
}

ParameterizedTest(enum fault_kind *kind, fault_plan, accepts_each_kind_probability)
{
    char text[64];
    snprintf(text, sizeof(text), "%s=0.25", fault_kind_name(*kind));
    struct fault_plan p = parse_ok(text);
    for (int k = 0; k < FAULT_KINDS; k++)
        cr_assert_eq(p.prob[k], k == (int)*kind ? 0.25 : 0.0, "%s: prob[%d]", text, k);
    assert_defaults_but_probs(&p);
}

struct prob_form {
    char text[40];
    double value;
};

ParameterizedTestParameters(fault_plan, accepts_decimal_probability_forms)
{
    static struct prob_form forms[] = {
        {"0", 0.0},   {"1", 1.0},        {"0.0", 0.0},           {"1.0", 1.0},  {"1.", 1.0},
        {".5", 0.5},  {"0000.25", 0.25}, {"5e-1", 0.5},          {"5E-1", 0.5}, {"0.5e+0", 0.5},
        {"1e0", 1.0}, {"1e-400", 0.0},   {"0.000001", 0.000001},
    };
    return cr_make_param_array(struct prob_form, forms, EP_ARRAY_LEN(forms));
}

ParameterizedTest(struct prob_form *f, fault_plan, accepts_decimal_probability_forms)
{
    char text[64];
    snprintf(text, sizeof(text), "zero_read=%s", f->text);
    cr_assert_eq(parse_ok(text).prob[FAULT_ZERO_READ], f->value, "%s", text);
}

Test(fault_plan, accepts_nth_alone)
{
    struct fault_plan p = parse_ok("nth=17");
    cr_assert_eq(p.nth, 17);
    cr_assert_eq(p.count, 1);
    cr_assert_eq(p.persist, 0);
    cr_assert_eq(p.sites, FAULT_SITES_ALL);
    cr_assert_eq(p.conn, -1);
}

Test(fault_plan, accepts_nth_with_persist_in_either_order)
{
    struct fault_plan a = parse_ok("nth=17,persist"), b = parse_ok("persist,nth=17");
    cr_assert_eq(a.nth, 17);
    cr_assert_eq(a.persist, 1);
    cr_assert_eq(memcmp(&a, &b, sizeof(a)), 0);
}

Test(fault_plan, accepts_nth_with_count_in_either_order)
{
    struct fault_plan a = parse_ok("nth=3,count=5"), b = parse_ok("count=5,nth=3");
    cr_assert_eq(a.nth, 3);
    cr_assert_eq(a.count, 5);
    cr_assert_eq(a.persist, 0);
    cr_assert_eq(memcmp(&a, &b, sizeof(a)), 0);
}

Test(fault_plan, accepts_nth_with_probabilities)
{
    struct fault_plan p = parse_ok("nth=2,partial_send=0.5");
    cr_assert_eq(p.nth, 2);
    cr_assert_eq(p.prob[FAULT_PARTIAL_SEND], 0.5);
}

Test(fault_plan, accepts_a_site_list)
{
    struct fault_plan p = parse_ok("connreset=0.1,sites=recv|send|accept");
    cr_assert_eq(p.sites,
                 (1u << FAULT_SITE_RECV) | (1u << FAULT_SITE_SEND) | (1u << FAULT_SITE_ACCEPT));
}

ParameterizedTestParameters(fault_plan, accepts_each_site_alone)
{
    static enum fault_site sites[] = {FAULT_SITE_RECV, FAULT_SITE_SEND, FAULT_SITE_ACCEPT,
                                      FAULT_SITE_SETSOCKOPT, FAULT_SITE_ALLOC};
    return cr_make_param_array(enum fault_site, sites, EP_ARRAY_LEN(sites));
}

ParameterizedTest(enum fault_site *site, fault_plan, accepts_each_site_alone)
{
    char text[64];
    snprintf(text, sizeof(text), "nth=1,sites=%s", fault_site_name(*site));
    cr_assert_eq(parse_ok(text).sites, 1u << *site, "%s", text);
}

Test(fault_plan, accepts_all_sites_in_any_order)
{
    cr_assert_eq(parse_ok("nth=1,sites=alloc|setsockopt|accept|send|recv").sites, FAULT_SITES_ALL);
}

Test(fault_plan, accepts_a_connection_filter)
{
    cr_assert_eq(parse_ok("nth=1,conn=3").conn, 3);
    cr_assert_eq(parse_ok("nth=1,conn=0").conn, 0);
    cr_assert_eq(parse_ok("nth=1,conn=9223372036854775807").conn, INT64_MAX);
}

Test(fault_plan, accepts_every_key_at_once)
{
    struct fault_plan p = parse_ok("seed=9,connreset=0.1,partial_send=0.2,zero_read=0.3,"
                                   "accept_fail=0.4,setsockopt_fail=0.5,alloc_fail=0.6,"
                                   "nth=2,count=3,sites=recv|alloc,conn=4");
    const double probs[FAULT_KINDS] = {0.1, 0.2, 0.3, 0.4, 0.5, 0.6};
    cr_assert_eq(p.seed, 9);
    for (int k = 0; k < FAULT_KINDS; k++)
        cr_assert_eq(p.prob[k], probs[k], "prob[%d]", k);
    cr_assert_eq(p.nth, 2);
    cr_assert_eq(p.count, 3);
    cr_assert_eq(p.persist, 0);
    cr_assert_eq(p.sites, (1u << FAULT_SITE_RECV) | (1u << FAULT_SITE_ALLOC));
    cr_assert_eq(p.conn, 4);
}

/* ---- rejections ---- */

Test(fault_plan, rejects_probability_above_one)
{
    struct fault_plan p;
    char err[256];
    cr_assert_eq(fault_plan_parse("seed=1,partial_send=1.5", &p, err, sizeof(err)), EP_EINVAL);
    cr_assert_str_eq(err, "bad fault plan token 'partial_send=1.5': probability must be in [0,1]");
}

Test(fault_plan, rejects_an_empty_plan)
{
    struct fault_plan p;
    char err[256] = "";
    cr_assert_eq(fault_plan_parse("", &p, err, sizeof(err)), EP_EINVAL);
    cr_assert_str_eq(err, "bad fault plan '': empty plan");
    cr_assert_eq(fault_plan_parse(NULL, &p, err, sizeof(err)), EP_EINVAL);
    cr_assert_str_eq(err, "bad fault plan '': empty plan");
}

Test(fault_plan, rejects_an_unknown_key)
{
    parse_rejects("seed=1,bogus=2", "bogus=2", "unknown key 'bogus'");
}

Test(fault_plan, rejects_keys_in_another_case)
{
    parse_rejects("Seed=1", "Seed=1", "unknown key 'Seed'");
}

Test(fault_plan, rejects_a_missing_key)
{
    parse_rejects("=1", "=1", "unknown key ''");
}

Test(fault_plan, rejects_blanks_around_tokens)
{
    parse_rejects("seed=1, connreset=0.5", " connreset=0.5", "unknown key ' connreset'");
    parse_rejects("seed =1", "seed =1", "unknown key 'seed '");
}

Test(fault_plan, rejects_a_duplicated_key)
{
    parse_rejects("seed=1,nth=2,seed=1", "seed=1", "duplicated key 'seed'");
}

Test(fault_plan, rejects_a_duplicated_probability)
{
    parse_rejects("connreset=0.1,zero_read=0.1,connreset=0.2", "connreset=0.2",
                  "duplicated key 'connreset'");
}

Test(fault_plan, rejects_a_duplicated_persist)
{
    parse_rejects("nth=1,persist,persist", "persist", "duplicated key 'persist'");
}

Test(fault_plan, rejects_an_empty_token_between_commas)
{
    parse_rejects("seed=1,,nth=2", "", "(token 2): empty token");
}

Test(fault_plan, rejects_a_leading_comma)
{
    parse_rejects(",seed=1", "", "(token 1): empty token");
}

Test(fault_plan, rejects_a_trailing_comma)
{
    parse_rejects("seed=1,", "", "(token 2): empty token");
}

Test(fault_plan, rejects_a_lone_comma)
{
    parse_rejects(",", "", "(token 1): empty token");
}

Test(fault_plan, rejects_a_key_without_value)
{
    parse_rejects("seed", "seed", "expected key=value");
    parse_rejects("nth=1,connreset", "connreset", "expected key=value");
}

Test(fault_plan, rejects_persist_with_a_value)
{
    parse_rejects("nth=1,persist=1", "persist=1", "persist takes no value");
}

struct bad_token {
    char text[64];
    char token[48];
    char reason[48];
};

ParameterizedTestParameters(fault_plan, rejects_non_numeric_integers)
{
    static struct bad_token cases[] = {
        {"seed=", "seed=", "expected a decimal integer"},
        {"seed=abc", "seed=abc", "expected a decimal integer"},
        {"seed=12x", "seed=12x", "expected a decimal integer"},
        {"seed=0x10", "seed=0x10", "expected a decimal integer"},
        {"seed=+1", "seed=+1", "expected a decimal integer"},
        {"seed= 1", "seed= 1", "expected a decimal integer"},
        {"seed=1 ", "seed=1 ", "expected a decimal integer"},
        {"seed=-", "seed=-", "expected a decimal integer"},
        {"nth=1.0", "nth=1.0", "expected a decimal integer"},
        {"nth=1e3", "nth=1e3", "expected a decimal integer"},
        {"nth=1,count=two", "count=two", "expected a decimal integer"},
        {"nth=1,conn=3a", "conn=3a", "expected a decimal integer"},
        {"seed=1=2", "seed=1=2", "expected a decimal integer"},
    };
    return cr_make_param_array(struct bad_token, cases, EP_ARRAY_LEN(cases));
}

ParameterizedTest(struct bad_token *c, fault_plan, rejects_non_numeric_integers)
{
    parse_rejects(c->text, c->token, c->reason);
}

ParameterizedTestParameters(fault_plan, rejects_negative_integers)
{
    static struct bad_token cases[] = {
        {"seed=-5", "seed=-5", "must not be negative"},
        {"nth=-1", "nth=-1", "must not be negative"},
        {"nth=1,count=-2", "count=-2", "must not be negative"},
        {"nth=1,conn=-1", "conn=-1", "must not be negative"},
        {"nth=-0", "nth=-0", "must not be negative"},
    };
    return cr_make_param_array(struct bad_token, cases, EP_ARRAY_LEN(cases));
}

ParameterizedTest(struct bad_token *c, fault_plan, rejects_negative_integers)
{
    parse_rejects(c->text, c->token, c->reason);
}

ParameterizedTestParameters(fault_plan, rejects_integer_overflow)
{
    static struct bad_token cases[] = {
        {"seed=18446744073709551616", "seed=18446744073709551616", "number out of range"},
        {"seed=99999999999999999999", "seed=99999999999999999999", "number out of range"},
        {"nth=184467440737095516150", "nth=184467440737095516150", "number out of range"},
        {"nth=1,count=18446744073709551616", "count=18446744073709551616", "number out of range"},
        {"nth=1,conn=9223372036854775808", "conn=9223372036854775808", "number out of range"},
    };
    return cr_make_param_array(struct bad_token, cases, EP_ARRAY_LEN(cases));
}

ParameterizedTest(struct bad_token *c, fault_plan, rejects_integer_overflow)
{
    parse_rejects(c->text, c->token, c->reason);
}

ParameterizedTestParameters(fault_plan, rejects_probabilities_outside_zero_one)
{
    static struct bad_token cases[] = {
        {"connreset=1.5", "connreset=1.5", "probability must be in [0,1]"},
        {"connreset=1.0000001", "connreset=1.0000001", "probability must be in [0,1]"},
        {"connreset=2", "connreset=2", "probability must be in [0,1]"},
        {"zero_read=1e400", "zero_read=1e400", "probability must be in [0,1]"},
        {"accept_fail=-0.1", "accept_fail=-0.1", "probability must be in [0,1]"},
        {"alloc_fail=-0", "alloc_fail=-0", "probability must be in [0,1]"},
        {"setsockopt_fail=10e-1x", "setsockopt_fail=10e-1x",
         "probability must be a decimal number in [0,1]"},
    };
    return cr_make_param_array(struct bad_token, cases, EP_ARRAY_LEN(cases));
}

ParameterizedTest(struct bad_token *c, fault_plan, rejects_probabilities_outside_zero_one)
{
    parse_rejects(c->text, c->token, c->reason);
}

ParameterizedTestParameters(fault_plan, rejects_nan_and_infinite_probabilities)
{
    static struct bad_token cases[] = {
        {"connreset=nan", "connreset=nan", "probability must be a decimal number in [0,1]"},
        {"connreset=NaN", "connreset=NaN", "probability must be a decimal number in [0,1]"},
        {"connreset=inf", "connreset=inf", "probability must be a decimal number in [0,1]"},
        {"connreset=infinity", "connreset=infinity",
         "probability must be a decimal number in [0,1]"},
        {"connreset=-nan", "connreset=-nan", "probability must be a decimal number in [0,1]"},
    };
    return cr_make_param_array(struct bad_token, cases, EP_ARRAY_LEN(cases));
}

ParameterizedTest(struct bad_token *c, fault_plan, rejects_nan_and_infinite_probabilities)
{
    parse_rejects(c->text, c->token, c->reason);
}

ParameterizedTestParameters(fault_plan, rejects_malformed_probabilities)
{
#define MALFORMED "probability must be a decimal number in [0,1]"
    static struct bad_token cases[] = {
        {"partial_send=", "partial_send=", MALFORMED},
        {"partial_send=abc", "partial_send=abc", MALFORMED},
        {"partial_send=0.5x", "partial_send=0.5x", MALFORMED},
        {"partial_send=.", "partial_send=.", MALFORMED},
        {"partial_send=1e", "partial_send=1e", MALFORMED},
        {"partial_send=1e+", "partial_send=1e+", MALFORMED},
        {"partial_send=e5", "partial_send=e5", MALFORMED},
        {"partial_send=+0.5", "partial_send=+0.5", MALFORMED},
        {"partial_send= 0.5", "partial_send= 0.5", MALFORMED},
        {"partial_send=0.5 ", "partial_send=0.5 ", MALFORMED},
        {"partial_send=0..5", "partial_send=0..5", MALFORMED},
        {"partial_send=0.5.1", "partial_send=0.5.1", MALFORMED},
        {"partial_send=0x1p-1", "partial_send=0x1p-1", MALFORMED},
        /* a decimal comma splits the token: "partial_send=0" then the unknown key "5" */
        {"partial_send=0,5", "5", "unknown key '5'"},
    };
#undef MALFORMED
    return cr_make_param_array(struct bad_token, cases, EP_ARRAY_LEN(cases));
}

ParameterizedTest(struct bad_token *c, fault_plan, rejects_malformed_probabilities)
{
    parse_rejects(c->text, c->token, c->reason);
}

Test(fault_plan, rejects_nth_zero)
{
    parse_rejects("nth=0", "nth=0", "nth must be at least 1");
}

Test(fault_plan, rejects_count_zero)
{
    parse_rejects("nth=1,count=0", "count=0", "count must be at least 1");
}

Test(fault_plan, rejects_count_without_nth)
{
    parse_rejects("seed=1,count=3", "count=3", "count needs nth");
}

Test(fault_plan, rejects_persist_without_nth)
{
    parse_rejects("connreset=0.5,persist", "persist", "persist needs nth");
}

Test(fault_plan, rejects_count_with_persist_naming_the_later)
{
    parse_rejects("nth=1,count=2,persist", "persist", "count and persist are exclusive");
    parse_rejects("nth=1,persist,count=2", "count=2", "count and persist are exclusive");
}

Test(fault_plan, rejects_an_unknown_site)
{
    parse_rejects("nth=1,sites=recv|bogus", "sites=recv|bogus", "unknown site 'bogus'");
    parse_rejects("nth=1,sites=connreset", "sites=connreset", "unknown site 'connreset'");
    parse_rejects("nth=1,sites=recv,send", "send", "unknown key 'send'");
}

Test(fault_plan, rejects_an_empty_site_name)
{
    parse_rejects("nth=1,sites=", "sites=", "empty site name");
    parse_rejects("nth=1,sites=recv|", "sites=recv|", "empty site name");
    parse_rejects("nth=1,sites=|recv", "sites=|recv", "empty site name");
    parse_rejects("nth=1,sites=recv||send", "sites=recv||send", "empty site name");
}

Test(fault_plan, rejects_a_duplicated_site)
{
    parse_rejects("nth=1,sites=recv|send|recv", "sites=recv|send|recv", "duplicated site 'recv'");
}

/* ---- the message itself ---- */

Test(fault_plan, escapes_control_characters_to_keep_one_line)
{
    parse_rejects("seed=1\nnth=2", "seed=1\\x0anth=2", "expected a decimal integer");
    parse_rejects("seed=1,\r\x7f\xff=1", "\\x0d\\x7f\\xff=1", "unknown key");
}

Test(fault_plan, cuts_long_tokens_in_the_message)
{
    char text[400], err[512];
    struct fault_plan p;
    memset(text, 'k', 300);
    snprintf(text + 300, sizeof(text) - 300, "=1");
    cr_assert_eq(fault_plan_parse(text, &p, err, sizeof(err)), EP_EINVAL);
    cr_assert_not_null(strstr(err, "'kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk...'"), "%s",
                       err);
    cr_assert_lt(strlen(err), 200);
}

Test(fault_plan, fits_the_message_into_any_buffer)
{
    struct fault_plan p;
    char err[64];
    for (size_t len = 1; len < sizeof(err); len++) {
        memset(err, '#', sizeof(err));
        cr_assert_eq(fault_plan_parse("connreset=7", &p, err, len), EP_EINVAL);
        cr_assert_eq(strlen(err), len - 1, "errlen %d", (int)len);
    }
}

Test(fault_plan, rejects_without_an_error_buffer)
{
    struct fault_plan p;
    cr_assert_eq(fault_plan_parse("bogus=1", &p, NULL, 0), EP_EINVAL);
    cr_assert_eq(fault_plan_parse("", &p, NULL, 0), EP_EINVAL);
    cr_assert_eq(fault_plan_parse("seed=1,", &p, NULL, 0), EP_EINVAL);
    cr_assert_eq(fault_plan_parse("count=1", &p, NULL, 0), EP_EINVAL);
}
