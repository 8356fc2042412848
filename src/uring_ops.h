/* uring_ops.h - the table of ring and socket calls the io_uring backend makes, in the
 * manner of SQLite's os_unix.c aSyscall[] (and sock_shim.h for the IOCP backend):
 * every call goes through a pointer that production leaves at its default, the real
 * liburing or libc call, and that the unit tests (tests/unit/test_uring.c) swap for a
 * scripted fake kernel.
 *
 * - Preparing an SQE (io_uring_prep_*) and refilling the provided-buffer ring
 *   (io_uring_buf_ring_add/advance) are plain writes to memory the table hands out
 *   (get_sqe) or the backend owns (registered through register_buf_ring), so they
 *   stay direct: a fake kernel reads them where the real one would.
 * - close is every close of a socket the server opened (listener and accepted), so a
 *   fake can check each is closed once; the backend counts sockets_closed itself.
 * - Swap entries only while no backend is running (the table is read without locks);
 *   uring_ops_reset() puts the defaults back.
 */
#ifndef EP_URING_OPS_H
#define EP_URING_OPS_H

#include <liburing.h>
#include <signal.h>
#include <sys/socket.h>

struct server;

struct uring_ops {
    int (*queue_init_params)(unsigned entries, struct io_uring *ring, struct io_uring_params *p);
    void (*queue_exit)(struct io_uring *ring);
    int (*register_buf_ring)(struct io_uring *ring, struct io_uring_buf_reg *reg, unsigned flags);
    struct io_uring_sqe *(*get_sqe)(struct io_uring *ring);
    int (*submit)(struct io_uring *ring);
    int (*submit_and_wait_timeout)(struct io_uring *ring, struct io_uring_cqe **cqe, unsigned n,
                                   struct __kernel_timespec *ts, sigset_t *sigmask);
    unsigned (*peek_batch_cqe)(struct io_uring *ring, struct io_uring_cqe **cqes, unsigned count);
    void (*cq_advance)(struct io_uring *ring, unsigned n);
    int (*setsockopt)(int fd, int level, int name, const void *val, socklen_t len);
    int (*shutdown)(int fd, int how);
    int (*close)(int fd);
};

extern struct uring_ops uring_ops;

/* Restores every entry of uring_ops to its default. */
void uring_ops_reset(void);

/* Test hook: runs one pass of worker `w`'s loop on the calling thread, exactly the
 * code the worker threads run (submit and wait at most one tick, reap, tick when
 * due). Returns 1 when the worker would leave now, else 0. The server must have been
 * started with bk_uring.start and must not be running bk_uring.run. */
int uring_test_pass(struct server *s, int w);

#endif
