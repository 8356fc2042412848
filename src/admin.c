/* admin.c - the admin port. One thread polls the listener and every admin client
 * with non-blocking sockets, so it never depends on the backend it controls and no
 * client can hold it: each has a total deadline from connect, a bounded line, a
 * bounded reply queue, and there is a bounded number of them (the oldest is dropped). */
#include "admin.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/ep.h"
#include "core/server.h"
#include "core/stats.h"

#ifdef _WIN32
#define admin_poll(fds, n, ms) WSAPoll((fds), (ULONG)(n), (ms))
#define ADMIN_SEND_FLAGS 0
#define ADMIN_SHUT_BOTH SD_BOTH
#else
#include <errno.h>
#include <poll.h>
#define admin_poll(fds, n, ms) poll((fds), (nfds_t)(n), (ms))
#define ADMIN_SEND_FLAGS MSG_NOSIGNAL
#define ADMIN_SHUT_BOTH SHUT_RDWR
#endif

#define ADMIN_LINE_MAX 256   /* a longer line is answered with an error, then closed */
#define ADMIN_REPLY_MAX 2048 /* the longest reply: a stats line */
#define ADMIN_OUT_MAX (2 * ADMIN_REPLY_MAX)
#define ADMIN_CLIENTS_MAX 32
#define ADMIN_DEADLINE_MS 1000 /* from connect to close, whatever the client sends */
#define ADMIN_WAIT_MS 100      /* the longest wait between two looks at the stop flag */

struct admin_client {
    net_socket s;
    int64_t deadline;
    int eof;     /* the peer has half-closed: answer its complete lines, flush, close */
    int closing; /* flush what is queued, then close (over-long line, eviction) */
    size_t used; /* bytes of unfinished lines in `in` */
    size_t out_len, out_sent;
    char in[ADMIN_LINE_MAX];
    char out[ADMIN_OUT_MAX];
};

/* Nonzero when the last socket call failed only because it would have blocked. */
static int would_block(void)
{
#ifdef _WIN32
    return WSAGetLastError() == WSAEWOULDBLOCK;
#else
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
#endif
}

