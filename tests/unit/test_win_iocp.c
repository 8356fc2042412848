/* test_win_iocp.c - the IOCP backend (src/backend_iocp.c) unit-tested on its own, Windows
 * only. Every Winsock and completion-port call the backend makes goes through the shim
 * table; here its entries are a scripted "kernel": sockets are numbers in a table,
 * AcceptEx / WSARecv / WSASend record their OVERLAPPEDs, and the test completes them by
 * posting packets with a chosen status and byte count to the backend's completion port,
 * which stays real (so are GetQueuedCompletionStatusEx and PostQueuedCompletionStatus,
 * wrapped to account for every packet). A failure status is a real NTSTATUS that the
 * fake WSAGetOverlappedResult turns into the scripted Winsock error, so the backend's
 * own path for system completions is the one exercised; closing a socket completes its
 * pending operations the way Windows does (aborted, or net-name-deleted: corosio #160).
 * A socket in skip-on-success mode (SetFileCompletionNotificationModes, on unless a test
 * refuses it) models Windows there too: a call that completes at once returns 0 and
 * queues nothing; without the mode its packet is queued all the same. Receives complete
 * at once only when a test asks (recv_at_once), so every other step stays scripted.
 * No worker thread runs: the test drives one worker pass at a time (iocp_test_pass), so
 * every step is deterministic and nothing sleeps.
 *
 * The fakes also catch what a real kernel would punish silently and record the first
 * such violation: a call on a closed socket, a socket closed twice, an OVERLAPPED reused
 * while its operation is outstanding, I/O on a socket not associated with the port, a
 * completion dequeued that nobody queued. After every test (finish_and_check): no
 * violation, each socket the fakes handed out closed exactly once, ctx_alloc ==
 * ctx_free, sockets_opened == sockets_closed, every queued completion dequeued once and
 * no operation left outstanding. */
#include "sock_shim.h"

#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "backend.h"
#include "backend_iocp.h"
#include "core/alloc.h"
#include "core/config.h"
#include "core/ep.h"
#include "core/server.h"
#include "core/stats.h"
#include "fault.h"
#include "nth_walk.h"

#define POOL 4 /* cfg.accepts: the pre-posted AcceptEx pool */
#define MAX_SOCKS 256
#define MAX_OPS 1024
#define MAX_CALLS 512
#define PEER_BYTES 512
#define PUMP_PASSES 64 /* passes pump() runs at most */
#define WAIT_MS 3000   /* deadline of every wait on a condition */

/* Real NTSTATUS values a failed operation carries in OVERLAPPED.Internal. */
#define NT_UNSUCCESSFUL 0xC0000001u
#define NT_NETWORK_NAME_DELETED 0xC00000C9u
#define NT_CANCELLED 0xC0000120u
#define NT_CONNECTION_RESET 0xC000020Du

/* A socket of the fake kernel, with its peer. */
struct fsock {
    SOCKET h;
    int listener;
    int open;
    int closes;     /* must end at exactly 1 */
    int associated; /* with the completion port */
    int nonblocking;
    int skip;            /* FILE_SKIP_COMPLETION_PORT_ON_SUCCESS was set */
    int nb_reads;        /* non-blocking reads (after a zero-byte receive) */
    int nb_sends;        /* non-blocking sends (tried before an overlapped one) */
    int accepted;        /* an AcceptEx completed successfully on it */
    int ctx_updated;     /* SO_UPDATE_ACCEPT_CONTEXT was set */
    char in[PEER_BYTES]; /* what the peer sent */
    size_t in_len, in_off;
    int peer_eof;         /* the peer shut down its sending side */
    DWORD read_error;     /* the next non-blocking read fails with this */
    char out[PEER_BYTES]; /* what the server sent (completed sends only) */
    size_t out_len;
};

enum op_kind { OP_ACCEPT, OP_RECV, OP_SEND, OP_FABRICATED };
enum op_state { OS_PENDING, OS_QUEUED, OS_DEQUEUED };

/* An overlapped operation: held by the kernel, then queued on the port, then dequeued. */
struct fop {
    int kind;
    int state;
    OVERLAPPED *ov;
    SOCKET sock;     /* the accept socket of an AcceptEx, the socket of a recv/send */
    DWORD rlen;      /* AcceptEx dwReceiveDataLength */
    const char *buf; /* WSASend's bytes */
    char *rbuf;      /* WSARecv's buffer */
    ULONG len;       /* WSASend's length, WSARecv's buffer length (0: a zero-byte one) */
    DWORD error;     /* what WSAGetOverlappedResult reports; 0 = success */
};

/* One AcceptEx call: which request, and when. */
struct accept_call {
    const OVERLAPPED *ov;
    int64_t ms;
};

static struct {
    struct ep_config cfg;
    struct server srv;
    HANDLE port;
    ULONG_PTR key; /* the completion key the listener was associated with */
    struct fsock *listener;
    struct fsock socks[MAX_SOCKS];
    int nsocks;
    struct fop ops[MAX_OPS];
    int nops;
    struct accept_call calls[MAX_CALLS];
    int ncalls;
    char violation[256];
    int violations;
    int not_published; /* AcceptEx calls whose request did not hold the accept socket yet */
    ULONG dequeued;    /* packets the last GetQueuedCompletionStatusEx returned */
    int deferred;      /* fabricated completions the port refused */
    /* scripts */
    DWORD accept_fail[16]; /* the next AcceptEx calls fail at once with these (0: pend) */
    int naccept_fail;
    DWORD accept_fail_all;   /* nonzero: every AcceptEx fails at once with it */
    int socket_fail;         /* this many next WSASocketW calls fail */
    int update_ctx_fail;     /* this many next SO_UPDATE_ACCEPT_CONTEXT calls fail */
    int associate_fail;      /* this many next socket-to-port associations fail */
    DWORD recv_fail;         /* the next overlapped WSARecv fails at once with it */
    DWORD send_fail;         /* the next WSASend fails at once with it */
    int send_at_once;        /* the next this many non-blocking WSASends take every byte */
    int posted_send_at_once; /* the next overlapped WSASend completes at once */
    int recv_at_once;        /* the next this many overlapped WSARecvs find what is there at once */
    int skip_mode_fail;      /* SetFileCompletionNotificationModes fails */
    int skip_mode_calls;     /* SetFileCompletionNotificationModes calls */
    int non_ifs;   /* the provider lacks XP1_IFS_HANDLES (a non-IFS LSP): skip mode is a no-op */
    int post_fail; /* this many next fabricated completions the port refuses */
    DWORD cancel_error;         /* how closing a socket completes its pending operations */
    int close_keeps_sends;      /* Wine 8.0: closing leaves a pending send pending */
    int cancel_accepts_succeed; /* accepts that won the race with the listener's close */
    size_t max_buffer_bytes;    /* nonzero: cfg.max_buffer_bytes of start() */
    size_t buffer_size;         /* nonzero: cfg.buffer_size of start() */
    int dequeues;               /* GetQueuedCompletionStatusEx calls */
    int cancels;                /* CancelIoEx calls */
    int cancel_race;  /* the next CancelIoEx: 1 = the receive completed with the peer's data
                         just before it (not found), 2 = it completes with data anyway */
    int cancel_pends; /* the next CancelIoEx leaves the operation pending (it ends later) */
} w;

/* Records the first violation of the kernel's rules; the test fails on it at its end. */
static void violate(const char *fmt, ...)
{
    if (w.violations++ == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(w.violation, sizeof(w.violation), fmt, ap);
        va_end(ap);
    }
}

static struct fsock *find_sock(SOCKET h)
{
    for (int i = 0; i < w.nsocks; i++)
        if (w.socks[i].h == h)
            return &w.socks[i];
    return NULL;
}

/* A socket that must be open for the call `what`; NULL (and a violation) if not. */
static struct fsock *open_sock(SOCKET h, const char *what)
{
    struct fsock *fs = find_sock(h);
    if (!fs || !fs->open) {
        violate("%s on a socket that is not open (%lu)", what, (unsigned long)h);
        return NULL;
    }
    return fs;
}

/* A new operation on `ov`, which must not carry an outstanding one. */
static struct fop *new_op(int kind, OVERLAPPED *ov, SOCKET sock)
{
    static struct fop overflow;
    for (int i = 0; i < w.nops; i++)
        if (w.ops[i].ov == ov && w.ops[i].state != OS_DEQUEUED)
            violate("an OVERLAPPED was reused while its operation was outstanding");
    if (w.nops == MAX_OPS) {
        violate("more than %d operations", MAX_OPS);
        return &overflow;
    }
    struct fop *op = &w.ops[w.nops++];
    memset(op, 0, sizeof(*op));
    op->kind = kind;
    op->state = OS_PENDING;
    op->ov = ov;
    op->sock = sock;
    return op;
}

/* The most recent operation on `ov`, NULL if none. */
static struct fop *op_of(const OVERLAPPED *ov)
{
    for (int i = w.nops - 1; i >= 0; i--)
        if (w.ops[i].ov == ov)
            return &w.ops[i];
    return NULL;
}

/* The pending operation of `kind` on socket h, NULL if none. */
static struct fop *pending_op(int kind, SOCKET h)
{
    for (int i = 0; i < w.nops; i++)
        if (w.ops[i].state == OS_PENDING && w.ops[i].kind == kind && w.ops[i].sock == h)
            return &w.ops[i];
    return NULL;
}

/* The oldest pending AcceptEx, NULL if none. */
static struct fop *pending_accept(void)
{
    for (int i = 0; i < w.nops; i++)
        if (w.ops[i].state == OS_PENDING && w.ops[i].kind == OP_ACCEPT)
            return &w.ops[i];
    return NULL;
}

/* The AcceptEx calls the kernel holds: the posted-accept pool as the system sees it. */
static int pool_size(void)
{
    int n = 0;
    for (int i = 0; i < w.nops; i++)
        n += w.ops[i].state == OS_PENDING && w.ops[i].kind == OP_ACCEPT;
    return n;
}

static int pool_full(void)
{
    return pool_size() == POOL;
}

/* The NTSTATUS a system completion failing with Winsock error `e` carries. */
static ULONG_PTR ntstatus_of(DWORD e)
{
    switch (e) {
    case ERROR_OPERATION_ABORTED:
        return NT_CANCELLED;
    case ERROR_NETNAME_DELETED:
        return NT_NETWORK_NAME_DELETED;
    case WSAECONNRESET:
        return NT_CONNECTION_RESET;
    default:
        return NT_UNSUCCESSFUL;
    }
}

