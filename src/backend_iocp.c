/* backend_iocp.c - the Windows backend: one completion port, N worker threads,
 * pre-posted AcceptEx, overlapped WSARecv / WSASend (after nginx's ngx_iocp_module.c
 * and libuv's src/win/tcp.c). Every socket and port call goes through sock_shim so
 * fault plans and tests can replace it.
 *
 * Receive modes: a new or idle connection posts a zero-byte WSARecv, so it holds no
 * data buffer, and reads what arrived with a non-blocking WSARecv once it completes.
 * A connection whose last receive found data is active: it posts its next receive
 * with the core's buffer, one call less per message. It turns idle again when a
 * buffered receive waited IDLE_TICKS tick periods: the tick cancels that receive
 * (CancelIoEx), and its aborted completion gives the buffer back to the budget
 * (conn_recv_buffer_return) and posts a zero-byte receive in its place - the same
 * operation for the core, so nothing is reported. Data that beat the cancel is
 * delivered as usual. So silent clients never pin the budget (hostile-client stall).
 *
 * Sends: tried non-blocking first; only one the socket cannot take at once is posted
 * overlapped. Sockets are put in skip-on-success mode
 * (FILE_SKIP_COMPLETION_PORT_ON_SUCCESS): an overlapped call that completes at once
 * queues no packet. Neither may be reported by the posting call (backend.h), so both
 * go on the posting thread's done list, which that thread's worker loop drains after
 * each batch. A socket the mode could not be set on gets its packets (ic->skip == 0),
 * and so does every socket when the listener's provider is not an IFS one (a layered
 * service provider without XP1_IFS_HANDLES may queue a packet anyway: libuv's
 * uv__is_non_ifs_lsp), since a packet for a request already reported would be a
 * second report.
 *
 * Locking: the core calls recv/send/cancel with c->lock held; completions take
 * c->lock only while they touch the socket (the read after a zero-byte receive, the
 * error of a failed operation), so cancel cannot close it (and a new socket take
 * over its handle value) under their feet, and release it before calling conn_on_*.
 * A successful send or buffered receive does not touch the socket: no lock (the
 * receive mode is written only by the completion of the one receive in flight, and
 * read by the next post, which the core makes after that completion). The tick's
 * cancel of a quiet receive runs under c->lock and only on an open socket; the
 * completion it causes is a failed one, so it is handled under the lock too. The
 * listener and the accept requests are under accept_lock. */
#ifdef _WIN32

#include "sock_shim.h"

#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "backend_iocp.h"
#include "core/ep.h"
#include "core/stats.h"
#include "fault.h"
#include "net.h"

#define KEY_IO 1          /* completions of socket operations (real or fabricated) */
#define KEY_WAKE 2        /* wake packets: tick now */
#define BATCH 64          /* completions dequeued per GetQueuedCompletionStatusEx, at most */
#define GROW_AFTER 4      /* full dequeues in a row before asking for more */
#define DONE_BUDGET BATCH /* done-list reports per pass, at most (drain_done) */
#define DESTROY_DRAIN_MS 2000
/* AcceptEx wants each address slot 16 bytes larger than the largest address. */
#define ACCEPT_ADDR_LEN ((DWORD)sizeof(struct sockaddr_storage) + 16)
#define MAX_IO_LEN 0x40000000u /* one WSABUF at most; the core finishes short sends */
#define IDLE_TICKS 2           /* a buffered receive pending this many ticks of worker 0: idle */

enum req_kind { REQ_ACCEPT, REQ_RECV, REQ_SEND };

/* One operation. The OVERLAPPED comes first so a dequeued lpOverlapped is the request.
 * Every post zeroes it; one that is not in flight (it completed at once, or its post
 * failed) is wholly ours again, and its hEvent, which a port-bound call leaves NULL,
 * links it on iocp.deferred or a done list (req_link): no link field in each
 * connection. */
struct req {
    OVERLAPPED ov;
    int kind;
};

/* Puts r, not in flight, in front of `next` on a deferred or done list. */
static void req_link(struct req *r, struct req *next)
{
    r->ov.hEvent = next;
}

/* The request after r on its list. */
static struct req *req_next(const struct req *r)
{
    return r->ov.hEvent;
}

enum accept_state { AS_IDLE, AS_POSTED, AS_RETRY, AS_DEAD };

struct accept_req {
    struct req r;
    SOCKET sock;         /* the accept socket, owned by the request while posted */
    int state;           /* enum accept_state, under accept_lock */
    unsigned fails;      /* consecutive failures: drives the back-off */
    uint64_t ordinal;    /* global accept ordinal of the current post (fault key) */
    int64_t retry_at_ms; /* with AS_RETRY: when to post again */
    char addrs[2 * ACCEPT_ADDR_LEN];
};

/* The backend's part of a connection (conn_bk). */
struct iocp_conn {
    SOCKET sock;            /* INVALID_SOCKET once cancel/release closed it (under c->lock) */
    uint32_t rtick;         /* iocp.ticks when the buffered receive was posted */
    unsigned char skip;     /* sock is in skip-on-success mode */
    unsigned char active;   /* the next receive gets a buffer (under c->lock) */
    unsigned char buffered; /* a receive with a buffer is posted (under c->lock; 0 after a send) */
    unsigned char quieting; /* the tick cancelled that receive to make c idle (under c->lock) */
    struct req op;          /* the core posts one operation at a time: its receive or its send */
};

