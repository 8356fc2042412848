"""More bug-catalogue scenarios (DESIGN section 9, tests/CATALOGUE.md): the cases that
test_catalogue.py does not make fail when the bug is put back, sharpened so that they
do, and fail fast. Run every catalogue scenario with:
    /usr/bin/python3 -m pytest tests/integration -m catalogue
"""

import random
import resource
import socket
import threading
import time

import pytest

from echolib import (KiB, MiB, Session, abort, assert_clean, check_echo, connect, exchange, mix_seed,
                     only_builds, payload, prefix_problem, run_sessions, served, wait_eof,
                     wait_until)

pytestmark = pytest.mark.catalogue


@pytest.mark.faults
@pytest.mark.parametrize("site", ["setsockopt", "alloc"])
def test_catalogue_02_failed_accept_closes_the_client_at_once(server, build, base_seed, site):
    """nginx #1230/#1722: when SO_UPDATE_ACCEPT_CONTEXT (or the setsockopt site on
    io_uring) or the context allocation fails after an accept, the accepted socket must
    be closed, not abandoned. The first 3 accepted clients hit the failure: each must see
    its connection closed (EOF or reset) promptly, not hang; the 4th is served; and the
    books balance."""
    srv = server(faults=f"nth=1,count=3,sites={site}")
    for i in range(3):
        with connect(srv.addr, timeout=5 * build.slowness) as s:
            try:
                s.sendall(b"are you there?")
            except OSError:
                pass  # already reset: closed, as it must be
            got, how = wait_eof(s, 5 * build.slowness)
            assert how in ("eof", "reset") and got == b"", (
                f"client {i} after a {site} failure: {how}, got {got!r}: the accepted socket"
                " was left open (nginx #1230/#1722)")
    msg = payload(mix_seed(base_seed, "cat02more", site), 4 * KiB)
    check_echo(msg, exchange(srv.addr, msg, timeout=10 * build.slowness), "the 4th client")
    st = srv.stats()
    assert st["faults"] == 3, st
    srv.stop()
    assert_clean(srv, bytes_equal=False, faults_possible=True)


@only_builds("windows")
@pytest.mark.faults
def test_catalogue_03_accept_burst_longer_than_the_pool_recovers(server, build, base_seed):
    """tinymux #1830: a re-post that fails is retried (with back-off), so a burst of
    failures longer than the whole pool of posted accepts (16 requests, 200 failures: each
    request fails many times in a row) leaves the server accepting afterwards. A server
    that gives up on a request after a failed re-post ends with no AcceptEx posted and
    never serves again."""
    srv = server(faults="nth=1,count=200,sites=accept")
    # the burst is spent by the re-posts alone (back-off 1 ms doubling to 1 s): wait for it
    wait_until(lambda: srv.stats()["faults"] >= 200, 10 * build.slowness,
               "the burst of 200 accept failures to be spent (it stalls when a request is"
               " abandoned after a failed re-post: tinymux #1830)")
    ok, errors = served(srv.addr, attempts=2, timeout=5 * build.slowness)
    assert ok, ("the listener never recovered from a burst longer than the pool"
                " (tinymux #1830):\n" + "\n".join(errors))
    msg = payload(mix_seed(base_seed, "cat03more"), 4 * KiB)
    check_echo(msg, exchange(srv.addr, msg, timeout=10 * build.slowness), "after the burst")
    srv.stop()
    assert_clean(srv, bytes_equal=False, faults_possible=True)


