/* sock_shim.c - the socket-call table of the IOCP backend, its counting defaults and
 * the fault-plan wrappers (DESIGN section 3). */
#ifdef _WIN32

#include "sock_shim.h"

#include <string.h>

#include "core/stats.h"
#include "fault.h"

/* The defaults: the real calls, plus socket counting where sockets are born and die. */

/* WSASocketW, counting each socket it creates. */
static SOCKET WSAAPI dflt_WSASocketW(int af, int type, int proto, LPWSAPROTOCOL_INFOW info, GROUP g,
                                     DWORD flags)
{
    SOCKET s = WSASocketW(af, type, proto, info, g, flags);
    if (s != INVALID_SOCKET)
        stats_add(sockets_opened, 1);
    return s;
}

/* closesocket, counting each socket it really closes. */
static int WSAAPI dflt_closesocket(SOCKET s)
{
    int rc = closesocket(s);
    if (rc == 0)
        stats_add(sockets_closed, 1);
    return rc;
}

/* The rest forward the real calls: the address of a dllimport function is not a
 * constant initializer, so the table holds these local stand-ins. */
static int WSAAPI dflt_bind(SOCKET s, const struct sockaddr *a, int n)
{
    return bind(s, a, n);
}
static int WSAAPI dflt_listen(SOCKET s, int n)
{
    return listen(s, n);
}

static int WSAAPI dflt_setsockopt(SOCKET s, int level, int name, const char *v, int n)
{
    return setsockopt(s, level, name, v, n);
}

static int WSAAPI dflt_getsockname(SOCKET s, struct sockaddr *a, int *n)
{
    return getsockname(s, a, n);
}

static int WSAAPI dflt_ioctlsocket(SOCKET s, long cmd, u_long *arg)
{
    return ioctlsocket(s, cmd, arg);
}

static int WSAAPI dflt_WSAIoctl(SOCKET s, DWORD code, LPVOID in, DWORD inlen, LPVOID out,
                                DWORD outlen, LPDWORD ret, LPWSAOVERLAPPED ov,
                                LPWSAOVERLAPPED_COMPLETION_ROUTINE fn)
{
    return WSAIoctl(s, code, in, inlen, out, outlen, ret, ov, fn);
}

static int WSAAPI dflt_WSARecv(SOCKET s, LPWSABUF b, DWORD n, LPDWORD got, LPDWORD flags,
                               LPWSAOVERLAPPED ov, LPWSAOVERLAPPED_COMPLETION_ROUTINE fn)
{
    return WSARecv(s, b, n, got, flags, ov, fn);
}

static int WSAAPI dflt_WSASend(SOCKET s, LPWSABUF b, DWORD n, LPDWORD sent, DWORD flags,
                               LPWSAOVERLAPPED ov, LPWSAOVERLAPPED_COMPLETION_ROUTINE fn)
{
    return WSASend(s, b, n, sent, flags, ov, fn);
}

static BOOL WSAAPI dflt_WSAGetOverlappedResult(SOCKET s, LPWSAOVERLAPPED ov, LPDWORD n, BOOL wait,
                                               LPDWORD flags)
{
    return WSAGetOverlappedResult(s, ov, n, wait, flags);
}

static HANDLE WINAPI dflt_CreateIoCompletionPort(HANDLE h, HANDLE port, ULONG_PTR key, DWORD n)
{
    return CreateIoCompletionPort(h, port, key, n);
}

static BOOL WINAPI dflt_GetQueuedCompletionStatusEx(HANDLE port, LPOVERLAPPED_ENTRY e, ULONG n,
                                                    PULONG got, DWORD ms, BOOL alertable)
{
    return GetQueuedCompletionStatusEx(port, e, n, got, ms, alertable);
}

static BOOL WINAPI dflt_PostQueuedCompletionStatus(HANDLE port, DWORD n, ULONG_PTR key,
                                                   LPOVERLAPPED ov)
{
    return PostQueuedCompletionStatus(port, n, key, ov);
}