/* The kernel completes op: `bytes` transferred, or Winsock error `error`; its packet is
 * queued on the backend's port. */
static void complete(struct fop *op, DWORD bytes, DWORD error)
{
    if (op->state != OS_PENDING)
        violate("the test completed an operation twice");
    op->error = error;
    op->ov->Internal = error ? ntstatus_of(error) : 0;
    op->ov->InternalHigh = bytes;
    op->state = OS_QUEUED;
    if (!PostQueuedCompletionStatus(w.port, bytes, w.key, op->ov))
        violate("the test could not queue a completion (%lu)", (unsigned long)GetLastError());
}

/* Closing socket h completes what is pending on it (and closing the listener, every
 * AcceptEx): aborted, except accepts scripted to have won the race with the close. */
static void abort_ops_of(struct fsock *fs)
{
    for (int i = 0; i < w.nops; i++) {
        struct fop *op = &w.ops[i];
        if (op->state != OS_PENDING)
            continue;
        if (op->kind == OP_ACCEPT && fs->listener && w.cancel_accepts_succeed > 0) {
            w.cancel_accepts_succeed--;
            find_sock(op->sock)->accepted = 1;
            complete(op, 0, 0);
        } else if (op->kind == OP_SEND && w.close_keeps_sends) {
            continue;
        } else if (op->sock == fs->h || (op->kind == OP_ACCEPT && fs->listener)) {
            complete(op, 0, w.cancel_error);
        }
    }
}

/* op completed inside its call with `bytes`: a skip-on-success socket queues nothing
 * (the op is done), any other socket queues its packet all the same. */
static void complete_at_once(struct fsock *fs, struct fop *op, DWORD bytes)
{
    if (!fs->skip) {
        complete(op, bytes, 0);
        return;
    }
    op->ov->Internal = 0;
    op->ov->InternalHigh = bytes;
    op->state = OS_DEQUEUED;
}

/* Copies what the peer sent into the buffer of receive op (none for a zero-byte one);
 * returns the bytes. */
static size_t receive_into(struct fsock *fs, struct fop *op)
{
    size_t avail = fs->in_len - fs->in_off;
    size_t k = avail < op->len ? avail : op->len;
    memcpy(op->rbuf, fs->in + fs->in_off, k);
    fs->in_off += k;
    return k;
}

/* ---- the fake shim entries ---- */

static SOCKET WSAAPI fake_WSASocketW(int af, int type, int proto, LPWSAPROTOCOL_INFOW info, GROUP g,
                                     DWORD flags)
{
    (void)af, (void)proto, (void)info, (void)g;
    if (type != SOCK_STREAM || !(flags & WSA_FLAG_OVERLAPPED))
        violate("WSASocketW: not an overlapped stream socket");
    if (w.listener && !w.listener->open)
        violate("an accept socket was created after the listener closed");
    if (w.socket_fail > 0) {
        w.socket_fail--;
        WSASetLastError(WSAEMFILE);
        return INVALID_SOCKET;
    }
    if (w.nsocks == MAX_SOCKS) {
        violate("more than %d sockets", MAX_SOCKS);
        WSASetLastError(WSAEMFILE);
        return INVALID_SOCKET;
    }
    struct fsock *fs = &w.socks[w.nsocks];
    memset(fs, 0, sizeof(*fs));
    fs->h = (SOCKET)(0x1000 + 4 * w.nsocks);
    fs->open = 1;
    w.nsocks++;
    stats_add(sockets_opened, 1); /* as the default does */
    return fs->h;
}

static int WSAAPI fake_closesocket(SOCKET h)
{
    struct fsock *fs = find_sock(h);
    if (!fs) {
        violate("closesocket of an unknown socket %lu", (unsigned long)h);
        WSASetLastError(WSAENOTSOCK);
        return SOCKET_ERROR;
    }
    fs->closes++;
    if (!fs->open) {
        violate("socket %lu closed twice", (unsigned long)h);
        WSASetLastError(WSAENOTSOCK);
        return SOCKET_ERROR;
    }
    fs->open = 0;
    stats_add(sockets_closed, 1); /* as the default does */
    abort_ops_of(fs);
    return 0;
}

static int WSAAPI fake_bind(SOCKET h, const struct sockaddr *a, int n)
{
    (void)a, (void)n;
    open_sock(h, "bind");
    return 0;
}

static int WSAAPI fake_listen(SOCKET h, int backlog)
{
    (void)backlog;
    struct fsock *fs = open_sock(h, "listen");
    if (fs) {
        fs->listener = 1;
        w.listener = fs;
    }
    return 0;
}

static int WSAAPI fake_getsockname(SOCKET h, struct sockaddr *a, int *n)
{
    struct sockaddr_in sin;
    open_sock(h, "getsockname");
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons(40000);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (*n < (int)sizeof(sin)) {
        WSASetLastError(WSAEFAULT);
        return SOCKET_ERROR;
    }
    memcpy(a, &sin, sizeof(sin));
    *n = (int)sizeof(sin);
    return 0;
}

static int WSAAPI fake_ioctlsocket(SOCKET h, long cmd, u_long *arg)
{
    struct fsock *fs = open_sock(h, "ioctlsocket");
    if (fs && cmd == (long)FIONBIO)
        fs->nonblocking = *arg != 0;
    return 0;
}

static int WSAAPI fake_setsockopt(SOCKET h, int level, int name, const char *v, int n)
{
    struct fsock *fs = open_sock(h, "setsockopt");
    if (fs && level == SOL_SOCKET && name == SO_UPDATE_ACCEPT_CONTEXT) {
        if (!fs->accepted)
            violate("SO_UPDATE_ACCEPT_CONTEXT on a socket no AcceptEx completed on");
        if (n != (int)sizeof(SOCKET) || !w.listener ||
            *(const SOCKET *)(const void *)v != w.listener->h)
            violate("SO_UPDATE_ACCEPT_CONTEXT without the listening socket");
        if (w.update_ctx_fail > 0) {
            w.update_ctx_fail--;
            WSASetLastError(WSAENOBUFS);
            return SOCKET_ERROR;
        }
        fs->ctx_updated = 1;
    }
    return 0;
}

/* SO_PROTOCOL_INFOW: the provider, an IFS one unless the test says otherwise. */
static int WSAAPI fake_getsockopt(SOCKET h, int level, int name, char *v, int *n)
{
    open_sock(h, "getsockopt");
    if (level != SOL_SOCKET || name != SO_PROTOCOL_INFOW || *n < (int)sizeof(WSAPROTOCOL_INFOW)) {
        violate("getsockopt %d/%d: not modelled", level, name);
        WSASetLastError(WSAENOPROTOOPT);
        return SOCKET_ERROR;
    }
    WSAPROTOCOL_INFOW *info = (WSAPROTOCOL_INFOW *)(void *)v;
    memset(info, 0, sizeof(*info));
    info->dwServiceFlags1 = XP1_GUARANTEED_DELIVERY | XP1_GUARANTEED_ORDER | XP1_GRACEFUL_CLOSE;
    if (!w.non_ifs)
        info->dwServiceFlags1 |= XP1_IFS_HANDLES;
    info->iSocketType = SOCK_STREAM;
    info->iProtocol = IPPROTO_TCP;
    *n = sizeof(*info);
    return 0;
}

static BOOL PASCAL fake_AcceptEx(SOCKET ls, SOCKET as, PVOID buf, DWORD rlen, DWORD llen,
                                 DWORD plen, LPDWORD got, LPOVERLAPPED ov)
{
    (void)buf, (void)got;
    struct fsock *l = open_sock(ls, "AcceptEx (listener)"), *a = open_sock(as, "AcceptEx");
    if (l && !l->listener)
        violate("AcceptEx on a socket that is not the listener");
    if (l && !l->associated)
        violate("AcceptEx posted before the listener was associated with the port");
    if (a && (a->listener || a->accepted || a->associated))
        violate("AcceptEx with a used accept socket");
    if (pending_op(OP_ACCEPT, as))
        violate("AcceptEx with the accept socket of another pending AcceptEx");
    if (llen < sizeof(struct sockaddr_in6) + 16 || plen < sizeof(struct sockaddr_in6) + 16)
        violate("AcceptEx address slots too small");
    if (!ov) {
        violate("AcceptEx without an OVERLAPPED");
        WSASetLastError(WSAEINVAL);
        return FALSE;
    }
    /* zio #530: the completion may be dequeued by another thread before this returns */
    if (iocp_test_accept_socket(ov) != as)
        w.not_published++;
    DWORD fail = w.accept_fail_all;
    if (!fail && w.naccept_fail > 0) {
        fail = w.accept_fail[0];
        memmove(w.accept_fail, w.accept_fail + 1,
                sizeof(w.accept_fail[0]) * (size_t)--w.naccept_fail);
    }
    if (w.ncalls < MAX_CALLS)
        w.calls[w.ncalls++] = (struct accept_call){ov, ep_now_ms()};
    if (fail) {
        WSASetLastError((int)fail);
        return FALSE;
    }
    new_op(OP_ACCEPT, ov, as)->rlen = rlen;
    WSASetLastError(ERROR_IO_PENDING);
    return FALSE;
}

static int WSAAPI fake_WSAIoctl(SOCKET h, DWORD code, LPVOID in, DWORD inlen, LPVOID out,
                                DWORD outlen, LPDWORD ret, LPWSAOVERLAPPED ov,
                                LPWSAOVERLAPPED_COMPLETION_ROUTINE fn)
{
    GUID acceptex = WSAID_ACCEPTEX;
    shim_AcceptEx_fn f = fake_AcceptEx;
    (void)ov, (void)fn;
    open_sock(h, "WSAIoctl");
    if (code != SIO_GET_EXTENSION_FUNCTION_POINTER || inlen != sizeof(GUID) ||
        memcmp(in, &acceptex, sizeof(GUID)) != 0 || outlen < sizeof(f)) {
        violate("WSAIoctl: an unexpected request");
        WSASetLastError(WSAEINVAL);
        return SOCKET_ERROR;
    }
    memcpy(out, &f, sizeof(f));
    *ret = sizeof(f);
    return 0;
}

