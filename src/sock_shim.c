/* sock_shim.c - the socket-call table of the IOCP backend, its counting defaults and
 * the fault-plan wrappers (DESIGN section 3). */
#ifdef _WIN32

#include "sock_shim.h"

#include <string.h>

#include "core/ep.h"
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

static int WSAAPI dflt_getsockopt(SOCKET s, int level, int name, char *v, int *n)
{
    return getsockopt(s, level, name, v, n);
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

static BOOL WINAPI dflt_CancelIoEx(HANDLE h, LPOVERLAPPED ov)
{
    return CancelIoEx(h, ov);
}

#define SHIM_ENTRY(id) [SHIM_##id] = {#id, (void *)dflt_##id, (void *)dflt_##id}

struct shim_entry shim_table[SHIM_COUNT] = {
    SHIM_ENTRY(WSASocketW),
    SHIM_ENTRY(closesocket),
    SHIM_ENTRY(bind),
    SHIM_ENTRY(listen),
    SHIM_ENTRY(setsockopt),
    SHIM_ENTRY(getsockopt),
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
    SHIM_ENTRY(CancelIoEx),
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

/* The (connection, operation) of the calls this thread is making, and the send
 * action already decided for it. */
static _Thread_local struct {
    int valid;
    uint64_t conn, op;
    int send_decided;
    struct fault_action send;
} shim_ctx;

void shim_ctx_set(uint64_t conn, uint64_t op)
{
    shim_ctx.valid = 1;
    shim_ctx.conn = conn;
    shim_ctx.op = op;
    shim_ctx.send_decided = 0;
}

void shim_ctx_clear(void)
{
    shim_ctx.valid = 0;
}

/* Nonzero when the calls of this thread belong to a connection or accept (not to
 * start-up or teardown) and a plan is active. */
static int in_context(void)
{
    return shim_ctx.valid && fault_active();
}

/* The action of the send operation of this context, decided (and recorded) once
 * however many calls the operation makes. */
static struct fault_action send_action(size_t len)
{
    if (!shim_ctx.send_decided) {
        shim_ctx.send = fault_send_action(shim_ctx.conn, shim_ctx.op, len);
        shim_ctx.send_decided = 1;
    }
    return shim_ctx.send;
}

/* The Winsock error that realises an EP_E* error of a fault action. */
static DWORD wsa_code(int ep_error)
{
    switch (ep_error) {
    case EP_EMFILE:
        return WSAEMFILE;
    case EP_ENOBUFS:
        return WSAENOBUFS;
    default:
        return WSAECONNRESET;
    }
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

/* Realises a failing action (or an EOF) on an overlapped call: at once through
 * WSASetLastError, or as a fabricated completion; ov NULL always fails at once. */
static void realise_failure(struct fault_action a, LPOVERLAPPED ov)
{
    DWORD wsa = a.effect == FAULT_EOF ? WSAEDISCON : wsa_code(a.error);
    if (a.effect == FAULT_FAIL_NOW || !ov || !complete_later(ov, wsa))
        WSASetLastError((int)wsa);
}

/* WSARecv under a plan: a failure at once or on completion, or an EOF as a receive
 * ended with WSAEDISCON without touching the socket. Only overlapped calls (a receive
 * being posted) are faulted: the backend's follow-up non-blocking read belongs to the
 * same operation, whose fate was decided when it was posted. */
static int WSAAPI fault_WSARecv(SOCKET s, LPWSABUF b, DWORD n, LPDWORD got, LPDWORD flags,
                                LPWSAOVERLAPPED ov, LPWSAOVERLAPPED_COMPLETION_ROUTINE fn)
{
    shim_WSARecv_fn real = (shim_WSARecv_fn)below[SHIM_WSARecv];
    if (ov && in_context()) {
        struct fault_action a = fault_recv_action(shim_ctx.conn, shim_ctx.op);
        if (a.effect != FAULT_PASS) {
            realise_failure(a, ov);
            return SOCKET_ERROR;
        }
    }
    return real(s, b, n, got, flags, ov, fn);
}

/* WSASend under a plan: a failure at once or on completion, or the real send with
 * fewer bytes (the completion is then short). The backend's non-blocking try and the
 * overlapped send that may follow it are one operation with one action (send_action):
 * a failure "on completion" makes the try would-block, so it comes with the
 * overlapped send. */
static int WSAAPI fault_WSASend(SOCKET s, LPWSABUF b, DWORD n, LPDWORD sent, DWORD flags,
                                LPWSAOVERLAPPED ov, LPWSAOVERLAPPED_COMPLETION_ROUTINE fn)
{
    shim_WSASend_fn real = (shim_WSASend_fn)below[SHIM_WSASend];
    if (n == 1 && in_context()) {
        struct fault_action a = send_action(b[0].len);
        if (a.effect == FAULT_SHORTEN) {
            WSABUF shorter = {(ULONG)(a.len < b[0].len ? a.len : b[0].len), b[0].buf};
            return real(s, &shorter, 1, sent, flags, ov, fn);
        }
        if (a.effect == FAULT_FAIL_LATER && !ov) {
            WSASetLastError(WSAEWOULDBLOCK);
            return SOCKET_ERROR;
        }
        if (a.effect != FAULT_PASS) {
            realise_failure(a, ov);
            return SOCKET_ERROR;
        }
    }
    return real(s, b, n, sent, flags, ov, fn);
}

/* AcceptEx under a plan: a failure at once or on completion; the accept socket is
 * left to the caller to close. */
static BOOL PASCAL fault_AcceptEx(SOCKET ls, SOCKET as, PVOID buf, DWORD rlen, DWORD llen,
                                  DWORD plen, LPDWORD got, LPOVERLAPPED ov)
{
    shim_AcceptEx_fn real = (shim_AcceptEx_fn)below[SHIM_AcceptEx];
    if (in_context()) {
        struct fault_action a = fault_accept_action(shim_ctx.op);
        if (a.effect != FAULT_PASS) {
            realise_failure(a, ov);
            return FALSE;
        }
    }
    return real(ls, as, buf, rlen, llen, plen, got, ov);
}

/* setsockopt under a plan: fails at once (SO_UPDATE_ACCEPT_CONTEXT and friends). */
static int WSAAPI fault_setsockopt(SOCKET s, int level, int name, const char *v, int n)
{
    shim_setsockopt_fn real = (shim_setsockopt_fn)below[SHIM_setsockopt];
    if (in_context()) {
        struct fault_action a = fault_setsockopt_action(shim_ctx.op);
        if (a.effect != FAULT_PASS) {
            WSASetLastError((int)wsa_code(a.error));
            return SOCKET_ERROR;
        }
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
