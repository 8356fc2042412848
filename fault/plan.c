/* plan.c - the fault-plan grammar: "key=value,..." into a struct fault_plan, and the
 * names of sites and kinds it shares with the log. */
#include "fault.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ep.h"

static const char *const kind_names[FAULT_KINDS] = {
    [FAULT_CONNRESET] = "connreset",
    [FAULT_PARTIAL_SEND] = "partial_send",
    [FAULT_ZERO_READ] = "zero_read",
    [FAULT_ACCEPT_FAIL] = "accept_fail",
    [FAULT_SETSOCKOPT_FAIL] = "setsockopt_fail",
    [FAULT_ALLOC_FAIL] = "alloc_fail",
};

static const char *const site_names[FAULT_SITES] = {
    [FAULT_SITE_RECV] = "recv",     [FAULT_SITE_SEND] = "send",
    [FAULT_SITE_ACCEPT] = "accept", [FAULT_SITE_SETSOCKOPT] = "setsockopt",
    [FAULT_SITE_ALLOC] = "alloc",
};

/* Keys 0 .. FAULT_KINDS-1 are the per-kind probabilities, named after their kind. */
enum plan_key {
    KEY_SEED = FAULT_KINDS,
    KEY_NTH,
    KEY_COUNT,
    KEY_PERSIST,
    KEY_SITES,
    KEY_CONN,
    KEYS
};

static const char *const other_key_names[KEYS - FAULT_KINDS] = {
    [KEY_SEED - FAULT_KINDS] = "seed",   [KEY_NTH - FAULT_KINDS] = "nth",
    [KEY_COUNT - FAULT_KINDS] = "count", [KEY_PERSIST - FAULT_KINDS] = "persist",
    [KEY_SITES - FAULT_KINDS] = "sites", [KEY_CONN - FAULT_KINDS] = "conn",
};

/* Longest part of a token quoted in an error message before it is cut with "...". */
#define QUOTE_MAX 48

/* A piece of the plan text: not NUL-terminated. */
struct span {
    const char *s;
    size_t len;
};

/* What the parser has seen so far besides the plan itself. */
struct parse_state {
    struct fault_plan plan;
    unsigned seen;         /* bit per enum plan_key */
    struct span count_tok; /* for the cross-token checks */
    struct span persist_tok;
};

const char *fault_kind_name(enum fault_kind kind)
{
    if (kind == FAULT_NONE)
        return "none";
    return (unsigned)kind < FAULT_KINDS ? kind_names[kind] : "?";
}

const char *fault_site_name(enum fault_site site)
{
    return (unsigned)site < FAULT_SITES ? site_names[site] : "?";
}

/* Nonzero when span a spells the NUL-terminated word. */
static int span_is(struct span a, const char *word)
{
    return strlen(word) == a.len && memcmp(a.s, word, a.len) == 0;
}

/* Writes span a into out (size >= 4 * QUOTE_MAX + 4) printable and on one line:
 * bytes outside ' '..'~' as \xNN, cut after QUOTE_MAX bytes with "...". */
static void quote(char *out, struct span a)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = a.len > QUOTE_MAX ? QUOTE_MAX : a.len;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)a.s[i];
        if (c >= ' ' && c <= '~') {
            *out++ = (char)c;
        } else {
            *out++ = '\\';
            *out++ = 'x';
            *out++ = hex[c >> 4];
            *out++ = hex[c & 15];
        }
    }
    if (a.len > n)
        out += sprintf(out, "...");
    *out = '\0';
}

/* Writes "bad fault plan token 'TOK': REASON[ 'DETAIL']" into err; returns EP_EINVAL. */
static int fail(char *err, size_t errlen, struct span tok, const char *reason,
                const struct span *detail)
{
    char qtok[4 * QUOTE_MAX + 4], qdetail[4 * QUOTE_MAX + 4];
    if (!err || errlen == 0)
        return EP_EINVAL;
    quote(qtok, tok);
    if (detail) {
        quote(qdetail, *detail);
        snprintf(err, errlen, "bad fault plan token '%s': %s '%s'", qtok, reason, qdetail);
    } else {
        snprintf(err, errlen, "bad fault plan token '%s': %s", qtok, reason);
    }
    return EP_EINVAL;
}

/* The enum plan_key named by span k, or -1. */
static int find_key(struct span k)
{
    for (int i = 0; i < FAULT_KINDS; i++)
        if (span_is(k, kind_names[i]))
            return i;
    for (int i = KEY_SEED; i < KEYS; i++)
        if (span_is(k, other_key_names[i - FAULT_KINDS]))
            return i;
    return -1;
}

/* Reads the unsigned decimal integer v into *out; NULL, or why v is not one. */
static const char *parse_u64(struct span v, uint64_t *out)
{
    size_t i = v.len > 1 && v.s[0] == '-';
    uint64_t x = 0;
    if (i == v.len)
        return "expected a decimal integer";
    for (; i < v.len; i++) {
        unsigned d = (unsigned)(v.s[i] - '0');
        if (d > 9)
            return "expected a decimal integer";
        if (x > (UINT64_MAX - d) / 10)
            return "number out of range";
        x = x * 10 + d;
    }
    if (v.s[0] == '-')
        return "must not be negative";
    *out = x;
    return NULL;
}