static int WSAAPI fake_WSARecv(SOCKET h, LPWSABUF b, DWORD n, LPDWORD got, LPDWORD flags,
                               LPWSAOVERLAPPED ov, LPWSAOVERLAPPED_COMPLETION_ROUTINE fn)
{
    struct fsock *fs = open_sock(h, "WSARecv");
    if (!fs) {
        WSASetLastError(WSAENOTSOCK);
        return SOCKET_ERROR;
    }
    if (fn || n != 1)
        violate("WSARecv: a completion routine or several buffers");
    if (ov) {
        if (!fs->associated)
            violate("WSARecv posted on a socket not associated with the port");
        if (w.recv_fail) {
            DWORD e = w.recv_fail;
            w.recv_fail = 0;
            WSASetLastError((int)e);
            return SOCKET_ERROR;
        }
        struct fop *op = new_op(OP_RECV, ov, h);
        op->len = b[0].len;
        op->rbuf = b[0].buf;
        if (w.recv_at_once && (fs->in_off < fs->in_len || fs->peer_eof)) {
            w.recv_at_once--;
            *got = (DWORD)receive_into(fs, op);
            complete_at_once(fs, op, *got);
            return 0;
        }
        WSASetLastError(WSA_IO_PENDING);
        return SOCKET_ERROR;
    }
    /* the non-blocking read after the zero-byte receive completed */
    fs->nb_reads++;
    if (!fs->nonblocking)
        violate("a non-blocking read on a blocking socket");
    if (fs->read_error) {
        DWORD e = fs->read_error;
        fs->read_error = 0;
        WSASetLastError((int)e);
        return SOCKET_ERROR;
    }
    size_t avail = fs->in_len - fs->in_off;
    if (avail == 0 && !fs->peer_eof) {
        WSASetLastError(WSAEWOULDBLOCK);
        return SOCKET_ERROR;
    }
    size_t k = avail < b[0].len ? avail : b[0].len;
    memcpy(b[0].buf, fs->in + fs->in_off, k);
    fs->in_off += k;
    *got = (DWORD)k;
    *flags = 0;
    return 0;
}

static int WSAAPI fake_WSASend(SOCKET h, LPWSABUF b, DWORD n, LPDWORD sent, DWORD flags,
                               LPWSAOVERLAPPED ov, LPWSAOVERLAPPED_COMPLETION_ROUTINE fn)
{
    (void)flags;
    struct fsock *fs = open_sock(h, "WSASend");
    if (!fs) {
        WSASetLastError(WSAENOTSOCK);
        return SOCKET_ERROR;
    }
    if (fn || n != 1) {
        violate("WSASend: a completion routine or several buffers");
        WSASetLastError(WSAEINVAL);
        return SOCKET_ERROR;
    }
    if (!fs->associated)
        violate("WSASend on a socket not associated with the port");
    if (w.send_fail) {
        DWORD e = w.send_fail;
        w.send_fail = 0;
        WSASetLastError((int)e);
        return SOCKET_ERROR;
    }
    if (!ov) {
        /* a non-blocking send: the socket takes it all if scripted, else nothing */
        if (!fs->nonblocking)
            violate("a non-blocking send on a blocking socket");
        fs->nb_sends++;
        if (!w.send_at_once) {
            WSASetLastError(WSAEWOULDBLOCK);
            return SOCKET_ERROR;
        }
        w.send_at_once--;
        memcpy(fs->out + fs->out_len, b[0].buf, b[0].len);
        fs->out_len += b[0].len;
        *sent = b[0].len;
        return 0;
    }
    struct fop *op = new_op(OP_SEND, ov, h);
    op->buf = b[0].buf;
    op->len = b[0].len;
    if (w.posted_send_at_once) {
        w.posted_send_at_once = 0;
        memcpy(fs->out + fs->out_len, op->buf, op->len);
        fs->out_len += op->len;
        complete_at_once(fs, op, op->len);
        if (sent)
            *sent = op->len;
        return 0;
    }
    WSASetLastError(WSA_IO_PENDING);
    return SOCKET_ERROR;
}

static BOOL WSAAPI fake_WSAGetOverlappedResult(SOCKET h, LPWSAOVERLAPPED ov, LPDWORD bytes,
                                               BOOL wait, LPDWORD flags)
{
    struct fop *op = op_of(ov);
    open_sock(h, "WSAGetOverlappedResult");
    if (wait)
        violate("WSAGetOverlappedResult waits in a completion handler");
    if (!op || op->state != OS_DEQUEUED || op->kind == OP_FABRICATED) {
        violate("WSAGetOverlappedResult for an operation the system did not complete");
        WSASetLastError(WSAEINVAL);
        return FALSE;
    }
    if (op->sock != h)
        violate("WSAGetOverlappedResult on another socket than the operation's");
    *bytes = (DWORD)ov->InternalHigh;
    *flags = 0;
    if (op->error) {
        WSASetLastError((int)op->error);
        return FALSE;
    }
    return TRUE;
}

static BOOL WINAPI fake_SetFileCompletionNotificationModes(HANDLE h, UCHAR flags)
{
    struct fsock *fs = open_sock((SOCKET)h, "SetFileCompletionNotificationModes");
    w.skip_mode_calls++;
    if (!fs || w.skip_mode_fail) {
        SetLastError(ERROR_INVALID_PARAMETER);
        return FALSE;
    }
    /* a non-IFS layered provider accepts the mode and still queues every packet */
    fs->skip = (flags & FILE_SKIP_COMPLETION_PORT_ON_SUCCESS) != 0 && !w.non_ifs;
    return TRUE;
}

/* CancelIoEx on one operation: it completes aborted, unless it already completed (not
 * found) or a script says it raced with the peer's data or is slow to end. */
static BOOL WINAPI fake_CancelIoEx(HANDLE h, LPOVERLAPPED ov)
{
    struct fsock *fs = open_sock((SOCKET)h, "CancelIoEx");
    struct fop *op = ov ? op_of(ov) : NULL;
    w.cancels++;
    if (!ov)
        violate("CancelIoEx of every operation of a socket");
    int race = w.cancel_race, pends = w.cancel_pends;
    w.cancel_race = w.cancel_pends = 0;
    if (!fs || !op || op->state != OS_PENDING || op->sock != (SOCKET)h) {
        SetLastError(ERROR_NOT_FOUND);
        return FALSE;
    }
    if (race) {
        complete(op, (DWORD)receive_into(fs, op), 0);
        if (race == 1) {
            SetLastError(ERROR_NOT_FOUND);
            return FALSE;
        }
    } else if (!pends) {
        complete(op, 0, ERROR_OPERATION_ABORTED);
    }
    return TRUE;
}

static HANDLE WINAPI fake_CreateIoCompletionPort(HANDLE h, HANDLE port, ULONG_PTR key, DWORD n)
{
    if (h == INVALID_HANDLE_VALUE) {
        if (port)
            violate("CreateIoCompletionPort: a new port with an existing one");
        w.port = CreateIoCompletionPort(h, NULL, 0, n);
        return w.port;
    }
    struct fsock *fs = open_sock((SOCKET)h, "CreateIoCompletionPort");
    if (!fs) {
        SetLastError(ERROR_INVALID_HANDLE);
        return NULL;
    }
    if (port != w.port)
        violate("a socket associated with another port");
    if (fs->associated)
        violate("a socket associated with the port twice");
    if (fs->listener)
        w.key = key;
    else if (key != w.key)
        violate("sockets associated with different completion keys");
    if (w.associate_fail > 0) {
        w.associate_fail--;
        SetLastError(ERROR_INVALID_PARAMETER);
        return NULL;
    }
    fs->associated = 1;
    return port;
}

/* The real dequeue, accounting for every packet. */
static BOOL WINAPI fake_GetQueuedCompletionStatusEx(HANDLE port, LPOVERLAPPED_ENTRY e, ULONG n,
                                                    PULONG got, DWORD ms, BOOL alertable)
{
    if (port != w.port)
        violate("dequeue from another port");
    w.dequeues++;
    BOOL ok = GetQueuedCompletionStatusEx(port, e, n, got, ms, alertable);
    DWORD err = GetLastError();
    w.dequeued = ok ? *got : 0;
    for (ULONG i = 0; i < w.dequeued; i++) {
        if (!e[i].lpOverlapped)
            continue;
        struct fop *op = op_of(e[i].lpOverlapped);
        if (!op || op->state != OS_QUEUED)
            violate("dequeued a completion nobody queued");
        else
            op->state = OS_DEQUEUED;
    }
    SetLastError(err);
    return ok;
}

/* The real post (the backend's fabricated completions and wake packets), accounted. */
static BOOL WINAPI fake_PostQueuedCompletionStatus(HANDLE port, DWORD n, ULONG_PTR key,
                                                   LPOVERLAPPED ov)
{
    if (port != w.port)
        violate("post to another port");
    if (ov) {
        if (key != w.key)
            violate("a fabricated completion with another key than the sockets'");
        if (w.post_fail > 0) {
            w.post_fail--;
            w.deferred++;
            SetLastError(ERROR_NOT_ENOUGH_QUOTA);
            return FALSE;
        }
        new_op(OP_FABRICATED, ov, INVALID_SOCKET)->state = OS_QUEUED;
    }
    return PostQueuedCompletionStatus(port, n, key, ov);
}

/* ---- driving the backend ---- */

static void install(const char *name, void *fn)
{
    cr_assert_eq(shim_set(name, fn), 0, "no shim entry %s", name);
}

static void setup(void)
{
    memset(&w, 0, sizeof(w));
    w.cancel_error = ERROR_OPERATION_ABORTED;
    shim_reset();
    install("WSASocketW", (void *)fake_WSASocketW);
    install("closesocket", (void *)fake_closesocket);
    install("bind", (void *)fake_bind);
    install("listen", (void *)fake_listen);
    install("setsockopt", (void *)fake_setsockopt);
    install("getsockopt", (void *)fake_getsockopt);
    install("getsockname", (void *)fake_getsockname);
    install("ioctlsocket", (void *)fake_ioctlsocket);
    install("WSAIoctl", (void *)fake_WSAIoctl);
    install("AcceptEx", (void *)fake_AcceptEx);
    install("WSARecv", (void *)fake_WSARecv);
    install("WSASend", (void *)fake_WSASend);
    install("WSAGetOverlappedResult", (void *)fake_WSAGetOverlappedResult);
    install("CreateIoCompletionPort", (void *)fake_CreateIoCompletionPort);
    install("GetQueuedCompletionStatusEx", (void *)fake_GetQueuedCompletionStatusEx);
    install("PostQueuedCompletionStatus", (void *)fake_PostQueuedCompletionStatus);
    install("SetFileCompletionNotificationModes", (void *)fake_SetFileCompletionNotificationModes);
    install("CancelIoEx", (void *)fake_CancelIoEx);
    ep_alloc_fail = NULL;
    stats_reset();
}

