/* net.c - implementations of net.h for Winsock and POSIX. */
#include "net.h"

#include <stdio.h>
#include <string.h>

#include "core/ep.h"

#ifdef _WIN32
int net_init(void)
{
    WSADATA wsa;
    return WSAStartup(MAKEWORD(2, 2), &wsa) == 0 ? 0 : EP_EIO;
}

void net_close(net_socket s)
{
    closesocket(s);
}

int net_set_nonblocking(net_socket s)
{
    u_long on = 1;
    return ioctlsocket(s, FIONBIO, &on) == 0 ? 0 : -1;
}

const char *net_strerror(int err)
{
    static const struct {
        int code;
        const char *text;
    } names[] = {
        {WSAECONNREFUSED, "connection refused"},
        {WSAECONNRESET, "connection reset by peer"},
        {WSAECONNABORTED, "connection aborted"},
        {WSAETIMEDOUT, "connection timed out"},
        {WSAENETUNREACH, "network unreachable"},
        {WSAEHOSTUNREACH, "host unreachable"},
        {WSAEADDRINUSE, "address already in use"},
        {WSAEADDRNOTAVAIL, "address not available"},
        {WSAEACCES, "permission denied"},
        {WSAEMFILE, "too many open sockets"},
        {WSAENOBUFS, "no buffer space"},
        {WSAESHUTDOWN, "socket shut down"},
        {WSAEAFNOSUPPORT, "address family not supported"},
        {WSAEINVAL, "invalid argument"},
    };
    static _Thread_local char text[64];
    const char *name = "unknown error";
    for (size_t i = 0; i < EP_ARRAY_LEN(names); i++)
        if (names[i].code == err)
            name = names[i].text;
    snprintf(text, sizeof(text), "%s (winsock error %d)", name, err);
    return text;
}

const char *net_last_error(void)
{
    return net_strerror(WSAGetLastError());
}
#else
#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <unistd.h>

int net_init(void)
{
    return 0;
}

int net_set_nonblocking(net_socket s)
{
    int flags = fcntl(s, F_GETFL);
    return flags >= 0 && fcntl(s, F_SETFL, flags | O_NONBLOCK) == 0 ? 0 : -1;
}

void net_close(net_socket s)
{
    close(s);
}

const char *net_strerror(int err)
{
    return strerror(err);
}

const char *net_last_error(void)
{
    return strerror(errno);
}
#endif

int net_resolve(const char *host, unsigned port, struct sockaddr_storage *addr, int *addrlen,
                char *err, size_t errlen)
{
    struct addrinfo hints, *res = NULL;
    char service[16];
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = host ? 0 : AI_PASSIVE;
    snprintf(service, sizeof(service), "%u", port);
    int rc = getaddrinfo(host, service, &hints, &res);
    if (rc != 0 || !res) {
        snprintf(err, errlen, "cannot resolve '%s': %s", host ? host : "*", gai_strerror(rc));
        return EP_EADDR;
    }
    memcpy(addr, res->ai_addr, res->ai_addrlen);
    *addrlen = (int)res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

void net_format(const struct sockaddr *sa, char *buf, size_t len)
{
    char host[INET6_ADDRSTRLEN] = "?";
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)(const void *)sa;
        inet_ntop(AF_INET6, (void *)&a->sin6_addr, host, sizeof(host));
        snprintf(buf, len, "[%s]:%u", host, ntohs(a->sin6_port));
    } else {
        const struct sockaddr_in *a = (const struct sockaddr_in *)(const void *)sa;
        inet_ntop(AF_INET, (void *)&a->sin_addr, host, sizeof(host));
        snprintf(buf, len, "%s:%u", host, ntohs(a->sin_port));
    }
}