static BOOL WINAPI dflt_SetFileCompletionNotificationModes(HANDLE h, UCHAR flags)
{
    return SetFileCompletionNotificationModes(h, flags);
}

#define SHIM_ENTRY(id) [SHIM_##id] = {#id, (void *)dflt_##id, (void *)dflt_##id}

struct shim_entry shim_table[SHIM_COUNT] = {
    SHIM_ENTRY(WSASocketW),
    SHIM_ENTRY(closesocket),
    SHIM_ENTRY(bind),
    SHIM_ENTRY(listen),
    SHIM_ENTRY(setsockopt),
    SHIM_ENTRY(getsockname),
    SHIM_ENTRY(ioctlsocket),
    SHIM_ENTRY(WSAIoctl),
    [SHIM_AcceptEx] = {"AcceptEx", NULL, NULL},
    SHIM_ENTRY(WSARecv),
    SHIM_ENTRY(WSASend),
    SHIM_ENTRY(WSAGetOverlappedResult),
    SHIM_ENTRY(CreateIoCompletionPort),
    SHIM_ENTRY(GetQueuedCompletionStatusEx),
    SHIM_ENTRY(PostQueuedCompletionStatus),
    SHIM_ENTRY(SetFileCompletionNotificationModes),
};

/* The entry called `name`, or NULL. */
static struct shim_entry *shim_find(const char *name)
{
    for (int i = 0; name && i < SHIM_COUNT; i++)
        if (strcmp(shim_table[i].name, name) == 0)
            return &shim_table[i];
    return NULL;
}

void *shim_get(const char *name)
{
    struct shim_entry *e = shim_find(name);
    return e ? e->current : NULL;
}

int shim_set(const char *name, void *fn)
{
    struct shim_entry *e = shim_find(name);
    if (!e)
        return -1;
    e->current = fn ? fn : e->dflt;
    return 0;
}

/* Fault wrappers: installed state and the pointers they call through. */
static int faults_installed;
static void *below[SHIM_COUNT]; /* what was current when the wrappers went in */
static HANDLE fault_port;
static ULONG_PTR fault_key;

void shim_reset(void)
{
    faults_installed = 0;
    for (int i = 0; i < SHIM_COUNT; i++)
        shim_table[i].current = shim_table[i].dflt;
}

int shim_load_extensions(SOCKET listener)
{
    GUID guid = WSAID_ACCEPTEX;
    LPFN_ACCEPTEX fn = NULL;
    DWORD got = 0;
    if (shim_WSAIoctl(listener, SIO_GET_EXTENSION_FUNCTION_POINTER, &guid, sizeof(guid), &fn,
                      sizeof(fn), &got, NULL, NULL) != 0)
        return WSAGetLastError();
    if (!fn)
        return WSAEOPNOTSUPP;
    struct shim_entry *e = &shim_table[SHIM_AcceptEx];
    /* a test's fake stays current; an unset or stale default follows the new one */
    if (!e->current || e->current == e->dflt)
        e->current = (void *)fn;
    e->dflt = (void *)fn;
    return 0;
}

/* The (connection, operation) of the calls this thread is making. */
static _Thread_local struct {
    int valid;
    uint64_t conn, op;
} shim_ctx;

void shim_ctx_set(uint64_t conn, uint64_t op)
{
    shim_ctx.valid = 1;
    shim_ctx.conn = conn;
    shim_ctx.op = op;
}

void shim_ctx_clear(void)
{
    shim_ctx.valid = 0;
}

/* The fault to inject into this call at `site`, FAULT_NONE outside a context. */
static enum fault_kind decide(enum fault_site site, uint64_t *aux)
{
    *aux = 0;
    if (!shim_ctx.valid || !fault_active())
        return FAULT_NONE;
    return fault_decide(site, shim_ctx.conn, shim_ctx.op, aux);
}

