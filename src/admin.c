/* admin.c - the admin port. It runs on its own thread with plain blocking-style
 * sockets polled every 100 ms, so it never depends on the backend it controls. */
#include "admin.h"

#include <stdio.h>
#include <string.h>

#include "core/ep.h"
#include "core/server.h"
#include "core/stats.h"

#ifndef _WIN32
#include <poll.h>
#include <unistd.h>
#endif

#define ADMIN_LINE_MAX 256
#define ADMIN_CLIENT_TIMEOUT_MS 5000

/* Waits up to ms for s to become readable; 1 readable, 0 timeout, -1 error.
 * poll, not select, on POSIX: with thousands of clients the admin socket's
 * descriptor is above FD_SETSIZE. Winsock's fd_set holds handles, any value. */
static int wait_readable(net_socket s, int ms)
{
#ifdef _WIN32
    fd_set set;
    FD_ZERO(&set);
    FD_SET(s, &set);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    int rc = select(0, &set, NULL, NULL, &tv);
#else
    struct pollfd p = {.fd = s, .events = POLLIN};
    int rc = poll(&p, 1, ms);
#endif
    return rc < 0 ? -1 : rc > 0;
}

/* Sends all of text, giving up on error. */
static void send_all(net_socket s, const char *text)
{
    size_t len = strlen(text);
    while (len > 0) {
        int n = send(s, text, (int)len, 0);
        if (n <= 0)
            return;
        text += n;
        len -= (size_t)n;
    }
}

/* Executes one command line; returns its reply (into buf when dynamic). */
static const char *admin_command(struct admin *a, const char *line, char *buf, size_t len)
{
    if (!strcmp(line, "stats")) {
        size_t n = stats_format(buf, len - 1);
        buf[n] = '\n';
        buf[n + 1] = '\0';
        return buf;
    }
    if (!strcmp(line, "shutdown")) {
        srv_request_stop(a->srv);
        return "ok shutting down\n";
    }
    if (!strcmp(line, "ping"))
        return "pong\n";
    snprintf(buf, len, "error unknown command '%.64s' (try stats, shutdown, ping)\n", line);
    return buf;
}

/* Serves one admin client: one command per line until EOF, a bad line or a timeout. */
static void admin_serve(struct admin *a, net_socket client)
{
    char line[ADMIN_LINE_MAX + 1], reply[2048];
    size_t used = 0;
    while (!atomic_load(&a->stop) && wait_readable(client, ADMIN_CLIENT_TIMEOUT_MS) == 1) {
        int n = recv(client, line + used, (int)(ADMIN_LINE_MAX - used), 0);
        if (n <= 0)
            return;
        used += (size_t)n;
        char *nl;
        while ((nl = memchr(line, '\n', used)) != NULL) {
            size_t linelen = (size_t)(nl - line);
            *nl = '\0';
            if (linelen > 0 && line[linelen - 1] == '\r')
                line[linelen - 1] = '\0';
            send_all(client, admin_command(a, line, reply, sizeof(reply)));
            used -= linelen + 1;
            memmove(line, nl + 1, used);
        }
        if (used == ADMIN_LINE_MAX) {
            send_all(client, "error line too long\n");
            return;
        }
    }
}

/* The admin thread: accept, serve, until admin_stop. */
static void admin_loop(void *arg)
{
    struct admin *a = arg;
    while (!atomic_load(&a->stop)) {
        if (wait_readable(a->listener, 100) != 1)
            continue;
        net_socket client = accept(a->listener, NULL, NULL);
        if (client == NET_INVALID)
            continue;
        admin_serve(a, client);
        net_close(client);
    }
}

int admin_start(struct admin *a, struct server *srv, unsigned port, char *err, size_t errlen)
{
    struct sockaddr_in addr;
    socklen_t len = sizeof(addr);
    memset(a, 0, sizeof(*a));
    a->srv = srv;
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK); /* loopback only, by design */
    addr.sin_port = htons((unsigned short)port);
    a->listener = socket(AF_INET, SOCK_STREAM, 0);
    if (a->listener == NET_INVALID || bind(a->listener, (struct sockaddr *)&addr, sizeof(addr)) ||
        listen(a->listener, 8) || getsockname(a->listener, (struct sockaddr *)&addr, &len)) {
        snprintf(err, errlen, "cannot open admin port 127.0.0.1:%u: %s", port, net_last_error());
        if (a->listener != NET_INVALID)
            net_close(a->listener);
        return EP_EADDR;
    }
    a->port = ntohs(addr.sin_port);
    if (ep_thread_start(&a->thread, admin_loop, a)) {
        snprintf(err, errlen, "cannot start the admin thread");
        net_close(a->listener);
        return EP_EIO;
    }
    return 0;
}

void admin_stop(struct admin *a)
{
    atomic_store(&a->stop, 1);
    ep_thread_join(a->thread);
    net_close(a->listener);
}
