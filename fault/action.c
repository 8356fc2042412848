/* action.c - the meaning of each fault kind for each operation, written once: the
 * backends (and the unit tests' fake backend) only realise the returned action. */
#include "ep.h"
#include "fault.h"

static const struct fault_action pass = {FAULT_PASS, 0, 0};

/* A failure now or on completion, chosen by the low bit of the call's hash. */
static struct fault_action failure(uint64_t aux, int error)
{
    struct fault_action a = {aux & 1 ? FAULT_FAIL_LATER : FAULT_FAIL_NOW, error, 0};
    return a;
}

struct fault_action fault_recv_action(uint64_t conn, uint64_t op)
{
    uint64_t aux = 0;
    enum fault_kind kind = fault_decide(FAULT_SITE_RECV, conn, op, &aux);
    if (kind == FAULT_CONNRESET) {
        fault_record(FAULT_SITE_RECV, conn, op, kind, EP_ECONNRESET);
        return failure(aux, EP_ECONNRESET);
    }
    if (kind == FAULT_ZERO_READ) {
        struct fault_action eof = {FAULT_EOF, 0, 0};
        fault_record(FAULT_SITE_RECV, conn, op, kind, 0);
        return eof;
    }
    return pass;
}

struct fault_action fault_send_action(uint64_t conn, uint64_t op, size_t len)
{
    uint64_t aux = 0;
    enum fault_kind kind = fault_decide(FAULT_SITE_SEND, conn, op, &aux);
    if (kind == FAULT_CONNRESET) {
        fault_record(FAULT_SITE_SEND, conn, op, kind, EP_ECONNRESET);
        return failure(aux, EP_ECONNRESET);
    }
    if (kind == FAULT_PARTIAL_SEND && len >= 2) {
        struct fault_action shorter = {FAULT_SHORTEN, 0, 1 + (size_t)(aux % (len - 1))};
        fault_record(FAULT_SITE_SEND, conn, op, kind, 0);
        return shorter;
    }
    return pass;
}

struct fault_action fault_accept_action(uint64_t op)
{
    static const int codes[] = {EP_ECONNRESET, EP_EMFILE, EP_ENOBUFS};
    uint64_t aux = 0;
    if (fault_decide(FAULT_SITE_ACCEPT, 0, op, &aux) != FAULT_ACCEPT_FAIL)
        return pass;
    int code = codes[(aux >> 1) % EP_ARRAY_LEN(codes)];
    fault_record(FAULT_SITE_ACCEPT, 0, op, FAULT_ACCEPT_FAIL, code);
    return failure(aux, code);
}

struct fault_action fault_setsockopt_action(uint64_t op)
{
    struct fault_action fail = {FAULT_FAIL_NOW, EP_ENOBUFS, 0};
    if (fault_decide(FAULT_SITE_SETSOCKOPT, 0, op, NULL) != FAULT_SETSOCKOPT_FAIL)
        return pass;
    fault_record(FAULT_SITE_SETSOCKOPT, 0, op, FAULT_SETSOCKOPT_FAIL, EP_ENOBUFS);
    return fail;
}