/* Fails an overlapped call "on completion": the real call is skipped and a
 * completion carrying `wsa` is queued instead. Returns what a pending call returns. */
static int complete_later(LPOVERLAPPED ov, DWORD wsa)
{
    ov->Internal = SHIM_STATUS(wsa);
    ov->InternalHigh = 0;
    if (!((shim_PostQueuedCompletionStatus_fn)below[SHIM_PostQueuedCompletionStatus])(
            fault_port, 0, fault_key, ov)) {
        /* could not queue it: fail at once instead, which the caller also handles */
        WSASetLastError((int)wsa);
        return 0;
    }
    WSASetLastError(WSA_IO_PENDING);
    return 1;
}

/* WSARecv under a plan: connreset at once or on completion, zero_read as a receive
 * ended without touching the socket. Only overlapped calls (a receive being posted)
 * are faulted: the backend's follow-up non-blocking read belongs to the same
 * operation, whose fate was decided when it was posted. */
static int WSAAPI fault_WSARecv(SOCKET s, LPWSABUF b, DWORD n, LPDWORD got, LPDWORD flags,
                                LPWSAOVERLAPPED ov, LPWSAOVERLAPPED_COMPLETION_ROUTINE fn)
{
    shim_WSARecv_fn real = (shim_WSARecv_fn)below[SHIM_WSARecv];
    uint64_t aux;
    enum fault_kind kind = ov ? decide(FAULT_SITE_RECV, &aux) : FAULT_NONE;
    if (kind == FAULT_CONNRESET) {
        fault_record(FAULT_SITE_RECV, shim_ctx.conn, shim_ctx.op, kind, WSAECONNRESET);
        if (!(aux & 1) || !complete_later(ov, WSAECONNRESET))
            WSASetLastError(WSAECONNRESET);
        return SOCKET_ERROR;
    }
    if (kind == FAULT_ZERO_READ) {
        fault_record(FAULT_SITE_RECV, shim_ctx.conn, shim_ctx.op, kind, 0);
        if (!complete_later(ov, WSAEDISCON))
            WSASetLastError(WSAEDISCON);
        return SOCKET_ERROR;
    }
    return real(s, b, n, got, flags, ov, fn);
}

/* WSASend under a plan: connreset at once or on completion; partial_send issues the
 * real send with fewer bytes (1 + aux % (len - 1)), so the completion is short. A
 * non-blocking send (the backend's try before an overlapped one) that would block
 * injected nothing, and a reset "on completion" makes it would-block: the overlapped
 * send of the same operation meets the same decision, and one of the two records it. */
static int WSAAPI fault_WSASend(SOCKET s, LPWSABUF b, DWORD n, LPDWORD sent, DWORD flags,
                                LPWSAOVERLAPPED ov, LPWSAOVERLAPPED_COMPLETION_ROUTINE fn)
{
    shim_WSASend_fn real = (shim_WSASend_fn)below[SHIM_WSASend];
    uint64_t aux;
    enum fault_kind kind = decide(FAULT_SITE_SEND, &aux);
    if (kind == FAULT_CONNRESET && !ov && (aux & 1)) {
        WSASetLastError(WSAEWOULDBLOCK); /* the reset comes with the overlapped send */
        return SOCKET_ERROR;
    }
    if (kind == FAULT_CONNRESET) {
        fault_record(FAULT_SITE_SEND, shim_ctx.conn, shim_ctx.op, kind, WSAECONNRESET);
        if (!ov || !(aux & 1) || !complete_later(ov, WSAECONNRESET))
            WSASetLastError(WSAECONNRESET);
        return SOCKET_ERROR;
    }
    if (kind == FAULT_PARTIAL_SEND && n == 1 && b[0].len >= 2) {
        WSABUF shorter = b[0];
        shorter.len = (ULONG)(1 + aux % (b[0].len - 1));
        int rc = real(s, &shorter, 1, sent, flags, ov, fn);
        int err = WSAGetLastError();
        if (rc == 0 || err != WSAEWOULDBLOCK)
            fault_record(FAULT_SITE_SEND, shim_ctx.conn, shim_ctx.op, kind, 0);
        WSASetLastError(err);
        return rc;
    }
    return real(s, b, n, sent, flags, ov, fn);
}

