/* Level-triggered epoll echo, one thread. An idle connection holds no buffer:
 * reads go to one shared buffer and are written back at once; only what a short
 * write leaves over is copied to the connection, which then stops reading until
 * it has been sent (EPOLLOUT). */
#include "peer_common.h"

#include <sys/epoll.h>

#define BUF_SIZE (64 * 1024)
#define MAX_EVENTS 512

struct conn {
    int fd;
    char *pend; /* unsent bytes after a short write, or NULL */
    size_t pend_len, pend_off;
};

static char buf[BUF_SIZE];
static int ep;

static void conn_close(struct conn *c)
{
    close(c->fd);
    free(c->pend);
    free(c);
}

static void watch(struct conn *c, int op, unsigned events)
{
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(ep, op, c->fd, &ev) < 0)
        peer_die("epoll_ctl");
}

static void on_accept(int lfd)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                perror("accept4");
            return;
        }
        struct conn *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        peer_nodelay(fd);
        watch(c, EPOLL_CTL_ADD, EPOLLIN);
    }
}

/* Writes what is pending; returns -1 on a fatal error, 0 if still pending, 1 if done. */
static int flush_pending(struct conn *c)
{
    while (c->pend_off < c->pend_len) {
        ssize_t n = write(c->fd, c->pend + c->pend_off, c->pend_len - c->pend_off);
        if (n < 0)
            return (errno == EAGAIN || errno == EINTR) ? 0 : -1;
        c->pend_off += (size_t)n;
    }
    free(c->pend);
    c->pend = NULL;
    return 1;
}

static void on_readable(struct conn *c)
{
    ssize_t n = read(c->fd, buf, sizeof buf);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) { /* 0: peer closed its side and everything read was echoed */
        conn_close(c);
        return;
    }
    ssize_t w = write(c->fd, buf, (size_t)n);
    if (w < 0 && errno != EAGAIN && errno != EINTR) {
        conn_close(c);
        return;
    }
    if (w == n)
        return;
    size_t done = w < 0 ? 0 : (size_t)w;
    c->pend_len = (size_t)n - done;
    c->pend_off = 0;
    c->pend = malloc(c->pend_len);
    if (!c->pend) {
        conn_close(c);
        return;
    }
    memcpy(c->pend, buf + done, c->pend_len);
    watch(c, EPOLL_CTL_MOD, EPOLLOUT);
}

static void on_writable(struct conn *c)
{
    int r = flush_pending(c);
    if (r < 0)
        conn_close(c);
    else if (r > 0)
        watch(c, EPOLL_CTL_MOD, EPOLLIN);
}

int main(int argc, char **argv)
{
    int lfd = peer_listen(peer_parse_port(argc, argv), 1);
    ep = epoll_create1(0);
    if (ep < 0)
        peer_die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0)
        peer_die("epoll_ctl");
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(ep, events, MAX_EVENTS, -1);
        if (n < 0 && errno != EINTR)
            peer_die("epoll_wait");
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (!c)
                on_accept(lfd);
            else if (c->pend)
                on_writable(c);
            else
                on_readable(c);
        }
    }
}