/* Nonzero when the last socket call failed for want of a descriptor or handle. */
static int out_of_descriptors(void)
{
#ifdef _WIN32
    int e = WSAGetLastError();
    return e == WSAEMFILE || e == WSAENOBUFS || e == WSAEINVAL; /* Wine's accept: EINVAL */
#else
    return errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM;
#endif
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

/* Appends text to c's reply queue; the caller made sure it fits (ADMIN_REPLY_MAX). */
static void client_queue(struct admin_client *c, const char *text)
{
    size_t n = strlen(text);
    if (n > sizeof(c->out) - c->out_len)
        n = sizeof(c->out) - c->out_len;
    memcpy(c->out + c->out_len, text, n);
    c->out_len += n;
}

/* Sends what c's queue holds without blocking; 0, or -1 when the socket failed. */
static int client_flush(struct admin_client *c)
{
    while (c->out_sent < c->out_len) {
        int n = send(c->s, c->out + c->out_sent, (int)(c->out_len - c->out_sent), ADMIN_SEND_FLAGS);
        if (n < 0)
            return would_block() ? 0 : -1;
        c->out_sent += (size_t)n;
    }
    c->out_len = c->out_sent = 0;
    return 0;
}

/* Whether c has a complete line waiting for its answer. */
static int client_has_line(const struct admin_client *c)
{
    return memchr(c->in, '\n', c->used) != NULL;
}

/* At EOF, an unfinished last line (`printf stats | nc`) is still a line: it gets
 * its newline once the lines before it are answered, if it fits. */
static void client_end_last_line(struct admin_client *c)
{
    if (c->eof && c->used > 0 && c->used < sizeof(c->in) && !client_has_line(c))
        c->in[c->used++] = '\n';
}

/* Answers c's complete lines while its queue has room for a reply; an unfinished
 * line that already fills the buffer is answered with an error and ends c. */
static void client_take_lines(struct admin *a, struct admin_client *c)
{
    char reply[ADMIN_REPLY_MAX];
    char *nl;
    client_end_last_line(c);
    while (!c->closing && sizeof(c->out) - c->out_len >= ADMIN_REPLY_MAX &&
           (nl = memchr(c->in, '\n', c->used)) != NULL) {
        char line[ADMIN_LINE_MAX];
        size_t len = (size_t)(nl - c->in);
        memcpy(line, c->in, len);
        line[len] = '\0';
        if (len > 0 && line[len - 1] == '\r')
            line[len - 1] = '\0';
        c->used -= len + 1;
        memmove(c->in, nl + 1, c->used);
        client_queue(c, admin_command(a, line, reply, sizeof(reply)));
    }
    if (!c->closing && c->used == sizeof(c->in) && !memchr(c->in, '\n', c->used)) {
        client_queue(c, "error line too long\n");
        c->closing = 1;
    }
}

/* Reads what c sent; 0, or -1 when the socket failed. */
static int client_read(struct admin_client *c)
{
    int n = recv(c->s, c->in + c->used, (int)(sizeof(c->in) - c->used), 0);
    if (n < 0)
        return would_block() ? 0 : -1;
    if (n == 0)
        c->eof = 1;
    c->used += (size_t)n;
    return 0;
}

/* Whether c wants to read: not after EOF or an error, and only with room for a reply. */
static int client_wants_input(const struct admin_client *c)
{
    return !c->eof && !c->closing && c->used < sizeof(c->in) &&
           sizeof(c->out) - c->out_len >= ADMIN_REPLY_MAX;
}

/* Whether c is finished: nothing left to answer or to send. */
static int client_done(const struct admin_client *c)
{
    if (c->out_len > 0)
        return 0;
    return c->closing || (c->eof && !client_has_line(c));
}

/* Serves one poll result of c; 0 to keep it, -1 to close it. Lines that waited for
 * room in the reply queue are answered as soon as a flush empties it: no event would
 * come for them. */
static int client_step(struct admin *a, struct admin_client *c, short revents)
{
    if ((revents & (POLLIN | POLLHUP | POLLERR)) && client_wants_input(c) && client_read(c))
        return -1;
    do {
        client_take_lines(a, c);
        if (client_flush(c))
            return -1;
    } while (c->out_len == 0 && !c->closing && client_has_line(c));
    return client_done(c) ? -1 : 0;
}

/* Counts s, a socket the admin port just opened (none: NET_INVALID), and returns it. */
static net_socket admin_opened(net_socket s)
{
    if (s != NET_INVALID)
        stats_add(admin_sockets_opened, 1);
    return s;
}

/* Closes a socket of the admin port, counted. */
static void admin_close(net_socket s)
{
    net_close(s);
    stats_add(admin_sockets_closed, 1);
}

/* Closes an admin client's socket. While the reserve is spent, the socket becomes the
 * reserve instead, shut down both ways (the peer sees the same FIN): closing it and
 * refilling later would let the data port, accepting at its limit, take the descriptor. */
static void admin_socket_release(struct admin *a, net_socket s)
{
    if (a->reserve == NET_INVALID && shutdown(s, ADMIN_SHUT_BOTH) == 0) {
        a->reserve = s;
        a->accept_retry_ms = 0; /* the reserve is back: a waiting client may take it now */
        return;
    }
    admin_close(s);
}

/* Closes client i, after a last try to send why (a one-line error when given and nothing
 * else is queued) and discarding unread input so the close is a FIN, not a reset. */
static void client_close(struct admin *a, int i, const char *why)
{
    struct admin_client *c = &a->clients[i];
    char scratch[512];
    if (why && c->out_len == 0)
        client_queue(c, why);
    client_flush(c);
    for (int k = 0; k < 8 && recv(c->s, scratch, sizeof(scratch), 0) > 0; k++)
        ;
    admin_socket_release(a, c->s);
    a->nclients--;
    memmove(c, c + 1, (size_t)(a->nclients - i) * sizeof(*c));
}

/* Takes a descriptor back into reserve once one is free again (the data port may hold
 * every other one: descriptor exhaustion must not take the admin port with it). */
static void admin_reserve_refill(struct admin *a)
{
    if (a->reserve == NET_INVALID)
        a->reserve = admin_opened(socket(AF_INET, SOCK_STREAM, 0));
}

/* Accepts a client into *s: 1, 0 when none is waiting, -1 when one could not be accepted
 * (retry after a delay). With no descriptor left it gives up the reserve for the client,
 * under the descriptors lock so that the data port cannot take it in between, and takes
 * it back at once when no client was waiting after all (Linux's accept fails with EMFILE
 * before it looks at the queue; so does Wine's, with WSAEINVAL). */
static int admin_accept_one(struct admin *a, net_socket *s)
{
    *s = admin_opened(accept(a->listener, NULL, NULL));
    if (*s != NET_INVALID)
        return 1;
    if (would_block())
        return 0;
    if (!out_of_descriptors() || a->reserve == NET_INVALID)
        return -1;
    ep_descriptors_lock();
    admin_close(a->reserve);
    a->reserve = NET_INVALID;
    *s = admin_opened(accept(a->listener, NULL, NULL));
    int got = *s != NET_INVALID ? 1 : would_block() ? 0 : -1;
    if (got < 0 && out_of_descriptors())
        stats_add(admin_waits, 1); /* the descriptor went elsewhere all the same */
    if (got != 1)
        admin_reserve_refill(a);
    ep_descriptors_unlock();
    return got;
}

/* Closes the reserve descriptor, if held. */
static void admin_reserve_release(struct admin *a)
{
    if (a->reserve != NET_INVALID)
        admin_close(a->reserve);
    a->reserve = NET_INVALID;
}

/* Accepts every pending admin client; when all slots are taken the oldest is dropped. */
static void admin_accept(struct admin *a, int64_t now)
{
    for (;;) {
        net_socket s;
        int got = admin_accept_one(a, &s);
        if (got < 0) /* e.g. out of descriptors: retry later, not in a spin */
            a->accept_retry_ms = now + ADMIN_WAIT_MS;
        if (got <= 0)
            return;
        if (net_set_nonblocking(s)) {
            admin_socket_release(a, s);
            continue;
        }
        if (a->nclients == ADMIN_CLIENTS_MAX)
            client_close(a, 0, "error too many admin clients\n");
        struct admin_client *c = &a->clients[a->nclients++];
        memset(c, 0, offsetof(struct admin_client, in));
        c->s = s;
        c->deadline = now + ADMIN_DEADLINE_MS;
        if (a->reserve == NET_INVALID)
            return; /* at the limit: the next client needs this one's descriptor back */
    }
}

/* How long to wait: until the next deadline, at most ADMIN_WAIT_MS. */
static int admin_wait_ms(const struct admin *a, int64_t now)
{
    int64_t ms = ADMIN_WAIT_MS;
    for (int i = 0; i < a->nclients; i++)
        if (a->clients[i].deadline - now < ms)
            ms = a->clients[i].deadline - now;
    return ms < 0 ? 0 : (int)ms;
}

/* One round: wait for events, serve them, accept, close the clients past their deadline. */
static void admin_round(struct admin *a)
{
    struct pollfd fds[ADMIN_CLIENTS_MAX + 1];
    fds[0].fd = a->listener;
    fds[0].events = POLLIN;
    for (int i = 0; i < a->nclients; i++) {
        struct admin_client *c = &a->clients[i];
        fds[i + 1].fd = c->s;
        fds[i + 1].events =
            (short)((client_wants_input(c) ? POLLIN : 0) | (c->out_len > 0 ? POLLOUT : 0));
        fds[i + 1].revents = 0;
    }
    fds[0].revents = 0;
    int n = a->nclients;
    int64_t now = ep_now_ms();
    int skip = now < a->accept_retry_ms; /* leave the listener out while it is failing */
    if (admin_poll(fds + skip, n + 1 - skip, admin_wait_ms(a, now)) < 0)
        return;
    for (int i = n - 1; i >= 0; i--) /* backwards: closing i leaves 0..i-1 in place */
        if (fds[i + 1].revents && client_step(a, &a->clients[i], fds[i + 1].revents))
            client_close(a, i, NULL);
    now = ep_now_ms();
    for (int i = a->nclients - 1; i >= 0; i--)
        if (a->clients[i].deadline <= now)
            client_close(a, i, "error admin deadline passed\n");
    if (fds[0].revents & POLLIN)
        admin_accept(a, now);
    admin_reserve_refill(a);
}

/* The admin thread: rounds until admin_stop, then a last flush and close of every client. */
static void admin_loop(void *arg)
{
    struct admin *a = arg;
    /* Its own descriptor table where it can have one, so the data port can never use up
     * the admin port's descriptors; taken before the data port accepts (admin_start waits
     * for `ready`), so no data socket is copied into it and kept open by it. Else it
     * shares the process's and relies on the reserve. */
    ep_thread_own_descriptors();
    admin_reserve_refill(a);
    atomic_store(&a->ready, 1);
    while (!atomic_load(&a->stop))
        admin_round(a);
    while (a->nclients > 0)
        client_close(a, a->nclients - 1, NULL);
    admin_reserve_release(a);
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
    a->listener = admin_opened(socket(AF_INET, SOCK_STREAM, 0));
    if (a->listener == NET_INVALID || bind(a->listener, (struct sockaddr *)&addr, sizeof(addr)) ||
        listen(a->listener, 2 * ADMIN_CLIENTS_MAX) ||
        getsockname(a->listener, (struct sockaddr *)&addr, &len) ||
        net_set_nonblocking(a->listener)) {
        snprintf(err, errlen, "cannot open admin port 127.0.0.1:%u: %s", port, net_last_error());
        if (a->listener != NET_INVALID)
            admin_close(a->listener);
        return EP_EADDR;
    }
    a->port = ntohs(addr.sin_port);
    a->reserve = NET_INVALID;
    a->clients = calloc(ADMIN_CLIENTS_MAX, sizeof(*a->clients));
    if (!a->clients || ep_thread_start(&a->thread, admin_loop, a)) {
        snprintf(err, errlen, "cannot start the admin thread");
        free(a->clients);
        admin_close(a->listener);
        return EP_EIO;
    }
    while (!atomic_load(&a->ready))
        ep_thread_yield();
    return 0;
}

void admin_stop(struct admin *a)
{
    atomic_store(&a->stop, 1);
    ep_thread_join(a->thread);
    admin_close(a->listener);
    free(a->clients);
}