@only_builds("linux")
def test_catalogue_03_multishot_accept_rearmed_after_emfile(server, build, base_seed):
    """tinymux #1830 on io_uring: when the multishot accept ends (no IORING_CQE_F_MORE,
    here with -EMFILE because the server ran out of descriptors) it must be armed again
    (after a back-off), or the listener stops for good. The server's RLIMIT_NOFILE is
    lowered to just above what it uses; clients fill it and more wait in the backlog;
    once they leave, a new client must be served. (The limit is inherited at start:
    io_uring reads RLIMIT_NOFILE when the accept is armed, not when it runs.)"""
    psutil = pytest.importorskip("psutil")
    limit = 128
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        srv = server(threads="1")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    proc = psutil.Process(srv.pid)
    held = []
    try:
        for i in range(limit + 8):  # more than the server can take: the rest wait
            held.append(connect(srv.addr, timeout=5))
        wait_until(lambda: proc.num_fds() >= limit, 10, "the server to reach its fd limit")
        # the last client waits in the backlog: not served (a bounded check, 0.5 s)
        held[-1].sendall(b"x")
        held[-1].settimeout(0.5)
        try:
            early = held[-1].recv(1)
        except socket.timeout:
            early = b""
        assert early == b"", "served although the descriptor limit was reached"
    finally:
        for s in held:
            s.close()
    ok, errors = served(srv.addr, attempts=3, timeout=5)
    assert ok, ("the multishot accept was not re-armed after it ended with -EMFILE:\n"
                + "\n".join(errors))
    st = srv.stats()
    assert st["accept_errors"] >= 1, f"the server never hit EMFILE: {st}"
    srv.stop()
    assert_clean(srv, bytes_equal=False)


@only_builds("linux")
def test_catalogue_09_tiny_buffer_ring_runs_dry_every_byte_echoed(server, build, base_seed):
    """liburing #1275/#778: a receive from a provided-buffer ring that is empty completes
    with -ENOBUFS; that is not an error of the connection (fall back / re-arm), or clients
    are cut off whenever the ring runs dry. --buffer-size 8 MiB leaves 2 provided buffers
    per ring, one worker, and 64 clients send at once: the ring runs dry all the time,
    and every byte of every stream must still come back."""
    srv = server("--buffer-size", str(8 * MiB), threads="1")
    rnd = random.Random(mix_seed(base_seed, "cat09more"))
    sessions = [Session(srv.addr, payload(rnd.getrandbits(63), rnd.randint(KiB, 256 * KiB)),
                        half_close=True, name=f"client{i}") for i in range(64)]
    run_sessions(sessions, 60 * build.slowness)
    bad = [f"{s.describe()} {prefix_problem(s.data, bytes(s.got)) or ''}"
           for s in sessions if bytes(s.got) != s.data or not s.eof]
    assert not bad, f"{len(bad)} of 64 streams cut off or not echoed exactly:\n" + "\n".join(bad[:8])
    srv.stop()
    assert_clean(srv)


def _storm(addr, stop, counts, limit):
    """Connects and closes (every 3rd with a reset) until stop is set; bounded by `limit`
    connections and a 20 s deadline."""
    deadline = time.monotonic() + 20
    for i in range(limit):
        if stop.is_set() or time.monotonic() > deadline:
            return
        try:
            s = socket.create_connection(addr, timeout=2)
        except OSError:
            if stop.is_set():
                return
            continue
        counts[0] += 1
        if i % 3 == 0:
            abort(s)
        else:
            s.close()


@only_builds("linux")
def test_catalogue_10_shutdown_races_the_accepts_repeatedly(server, build, base_seed):
    """compio #315: an accept that completes while accepting is being cancelled at
    shutdown still owns a socket, which must be closed. On io_uring the window (between
    stop_accepting and the cancellation of the multishot accept) is short, so one storm
    does not always hit it: 12 rounds of start, accept storm, graceful stop in the middle
    of it; every round must end with sockets_opened == sockets_closed."""
    for rnd in range(12):
        srv = server()
        stop = threading.Event()
        counts = [[0] for _ in range(4)]
        threads = [threading.Thread(target=_storm, args=(srv.addr, stop, c, 5000), daemon=True)
                   for c in counts]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: sum(c[0] for c in counts) >= 150, 20,
                       f"round {rnd}: the storm to be under way")
            srv.stop(via="admin")
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert not any(t.is_alive() for t in threads)
        assert_clean(srv, bytes_equal=False)