struct iocp {
    HANDLE port;
    SOCKET listener; /* INVALID_SOCKET once stop_accepting closed it */
    int family;
    CRITICAL_SECTION accept_lock;
    struct accept_req *accepts;
    int naccepts;
    atomic_int accepts_posted; /* AcceptEx posted whose completion is not handled yet */
    atomic_int retries;        /* accept requests in AS_RETRY */
    atomic_uint_least64_t accept_ordinal;
    CRITICAL_SECTION deferred_lock;
    struct req *deferred; /* failures PostQueuedCompletionStatus could not queue */
    atomic_int ndeferred;
    atomic_uint_least32_t ticks; /* ticks of worker 0 (mod 2^32): the idle decision's clock */
    int ifs; /* the listener's provider hands out IFS handles: skip mode is safe */
    int wsa_started;
};

/* Operations that completed at once on a skip-on-success socket, posted by this
 * thread: its worker loop reports them (never the posting call, backend.h). */
static _Thread_local struct req *done_list;

/* Translates a Win32/Winsock error to an EP_E* code, or 0 for a graceful close (the
 * one translate_error). */
static int translate_error(DWORD e)
{
    switch (e) {
    case 0:
    case WSAEDISCON: /* Winsock's graceful close: 0 bytes, as a peer's shutdown reads */
        return 0;
    case ERROR_OPERATION_ABORTED: /* == WSA_OPERATION_ABORTED */
    case ERROR_NETNAME_DELETED:   /* closesocket cancels with this too (corosio #160) */
    case WSAEINTR:
    case WSAENOTSOCK: /* our own close raced the call */
        return EP_ECANCELED;
    case WSAECONNRESET:
    case WSAECONNABORTED:
    case ERROR_CONNECTION_ABORTED:
    case WSAENETRESET:
    case WSAENOTCONN:
        return EP_ECONNRESET;
    case WSAESHUTDOWN:
        return EP_EPIPE;
    case WSAEMFILE:
    case ERROR_TOO_MANY_OPEN_FILES:
        return EP_EMFILE;
    case WSAENOBUFS:
    case ERROR_NOT_ENOUGH_MEMORY: /* == WSA_NOT_ENOUGH_MEMORY */
    case ERROR_OUTOFMEMORY:
        return EP_ENOBUFS;
    case WSAETIMEDOUT:
    case ERROR_SEM_TIMEOUT:
        return EP_ETIMEDOUT;
    case WSAEINVAL:
    case WSAEFAULT:
        return EP_EINVAL;
    case WSAEADDRINUSE:
    case WSAEADDRNOTAVAIL:
    case WSAEACCES:
        return EP_EADDR;
    default:
        return EP_EIO;
    }
}

/* Closes *sock through the shim (which counts it) and forgets it. */
static void close_socket(SOCKET *sock)
{
    if (*sock != INVALID_SOCKET) {
        shim_closesocket(*sock);
        *sock = INVALID_SOCKET;
    }
}

/* Whether a dequeued request succeeded: NT_SUCCESS of its status (a fabricated
 * status is an error one). */
static int req_succeeded(const struct req *r)
{
    return (LONG)(DWORD)r->ov.Internal >= 0;
}

/* The Winsock error of a dequeued request, 0 on success. Fabricated failures carry
 * their code in ov.Internal; real ones are read back with WSAGetOverlappedResult,
 * which maps the NTSTATUS (a reset shows as WSAECONNRESET there, where
 * GetQueuedCompletionStatus would say ERROR_NETNAME_DELETED). */
static DWORD req_error(struct req *r, SOCKET sock)
{
    ULONG_PTR st = r->ov.Internal;
    if (SHIM_STATUS_IS_FABRICATED(st))
        return SHIM_STATUS_ERROR(st);
    if (req_succeeded(r))
        return 0;
    if (sock == INVALID_SOCKET)
        return ERROR_OPERATION_ABORTED;
    DWORD bytes = 0, flags = 0;
    if (shim_WSAGetOverlappedResult(sock, &r->ov, &bytes, FALSE, &flags))
        return 0;
    DWORD e = (DWORD)WSAGetLastError();
    return e ? e : ERROR_OPERATION_ABORTED;
}

/* Routes a synchronous failure of r through the completion path, so the core sees
 * one error path per operation. Never calls the core. */
static void fail_via_port(struct iocp *b, struct req *r, DWORD err)
{
    r->ov.Internal = SHIM_STATUS(err);
    r->ov.InternalHigh = 0;
    if (shim_PostQueuedCompletionStatus(b->port, 0, KEY_IO, &r->ov))
        return;
    /* the port could not take it: a worker picks it up on its next loop */
    EnterCriticalSection(&b->deferred_lock);
    req_link(r, b->deferred);
    b->deferred = r;
    atomic_fetch_add(&b->ndeferred, 1);
    LeaveCriticalSection(&b->deferred_lock);
}