/* Nonzero when v is digits[.digits][(e|E)[+|-]digits] with a digit before the exponent. */
static int is_decimal(struct span v)
{
    size_t i = 0, mantissa = 0;
    while (i < v.len && v.s[i] >= '0' && v.s[i] <= '9')
        i++, mantissa++;
    if (i < v.len && v.s[i] == '.')
        for (i++; i < v.len && v.s[i] >= '0' && v.s[i] <= '9'; i++)
            mantissa++;
    if (mantissa == 0)
        return 0;
    if (i < v.len && (v.s[i] == 'e' || v.s[i] == 'E')) {
        size_t digits = 0;
        i++;
        if (i < v.len && (v.s[i] == '+' || v.s[i] == '-'))
            i++;
        for (; i < v.len && v.s[i] >= '0' && v.s[i] <= '9'; i++)
            digits++;
        if (digits == 0)
            return 0;
    }
    return i == v.len;
}

/* Reads the probability v (followed by ',' or NUL) into *out; NULL, or why it is not one. */
static const char *parse_prob(struct span v, double *out)
{
    static const char range[] = "probability must be in [0,1]";
    struct span body = v;
    if (v.len > 0 && v.s[0] == '-')
        body.s++, body.len--;
    if (!is_decimal(body))
        return "probability must be a decimal number in [0,1]";
    if (body.s != v.s)
        return range;
    char *end;
    double x = strtod(v.s, &end);
    if (end != v.s + v.len)
        return "probability must be a decimal number in [0,1]";
    if (!(x >= 0.0 && x <= 1.0))
        return range;
    *out = x;
    return NULL;
}

/* Reads "site|site..." v into the bit mask *out; 0, or EP_EINVAL naming tok. */
static int parse_sites(struct span tok, struct span v, unsigned *out, char *err, size_t errlen)
{
    unsigned mask = 0;
    const char *s = v.s, *end = v.s + v.len;
    for (;;) {
        const char *bar = memchr(s, '|', (size_t)(end - s));
        struct span name = {s, (size_t)((bar ? bar : end) - s)};
        int site = -1;
        for (int i = 0; i < FAULT_SITES && site < 0; i++)
            if (span_is(name, site_names[i]))
                site = i;
        if (name.len == 0)
            return fail(err, errlen, tok, "empty site name", NULL);
        if (site < 0)
            return fail(err, errlen, tok, "unknown site", &name);
        if (mask & (1u << site))
            return fail(err, errlen, tok, "duplicated site", &name);
        mask |= 1u << site;
        if (!bar)
            break;
        s = bar + 1;
    }
    *out = mask;
    return 0;
}

/* Applies one non-empty token to st; 0, or EP_EINVAL naming it. */
static int parse_token(struct parse_state *st, struct span tok, char *err, size_t errlen)
{
    const char *eq = memchr(tok.s, '=', tok.len);
    struct span key = {tok.s, eq ? (size_t)(eq - tok.s) : tok.len};
    struct span val = {eq ? eq + 1 : tok.s + tok.len, eq ? tok.len - key.len - 1 : 0};
    struct fault_plan *p = &st->plan;
    const char *why = NULL;
    uint64_t n = 0;

    int k = find_key(key);
    if (k < 0)
        return fail(err, errlen, tok, "unknown key", &key);
    if (st->seen & (1u << k))
        return fail(err, errlen, tok, "duplicated key", &key);
    st->seen |= 1u << k;
    if (k == KEY_PERSIST) {
        if (eq)
            return fail(err, errlen, tok, "persist takes no value", NULL);
        p->persist = 1;
        st->persist_tok = tok;
        return 0;
    }
    if (!eq)
        return fail(err, errlen, tok, "expected key=value", NULL);
    if (k < FAULT_KINDS) {
        why = parse_prob(val, &p->prob[k]);
    } else if (k == KEY_SITES) {
        return parse_sites(tok, val, &p->sites, err, errlen);
    } else if (!(why = parse_u64(val, &n))) {
        switch (k) {
        case KEY_SEED:
            p->seed = n;
            break;
        case KEY_NTH:
            why = n == 0 ? "nth must be at least 1" : NULL;
            p->nth = n;
            break;
        case KEY_COUNT:
            why = n == 0 ? "count must be at least 1" : NULL;
            p->count = n;
            st->count_tok = tok;
            break;
        default: /* KEY_CONN */
            why = n > INT64_MAX ? "number out of range" : NULL;
            p->conn = (int64_t)n;
            break;
        }
    }
    return why ? fail(err, errlen, tok, why, NULL) : 0;
}

int fault_plan_parse(const char *text, struct fault_plan *plan, char *err, size_t errlen)
{
    struct parse_state st = {.plan = {.count = 1, .sites = FAULT_SITES_ALL, .conn = -1}};
    if (!text || !*text) {
        if (err && errlen)
            snprintf(err, errlen, "bad fault plan '': empty plan");
        return EP_EINVAL;
    }
    int index = 1;
    for (const char *s = text;; index++) {
        const char *comma = strchr(s, ',');
        struct span tok = {s, comma ? (size_t)(comma - s) : strlen(s)};
        if (tok.len == 0) {
            if (err && errlen)
                snprintf(err, errlen, "bad fault plan token '' (token %d): empty token", index);
            return EP_EINVAL;
        }
        int rc = parse_token(&st, tok, err, errlen);
        if (rc)
            return rc;
        if (!comma)
            break;
        s = comma + 1;
    }
    int nth = (st.seen & (1u << KEY_NTH)) != 0;
    if (st.count_tok.s && !nth)
        return fail(err, errlen, st.count_tok, "count needs nth", NULL);
    if (st.persist_tok.s && !nth)
        return fail(err, errlen, st.persist_tok, "persist needs nth", NULL);
    if (st.count_tok.s && st.persist_tok.s)
        return fail(err, errlen, st.count_tok.s > st.persist_tok.s ? st.count_tok : st.persist_tok,
                    "count and persist are exclusive", NULL);
    *plan = st.plan;
    return 0;
}