/* AcceptEx under a plan: accept_fail at once or on completion, with a reset, out of
 * handles or out of buffers; the accept socket is left to the caller to close. */
static BOOL PASCAL fault_AcceptEx(SOCKET ls, SOCKET as, PVOID buf, DWORD rlen, DWORD llen,
                                  DWORD plen, LPDWORD got, LPOVERLAPPED ov)
{
    static const DWORD codes[] = {WSAECONNRESET, WSAEMFILE, WSAENOBUFS};
    shim_AcceptEx_fn real = (shim_AcceptEx_fn)below[SHIM_AcceptEx];
    uint64_t aux;
    if (decide(FAULT_SITE_ACCEPT, &aux) == FAULT_ACCEPT_FAIL) {
        DWORD code = codes[(aux >> 1) % 3];
        fault_record(FAULT_SITE_ACCEPT, shim_ctx.conn, shim_ctx.op, FAULT_ACCEPT_FAIL, (int)code);
        if (!ov || !(aux & 1) || !complete_later(ov, code))
            WSASetLastError((int)code);
        return FALSE;
    }
    return real(ls, as, buf, rlen, llen, plen, got, ov);
}

/* setsockopt under a plan: fails at once (SO_UPDATE_ACCEPT_CONTEXT and friends). */
static int WSAAPI fault_setsockopt(SOCKET s, int level, int name, const char *v, int n)
{
    shim_setsockopt_fn real = (shim_setsockopt_fn)below[SHIM_setsockopt];
    uint64_t aux;
    if (decide(FAULT_SITE_SETSOCKOPT, &aux) == FAULT_SETSOCKOPT_FAIL) {
        fault_record(FAULT_SITE_SETSOCKOPT, shim_ctx.conn, shim_ctx.op, FAULT_SETSOCKOPT_FAIL,
                     WSAENOBUFS);
        WSASetLastError(WSAENOBUFS);
        return SOCKET_ERROR;
    }
    return real(s, level, name, v, n);
}

/* closesocket under a plan: always closes the real socket (no fault is ever injected
 * here; the entry is wrapped only so a plan's table is complete). */
static int WSAAPI fault_closesocket(SOCKET s)
{
    return ((shim_closesocket_fn)below[SHIM_closesocket])(s);
}

void shim_install_faults(HANDLE port, ULONG_PTR key)
{
    fault_port = port;
    fault_key = key;
    if (faults_installed)
        return;
    for (int i = 0; i < SHIM_COUNT; i++)
        below[i] = shim_table[i].current;
    shim_table[SHIM_WSARecv].current = (void *)fault_WSARecv;
    shim_table[SHIM_WSASend].current = (void *)fault_WSASend;
    shim_table[SHIM_AcceptEx].current = (void *)fault_AcceptEx;
    shim_table[SHIM_setsockopt].current = (void *)fault_setsockopt;
    shim_table[SHIM_closesocket].current = (void *)fault_closesocket;
    faults_installed = 1;
}

void shim_remove_faults(void)
{
    if (!faults_installed)
        return;
    shim_table[SHIM_WSARecv].current = below[SHIM_WSARecv];
    shim_table[SHIM_WSASend].current = below[SHIM_WSASend];
    shim_table[SHIM_AcceptEx].current = below[SHIM_AcceptEx];
    shim_table[SHIM_setsockopt].current = below[SHIM_setsockopt];
    shim_table[SHIM_closesocket].current = below[SHIM_closesocket];
    faults_installed = 0;
}

#else
/* ISO C forbids an empty translation unit. */
typedef int sock_shim_unused;
#endif
