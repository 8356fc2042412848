"""More bug-catalogue scenarios (DESIGN section 9, tests/CATALOGUE.md): the cases that
test_catalogue.py does not make fail when the bug is put back, sharpened so that they
do, and fail fast. Run every catalogue scenario with:
    /usr/bin/python3 -m pytest tests/integration -m catalogue
"""

import random
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
    import resource  # POSIX only, like this test

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


def _ring_buffers(buffer_size):
    """The provided buffers per ring for --buffer-size B (backend_uring.c:init_buffers):
    256, halved while they exceed 8 MiB, at least 2."""
    n = 256
    while n > 2 and n * buffer_size > 8 * MiB:
        n //= 2
    return n


def _read_some(s, want, timeout):
    """Reads until `want` bytes, EOF or reset; returns what came."""
    got = bytearray()
    deadline = time.monotonic() + timeout
    while len(got) < want:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except (socket.timeout, ConnectionResetError, ConnectionAbortedError):
            break
        if not chunk:
            break
        got += chunk
    return bytes(got)


@only_builds("linux")
@pytest.mark.faults
def test_catalogue_08_provided_buffers_returned_on_every_close(server, build, base_seed):
    """io_uring-echo-server #11: a provided buffer that is not given back when its
    connection closes is lost to the ring for good. echoport hides such a leak (an empty
    ring falls back to a plain recv), so the proof is the recv_fallbacks counter.
    --buffer-size 128 KiB gives one ring (1 worker) of 64 buffers. More connections than
    that go through each close path that can end holding a buffer: the first 200
    receives fail with a reset (fault plan nth=1,count=200, seeded: about half fail on
    completion, after the kernel put the client's data in a provided buffer); clean
    close after the echo; half-close; SO_LINGER-0 reset in the middle of the echo;
    server-side close by --idle-timeout. Then 32 clients (fewer than the buffers, so a
    ring with nothing leaked never runs dry) echo at once: every byte must come back
    and recv_fallbacks must still be 0."""
    bufsize = 128 * KiB
    nbufs = _ring_buffers(bufsize)
    assert nbufs == 64
    cycles = nbufs + 16
    nfault = 200
    seed = mix_seed(base_seed, "cat08more")
    srv = server("--buffer-size", str(bufsize), "--idle-timeout", "2", threads="1",
                 faults=f"seed={seed},nth=1,count={nfault},sites=recv")
    rnd = random.Random(seed)
    t = 10 * build.slowness

    # 1. the first receive of each of 200 connections fails with a reset, at once or
    #    on completion (then with the client's data in a provided buffer)
    for i in range(nfault):
        with connect(srv.addr, timeout=t) as s:
            s.sendall(payload(rnd.getrandbits(63), rnd.randint(1, 4 * KiB)))
            got, how = wait_eof(s, t)
            assert how in ("eof", "reset") and got == b"", (
                f"fault cycle {i}: {how} after {len(got)} bytes; the reset receive should"
                " close the connection")
    st = srv.stats()
    assert st["faults"] == nfault, f"the fault phase did not fail {nfault} receives: {st}"

    # 2. clean close after the whole echo
    for i in range(cycles):
        msg = payload(rnd.getrandbits(63), rnd.randint(1, 8 * KiB))
        check_echo(msg, exchange(srv.addr, msg, timeout=t), f"clean-close cycle {i}")

    # 3. half-close: the server reads EOF after the data, echoes and closes
    for i in range(cycles):
        msg = payload(rnd.getrandbits(63), rnd.randint(1, 8 * KiB))
        with connect(srv.addr, timeout=t) as s:
            s.sendall(msg)
            s.shutdown(socket.SHUT_WR)
            got, how = wait_eof(s, t)
        assert how == "eof", f"half-close cycle {i}: {how} after {len(got)} bytes"
        check_echo(msg, got, f"half-close cycle {i}")

    # 4. SO_LINGER-0 reset in the middle of the echo (data still on its way both ways)
    for i in range(cycles):
        msg = payload(rnd.getrandbits(63), rnd.randint(64 * KiB, 256 * KiB))
        s = connect(srv.addr, timeout=t)
        s.sendall(msg[:len(msg) // 2])
        got = _read_some(s, 1, t)
        assert got, f"reset cycle {i}: no echo before the reset"
        try:
            s.sendall(msg[len(msg) // 2:])
        except OSError:
            pass
        abort(s)

    # 5. server-side close: clients that echo once, then idle past --idle-timeout
    idle = [connect(srv.addr, timeout=t) for _ in range(cycles)]
    try:
        for i, s in enumerate(idle):
            msg = payload(rnd.getrandbits(63), rnd.randint(1, 4 * KiB))
            s.sendall(msg)
            check_echo(msg, _read_some(s, len(msg), t), f"idle client {i}")
        for i, s in enumerate(idle):
            got, how = wait_eof(s, 10 * build.slowness)
            assert how in ("eof", "reset") and got == b"", (
                f"idle client {i}: {how}: not closed by --idle-timeout 2")
    finally:
        for s in idle:
            s.close()
    wait_until(lambda: srv.stats()["active"] == 0, t, "every cycle's connection to be freed")

    # the burst: fewer clients than buffers, so a ring with nothing leaked never runs dry
    before = srv.stats()
    nburst = nbufs // 2
    sessions = [Session(srv.addr, payload(rnd.getrandbits(63), rnd.randint(64 * KiB, 512 * KiB)),
                        half_close=True, name=f"burst{i}") for i in range(nburst)]
    run_sessions(sessions, 60 * build.slowness)
    after = srv.stats()
    bad = [f"{s.describe()} {prefix_problem(s.data, bytes(s.got)) or ''}"
           for s in sessions if bytes(s.got) != s.data or not s.eof]
    assert not bad, (f"{len(bad)} of {nburst} burst streams not echoed exactly:\n"
                     + "\n".join(bad[:8]))
    leaked = (f"recv_fallbacks={before['recv_fallbacks']} before and"
              f" {after['recv_fallbacks']} after a burst of {nburst} clients on a ring of"
              f" {nbufs} buffers, after {nfault} + 4 x {cycles} connect/close cycles: provided"
              " buffers were not returned when connections closed (io_uring-echo-server #11)")
    assert before["recv_fallbacks"] == 0 and after["recv_fallbacks"] == 0, leaked
    srv.stop()
    assert_clean(srv, bytes_equal=False, faults_possible=True)


@only_builds("linux")
def test_catalogue_09_tiny_buffer_ring_runs_dry_every_byte_echoed(server, build, base_seed):
    """liburing #1275/#778: a receive from a provided-buffer ring that is empty completes
    with -ENOBUFS; that is not an error of the connection (fall back / re-arm), or clients
    are cut off whenever the ring runs dry. --max-buffer-bytes 64 KiB grants the one
    worker's ring 8 KiB (2 small provided buffers) and leaves room for 5 connection
    buffers, so with 64 clients sending at once most receives find no connection buffer,
    hold their provided buffer and park: the ring runs dry all the time, and every byte
    of every stream must still come back."""
    srv = server("--buffer-size", str(16 * KiB), "--max-buffer-bytes", str(64 * KiB), threads="1")
    rnd = random.Random(mix_seed(base_seed, "cat09more"))
    sessions = [Session(srv.addr, payload(rnd.getrandbits(63), rnd.randint(KiB, 256 * KiB)),
                        half_close=True, name=f"client{i}") for i in range(64)]
    run_sessions(sessions, 60 * build.slowness)
    bad = [f"{s.describe()} {prefix_problem(s.data, bytes(s.got)) or ''}"
           for s in sessions if bytes(s.got) != s.data or not s.eof]
    assert not bad, f"{len(bad)} of 64 streams cut off or not echoed exactly:\n" + "\n".join(bad[:8])
    st = srv.stats()
    assert st["recv_fallbacks"] > 0, f"the ring never ran dry, so -ENOBUFS was not exercised: {st}"
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
