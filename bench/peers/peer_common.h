/* Shared helpers for the POSIX peer echo servers: `--port P` parsing and a
 * listening socket on 127.0.0.1 that announces itself the way echoport does. */
#ifndef PEER_COMMON_H
#define PEER_COMMON_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define PEER_BACKLOG 4096

static inline void peer_die(const char *what)
{
    perror(what);
    exit(1);
}

/* Returns the port given with `--port P` (default 0: the kernel picks). */
static inline int peer_parse_port(int argc, char **argv)
{
    int port = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
            port = atoi(argv[++i]);
        } else {
            fprintf(stderr, "usage: %s [--port P]\n", argv[0]);
            exit(2);
        }
    }
    return port;
}

/* Binds 127.0.0.1:port and listens; returns the socket. */
static inline int peer_listen_quiet(int port, int nonblocking)
{
    signal(SIGPIPE, SIG_IGN);
    int fd = socket(AF_INET, SOCK_STREAM | (nonblocking ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0)
        peer_die("socket");
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        peer_die("bind");
    if (listen(fd, PEER_BACKLOG) < 0)
        peer_die("listen");
    return fd;
}

/* Binds 127.0.0.1:port, listens and prints `listening on 127.0.0.1:PORT`. */
static inline int peer_listen(int port, int nonblocking)
{
    int fd = peer_listen_quiet(port, nonblocking);
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    if (getsockname(fd, (struct sockaddr *)&sa, &len) < 0)
        peer_die("getsockname");
    printf("listening on 127.0.0.1:%u\n", ntohs(sa.sin_port));
    fflush(stdout);
    return fd;
}

/* Echo servers answer small messages at once: no Nagle delay. */
static inline void peer_nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

#endif