static void teardown(void)
{
    ep_alloc_fail = NULL;
    shim_reset();
    /* shim_load_extensions made the fake AcceptEx the default: forget it */
    shim_table[SHIM_AcceptEx].current = shim_table[SHIM_AcceptEx].dflt = NULL;
}

/* Starts the backend: one worker, a pool of POOL accepts. */
static void start(void)
{
    char err[256] = "";
    config_defaults(&w.cfg);
    w.cfg.threads = 1;
    w.cfg.accepts = POOL;
    w.cfg.listen_port = 0;
    if (w.max_buffer_bytes)
        w.cfg.max_buffer_bytes = w.max_buffer_bytes;
    if (w.buffer_size)
        w.cfg.buffer_size = w.buffer_size;
    cr_assert_eq(srv_init(&w.srv, &w.cfg, &bk_iocp), 0);
    cr_assert_eq(bk_iocp.start(&w.srv, err, sizeof(err)), 0, "start: %s", err);
    cr_assert_not_null(w.listener, "start created no listener");
}

/* One worker pass that takes what is queued now. */
static void pass(void)
{
    iocp_test_pass(&w.srv, 0, 0);
}

/* Worker passes until two in a row dequeue nothing. */
static void pump(void)
{
    int idle = 0;
    for (int i = 0; i < PUMP_PASSES && idle < 2; i++) {
        pass();
        idle = w.dequeued == 0 ? idle + 1 : 0;
    }
    cr_assert_eq(idle, 2, "the backend kept dequeuing for %d passes", PUMP_PASSES);
}

/* Worker passes (each waiting for the port at most 20 ms, less when a re-post falls
 * due) until cond() holds or WAIT_MS pass; returns cond(). */
static int wait_until(int (*cond)(void))
{
    int64_t deadline = ep_now_ms() + WAIT_MS;
    for (int i = 0; i < 100000 && !cond() && ep_now_ms() < deadline; i++)
        iocp_test_pass(&w.srv, 0, 20);
    return cond();
}

/* A client connects: the oldest pending AcceptEx completes. Returns its socket. */
static struct fsock *client_connects(void)
{
    struct fop *op = pending_accept();
    cr_assert_not_null(op, "no AcceptEx is posted");
    struct fsock *fs = find_sock(op->sock);
    fs->accepted = 1;
    complete(op, 0, 0);
    return fs;
}

/* A client connects and the backend serves it: a receive is posted on its socket. */
static struct fsock *connected(void)
{
    struct fsock *fs = client_connects();
    pump();
    cr_assert_not_null(pending_op(OP_RECV, fs->h), "the accepted client got no receive");
    return fs;
}

static void peer_sends(struct fsock *fs, const char *data)
{
    size_t n = strlen(data);
    cr_assert_leq(fs->in_len + n, sizeof(fs->in));
    memcpy(fs->in + fs->in_len, data, n);
    fs->in_len += n;
}

/* The pending receive of fs completes: a zero-byte one says data or EOF is there (or
 * not); a buffered one takes what the peer sent (0 bytes: EOF). */
static void complete_recv(struct fsock *fs)
{
    struct fop *op = pending_op(OP_RECV, fs->h);
    cr_assert_not_null(op, "no receive is posted on the socket");
    cr_assert(op->len == 0 || fs->in_off < fs->in_len || fs->peer_eof,
              "a buffered receive completes only with data or at EOF");
    complete(op, (DWORD)receive_into(fs, op), 0);
}

/* The pending send of fs completes with n bytes, which the peer gets. */
static struct fop *complete_send(struct fsock *fs, ULONG n)
{
    struct fop *op = pending_op(OP_SEND, fs->h);
    cr_assert_not_null(op, "no send is posted on the socket");
    cr_assert_leq(n, op->len);
    cr_assert_leq(fs->out_len + n, sizeof(fs->out));
    memcpy(fs->out + fs->out_len, op->buf, n);
    fs->out_len += n;
    complete(op, n, 0);
    return op;
}

/* A connection that received `data` and has its echo posted. */
static struct fsock *echoing(const char *data)
{
    struct fsock *fs = connected();
    peer_sends(fs, data);
    complete_recv(fs);
    pump();
    struct fop *op = pending_op(OP_SEND, fs->h);
    cr_assert_not_null(op, "the received bytes were not sent back");
    cr_assert_eq(op->len, strlen(data));
    return fs;
}

static long live_conns(void)
{
    return atomic_load(&w.srv.live_conns);
}

/* Graceful stop, as a worker thread would run it: the peers read whatever is sent, the
 * worker passes until it may leave, then destroy. */
static void finish(void)
{
    int64_t deadline = ep_now_ms() + WAIT_MS;
    int done = 0;
    srv_request_stop(&w.srv);
    for (int i = 0; i < 100000 && !done && ep_now_ms() < deadline; i++) {
        for (int k = 0; k < w.nops; k++)
            if (w.ops[k].state == OS_PENDING && w.ops[k].kind == OP_SEND)
                complete_send(find_sock(w.ops[k].sock), w.ops[k].len);
        done = iocp_test_pass(&w.srv, 0, 20) == 1;
    }
    cr_assert(done, "the worker never finished after the stop");
    bk_iocp.destroy(&w.srv);
    srv_destroy(&w.srv);
}

/* The invariants every test ends with. */
static void check(void)
{
    cr_assert_eq(w.violations, 0, "%d violation(s), the first: %s", w.violations, w.violation);
    for (int i = 0; i < w.nsocks; i++)
        cr_assert_eq(w.socks[i].closes, 1, "socket %d (%s) was closed %d times", i,
                     w.socks[i].listener ? "listener" : "accept", w.socks[i].closes);
    for (int i = 0; i < w.nops; i++)
        cr_assert_eq(w.ops[i].state, OS_DEQUEUED, "operation %d (kind %d) never completed", i,
                     w.ops[i].kind);
    cr_assert_eq(stats_get(sockets_opened), (uint64_t)w.nsocks);
    cr_assert_eq(stats_get(sockets_opened), stats_get(sockets_closed), "opened %lu, closed %lu",
                 (unsigned long)stats_get(sockets_opened),
                 (unsigned long)stats_get(sockets_closed));
    cr_assert_eq(stats_get(ctx_alloc), stats_get(ctx_free), "contexts: %lu allocated, %lu freed",
                 (unsigned long)stats_get(ctx_alloc), (unsigned long)stats_get(ctx_free));
    cr_assert_eq(w.not_published, 0, "AcceptEx was called before its request held the socket");
}

static void finish_and_check(void)
{
    finish();
    check();
}

/* Accept sockets already closed: those of failed accepts (while no connection closed). */
static int closed_accept_sockets(void)
{
    int n = 0;
    for (int i = 0; i < w.nsocks; i++)
        n += !w.socks[i].listener && !w.socks[i].open;
    return n;
}

/* Attempts AcceptEx made for the request of `ov`, and the index of each in w.calls. */
static int attempts_of(const OVERLAPPED *ov, int *idx, int max)
{
    int n = 0;
    for (int i = 0; i < w.ncalls; i++)
        if (w.calls[i].ov == ov) {
            if (n < max)
                idx[n] = i;
            n++;
        }
    return n;
}

TestSuite(iocp, .init = setup, .fini = teardown, .timeout = 60);

/* ---- accepts ---- */

/* Under Wine a pending zero-byte receive and a socket cost the process about 110 bytes
 * of Wine's own (ntdll's async for the receive, ws2_32's socket list): a connection in a
 * 128-byte pool slot keeps an idle one within issue 10's 0.25 KiB. */
Test(iocp_layout, an_idle_connection_fits_in_a_128_byte_pool_slot)
{
    struct conn_pool p;
    conn_pool_init(&p, sizeof(struct conn) + bk_iocp.conn_size);
    cr_expect_leq(p.slot_size, 128, "struct conn %u + iocp part %u bytes",
                  (unsigned)sizeof(struct conn), (unsigned)bk_iocp.conn_size);
    conn_pool_destroy(&p);
}

Test(iocp, start_posts_the_accept_pool_with_zero_receive_length)
{
    start();
    cr_assert_eq(pool_size(), POOL, "start posts cfg->accepts AcceptEx calls");
    cr_assert_eq(w.ncalls, POOL);
    for (int i = 0; i < w.nops; i++) {
        cr_assert_eq(w.ops[i].rlen, 0, "AcceptEx must not wait for data (libevent #664)");
        for (int k = 0; k < i; k++) {
            cr_assert_neq(w.ops[i].sock, w.ops[k].sock, "two accepts share a socket");
            cr_assert_neq(w.ops[i].ov, w.ops[k].ov, "two accepts share an OVERLAPPED");
        }
    }
    cr_assert_eq(w.nsocks, POOL + 1, "one listener and one accept socket per accept");
    finish_and_check();
}

Test(iocp, accept_request_holds_its_socket_before_accept_ex_is_called)
{
    start();
    struct fsock *a = connected(); /* the re-post after a completion is checked too */
    cr_assert_eq(w.ncalls, POOL + 1);
    cr_assert_eq(w.not_published, 0, "the accept socket was stored after AcceptEx (zio #530)");
    cr_assert(a->associated && a->ctx_updated && a->nonblocking);
    finish_and_check();
}

Test(iocp, accept_ex_failing_at_once_closes_its_socket_and_reposts)
{
    /* each of three requests fails once at once; its immediate re-post works */
    static const DWORD script[] = {WSAECONNRESET, 0, WSAEMFILE, 0, WSAENOBUFS, 0};
    memcpy(w.accept_fail, script, sizeof(script));
    w.naccept_fail = EP_ARRAY_LEN(script);
    start();
    cr_assert_eq(pool_size(), POOL, "the failed accepts were re-posted");
    cr_assert_eq(w.ncalls, POOL + 3);
    cr_assert_eq(closed_accept_sockets(), 3, "each failed AcceptEx closes its socket");
    for (int i = 0; i < w.nsocks; i++)
        cr_assert_leq(w.socks[i].closes, 1);
    cr_assert_eq(stats_get(accept_errors), 3);
    cr_assert(w.listener->open);
    connected();
    finish_and_check();
}

