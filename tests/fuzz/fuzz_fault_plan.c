/* fuzz_fault_plan.c - libFuzzer target for the fault-plan parser: any input either
 * parses into a plan that keeps the struct's invariants (and drives fault_decide to
 * site-valid kinds only), or is rejected with one non-empty line and the plan untouched. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ep.h"
#include "fault.h"

/* Aborts (a crash libFuzzer reports) when an invariant does not hold. */
#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            abort();                                                                               \
    } while (0)

/* Asserts what every accepted plan must satisfy. */
static void check_plan(const struct fault_plan *p)
{
    for (int k = 0; k < FAULT_KINDS; k++)
        CHECK(p->prob[k] >= 0.0 && p->prob[k] <= 1.0); /* false for NaN too */
    CHECK(p->count >= 1);
    CHECK(p->persist == 0 || p->persist == 1);
    CHECK(p->nth > 0 || (p->count == 1 && !p->persist));
    CHECK(!(p->persist && p->count != 1));
    CHECK(p->sites != 0 && (p->sites & ~FAULT_SITES_ALL) == 0);
    CHECK(p->conn >= -1);
}

/* Asserts the kind fault_decide gave at `site` is one that site can get. */
static void check_kind(enum fault_site site, enum fault_kind kind)
{
    switch (kind) {
    case FAULT_NONE:
        return;
    case FAULT_CONNRESET:
        CHECK(site == FAULT_SITE_RECV || site == FAULT_SITE_SEND);
        return;
    case FAULT_ZERO_READ:
        CHECK(site == FAULT_SITE_RECV);
        return;
    case FAULT_PARTIAL_SEND:
        CHECK(site == FAULT_SITE_SEND);
        return;
    case FAULT_ACCEPT_FAIL:
        CHECK(site == FAULT_SITE_ACCEPT);
        return;
    case FAULT_SETSOCKOPT_FAIL:
        CHECK(site == FAULT_SITE_SETSOCKOPT);
        return;
    case FAULT_ALLOC_FAIL:
        CHECK(site == FAULT_SITE_ALLOC);
        return;
    default:
        CHECK(0);
    }
}

/* Runs a few decisions under plan p; checks the kinds, the filters and the call count. */
static void check_decisions(const struct fault_plan *p)
{
    uint64_t counted = 0;
    CHECK(fault_enable(p, NULL, NULL, 0) == 0);
    for (uint64_t i = 0; i < 40; i++) {
        enum fault_site site = (enum fault_site)(i % FAULT_SITES);
        uint64_t conn = i % 4, aux;
        enum fault_kind kind = fault_decide(site, conn, i, &aux);
        int filtered = !(p->sites & (1u << site)) || (p->conn >= 0 && conn != (uint64_t)p->conn);
        check_kind(site, kind);
        CHECK(!filtered || kind == FAULT_NONE);
        counted += !filtered;
    }
    CHECK(fault_calls() == counted);
    fault_disable();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1), err[256], small[8];
    struct fault_plan plan, before, again;
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    memset(&plan, 0xa5, sizeof(plan));
    before = plan;
    memset(err, 0, sizeof(err));

    int rc = fault_plan_parse(text, &plan, err, sizeof(err));
    CHECK(rc == 0 || rc == EP_EINVAL);
    if (rc == 0) {
        check_plan(&plan);
        CHECK(fault_plan_parse(text, &again, NULL, 0) == 0);
        CHECK(memcmp(&plan, &again, sizeof(plan)) == 0);
        check_decisions(&plan);
    } else {
        CHECK(err[0] != '\0');
        CHECK(strncmp(err, "bad fault plan", 14) == 0);
        CHECK(strpbrk(err, "\r\n") == NULL);
        CHECK(memcmp(&plan, &before, sizeof(plan)) == 0);
        CHECK(fault_plan_parse(text, &plan, NULL, 0) == EP_EINVAL);
        CHECK(fault_plan_parse(text, &plan, small, sizeof(small)) == EP_EINVAL);
        CHECK(strlen(small) == sizeof(small) - 1);
    }
    free(text);
    return 0;
}
