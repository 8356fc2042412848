/* Plain liburing echo in the style of the common examples: one ring, one thread,
 * single-shot accept re-armed, and per connection one recv or one send in flight
 * in a per-connection buffer. Unlike many examples, a short send posts the rest. */
#include "peer_common.h"

#include <liburing.h>
#include <stdint.h>

#define RING_ENTRIES 4096
#define BUF_SIZE (16 * 1024)

enum op { OP_ACCEPT, OP_RECV, OP_SEND };

struct conn {
    int fd;
    unsigned len, off; /* bytes received, bytes of them sent back */
    char buf[BUF_SIZE];
};

static struct io_uring ring;

static struct io_uring_sqe *get_sqe(void)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    while (!sqe) { /* submission queue full: hand it to the kernel and retry */
        io_uring_submit(&ring);
        sqe = io_uring_get_sqe(&ring);
    }
    return sqe;
}

static void tag(struct io_uring_sqe *sqe, struct conn *c, enum op op)
{
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)c | (uint64_t)op);
}

static void post_accept(int lfd)
{
    struct io_uring_sqe *sqe = get_sqe();
    io_uring_prep_accept(sqe, lfd, NULL, NULL, 0);
    tag(sqe, NULL, OP_ACCEPT);
}

static void post_recv(struct conn *c)
{
    struct io_uring_sqe *sqe = get_sqe();
    io_uring_prep_recv(sqe, c->fd, c->buf, BUF_SIZE, 0);
    tag(sqe, c, OP_RECV);
}

static void post_send(struct conn *c)
{
    struct io_uring_sqe *sqe = get_sqe();
    io_uring_prep_send(sqe, c->fd, c->buf + c->off, c->len - c->off, MSG_NOSIGNAL);
    tag(sqe, c, OP_SEND);
}

static void conn_close(struct conn *c)
{
    close(c->fd);
    free(c);
}

static void on_accept(int lfd, int res)
{
    post_accept(lfd);
    if (res < 0) {
        if (res != -ECONNABORTED && res != -EINTR)
            fprintf(stderr, "accept: %s\n", strerror(-res));
        return;
    }
    struct conn *c = malloc(sizeof *c);
    if (!c) {
        close(res);
        return;
    }
    c->fd = res;
    peer_nodelay(res);
    post_recv(c);
}

static void on_recv(struct conn *c, int res)
{
    if (res <= 0) { /* 0: the peer closed and everything it sent was echoed */
        conn_close(c);
        return;
    }
    c->len = (unsigned)res;
    c->off = 0;
    post_send(c);
}

static void on_send(struct conn *c, int res)
{
    if (res <= 0) {
        conn_close(c);
        return;
    }
    c->off += (unsigned)res;
    if (c->off < c->len)
        post_send(c); /* short send: post the rest */
    else
        post_recv(c);
}

static void dispatch(int lfd, struct io_uring_cqe *cqe)
{
    uint64_t data = io_uring_cqe_get_data64(cqe);
    struct conn *c = (struct conn *)(uintptr_t)(data & ~(uint64_t)3);
    switch ((enum op)(data & 3)) {
    case OP_ACCEPT:
        on_accept(lfd, cqe->res);
        break;
    case OP_RECV:
        on_recv(c, cqe->res);
        break;
    case OP_SEND:
        on_send(c, cqe->res);
        break;
    }
}

int main(int argc, char **argv)
{
    int lfd = peer_listen(peer_parse_port(argc, argv), 0);
    int ret = io_uring_queue_init(RING_ENTRIES, &ring, 0);
    if (ret < 0) {
        fprintf(stderr, "io_uring_queue_init: %s\n", strerror(-ret));
        return 1;
    }
    post_accept(lfd);
    for (;;) {
        ret = io_uring_submit_and_wait(&ring, 1);
        if (ret < 0 && ret != -EINTR) {
            fprintf(stderr, "io_uring_submit_and_wait: %s\n", strerror(-ret));
            return 1;
        }
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&ring, head, cqe)
        {
            dispatch(lfd, cqe);
            seen++;
        }
        io_uring_cq_advance(&ring, seen);
    }
}