Test(iocp, accept_repost_failing_repeatedly_backs_off_then_refills_the_pool)
{
    start();
    struct fop *served = pending_accept();
    const OVERLAPPED *ov = served->ov;
    struct fsock *c1 = client_connects();
    w.accept_fail[0] = WSAECONNRESET;
    w.accept_fail[1] = WSAEMFILE;
    w.accept_fail[2] = WSAENOBUFS;
    w.accept_fail[3] = WSAECONNRESET;
    w.naccept_fail = 4;
    pump();
    cr_assert_not_null(pending_op(OP_RECV, c1->h),
                       "the client is served though the re-post failed");
    cr_assert(wait_until(pool_full), "the pool never got back to %d (it has %d)", POOL,
              pool_size());
    int idx[8];
    cr_assert_eq(attempts_of(ov, idx, 8), 6, "1 post, 4 failed re-posts, 1 that worked");
    /* the 1st failure re-posts at once, then 1 ms, 2 ms, 4 ms: backed off, not spinning */
    for (int k = 3; k < 6; k++)
        cr_assert_geq(w.calls[idx[k]].ms - w.calls[idx[k - 1]].ms, (int64_t)1 << (k - 3),
                      "attempt %d came too soon", k + 1);
    cr_assert_eq(stats_get(accept_errors), 4);
    cr_assert_eq(closed_accept_sockets(), 4, "each failed re-post closed its socket");
    cr_assert_eq(w.listener->closes, 0,
                 "a failing re-post never stops the listener (tinymux #1830)");
    connected();
    finish_and_check();
}

Test(iocp, accept_socket_creation_failure_backs_off_then_refills_the_pool)
{
    start();
    struct fsock *c1 = client_connects();
    w.socket_fail = 3;
    pass(); /* one pass makes 3 attempts at most: the 3 scripted failures cover them */
    cr_assert_not_null(pending_op(OP_RECV, c1->h));
    cr_assert_eq(pool_size(), POOL - 1, "the request whose socket could not be made is parked");
    cr_assert(wait_until(pool_full), "the pool never got back to %d (it has %d)", POOL,
              pool_size());
    cr_assert_eq(w.socket_fail, 0);
    cr_assert_eq(stats_get(accept_errors), 3);
    connected();
    finish_and_check();
}

/* The first request's attempts reached 6 (the wait condition of the test below). */
static const OVERLAPPED *watched;
static int watched_made_six_attempts(void)
{
    int idx[1];
    return attempts_of(watched, idx, 0) >= 6;
}

Test(iocp, persistent_accept_failure_retries_with_growing_back_off_and_recovers)
{
    w.accept_fail_all = WSAENOBUFS;
    start();
    cr_assert_eq(pool_size(), 0);
    cr_assert_eq(w.ncalls, 2 * POOL, "one immediate re-post per request, then back-off");
    watched = w.calls[0].ov;
    cr_assert(wait_until(watched_made_six_attempts), "the failing accept stopped being retried");
    int idx[6];
    attempts_of(watched, idx, 6);
    for (int k = 2; k < 6; k++)
        cr_assert_geq(w.calls[idx[k]].ms - w.calls[idx[k - 1]].ms, (int64_t)1 << (k - 2),
                      "attempt %d came too soon: the back-off must grow", k + 1);
    cr_assert(w.listener->open, "accept failures never close the listener");
    w.accept_fail_all = 0;
    cr_assert(wait_until(pool_full), "the pool never recovered (it has %d)", pool_size());
    cr_assert_eq(closed_accept_sockets(), w.ncalls - POOL, "every failed accept closed its socket");
    connected();
    finish_and_check();
}

Test(iocp, parked_accept_retries_are_dropped_at_shutdown)
{
    w.accept_fail_all = WSAEMFILE;
    start();
    cr_assert_eq(pool_size(), 0, "every request is parked for a retry");
    int calls = w.ncalls;
    finish_and_check(); /* no socket is made nor AcceptEx posted once the listener closed */
    cr_assert_leq(w.ncalls - calls, POOL, "a parked retry outlived the stop");
}

/* An AcceptEx completing with `err`: only its socket is closed, the pool is re-posted. */
static void accept_completion_error(DWORD err)
{
    start();
    struct fop *op = pending_accept();
    struct fsock *as = find_sock(op->sock);
    complete(op, 0, err);
    pump();
    cr_assert_eq(as->closes, 1, "the accept socket is closed once");
    cr_assert_eq(w.listener->closes, 0, "an accept error closed the listener (CPython #93821)");
    cr_assert_eq(pool_size(), POOL, "the failed accept was re-posted");
    cr_assert_eq(stats_get(accept_errors), 1);
    cr_assert_eq(stats_get(ctx_alloc), 0);
    cr_assert(!as->associated);
    connected();
    finish_and_check();
}

Test(iocp, accept_completion_netname_deleted_closes_only_the_accept_socket)
{
    accept_completion_error(ERROR_NETNAME_DELETED);
}

Test(iocp, accept_completion_connection_reset_closes_only_the_accept_socket)
{
    accept_completion_error(WSAECONNRESET);
}

Test(iocp, update_accept_context_failure_closes_the_accepted_socket_and_reposts)
{
    start();
    w.update_ctx_fail = 1;
    struct fsock *a = client_connects();
    pump();
    cr_assert_eq(w.update_ctx_fail, 0);
    cr_assert_eq(a->closes, 1);
    cr_assert(!a->associated, "a socket without its accept context is not served");
    cr_assert_eq(stats_get(ctx_alloc), 0);
    cr_assert_eq(stats_get(accept_errors), 1);
    cr_assert_eq(pool_size(), POOL, "the accept was re-posted (nginx #1230)");
    connected();
    finish_and_check();
}

/* Fails the context allocation of connection 1 (op 0 is the context). */
static int fail_first_context(uint64_t conn, uint64_t op)
{
    return conn == 1 && op == 0;
}

Test(iocp, context_allocation_failure_closes_the_accepted_socket_and_keeps_the_pool)
{
    start();
    ep_alloc_fail = fail_first_context;
    struct fsock *a = client_connects();
    pump();
    cr_assert_eq(a->closes, 1, "the refused socket is closed (nginx #1722)");
    cr_assert_eq(stats_get(refused), 1);
    cr_assert_eq(stats_get(ctx_alloc), 0);
    cr_assert_eq(pool_size(), POOL);
    connected();
    finish_and_check();
}

Test(iocp, port_association_failure_closes_the_accepted_socket_and_keeps_the_pool)
{
    start();
    w.associate_fail = 1;
    struct fsock *a = client_connects();
    pump();
    cr_assert_eq(w.associate_fail, 0);
    cr_assert_eq(a->closes, 1);
    cr_assert_eq(stats_get(ctx_alloc), 0);
    cr_assert_eq(stats_get(accept_errors), 1);
    cr_assert_eq(pool_size(), POOL);
    connected();
    finish_and_check();
}

/* ---- receive and send completions ---- */

/* The receive (or the send) of a connection completes with `err`: a normal close. */
static void io_completion_error(int on_send, DWORD err)
{
    start();
    struct fsock *fs = on_send ? echoing("abc") : connected();
    complete(pending_op(on_send ? OP_SEND : OP_RECV, fs->h), 0, err);
    pump();
    cr_assert_eq(fs->closes, 1, "the connection's socket is closed once");
    cr_assert_eq(stats_get(ctx_free), 1, "the context is freed");
    cr_assert_eq(stats_get(closed), 1);
    cr_assert_eq(live_conns(), 0);
    cr_assert_eq(w.listener->closes, 0);
    cr_assert_eq(pool_size(), POOL);
    finish_and_check();
}

Test(iocp, recv_completion_operation_aborted_is_a_normal_close)
{
    io_completion_error(0, ERROR_OPERATION_ABORTED);
}

Test(iocp, recv_completion_netname_deleted_is_a_normal_close)
{
    io_completion_error(0, ERROR_NETNAME_DELETED);
}

Test(iocp, send_completion_operation_aborted_is_a_normal_close)
{
    io_completion_error(1, ERROR_OPERATION_ABORTED);
}

Test(iocp, send_completion_netname_deleted_is_a_normal_close)
{
    io_completion_error(1, ERROR_NETNAME_DELETED);
}

Test(iocp, close_cancelling_with_netname_deleted_frees_each_connection_once)
{
    w.cancel_error = ERROR_NETNAME_DELETED; /* how closesocket aborts, corosio #160 */
    start();
    struct fsock *idle = connected(), *busy = echoing("xyz");
    finish();
    cr_assert_eq(idle->closes, 1);
    cr_assert_eq(busy->closes, 1);
    cr_assert_eq(busy->out_len, 3, "the echo in flight was finished before the close");
    cr_assert_eq(stats_get(ctx_free), 2);
    check();
}

Test(iocp, a_send_the_close_leaves_pending_is_cancelled_so_a_drain_that_ends_frees_it)
{
    w.close_keeps_sends = 1;
    start();
    struct fsock *fs = echoing("never read"); /* its peer never reads: the send pends */
    srv_request_stop_now(&w.srv);
    int done = 0;
    for (int i = 0; i < 50 && !done; i++)
        done = iocp_test_pass(&w.srv, 0, 20) == 1;
    cr_assert(done, "the send the close left pending kept the connection, and the worker");
    bk_iocp.destroy(&w.srv);
    srv_destroy(&w.srv);
    cr_assert_eq(fs->out_len, 0, "nothing was read, nothing was sent");
    check();
}

Test(iocp, short_send_posts_the_rest)
{
    start();
    struct fsock *fs = echoing("0123456789");
    struct fop *first = complete_send(fs, 3);
    pump();
    struct fop *rest = pending_op(OP_SEND, fs->h);
    cr_assert_not_null(rest, "a short send must post the rest");
    cr_assert_eq(rest->ov, first->ov);
    cr_assert_eq(rest->len, 7);
    cr_assert_eq(memcmp(rest->buf, "3456789", 7), 0);
    complete_send(fs, 7);
    pump();
    cr_assert_eq(fs->out_len, 10);
    cr_assert_eq(memcmp(fs->out, "0123456789", 10), 0);
    cr_assert_not_null(pending_op(OP_RECV, fs->h), "all sent: the next receive is posted");
    cr_assert_eq(stats_get(bytes_out), 10);
    finish_and_check();
}

Test(iocp, one_byte_send_completions_still_send_every_byte)
{
    static const char msg[] = "every byte, one at a time";
    start();
    struct fsock *fs = echoing(msg);
    for (size_t i = 0; i < sizeof(msg) - 1; i++) {
        complete_send(fs, 1);
        pump();
    }
    cr_assert_null(pending_op(OP_SEND, fs->h));
    cr_assert_eq(fs->out_len, sizeof(msg) - 1);
    cr_assert_eq(memcmp(fs->out, msg, sizeof(msg) - 1), 0);
    finish_and_check();
}

