/* net.h - portable BSD-socket helpers shared by the backends, the admin port and
 * the client: start-up, address resolution and printing. */
#ifndef EP_NET_H
#define EP_NET_H

#include <stddef.h>

#ifdef _WIN32
#include <winsock2.h>
#include <ws2tcpip.h>
typedef SOCKET net_socket;
#define NET_INVALID INVALID_SOCKET
#else
#include <netinet/in.h>
#include <sys/socket.h>
typedef int net_socket;
#define NET_INVALID (-1)
#endif

/* Initialises the socket library once (WSAStartup); 0 or EP_EIO. */
int net_init(void);

/* Resolves a numeric or named host and port to a socket address (first result,
 * passive when host is NULL). 0, or EP_EADDR with a one-line message in err. */
int net_resolve(const char *host, unsigned port, struct sockaddr_storage *addr, int *addrlen,
                char *err, size_t errlen);

/* Formats "A.B.C.D:PORT" or "[V6]:PORT". */
void net_format(const struct sockaddr *sa, char *buf, size_t len);

/* Closes a plain (non-shimmed) socket: the admin port's and the client's. */
void net_close(net_socket s);

/* Puts a plain socket in non-blocking mode; 0 or -1. */
int net_set_nonblocking(net_socket s);

/* A socket error code (errno, or a Winsock code with its number) as text. */
const char *net_strerror(int err);

/* The last socket error of this thread as text. */
const char *net_last_error(void);

#endif
