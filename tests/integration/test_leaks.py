"""Leaks and bounded memory: descriptors back to baseline after 500 connections with
resets (Linux: the server's /proc/PID/fd; Wine: the private prefix's wineserver
/proc/PID/fd; natively on Windows: its handles; all: the server's own `fds=` /
`handles=` count), the server's count following its connections, and a client that
sends 64 MiB without reading cannot grow the server."""

import random
import selectors
import time

import psutil
import pytest

from echolib import (NATIVE_WINDOWS, WINE_FD_SLACK, KiB, MiB, abort, assert_clean, check_echo,
                     connect, exchange, exchange_on, mix_seed, payload, settle, stats_if,
                     wait_until, wineserver_pid)


def churn(srv, rnd, n=500):
    """n connections: a third reset right after sending, a third reset after reading
    part of the echo, a third echoed whole and closed normally."""
    for i in range(n):
        s = connect(srv.addr)
        data = payload(rnd.getrandbits(63), rnd.randint(1, 32 * KiB))
        if i % 3 == 2:
            s.sendall(data)
            got = bytearray()
            s.settimeout(10)
            while len(got) < len(data):
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            check_echo(data, bytes(got), f"connection {i}")
            s.close()
            continue
        s.setblocking(False)
        try:
            s.send(data)
            if i % 3 == 1:
                s.settimeout(5)
                s.recv(rnd.randint(1, len(data)))
        except OSError:
            pass
        abort(s)


def test_descriptors_back_to_baseline_after_500_resets(server, build, base_seed):
    srv = server()
    rnd = random.Random(mix_seed(base_seed, "leaks"))
    # warm up: threads, rings and lazily opened descriptors exist before the baseline
    for _ in range(10):
        assert exchange(srv.addr, b"warm-up") == b"warm-up"
    st0 = settle(srv, build)
    held0 = st0["sockets_opened"] - st0["sockets_closed"]
    count, settled, seconds, what = outside_count(srv, build)
    n0 = count()

    churn(srv, rnd)

    st = settle(srv, build, held0)
    key, slack = own_count(build)
    assert st0[key] <= st[key] <= st0[key] + slack, f"stats {key}={st[key]}, baseline {st0[key]}"
    try:
        wait_until(lambda: settled(count(), n0), seconds, f"{what} back to {n0}")
    except AssertionError as e:
        raise AssertionError(f"{e}: now {count()}, stats {st}")
    # a connection reset before the server accepted it may end as an accept error
    # (AcceptEx completing with WSAECONNRESET): accepted or failed, each was handled
    assert st["accepted"] + st["accept_errors"] >= 500, st
    srv.stop()
    assert_clean(srv, bytes_equal=False)


# Handles Windows (or Wine) may open lazily for the process meanwhile: a thread's first
# synchronous call, a loaded helper. Linux descriptors come back exactly.
HANDLE_SLACK = 4


def outside_count(srv, build):
    """(a function counting the server's descriptors from outside it, settled(n, n0):
    whether a count n is back at the baseline n0, seconds to wait for that, what it
    counts). On Linux the server's /proc/PID/fd, exactly; under Wine the prefix's
    wineserver's descriptors (every socket of the server is one there) and natively on
    Windows the server's handles, as psutil reads them, each with its slack."""
    if build.name == "linux":
        return (psutil.Process(srv.pid).num_fds, lambda n, n0: n == n0, 10,
                f"the server's /proc/{srv.pid}/fd count")
    if NATIVE_WINDOWS:
        return (psutil.Process(srv.pid).num_handles, lambda n, n0: n <= n0 + HANDLE_SLACK, 20,
                f"the server's handle count (+{HANDLE_SLACK})")
    ws = wineserver_pid()
    assert ws, "cannot find the Wine prefix's wineserver process"
    return (psutil.Process(ws).num_fds, lambda n, n0: n <= n0 + WINE_FD_SLACK, 20,
            f"the wineserver's fd count (+{WINE_FD_SLACK})")


def own_count(build):
    """The stats field with the server's own count of open descriptors or handles, and
    how far above its baseline it may settle."""
    return ("fds", 0) if build.name == "linux" else ("handles", HANDLE_SLACK)


def test_handle_count_follows_the_connections(server, build):
    """The stats line's `fds=` / `handles=` is the process's real count (under Wine too,
    where GetProcessHandleCount answers 0): 20 clients add at least 20, and their closes
    take it back to the baseline."""
    srv = server()
    key, slack = own_count(build)
    for _ in range(5):
        assert exchange(srv.addr, b"warm-up") == b"warm-up"
    st0 = settle(srv, build)
    clients = [connect(srv.addr) for _ in range(20)]
    try:
        for c in clients:
            assert exchange_on(c, b"here") == b"here"
        st = srv.stats()
        assert st["active"] == 20, st
        assert st[key] >= st0[key] + 20, f"{key}={st[key]} with 20 clients, {st0[key]} without"
    finally:
        for c in clients:
            c.close()
    wait_until(lambda: stats_if(srv, lambda st: st["active"] == 0 and st[key] <= st0[key] + slack),
               10 * build.slowness,
               f"{key} back to {st0[key]} (+{slack}) once the clients closed")
    srv.stop()
    assert_clean(srv)


@pytest.mark.slow
def test_slow_reader_cannot_grow_the_server(server, build, base_seed):
    """64 MiB sent, nothing read until the sends stall (no write progress for 1 s):
    the server must not have buffered the stream (RSS growth bounded); then every
    byte comes back once the client reads."""
    srv = server()
    total = 64 * MiB
    data = payload(mix_seed(base_seed, "slow reader"), total)
    proc = psutil.Process(srv.pid)
    assert exchange(srv.addr, b"warm-up") == b"warm-up"
    rss0 = proc.memory_info().rss
    peak = rss0
    s = connect(srv.addr)
    s.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(s, selectors.EVENT_WRITE)
    sent = 0
    stalled = False
    deadline = time.monotonic() + 60 * build.slowness
    try:
        while sent < total and time.monotonic() < deadline:
            if not sel.select(1.0):  # not writable for a whole second: the send stalls
                stalled = True
                break
            try:
                sent += s.send(memoryview(data)[sent:sent + 256 * KiB])
            except BlockingIOError:
                pass
            peak = max(peak, proc.memory_info().rss)
        growth = proc.memory_info().rss - rss0
        peak_growth = peak - rss0
        assert stalled, (f"the client sent {sent} of {total} bytes without stalling: the server"
                         f" keeps reading from a client that does not read (RSS +{growth >> 20} MiB)")
        if build.name == "linux":
            assert peak_growth < 32 * MiB, (f"server RSS grew {peak_growth >> 20} MiB while"
                                            f" the client did not read ({sent} bytes sent)")
        # now read everything, sending the rest
        got = bytearray()
        eof = False
        sel.modify(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while len(got) < total and not eof and time.monotonic() < deadline:
            for key, mask in sel.select(1.0):
                if mask & selectors.EVENT_WRITE and sent < total:
                    try:
                        sent += s.send(memoryview(data)[sent:sent + 256 * KiB])
                    except BlockingIOError:
                        pass
                if mask & selectors.EVENT_READ:
                    try:
                        chunk = s.recv(1 * MiB)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        eof = True
                        break
                    got += chunk
            if sent == total:
                sel.modify(s, selectors.EVENT_READ)
        check_echo(data, bytes(got), f"slow reader, after reading (stalled at {sent} bytes)")
    finally:
        sel.close()
        s.close()
    srv.stop()
    assert_clean(srv)