Test(iocp, zero_byte_receive_then_eof_closes_after_what_was_owed)
{
    start();
    struct fsock *fs = connected();
    peer_sends(fs, "hello");
    fs->peer_eof = 1; /* the peer sends, then shuts down its side at once */
    complete_recv(fs);
    pump();
    cr_assert_eq(fs->closes, 0, "the peer's EOF must wait until what it sent is echoed");
    complete_send(fs, 2);
    pump();
    cr_assert_eq(fs->closes, 0);
    complete_send(fs, 3);
    pump();
    /* everything owed was sent: the next zero-byte receive completes and reads EOF */
    complete_recv(fs);
    pump();
    cr_assert_eq(fs->out_len, 5);
    cr_assert_eq(memcmp(fs->out, "hello", 5), 0);
    cr_assert_eq(fs->closes, 1, "EOF closes the connection");
    cr_assert_eq(stats_get(ctx_free), 1);
    finish_and_check();
}

Test(iocp, spurious_zero_byte_completion_reposts_the_receive)
{
    start();
    struct fsock *fs = connected();
    struct fop *first = pending_op(OP_RECV, fs->h);
    complete_recv(fs); /* readable, but the non-blocking read finds nothing */
    pump();
    struct fop *again = pending_op(OP_RECV, fs->h);
    cr_assert_not_null(again, "the receive is posted again");
    cr_assert_neq(again, first);
    cr_assert_eq(live_conns(), 1);
    cr_assert_eq(fs->closes, 0);
    peer_sends(fs, "late");
    complete_recv(fs);
    pump();
    complete_send(fs, 4);
    pump();
    cr_assert_eq(fs->out_len, 4);
    finish_and_check();
}

Test(iocp, non_blocking_read_reset_closes_the_connection_once)
{
    start();
    struct fsock *fs = connected();
    fs->read_error = WSAECONNRESET;
    complete_recv(fs);
    pump();
    cr_assert_eq(fs->closes, 1);
    cr_assert_eq(stats_get(ctx_free), 1);
    finish_and_check();
}

/* ---- synchronous failures go through the completion path ---- */

Test(iocp, recv_failing_at_once_is_reported_once_through_the_port)
{
    start();
    w.recv_fail = WSAECONNRESET;
    struct fsock *fs = client_connects();
    pass(); /* the accept is served; its first receive fails at once */
    cr_assert_eq(w.recv_fail, 0);
    cr_assert_eq(stats_get(ctx_alloc), 1);
    cr_assert_eq(stats_get(ctx_free), 0, "the failure reached the core inside the posting call");
    struct fop *fab = &w.ops[w.nops - 1];
    cr_assert_eq(fab->kind, OP_FABRICATED, "the failure was not queued on the port");
    cr_assert_eq(fab->state, OS_QUEUED);
    pump();
    cr_assert_eq(fab->state, OS_DEQUEUED);
    cr_assert_eq(fs->closes, 1);
    cr_assert_eq(stats_get(ctx_free), 1);
    cr_assert_eq(stats_get(closed), 1);
    finish_and_check();
}

Test(iocp, send_failing_at_once_is_reported_once_through_the_port)
{
    start();
    struct fsock *fs = connected();
    w.send_fail = WSAECONNRESET;
    peer_sends(fs, "abc");
    complete_recv(fs);
    pass(); /* the receive completes; the echo's send fails at once */
    cr_assert_eq(w.send_fail, 0);
    cr_assert_eq(stats_get(ctx_free), 0, "the failure reached the core inside the posting call");
    struct fop *fab = &w.ops[w.nops - 1];
    cr_assert_eq(fab->kind, OP_FABRICATED, "the failure was not queued on the port");
    pump();
    cr_assert_eq(fab->state, OS_DEQUEUED);
    cr_assert_eq(fs->closes, 1);
    cr_assert_eq(stats_get(ctx_free), 1);
    finish_and_check();
}

Test(iocp, failure_the_port_refuses_is_still_reported_once)
{
    start();
    w.recv_fail = WSAECONNRESET;
    w.post_fail = 1;
    struct fsock *fs = client_connects();
    pass(); /* the failure cannot be queued: the same pass delivers it after its batch */
    cr_assert_eq(w.deferred, 1);
    cr_assert_eq(fs->closes, 1);
    cr_assert_eq(stats_get(ctx_free), 1);
    pump();
    cr_assert_eq(stats_get(ctx_free), 1);
    finish_and_check();
}

Test(iocp, send_completing_at_once_is_reported_once_through_the_port)
{
    w.skip_mode_fail = 1; /* the socket keeps its packets */
    start();
    struct fsock *fs = connected();
    w.posted_send_at_once = 1;
    peer_sends(fs, "quick");
    complete_recv(fs);
    pump();
    cr_assert_eq(w.posted_send_at_once, 0);
    cr_assert_eq(stats_get(bytes_out), 5, "the send was reported once, through its packet");
    cr_assert_not_null(pending_op(OP_RECV, fs->h));
    cr_assert_eq(live_conns(), 1);
    finish_and_check();
}

Test(iocp, receive_and_send_completing_at_once_on_a_skip_socket_are_reported_once)
{
    start();
    struct fsock *fs = connected();
    cr_assert(fs->skip, "accepted sockets are put in skip-on-success mode");
    peer_sends(fs, "one");
    complete_recv(fs);
    pump();
    peer_sends(fs, "two");
    w.recv_at_once = 1;
    complete_send(fs, 3);
    pass(); /* the echo is done; the next receive finds "two" at once, no packet queued */
    cr_assert_eq(w.recv_at_once, 0);
    struct fop *send = pending_op(OP_SEND, fs->h);
    cr_assert_not_null(send, "a receive that completed at once was not reported");
    cr_assert_eq(memcmp(send->buf, "two", 3), 0);
    complete_send(fs, 3); /* the next receive pends; nothing was queued for it */
    pump();
    cr_assert_eq(stats_get(bytes_in), 6, "each receive was reported once");
    cr_assert_eq(fs->out_len, 6);
    peer_sends(fs, "three");
    w.posted_send_at_once = 1;
    complete_recv(fs);
    pump(); /* the echo's overlapped send completes at once: from the done list, once */
    cr_assert_eq(w.posted_send_at_once, 0);
    cr_assert_eq(stats_get(bytes_out), 11, "each send was reported once");
    cr_assert_not_null(pending_op(OP_RECV, fs->h));
    finish_and_check();
}

Test(iocp, calls_completing_at_once_in_turn_are_reported_in_one_pass)
{
    start();
    struct fsock *fs = connected();
    peer_sends(fs, "one");
    complete_recv(fs);
    pump(); /* "one" is echoed by an overlapped send, still pending */
    peer_sends(fs, "two");
    w.recv_at_once = 1;
    w.send_at_once = 1;
    complete_send(fs, 3);
    int dequeues = w.dequeues;
    pass(); /* the send's packet; the receive after it and the echo of "two" complete at once */
    cr_assert_eq(w.recv_at_once + w.send_at_once, 0);
    cr_assert_eq(w.dequeues - dequeues, 1, "no look at the port between them");
    cr_assert_eq(fs->out_len, 6, "the chain was reported in the pass that started it");
    cr_assert_eq(memcmp(fs->out, "onetwo", 6), 0);
    cr_assert_not_null(pending_op(OP_RECV, fs->h), "the next receive pends");
    finish_and_check();
}

Test(iocp, calls_that_keep_completing_at_once_leave_the_pass_for_the_port)
{
    w.buffer_size = 8; /* 64 echoes of 8 bytes, each receive and send completing at once */
    start();
    struct fsock *fs = connected();
    char data[PEER_BYTES + 1];
    for (int i = 0; i < PEER_BYTES; i++)
        data[i] = (char)('a' + i % 26);
    data[PEER_BYTES] = 0;
    peer_sends(fs, data);
    w.recv_at_once = w.send_at_once = 2 * PEER_BYTES;
    complete_recv(fs);
    pass();
    cr_assert_gt(fs->out_len, 0);
    cr_assert_lt(fs->out_len, PEER_BYTES, "one pass ran the whole chain: the port waited");
    for (int i = 0; i < 2 * PEER_BYTES && fs->out_len < PEER_BYTES; i++)
        pass();
    cr_assert_eq(fs->out_len, PEER_BYTES, "the later passes finish the echo");
    cr_assert_eq(memcmp(fs->out, data, PEER_BYTES), 0);
    cr_assert_not_null(pending_op(OP_RECV, fs->h));
    w.recv_at_once = w.send_at_once = 0;
    finish_and_check();
}

Test(iocp, send_the_socket_takes_at_once_is_reported_once_without_an_overlapped_send)
{
    start();
    struct fsock *fs = connected();
    peer_sends(fs, "now");
    w.send_at_once = 1;
    complete_recv(fs);
    pass(); /* the echo is sent by the non-blocking call and reported after it */
    cr_assert_eq(w.send_at_once, 0);
    cr_assert_eq(fs->nb_sends, 1);
    cr_assert_null(pending_op(OP_SEND, fs->h), "nothing was left for an overlapped send");
    cr_assert_eq(stats_get(bytes_out), 3, "reported once");
    cr_assert_eq(fs->out_len, 3);
    cr_assert_not_null(pending_op(OP_RECV, fs->h), "the next receive is posted");
    for (int i = 0; i < w.nops; i++)
        cr_assert_neq(w.ops[i].kind, OP_SEND, "an overlapped send was posted");
    finish_and_check();
}

Test(iocp, receive_completing_at_once_without_skip_mode_is_reported_once_through_the_port)
{
    w.skip_mode_fail = 1;
    start();
    struct fsock *fs = connected();
    cr_assert(!fs->skip);
    peer_sends(fs, "one");
    complete_recv(fs);
    pump();
    peer_sends(fs, "two");
    w.recv_at_once = 1;
    complete_send(fs, 3);
    pump();
    cr_assert_eq(w.recv_at_once, 0);
    cr_assert_eq(stats_get(bytes_in), 6, "reported once, through its packet");
    complete_send(fs, 3);
    pump();
    cr_assert_eq(fs->out_len, 6);
    finish_and_check();
}

