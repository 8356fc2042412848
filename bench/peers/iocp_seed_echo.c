/* Seed-style IOCP echo for Windows (mingw-w64; runs under Wine): one thread,
 * one completion port, one outstanding AcceptEx (receive length 0, so silent
 * clients cannot starve it), one GetQueuedCompletionStatus loop. Per connection
 * one WSARecv or one WSASend in flight on its own buffer; short sends post the
 * rest; a zero-byte receive or a failed operation closes the connection.
 * usage: iocp_seed_echo [--port P] */
#define WIN32_LEAN_AND_MEAN
#include <winsock2.h>
#include <ws2tcpip.h>
#include <mswsock.h>
#include <windows.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUF_SIZE (16 * 1024)
#define ADDR_LEN (sizeof(struct sockaddr_in6) + 16)

enum op { OP_ACCEPT, OP_RECV, OP_SEND };

struct conn {
    OVERLAPPED ov; /* first: the OVERLAPPED pointer is the connection */
    SOCKET s;
    enum op op;
    DWORD len, off;
    char buf[BUF_SIZE];
};

static HANDLE port;
static SOCKET lsock;
static LPFN_ACCEPTEX accept_ex;

static void die(const char *what)
{
    fprintf(stderr, "iocp_seed_echo: %s failed: %d\n", what, WSAGetLastError());
    exit(1);
}

static void conn_close(struct conn *c)
{
    closesocket(c->s);
    free(c);
}

static void post_accept(void)
{
    for (;;) {
        struct conn *c = calloc(1, sizeof *c);
        if (!c)
            die("calloc");
        c->op = OP_ACCEPT;
        c->s = WSASocketW(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
        DWORD got;
        if (c->s != INVALID_SOCKET &&
            (accept_ex(lsock, c->s, c->buf, 0, ADDR_LEN, ADDR_LEN, &got, &c->ov) ||
             WSAGetLastError() == ERROR_IO_PENDING))
            return;
        fprintf(stderr, "iocp_seed_echo: AcceptEx: %d\n", WSAGetLastError());
        if (c->s != INVALID_SOCKET)
            closesocket(c->s);
        free(c);
        Sleep(10);
    }
}

static void post_recv(struct conn *c)
{
    WSABUF b = {BUF_SIZE, c->buf};
    DWORD flags = 0;
    memset(&c->ov, 0, sizeof c->ov);
    c->op = OP_RECV;
    if (WSARecv(c->s, &b, 1, NULL, &flags, &c->ov, NULL) == SOCKET_ERROR &&
        WSAGetLastError() != WSA_IO_PENDING)
        conn_close(c);
}

static void post_send(struct conn *c)
{
    WSABUF b = {c->len - c->off, c->buf + c->off};
    memset(&c->ov, 0, sizeof c->ov);
    c->op = OP_SEND;
    if (WSASend(c->s, &b, 1, NULL, 0, &c->ov, NULL) == SOCKET_ERROR &&
        WSAGetLastError() != WSA_IO_PENDING)
        conn_close(c);
}

static void on_accept(struct conn *c, BOOL ok)
{
    post_accept();
    if (!ok ||
        setsockopt(c->s, SOL_SOCKET, SO_UPDATE_ACCEPT_CONTEXT, (char *)&lsock, sizeof lsock) != 0 ||
        !CreateIoCompletionPort((HANDLE)c->s, port, 0, 0)) {
        conn_close(c);
        return;
    }
    BOOL one = TRUE;
    setsockopt(c->s, IPPROTO_TCP, TCP_NODELAY, (char *)&one, sizeof one);
    post_recv(c);
}

static void on_completion(struct conn *c, BOOL ok, DWORD n)
{
    if (c->op == OP_ACCEPT) {
        on_accept(c, ok);
    } else if (!ok || n == 0) {
        conn_close(c); /* error, or the peer closed and all it sent was echoed */
    } else if (c->op == OP_RECV) {
        c->len = n;
        c->off = 0;
        post_send(c);
    } else {
        c->off += n;
        if (c->off < c->len)
            post_send(c); /* short send: post the rest */
        else
            post_recv(c);
    }
}

static void setup(unsigned short p)
{
    WSADATA wsa;
    if (WSAStartup(MAKEWORD(2, 2), &wsa) != 0)
        die("WSAStartup");
    port = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 1);
    lsock = WSASocketW(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
    if (!port || lsock == INVALID_SOCKET)
        die("socket");
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(p);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int len = sizeof sa;
    if (bind(lsock, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(lsock, SOMAXCONN) != 0 ||
        getsockname(lsock, (struct sockaddr *)&sa, &len) != 0)
        die("bind/listen");
    if (!CreateIoCompletionPort((HANDLE)lsock, port, 0, 0))
        die("CreateIoCompletionPort");
    GUID guid = WSAID_ACCEPTEX;
    DWORD got;
    if (WSAIoctl(lsock, SIO_GET_EXTENSION_FUNCTION_POINTER, &guid, sizeof guid, &accept_ex,
                 sizeof accept_ex, &got, NULL, NULL) != 0)
        die("WSAIoctl(AcceptEx)");
    printf("listening on 127.0.0.1:%u\n", ntohs(sa.sin_port));
    fflush(stdout);
}

int main(int argc, char **argv)
{
    unsigned short p = 0;
    if (argc == 3 && strcmp(argv[1], "--port") == 0) {
        p = (unsigned short)atoi(argv[2]);
    } else if (argc != 1) {
        fprintf(stderr, "usage: %s [--port P]\n", argv[0]);
        return 2;
    }
    setup(p);
    post_accept();
    for (;;) {
        DWORD n = 0;
        ULONG_PTR key;
        OVERLAPPED *ov = NULL;
        BOOL ok = GetQueuedCompletionStatus(port, &n, &key, &ov, INFINITE);
        if (ov)
            on_completion((struct conn *)ov, ok, n);
        else
            die("GetQueuedCompletionStatus");
    }
}
