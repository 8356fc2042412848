/* backend_iocp.h - test hooks of the IOCP backend, for its unit tests
 * (tests/unit/test_win_iocp.c), which drive bk_iocp step by step through a scripted
 * shim table instead of running its worker threads. Production never calls them.
 */
#ifndef EP_BACKEND_IOCP_H
#define EP_BACKEND_IOCP_H

#ifdef _WIN32

#include "sock_shim.h"

struct server;

/* Runs one pass of worker `w`'s loop on the calling thread, exactly the code the
 * worker threads run: re-posts the accepts whose back-off has expired, dequeues one
 * batch from the port (waiting at most max_wait_ms, less when a re-post falls due
 * sooner, 0 when a deferred failure is waiting), dispatches it and the deferred
 * failures, ticks, re-posts due accepts again. Returns 1 when the worker would
 * leave now, -1 when the port is gone, else 0. The server must have been started
 * with bk_iocp.start and must not be running its workers (srv_run). */
int iocp_test_pass(struct server *s, int w, unsigned max_wait_ms);

/* The accept socket the accept request owning `ov` holds (INVALID_SOCKET if none, or
 * if `ov` is not an accept request's). Lets a fake AcceptEx check that the request
 * was complete before it was posted (zio #530). */
SOCKET iocp_test_accept_socket(const OVERLAPPED *ov);

/* Counts one tick period of worker 0, as if TICK_MS had passed: the clock by which
 * an active connection whose buffered receive waits turns idle. Test passes never
 * advance it themselves. */
void iocp_test_tick_period(struct server *s);

#endif /* _WIN32 */
#endif