Test(iocp, non_ifs_provider_keeps_every_completion_on_the_port)
{
    w.non_ifs = 1;
    start();
    struct fsock *fs = connected();
    cr_assert_eq(w.skip_mode_calls, 0, "skip-on-success is not even asked for");
    cr_assert(!fs->skip);
    peer_sends(fs, "one");
    complete_recv(fs);
    pump();
    peer_sends(fs, "two");
    w.recv_at_once = 1;
    complete_send(fs, 3);
    pump();
    cr_assert_eq(w.recv_at_once, 0, "the receive completed at once");
    cr_assert_eq(stats_get(bytes_in), 6, "reported once, through its packet");
    complete_send(fs, 3);
    pump();
    cr_assert_eq(fs->out_len, 6);
    cr_assert_eq(memcmp(fs->out, "onetwo", 6), 0);
    finish_and_check();
}

Test(iocp, ifs_provider_puts_accepted_sockets_in_skip_mode)
{
    start();
    struct fsock *fs = connected();
    cr_assert_eq(w.skip_mode_calls, 1);
    cr_assert(fs->skip);
    finish_and_check();
}

/* ---- receive modes ---- */

/* fs, with a receive posted, receives `data` and echoes it; returns the next receive. */
static struct fop *echo_once(struct fsock *fs, const char *data)
{
    peer_sends(fs, data);
    complete_recv(fs);
    pump();
    struct fop *op = pending_op(OP_SEND, fs->h);
    cr_assert_not_null(op, "the received bytes were not sent back");
    complete_send(fs, op->len);
    pump();
    struct fop *next = pending_op(OP_RECV, fs->h);
    cr_assert_not_null(next, "no receive after the echo");
    return next;
}

Test(iocp, new_connection_receives_zero_byte_then_with_the_buffer_once_active)
{
    start();
    struct fsock *fs = connected();
    cr_assert_eq(pending_op(OP_RECV, fs->h)->len, 0, "a new connection holds no buffer");
    struct fop *next = echo_once(fs, "first");
    cr_assert_eq(fs->nb_reads, 1);
    cr_assert_eq(next->len, w.cfg.buffer_size, "data seen: the next receive has the buffer");
    next = echo_once(fs, "second");
    cr_assert_eq(fs->nb_reads, 1, "a buffered receive needs no read after it");
    cr_assert_eq(next->len, w.cfg.buffer_size);
    cr_assert_eq(fs->out_len, 11);
    cr_assert_eq(memcmp(fs->out, "firstsecond", 11), 0);
    finish_and_check();
}

Test(iocp, active_connection_waiting_two_tick_periods_turns_idle_until_data)
{
    start();
    struct fsock *fs = connected();
    echo_once(fs, "warm");
    iocp_test_tick_period(&w.srv);
    struct fop *next = echo_once(fs, "one period");
    cr_assert_eq(next->len, w.cfg.buffer_size, "one period of waiting keeps it active");
    iocp_test_tick_period(&w.srv);
    iocp_test_tick_period(&w.srv);
    next = echo_once(fs, "two periods");
    cr_assert_eq(next->len, 0, "a connection that waited two periods is idle: zero-byte");
    next = echo_once(fs, "again");
    cr_assert_eq(next->len, w.cfg.buffer_size, "data makes it active again");
    cr_assert_eq(fs->nb_reads, 2);
    finish_and_check();
}

/* The data buffers the server holds (its worker caches included). */
static size_t buffer_bytes(void)
{
    return atomic_load(&w.srv.buffer_bytes);
}

/* A budget of four buffers: the worker caches none, so a returned buffer shows. */
static void start_uncached(void)
{
    w.max_buffer_bytes = 4 * 16384;
    start();
    cr_assert_eq(w.cfg.buffer_size, 16384);
}

Test(iocp, quiet_active_connection_gives_its_buffer_back_and_receives_zero_byte)
{
    start_uncached();
    struct fsock *fs = connected();
    cr_assert_eq(echo_once(fs, "warm")->len, w.cfg.buffer_size);
    cr_assert_eq(buffer_bytes(), w.cfg.buffer_size, "the buffered receive holds a buffer");
    iocp_test_tick_period(&w.srv);
    pump();
    cr_assert_eq(w.cancels, 0, "one period of waiting keeps the receive");
    iocp_test_tick_period(&w.srv);
    pump();
    cr_assert_eq(w.cancels, 1, "two periods: the tick cancels the buffered receive");
    struct fop *r = pending_op(OP_RECV, fs->h);
    cr_assert_not_null(r, "a receive is posted again in its place");
    cr_assert_eq(r->len, 0, "the connection is idle: zero-byte");
    cr_assert_eq(buffer_bytes(), 0, "its buffer went back to the budget");
    cr_assert_eq(fs->closes, 0);
    cr_assert_eq(stats_get(ctx_free), 0, "the cancel is not a close");
    iocp_test_tick_period(&w.srv);
    iocp_test_tick_period(&w.srv);
    pump();
    cr_assert_eq(w.cancels, 1, "a zero-byte receive is never cancelled");
    cr_assert_eq(echo_once(fs, "again")->len, w.cfg.buffer_size, "data makes it active again");
    cr_assert_eq(fs->out_len, 9);
    cr_assert_eq(memcmp(fs->out, "warmagain", 9), 0);
    finish_and_check();
}

Test(iocp, data_that_beats_the_quiet_cancel_is_delivered_once_and_in_order)
{
    for (int race = 1; race <= 2; race++) {
        if (race > 1)
            setup();
        start_uncached();
        struct fsock *fs = connected();
        echo_once(fs, "warm");
        peer_sends(fs, "late");
        w.cancel_race = race;
        iocp_test_tick_period(&w.srv);
        iocp_test_tick_period(&w.srv);
        pump();
        cr_assert_eq(w.cancels, 1, "race %d", race);
        struct fop *op = pending_op(OP_SEND, fs->h);
        cr_assert_not_null(op, "race %d: the data the receive got is echoed", race);
        cr_assert_eq(op->len, 4, "race %d", race);
        complete_send(fs, op->len);
        pump();
        cr_assert_eq(pending_op(OP_RECV, fs->h)->len, 0, "race %d: it waited: idle now", race);
        cr_assert_eq(buffer_bytes(), 0, "race %d", race);
        echo_once(fs, "more");
        cr_assert_eq(fs->out_len, 12, "race %d", race);
        cr_assert_eq(memcmp(fs->out, "warmlatemore", 12), 0, "race %d", race);
        finish_and_check();
    }
}

Test(iocp, close_while_the_quiet_cancel_is_under_way_frees_once)
{
    start_uncached();
    struct fsock *fs = connected();
    echo_once(fs, "warm");
    w.cancel_pends = 1;
    iocp_test_tick_period(&w.srv);
    iocp_test_tick_period(&w.srv);
    pump();
    cr_assert_eq(w.cancels, 1);
    cr_assert_not_null(pending_op(OP_RECV, fs->h), "the cancel has not ended the receive yet");
    iocp_test_tick_period(&w.srv);
    pump();
    cr_assert_eq(w.cancels, 1, "one cancel per receive");
    finish(); /* the stop closes the socket, which ends the receive */
    cr_assert_eq(fs->closes, 1);
    cr_assert_eq(stats_get(ctx_free), 1);
    cr_assert_eq(buffer_bytes(), 0, "the closed connection's buffer is back");
    check();
}

Test(iocp, spurious_zero_byte_completion_keeps_the_connection_idle)
{
    start();
    struct fsock *fs = connected();
    complete_recv(fs); /* nothing there */
    pump();
    cr_assert_eq(pending_op(OP_RECV, fs->h)->len, 0, "found nothing: still zero-byte");
    finish_and_check();
}

Test(iocp, eof_on_a_buffered_receive_closes_the_connection_once)
{
    start();
    struct fsock *fs = connected();
    cr_assert_eq(echo_once(fs, "data")->len, w.cfg.buffer_size);
    fs->peer_eof = 1;
    complete_recv(fs);
    pump();
    cr_assert_eq(fs->closes, 1);
    cr_assert_eq(stats_get(ctx_free), 1);
    finish_and_check();
}

Test(iocp, buffered_receive_failing_on_completion_is_a_close)
{
    start();
    struct fsock *fs = connected();
    struct fop *op = echo_once(fs, "data");
    cr_assert_eq(op->len, w.cfg.buffer_size);
    complete(op, 0, WSAECONNRESET);
    pump();
    cr_assert_eq(fs->closes, 1);
    cr_assert_eq(stats_get(ctx_free), 1);
    finish_and_check();
}

/* ---- shutdown ---- */

Test(iocp, stop_accepting_closes_the_listener_once_and_late_accepts_their_sockets)
{
    start();
    struct fsock *late = client_connects(); /* completed, still queued */
    bk_iocp.stop_accepting(&w.srv, 0);
    bk_iocp.stop_accepting(&w.srv, 0);
    cr_assert_eq(w.listener->closes, 1, "stop_accepting closes the listener once");
    pump();
    cr_assert_eq(late->closes, 1, "an accept dequeued after the stop closes its socket");
    cr_assert(!late->associated);
    cr_assert_eq(stats_get(ctx_alloc), 0);
    cr_assert_eq(pool_size(), 0, "nothing is re-posted once stopped");
    finish_and_check(); /* its tick calls stop_accepting again */
    cr_assert_eq(w.listener->closes, 1);
}

Test(iocp, accepts_completing_during_cancellation_close_their_sockets)
{
    start();
    connected();
    w.cancel_accepts_succeed = 2; /* two clients win the race with the listener's close */
    finish();
    int won = 0;
    for (int i = 0; i < w.nsocks; i++)
        if (w.socks[i].accepted && !w.socks[i].associated) {
            won++;
            cr_assert_eq(w.socks[i].closes, 1,
                         "an accept completed at shutdown leaked (compio #315)");
        }
    cr_assert_eq(won, 2);
    cr_assert_eq(stats_get(ctx_alloc), 1, "no connection is started during shutdown");
    cr_assert_eq(w.listener->closes, 1);
    check();
}

/* ---- the fault plans' wrappers (sock_shim.c) over the fake kernel ---- */