/* ---- accepts ---- */

static void post_accept_locked(struct iocp *b, struct accept_req *ar);

/* An accept failed (its socket already closed): re-post it after the core's retry
 * delay for this many consecutive failures, parking it until then. accept_lock held. */
static void accept_failed(struct iocp *b, struct accept_req *ar)
{
    stats_add(accept_errors, 1);
    int64_t delay = srv_accept_retry_ms(++ar->fails);
    if (delay == 0) {
        post_accept_locked(b, ar);
        return;
    }
    ar->retry_at_ms = ep_now_ms() + delay;
    ar->state = AS_RETRY;
    atomic_fetch_add(&b->retries, 1);
}

/* Posts AcceptEx (receive length 0: a silent client must not hold it, libevent #664)
 * with a fresh accept socket; everything the completion needs is stored before
 * the post (zio #530). accept_lock held. */
static void post_accept_locked(struct iocp *b, struct accept_req *ar)
{
    if (b->listener == INVALID_SOCKET) {
        ar->state = AS_DEAD;
        return;
    }
    ep_descriptors_lock(); /* not the one the admin port gave up for its client */
    SOCKET as = shim_WSASocketW(b->family, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
    ep_descriptors_unlock();
    if (as == INVALID_SOCKET) {
        accept_failed(b, ar);
        return;
    }
    memset(&ar->r.ov, 0, sizeof(ar->r.ov));
    ar->r.kind = REQ_ACCEPT;
    ar->sock = as;
    ar->ordinal = atomic_fetch_add(&b->accept_ordinal, 1) + 1;
    ar->state = AS_POSTED;
    atomic_fetch_add(&b->accepts_posted, 1);
    DWORD got = 0;
    shim_ctx_set(0, ar->ordinal);
    BOOL ok = shim_AcceptEx(b->listener, as, ar->addrs, 0, ACCEPT_ADDR_LEN, ACCEPT_ADDR_LEN, &got,
                            &ar->r.ov);
    DWORD err = ok ? 0 : (DWORD)WSAGetLastError();
    shim_ctx_clear();
    if (ok || err == ERROR_IO_PENDING)
        return; /* a completion comes either way: the listener does not skip the port */
    /* failed at once: no completion will come */
    atomic_fetch_sub(&b->accepts_posted, 1);
    close_socket(&ar->sock);
    ar->state = AS_IDLE;
    accept_failed(b, ar);
}

/* Re-posts the accepts whose back-off has expired; returns ms until the next one is
 * due (INT_MAX if none). */
static int run_retries(struct iocp *b, struct server *s)
{
    int next = INT_MAX;
    if (atomic_load(&b->retries) == 0)
        return next;
    EnterCriticalSection(&b->accept_lock);
    int64_t now = ep_now_ms();
    for (int i = 0; i < b->naccepts; i++) {
        struct accept_req *ar = &b->accepts[i];
        if (ar->state != AS_RETRY)
            continue;
        if (b->listener == INVALID_SOCKET || srv_stopping(s)) {
            ar->state = AS_DEAD;
            atomic_fetch_sub(&b->retries, 1);
        } else if (ar->retry_at_ms <= now) {
            atomic_fetch_sub(&b->retries, 1);
            ar->state = AS_IDLE;
            post_accept_locked(b, ar);
        }
        if (ar->state == AS_RETRY && ar->retry_at_ms - now < next)
            next = ar->retry_at_ms - now > 0 ? (int)(ar->retry_at_ms - now) : 0;
    }
    LeaveCriticalSection(&b->accept_lock);
    return next;
}

/* Hands an accepted socket to the core: port, non-blocking (for the read after a
 * zero-byte receive and the send tried before posting one), no Nagle, skip-on-success,
 * a context, the first receive. */
static void serve_accepted(struct iocp *b, struct server *s, int w, SOCKET as)
{
    const UCHAR modes = FILE_SKIP_COMPLETION_PORT_ON_SUCCESS | FILE_SKIP_SET_EVENT_ON_HANDLE;
    u_long nonblocking = 1;
    BOOL one = TRUE;
    if (!shim_CreateIoCompletionPort((HANDLE)as, b->port, KEY_IO, 0) ||
        shim_ioctlsocket(as, FIONBIO, &nonblocking) != 0) {
        stats_add(accept_errors, 1);
        close_socket(&as);
        return;
    }
    /* latency only: a failure here is harmless */
    shim_setsockopt(as, IPPROTO_TCP, TCP_NODELAY, (const char *)&one, sizeof(one));
    /* speed only: without it every completion comes through the port */
    int skip = b->ifs && shim_SetFileCompletionNotificationModes((HANDLE)as, modes) != 0;
    struct conn *c = srv_conn_new(s, w);
    if (!c) {
        close_socket(&as); /* refused: max-conns, stopping or no memory */
        return;
    }
    struct iocp_conn *ic = conn_bk(c);
    ic->sock = as;
    ic->skip = skip;
    ic->active = 0;
    conn_start(c);
}

/* An AcceptEx completion: update the context, re-post, serve. Errors of any kind
 * close only the accept socket (CPython #93821) and are re-posted (nginx #1230). */
static void on_accept_done(struct iocp *b, struct server *s, int w, struct accept_req *ar)
{
    SOCKET as = ar->sock;
    DWORD err = req_error(&ar->r, as);
    int serve = 0;
    ar->sock = INVALID_SOCKET;
    EnterCriticalSection(&b->accept_lock);
    ar->state = AS_IDLE;
    if (b->listener == INVALID_SOCKET) {
        /* cancelled by stop_accepting, or completed too late to serve: compio #315 */
        close_socket(&as);
        ar->state = AS_DEAD;
    } else if (err) {
        close_socket(&as);
        accept_failed(b, ar);
    } else {
        SOCKET ls = b->listener;
        shim_ctx_set(0, ar->ordinal);
        int rc = shim_setsockopt(as, SOL_SOCKET, SO_UPDATE_ACCEPT_CONTEXT, (const char *)&ls,
                                 sizeof(ls));
        shim_ctx_clear();
        if (rc != 0) {
            close_socket(&as);
            accept_failed(b, ar);
        } else {
            ar->fails = 0;
            post_accept_locked(b, ar);
            serve = 1;
        }
    }
    LeaveCriticalSection(&b->accept_lock);
    if (serve)
        serve_accepted(b, s, w, as);
    /* last: a worker must not leave while this accept may still re-post */
    atomic_fetch_sub(&b->accepts_posted, 1);
}

/* ---- receive and send ---- */

/* Reports r from this thread's worker loop: it completed inside its call with
 * `bytes` (a non-blocking send, or an overlapped call on a skip-on-success socket),
 * so no packet comes for it. */
static void queue_done(struct req *r, DWORD bytes)
{
    r->ov.Internal = 0; /* STATUS_SUCCESS, as the system leaves it */
    r->ov.InternalHigh = bytes;
    req_link(r, done_list);
    done_list = r;
}

/* Routes the outcome of posting r (rc, err; `bytes` if it completed at once): a
 * pending call completes through the port, and so does one that completed at once
 * unless the socket skips the port on success; a failure is queued as one. */
static void posted(struct iocp *b, struct iocp_conn *ic, struct req *r, int rc, DWORD err,
                   DWORD bytes)
{
    if (rc == 0) {
        if (ic->skip)
            queue_done(r, bytes);
    } else if (err != WSA_IO_PENDING) {
        fail_via_port(b, r, err);
    }
}

/* Whether c's buffered receive has been posted for IDLE_TICKS tick periods: c is idle. */
static int waited_idle(struct iocp *b, const struct iocp_conn *ic)
{
    uint32_t now = (uint32_t)atomic_load_explicit(&b->ticks, memory_order_relaxed);
    return (uint32_t)(now - ic->rtick) >= IDLE_TICKS;
}

/* Posts the receive of c: into the core's buffer when c is active (and the buffer
 * can be had), else zero-byte, so an idle connection holds no buffer and data is read
 * when it completes. c->lock held. */
static void post_recv(struct iocp *b, struct conn *c, struct iocp_conn *ic)
{
    static char none[1];
    WSABUF wb = {0, none};
    size_t cap = 0;
    memset(&ic->op.ov, 0, sizeof(ic->op.ov));
    ic->op.kind = REQ_RECV;
    if (ic->sock == INVALID_SOCKET) {
        fail_via_port(b, &ic->op, ERROR_OPERATION_ABORTED);
        return;
    }
    char *buf = ic->active ? conn_recv_buffer(c, &cap) : NULL;
    ic->buffered = buf != NULL;
    ic->quieting = 0;
    if (buf) {
        wb.len = cap > MAX_IO_LEN ? MAX_IO_LEN : (ULONG)cap;
        wb.buf = buf;
        ic->rtick = (uint32_t)atomic_load_explicit(&b->ticks, memory_order_relaxed);
    }
    DWORD got = 0, flags = 0;
    shim_ctx_set(c->id, c->recv_ops);
    int rc = shim_WSARecv(ic->sock, &wb, 1, &got, &flags, &ic->op.ov, NULL);
    DWORD err = rc == 0 ? 0 : (DWORD)WSAGetLastError();
    shim_ctx_clear();
    posted(b, ic, &ic->op, rc, err, got);
}

/* bk recv: posts a receive. c->lock held. */
static void iocp_recv(struct conn *c)
{
    post_recv(conn_srv(c)->bk_state, c, conn_bk(c));
}

/* bk send: sends buf[0..len) at once if the socket takes it (the non-blocking call
 * needs no completion packet, so it is reported from the done list), else posts an
 * overlapped send. Both are the same operation: one report. c->lock held. */
static void iocp_send(struct conn *c, const char *buf, size_t len)
{
    struct iocp *b = conn_srv(c)->bk_state;
    struct iocp_conn *ic = conn_bk(c);
    WSABUF wb = {len > MAX_IO_LEN ? MAX_IO_LEN : (ULONG)len, (char *)buf};
    memset(&ic->op.ov, 0, sizeof(ic->op.ov));
    ic->op.kind = REQ_SEND;
    ic->buffered = 0; /* the receive was reported: the tick has nothing to cancel */
    if (ic->sock == INVALID_SOCKET) {
        fail_via_port(b, &ic->op, ERROR_OPERATION_ABORTED);
        return;
    }
    DWORD sent = 0;
    shim_ctx_set(c->id, c->send_ops);
    int rc = shim_WSASend(ic->sock, &wb, 1, &sent, 0, NULL, NULL);
    DWORD err = rc == 0 ? 0 : (DWORD)WSAGetLastError();
    if (rc == 0) {
        queue_done(&ic->op, sent);
    } else if (err != WSAEWOULDBLOCK) {
        fail_via_port(b, &ic->op, err);
    } else {
        rc = shim_WSASend(ic->sock, &wb, 1, &sent, 0, &ic->op.ov, NULL);
        err = rc == 0 ? 0 : (DWORD)WSAGetLastError();
        posted(b, ic, &ic->op, rc, err, sent);
    }
    shim_ctx_clear();
}

/* Reads what the completed zero-byte receive of c announced, without blocking: the
 * byte count, or 1 after posting the receive again when nothing is there (still the
 * same operation: nothing to report). Data makes c active. c->lock held. */
static int read_after_zero_recv(struct iocp *b, struct conn *c, struct iocp_conn *ic, long *n)
{
    size_t cap;
    char *buf = conn_recv_buffer(c, &cap);
    if (!buf) {
        *n = EP_ENOMEM;
        return 0;
    }
    WSABUF wb = {cap > MAX_IO_LEN ? MAX_IO_LEN : (ULONG)cap, buf};
    DWORD got = 0, flags = 0;
    shim_ctx_set(c->id, c->recv_ops);
    int rc = shim_WSARecv(ic->sock, &wb, 1, &got, &flags, NULL, NULL);
    DWORD e = rc == 0 ? 0 : (DWORD)WSAGetLastError();
    shim_ctx_clear();
    if (rc == 0) {
        *n = (long)got; /* 0: the peer closed its side */
        ic->active = got > 0;
        return 0;
    }
    if (e == WSAEWOULDBLOCK) {
        post_recv(b, c, ic);
        return 1;
    }
    *n = translate_error(e);
    return 0;
}

/* A receive of c completed. A buffered one that succeeded reports its bytes (0: the
 * peer closed) without the lock, and makes c idle if it waited IDLE_TICKS tick
 * periods; one the tick cancelled returns its buffer and is re-posted zero-byte (1,
 * nothing to report); a zero-byte one reads what is there. Then the core gets the
 * result. */
static void on_recv_done(struct iocp *b, struct req *r, DWORD bytes)
{
    struct iocp_conn *ic = container_of(r, struct iocp_conn, op);
    struct conn *c = conn_from_bk(ic);
    long n;
    if (ic->buffered && req_succeeded(r)) {
        if (waited_idle(b, ic))
            ic->active = 0;
        conn_on_recv(c, (long)bytes);
        return;
    }
    ep_mutex_lock(&c->lock);
    DWORD err = req_error(r, ic->sock);
    if (ic->sock == INVALID_SOCKET) {
        n = EP_ECANCELED;
    } else if (ic->quieting && err == ERROR_OPERATION_ABORTED) {
        conn_recv_buffer_return(c);
        ic->active = 0;
        post_recv(b, c, ic);
        ep_mutex_unlock(&c->lock);
        return;
    } else if (err) {
        n = translate_error(err);
    } else if (read_after_zero_recv(b, c, ic, &n)) {
        ep_mutex_unlock(&c->lock);
        return;
    }
    ep_mutex_unlock(&c->lock);
    conn_on_recv(c, n);
}

/* A send of c completed: report the bytes (short is fine) or the error; only an error
 * needs the socket, hence the lock. */
static void on_send_done(struct req *r, DWORD bytes)
{
    struct iocp_conn *ic = container_of(r, struct iocp_conn, op);
    struct conn *c = conn_from_bk(ic);
    if (req_succeeded(r)) {
        conn_on_sent(c, (long)bytes);
        return;
    }
    ep_mutex_lock(&c->lock);
    DWORD err = req_error(r, ic->sock);
    long n = err == 0                     ? (long)bytes
             : ic->sock == INVALID_SOCKET ? EP_ECANCELED
                                          : translate_error(err);
    ep_mutex_unlock(&c->lock);
    conn_on_sent(c, n);
}

/* Hands a dequeued request to its handler. */
static void dispatch(struct iocp *b, struct server *s, int w, struct req *r, DWORD bytes)
{
    switch (r->kind) {
    case REQ_ACCEPT:
        on_accept_done(b, s, w, (struct accept_req *)r);
        break;
    case REQ_RECV:
        on_recv_done(b, r, bytes);
        break;
    case REQ_SEND:
        on_send_done(r, bytes);
        break;
    }
}

/* Dispatches the failures that could not be posted to the port. */
static void drain_deferred(struct iocp *b, struct server *s, int w)
{
    if (atomic_load(&b->ndeferred) == 0)
        return;
    EnterCriticalSection(&b->deferred_lock);
    struct req *list = b->deferred;
    b->deferred = NULL;
    atomic_store(&b->ndeferred, 0);
    LeaveCriticalSection(&b->deferred_lock);
    while (list) {
        struct req *r = list;
        list = req_next(r);
        dispatch(b, s, w, r, 0);
    }
}

/* Reports the operations this thread posted that completed at once, and those their
 * handlers complete at once in turn, round after round until DONE_BUDGET reports are
 * made; the rest wait for the next pass, so a connection whose calls keep completing
 * at once cannot starve the port. No look at the port between rounds: it is mostly
 * empty then, and an empty look costs a wait (under Wine two server requests and a
 * yield). */
static void drain_done(struct iocp *b, struct server *s, int w)
{
    int budget = DONE_BUDGET;
    while (done_list && budget > 0) {
        struct req *list = done_list;
        done_list = NULL;
        for (; list; budget--) {
            struct req *r = list;
            list = req_next(r);
            dispatch(b, s, w, r, (DWORD)r->ov.InternalHigh);
        }
    }
}

/* Cancels the buffered receive of c if it waited IDLE_TICKS tick periods, so its
 * buffer goes back to the budget (on_recv_done). Only on an open socket, under
 * c->lock, once per receive; a receive that already completed is not found, which
 * is fine: its completion is on its way. srv_for_each_conn callback. */
static void quiet_one(struct conn *c, void *arg)
{
    struct iocp *b = arg;
    struct iocp_conn *ic = conn_bk(c);
    ep_mutex_lock(&c->lock);
    if (ic->buffered && !ic->quieting && ic->sock != INVALID_SOCKET && waited_idle(b, ic)) {
        ic->quieting = 1;
        shim_CancelIoEx((HANDLE)ic->sock, &ic->op.ov);
    }
    ep_mutex_unlock(&c->lock);
}

/* ---- workers ---- */

/* Where one worker's loop stands between passes. */
struct loop_state {
    int64_t last_tick;
    int retry_in;    /* ms until the next accept re-post is due (INT_MAX: none) */
    int always_tick; /* tick after every pass (the test hook's passes) */
    ULONG ask;       /* completions the next dequeue asks for (see next_ask) */
    int full;        /* dequeues in a row that filled what they asked for */
};

/* Sizes the next dequeue after one that returned n: as many as came last time, and
 * twice that after GROW_AFTER full ones in a row. Asking for more than is queued
 * costs a last, empty look at the port (a server round trip each under Wine);
 * asking for fewer costs only a pass without waiting. */
static void next_ask(struct loop_state *ls, ULONG n)
{
    if (n < ls->ask) {
        ls->ask = n > 0 ? n : 1;
        ls->full = 0;
    } else if (++ls->full >= GROW_AFTER) {
        ls->ask = ls->ask * 2 > BATCH ? BATCH : ls->ask * 2;
        ls->full = 0;
    }
}

/* One pass of a worker's loop: dequeue a batch (waiting at most until the next tick,
 * the next due re-post or max_wait ms), dispatch it, tick when due, re-post due
 * accepts. 1 when the worker may leave (the core says so and no accept of ours is
 * outstanding), -1 when the port is gone, else 0. */
static int worker_pass(struct server *s, int w, struct loop_state *ls, int64_t max_wait)
{
    struct iocp *b = s->bk_state;
    OVERLAPPED_ENTRY ev[BATCH];
    int64_t now = ep_now_ms();
    int64_t wait = ls->always_tick ? max_wait : ls->last_tick + SRV_TICK_MS - now;
    if (wait < 0)
        wait = 0;
    if (wait > max_wait)
        wait = max_wait;
    if (ls->retry_in < wait)
        wait = ls->retry_in;
    if (atomic_load(&b->ndeferred) > 0 || done_list)
        wait = 0;
    ULONG n = 0;
    if (!shim_GetQueuedCompletionStatusEx(b->port, ev, ls->ask, &n, (DWORD)wait, FALSE)) {
        DWORD e = GetLastError();
        n = 0;
        if (e == ERROR_ABANDONED_WAIT_0 || e == ERROR_INVALID_HANDLE) {
            fprintf(stderr, "echoport: worker %d: completion port gone (%lu)\n", w,
                    (unsigned long)e);
            return -1;
        }
    }
    next_ask(ls, n);
    int woken = 0;
    for (ULONG i = 0; i < n; i++) {
        if (ev[i].lpCompletionKey == KEY_WAKE)
            woken = 1;
        else if (ev[i].lpOverlapped)
            dispatch(b, s, w, (struct req *)(void *)ev[i].lpOverlapped,
                     ev[i].dwNumberOfBytesTransferred);
    }
    drain_deferred(b, s, w);
    drain_done(b, s, w);
    now = ep_now_ms();
    int period = now - ls->last_tick >= SRV_TICK_MS;
    if (woken || ls->always_tick || period) {
        srv_tick(s, w);
        if (!srv_stopping(s))
            srv_for_each_conn(s, w, quiet_one, b);
        ls->last_tick = now;
        /* only worker 0's periods count: a clock no wake-up or test pass speeds up */
        if (period && w == 0 && !ls->always_tick)
            atomic_fetch_add_explicit(&b->ticks, 1, memory_order_relaxed);
    }
    ls->retry_in = run_retries(b, s);
    /* what completed at once was posted by this thread and is reported by it alone */
    return srv_worker_done(s, w) && atomic_load(&b->accepts_posted) == 0 && !done_list;
}

/* bk run_worker: passes until the worker may leave or the port is gone. */
static void iocp_run_worker(struct server *s, int w)
{
    struct loop_state ls = {ep_now_ms(), INT_MAX, 0, BATCH, 0};
    srv_tick(s, w);
    while (worker_pass(s, w, &ls, INT_MAX) == 0) {
    }
}

/* Test hook (backend_iocp.h): one pass of worker w's loop on the calling thread. */
int iocp_test_pass(struct server *s, int w, unsigned max_wait_ms)
{
    struct loop_state ls = {ep_now_ms(), run_retries(s->bk_state, s), 1, BATCH, 0};
    return worker_pass(s, w, &ls, (int64_t)max_wait_ms);
}

/* Test hook (backend_iocp.h): one tick period of worker 0. */
void iocp_test_tick_period(struct server *s)
{
    struct iocp *b = s->bk_state;
    atomic_fetch_add_explicit(&b->ticks, 1, memory_order_relaxed);
}

/* Test hook (backend_iocp.h): the accept socket the request of `ov` holds. */
SOCKET iocp_test_accept_socket(const OVERLAPPED *ov)
{
    const struct accept_req *ar = (const struct accept_req *)(const void *)ov;
    return ar->r.kind == REQ_ACCEPT ? ar->sock : INVALID_SOCKET;
}

/* bk cancel: cancels c's posted operation, then closes the socket, so the operation
 * completes (aborted or net-name-deleted). Closing alone would do on Windows, but Wine
 * 8.0 leaves a send pending on a closed socket until it is cancelled: a client that
 * never reads would keep its connection forever. c->lock held; never calls the core. */
static void iocp_cancel(struct conn *c)
{
    struct iocp_conn *ic = conn_bk(c);
    if (ic->sock != INVALID_SOCKET)
        shim_CancelIoEx((HANDLE)ic->sock, &ic->op.ov);
    close_socket(&ic->sock);
}

/* bk release: c is being freed; close its socket if cancel did not. */
static void iocp_release(struct conn *c)
{
    iocp_cancel(c);
}

/* bk stop_accepting: closes the listener once, which aborts the posted AcceptEx;
 * parked retries are dropped. Idempotent. */
static void iocp_stop_accepting(struct server *s, int worker)
{
    struct iocp *b = s->bk_state;
    (void)worker;
    if (!b)
        return;
    EnterCriticalSection(&b->accept_lock);
    close_socket(&b->listener);
    for (int i = 0; i < b->naccepts; i++) {
        if (b->accepts[i].state == AS_RETRY) {
            b->accepts[i].state = AS_DEAD;
            atomic_fetch_sub(&b->retries, 1);
        }
    }
    LeaveCriticalSection(&b->accept_lock);
}

/* bk wake: one wake packet per worker; safe from a console-control or admin thread. */
static void iocp_wake(struct server *s)
{
    struct iocp *b = s->bk_state;
    if (!b || !b->port)
        return;
    for (int i = 0; i < s->nworkers; i++)
        shim_PostQueuedCompletionStatus(b->port, 0, KEY_WAKE, NULL);
}

/* Frees what start created; accept requests still posted (a drain that timed out)
 * are leaked rather than freed under the kernel's feet. */
static void teardown(struct server *s, struct iocp *b)
{
    int accepts_idle = atomic_load(&b->accepts_posted) == 0;
    for (int i = 0; accepts_idle && i < b->naccepts; i++)
        close_socket(&b->accepts[i].sock);
    close_socket(&b->listener);
    if (b->port)
        CloseHandle(b->port);
    shim_remove_faults();
    if (accepts_idle)
        free(b->accepts);
    DeleteCriticalSection(&b->accept_lock);
    DeleteCriticalSection(&b->deferred_lock);
    if (b->wsa_started)
        WSACleanup();
    free(b);
    s->bk_state = NULL;
}

/* Whether the provider of `sock` (and so of the sockets accepted on it) hands out IFS
 * handles, the condition for skip-on-success; no when it cannot be told. */
static int provider_is_ifs(SOCKET sock)
{
    WSAPROTOCOL_INFOW info;
    int len = sizeof(info);
    memset(&info, 0, sizeof(info));
    if (shim_getsockopt(sock, SOL_SOCKET, SO_PROTOCOL_INFOW, (char *)&info, &len) != 0)
        return 0;
    return (info.dwServiceFlags1 & XP1_IFS_HANDLES) != 0;
}

/* bk start: port, listener, AcceptEx pointer, bound address, the posted accepts. */
static int iocp_start(struct server *s, char *err, size_t errlen)
{
    const struct ep_config *cfg = s->cfg;
    struct sockaddr_storage addr;
    int addrlen = 0;
    struct iocp *b = calloc(1, sizeof(*b));
    if (!b) {
        snprintf(err, errlen, "out of memory");
        return EP_ENOMEM;
    }
    s->bk_state = b;
    b->listener = INVALID_SOCKET;
    InitializeCriticalSection(&b->accept_lock);
    InitializeCriticalSection(&b->deferred_lock);
    shim_ctx_clear();
    int rc = EP_EIO;
    if (net_init() != 0) {
        snprintf(err, errlen, "WSAStartup failed");
        goto fail;
    }
    b->wsa_started = 1;
    b->port = shim_CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 0);
    if (!b->port) {
        snprintf(err, errlen, "CreateIoCompletionPort: error %lu", (unsigned long)GetLastError());
        goto fail;
    }
    rc = net_resolve(cfg->listen_host, cfg->listen_port, &addr, &addrlen, err, errlen);
    if (rc)
        goto fail;
    rc = EP_EIO;
    b->family = addr.ss_family;
    /* no SO_REUSEADDR: on Windows it lets another socket steal the port */
    b->listener =
        shim_WSASocketW(b->family, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
    if (b->listener == INVALID_SOCKET) {
        snprintf(err, errlen, "socket: %s", net_last_error());
        goto fail;
    }
    if (shim_bind(b->listener, (struct sockaddr *)&addr, addrlen) != 0) {
        rc = EP_EADDR;
        snprintf(err, errlen, "cannot bind %s:%u: %s", cfg->listen_host, cfg->listen_port,
                 net_last_error());
        goto fail;
    }
    if (shim_listen(b->listener, SOMAXCONN) != 0) {
        snprintf(err, errlen, "listen: %s", net_last_error());
        goto fail;
    }
    if (!shim_CreateIoCompletionPort((HANDLE)b->listener, b->port, KEY_IO, 0)) {
        snprintf(err, errlen, "cannot associate the listener: error %lu",
                 (unsigned long)GetLastError());
        goto fail;
    }
    b->ifs = provider_is_ifs(b->listener);
    int e = shim_load_extensions(b->listener);
    if (e) {
        snprintf(err, errlen, "cannot load AcceptEx: %s", net_strerror(e));
        goto fail;
    }
    addrlen = sizeof(addr);
    if (shim_getsockname(b->listener, (struct sockaddr *)&addr, &addrlen) != 0) {
        snprintf(err, errlen, "getsockname: %s", net_last_error());
        goto fail;
    }
    net_format((struct sockaddr *)&addr, s->bound_addr, sizeof(s->bound_addr));
    b->naccepts = cfg->accepts > 0 ? cfg->accepts : 16;
    b->accepts = calloc((size_t)b->naccepts, sizeof(*b->accepts));
    if (!b->accepts) {
        rc = EP_ENOMEM;
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (int i = 0; i < b->naccepts; i++)
        b->accepts[i].sock = INVALID_SOCKET;
    if (fault_active())
        shim_install_faults(b->port, KEY_IO);
    EnterCriticalSection(&b->accept_lock);
    for (int i = 0; i < b->naccepts; i++)
        post_accept_locked(b, &b->accepts[i]);
    LeaveCriticalSection(&b->accept_lock);
    return 0;
fail:
    teardown(s, b);
    return rc;
}

/* bk destroy: closes the listener, waits (bounded) for the aborted accepts so their
 * sockets are closed and their memory is free to release, then frees the rest. */
static void iocp_destroy(struct server *s)
{
    struct iocp *b = s->bk_state;
    if (!b)
        return;
    iocp_stop_accepting(s, 0);
    int64_t deadline = ep_now_ms() + DESTROY_DRAIN_MS;
    while (atomic_load(&b->accepts_posted) > 0 && ep_now_ms() < deadline) {
        OVERLAPPED_ENTRY ev[BATCH];
        ULONG n = 0;
        if (!shim_GetQueuedCompletionStatusEx(b->port, ev, BATCH, &n, 100, FALSE))
            n = 0;
        for (ULONG i = 0; i < n; i++) {
            struct req *r = (struct req *)(void *)ev[i].lpOverlapped;
            /* after run only accepts can be outstanding; anything else is ignored */
            if (ev[i].lpCompletionKey == KEY_IO && r && r->kind == REQ_ACCEPT)
                on_accept_done(b, s, 0, (struct accept_req *)r);
        }
    }
    teardown(s, b);
}

const struct bk_ops bk_iocp = {
    .name = "iocp",
    .conn_size = sizeof(struct iocp_conn),
    .start = iocp_start,
    .run_worker = iocp_run_worker,
    .recv = iocp_recv,
    .send = iocp_send,
    .cancel = iocp_cancel,
    .release = iocp_release,
    .stop_accepting = iocp_stop_accepting,
    .wake = iocp_wake,
    .destroy = iocp_destroy,
};

#else
/* ISO C forbids an empty translation unit. */
typedef int backend_iocp_unused;
#endif