/* Makes `text` the active fault plan; start() then installs the wrappers. */
static void plan(const char *text)
{
    struct fault_plan p;
    char err[256] = "";
    cr_assert_eq(fault_plan_parse(text, &p, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(fault_enable(&p, NULL, err, sizeof(err)), 0, "%s", err);
}

static void faults_teardown(void)
{
    fault_disable();
    teardown();
}

/* Whether a fabricated completion was queued for an accept request's OVERLAPPED. */
static int accept_failed_on_completion(void)
{
    for (int i = 0; i < w.nops; i++)
        for (int k = 0; w.ops[i].kind == OP_FABRICATED && k < w.nops; k++)
            if (w.ops[k].kind == OP_ACCEPT && w.ops[k].ov == w.ops[i].ov)
                return 1;
    return 0;
}

TestSuite(iocp_faults, .init = setup, .fini = faults_teardown, .timeout = 60);

Test(iocp_faults, accept_fail_at_once_or_on_completion_closes_the_socket_and_reposts)
{
    int at_once = 0, on_completion = 0;
    for (int seed = 1; seed <= 64 && !(at_once && on_completion); seed++) {
        char text[64];
        snprintf(text, sizeof(text), "seed=%d,nth=1,sites=accept", seed);
        if (seed > 1)
            setup();
        plan(text);
        start();
        pump();
        cr_assert_eq(fault_count(FAULT_ACCEPT_FAIL), 1, "%s", text);
        cr_assert_eq(closed_accept_sockets(), 1, "%s: the failed accept's socket", text);
        cr_assert_eq(stats_get(accept_errors), 1, "%s", text);
        cr_assert_eq(pool_size(), POOL, "%s: the pool was not refilled", text);
        if (accept_failed_on_completion())
            on_completion++;
        else
            at_once++;
        connected();
        finish_and_check();
        fault_disable();
    }
    cr_assert(at_once && on_completion, "64 seeds did not reach both ways of failing");
}

Test(iocp_faults, zero_read_is_a_peer_eof_that_never_reaches_the_socket)
{
    plan("seed=1,zero_read=1,sites=recv");
    start();
    struct fsock *fs = client_connects();
    pump();
    cr_assert_eq(fault_count(FAULT_ZERO_READ), 1);
    for (int i = 0; i < w.nops; i++)
        cr_assert_neq(w.ops[i].kind, OP_RECV, "the faulted receive reached the socket");
    cr_assert_eq(fs->closes, 1);
    cr_assert_eq(stats_get(ctx_free), 1);
    finish_and_check();
}

Test(iocp_faults, partial_sends_still_echo_every_byte)
{
    static const char msg[] = "partial sends are finished, every byte of them";
    plan("seed=5,partial_send=1,sites=send");
    start();
    struct fsock *fs = connected();
    peer_sends(fs, msg);
    complete_recv(fs);
    pump();
    int sends = 0;
    for (struct fop *op; sends < 64 && (op = pending_op(OP_SEND, fs->h)); sends++) {
        complete_send(fs, op->len);
        pump();
    }
    cr_assert_gt(sends, 1);
    cr_assert_eq(fault_count(FAULT_PARTIAL_SEND), (uint64_t)sends - 1, "all but the 1-byte tail");
    cr_assert_eq(fs->out_len, sizeof(msg) - 1);
    cr_assert_eq(memcmp(fs->out, msg, sizeof(msg) - 1), 0);
    finish_and_check();
}

Test(iocp_faults, connreset_on_send_closes_the_connection_once)
{
    for (int seed = 1; seed <= 4; seed++) {
        char text[64];
        snprintf(text, sizeof(text), "seed=%d,connreset=1,sites=send", seed);
        if (seed > 1)
            setup();
        plan(text);
        start();
        struct fsock *fs = connected();
        peer_sends(fs, "reset");
        complete_recv(fs);
        pump();
        cr_assert_eq(fault_count(FAULT_CONNRESET), 1, "%s", text);
        cr_assert_eq(fs->closes, 1, "%s", text);
        cr_assert_eq(fs->out_len, 0, "%s", text);
        cr_assert_eq(stats_get(ctx_free), 1, "%s", text);
        finish_and_check();
        fault_disable();
    }
}

/* Every fault kind on a connection in each receive mode (idle: zero-byte; active:
 * buffered): it closes once or echoes what it got, and the next accept meets the plan;
 * finish_and_check then holds (sockets, contexts, every operation completed once). */
Test(iocp_faults, every_fault_kind_in_both_receive_modes_closes_once_or_echoes)
{
    static const char *kinds[] = {"connreset=1,sites=recv",
                                  "zero_read=1,sites=recv",
                                  "connreset=1,sites=send",
                                  "partial_send=1,sites=send",
                                  "alloc_fail=1,sites=alloc",
                                  "accept_fail=1,sites=accept",
                                  "setsockopt_fail=1,sites=setsockopt"};
    int runs = 0;
    for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
        for (int active = 0; active <= 1; active++) {
            char text[96];
            snprintf(text, sizeof(text), "seed=%d,%s", 3 + active, kinds[k]);
            if (runs++ > 0)
                setup();
            plan("seed=1,nth=1000000"); /* the wrappers go in; nothing is injected yet */
            start();
            struct fsock *fs = connected();
            if (active)
                cr_assert_eq(echo_once(fs, "warm")->len, w.cfg.buffer_size, "%s", text);
            fault_disable();
            plan(text);
            ep_alloc_fail = fault_alloc_fails; /* the "alloc" site, as main() wires it */
            peer_sends(fs, "payload");
            if (pending_op(OP_RECV, fs->h))
                complete_recv(fs);
            pump();
            for (int i = 0; i < 64 && pending_op(OP_SEND, fs->h); i++) {
                complete_send(fs, pending_op(OP_SEND, fs->h)->len);
                pump();
            }
            struct fop *r = pending_op(OP_RECV, fs->h);
            if (r && r->len == 0) {
                complete_recv(fs); /* a fallback zero-byte receive: nothing is there */
                pump();
            }
            size_t echoed = active ? 4 + 7 : 7;
            if (fs->closes == 0)
                cr_assert_eq(fs->out_len, echoed, "%s active=%d: open but not echoed", text,
                             active);
            cr_assert_leq(fs->closes, 1, "%s", text);
            client_connects(); /* accepts and their socket options meet the plan */
            pump();
            uint64_t faults = 0;
            for (int f = 0; f < FAULT_KINDS; f++)
                faults += fault_count((enum fault_kind)f);
            cr_assert_gt(faults, 0, "%s active=%d: nothing was injected", text, active);
            finish_and_check();
            fault_disable();
        }
    }
}

/* ---- the Nth-call walk (issue 11): every counted call failed in turn ---- */

#define WALK_CLIENTS 3
#define WALK_BYTES 90 /* per client: several receives */
#define WALK_CHUNK 37 /* bytes a client writes at a time */
#define WALK_SHORT 5  /* bytes a send takes at most: every echo is a run of short sends */
#define WALK_QUIET 4  /* every this many steps two tick periods pass: quiet receives end */
#define WALK_STEPS 1000
#define WALK_LIMIT 600

/* One client of the walk: its socket and how much of its stream it has written. */
struct walk_client {
    struct fsock *fs;
    unsigned fed;
    int eof; /* it half-closed after writing everything */
};

static struct walk_client walkers[WALK_CLIENTS];

/* One step of every client: a pending send takes WALK_SHORT bytes; a pending receive
 * (zero-byte or buffered) completes with the next chunk, or with the half-close once
 * everything is written. Returns what it did. */
static int walk_clients_step(void)
{
    int acted = 0;
    for (int i = 0; i < WALK_CLIENTS; i++) {
        struct walk_client *wc = &walkers[i];
        struct fsock *fs = wc->fs;
        if (!fs || !fs->open)
            continue;
        struct fop *op = pending_op(OP_SEND, fs->h);
        if (op) {
            complete_send(fs, op->len < WALK_SHORT ? op->len : WALK_SHORT);
            acted++;
        }
        if (pending_op(OP_RECV, fs->h) && !wc->eof) {
            char chunk[WALK_CHUNK + 1];
            unsigned n = WALK_BYTES - wc->fed < WALK_CHUNK ? WALK_BYTES - wc->fed : WALK_CHUNK;
            for (unsigned j = 0; j < n; j++)
                chunk[j] = nth_walk_byte(i, wc->fed + j);
            chunk[n] = 0;
            if (n)
                peer_sends(fs, chunk);
            fs->peer_eof = n == 0;
            wc->fed += n;
            wc->eof = n == 0;
            complete_recv(fs);
            acted++;
        }
    }
    return acted;
}

/* The scenario: clients connect one by one while accepts are posted, each writes its
 * stream in chunks into zero-byte and buffered receives (two tick periods every
 * WALK_QUIET steps cancel the quiet buffered ones), gets it back through short sends
 * and half-closes; then a graceful stop. */
static void walk_scenario(void)
{
    memset(walkers, 0, sizeof(walkers));
    start();
    int clients = 0, acted = 1;
    for (int step = 0; step < WALK_STEPS && (acted || clients < WALK_CLIENTS); step++) {
        if (step % WALK_QUIET == WALK_QUIET - 1) {
            iocp_test_tick_period(&w.srv);
            iocp_test_tick_period(&w.srv);
            pump(); /* the buffered receives posted last step are quiet now: cancelled */
        }
        acted = walk_clients_step();
        if (clients < WALK_CLIENTS && pending_accept()) {
            walkers[clients++].fs = client_connects();
            acted++;
        } else if (clients < WALK_CLIENTS) {
            clients++; /* no accept is posted (they keep failing): that client gives up */
        }
        pump();
    }
    cr_assert_not(acted, "the walk scenario did not settle in %d steps", WALK_STEPS);
    finish();
}

/* What every run must keep: the backend's invariants (check), and each client got back
 * a prefix of its stream; with no fault, every client connected and got all of it. */
static void walk_check(const char *what, int exact)
{
    check();
    for (int i = 0; i < WALK_CLIENTS; i++) {
        struct fsock *fs = walkers[i].fs;
        cr_assert(fs || !exact, "%s: client %d never connected", what, i);
        if (!fs)
            continue;
        nth_walk_check_echo(what, i, (const char *)fs->out, fs->out_len, walkers[i].fed, WALK_BYTES,
                            exact);
    }
}

/* One walk run's start: a fresh server, the plan, the alloc site wired in. */
static void walk_begin(const char *text)
{
    setup();
    plan(text);
    ep_alloc_fail = fault_alloc_fails;
}

/* One walk run's end. */
static void walk_end(void)
{
    fault_disable();
    teardown();
}

static const struct nth_walk walk = {walk_begin, walk_scenario, walk_check, walk_end};

ParameterizedTestParameters(iocp_faults, nth_call_walk_keeps_the_invariants)
{
    static int persist[] = {0, 1};
    return cr_make_param_array(int, persist, 2);
}

ParameterizedTest(int *persist, iocp_faults, nth_call_walk_keeps_the_invariants)
{
    nth_walk_run(&walk, *persist, 20, WALK_LIMIT);
}
