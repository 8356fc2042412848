"""Echo fidelity: every byte back, in order, whatever the size, content, write pattern,
concurrency or the way the client ends. These are the conformance cases: with
--target HOST:PORT they run against any echo server (our stats checks are skipped)."""

import random
import socket
import time

import pytest

from echolib import (KiB, MiB, Session, abort, assert_clean, check_echo, connect,
                     echo, has_ipv6_loopback, mix_seed, payload, prefix_problem,
                     run_sessions, served, wait_eof)

pytestmark = pytest.mark.conformance


def scale(build, n, floor=1):
    return max(floor, int(n * (build.scale if build else 1.0)))


def budget(build, nbytes, base=10.0):
    """Seconds a transfer of nbytes may take: generous (a loaded 2-core machine), but
    small enough that a server that loses bytes fails fast rather than at the hard limit."""
    return (base + 2.0 * nbytes / MiB) * slowness(build)


def slowness(build):
    return build.slowness if build else 1.0


SIZES = [("0B", 0), ("1B", 1), ("1KiB-1", KiB - 1), ("16KiB", 16 * KiB),
         ("16KiB+1", 16 * KiB + 1), ("64KiB", 64 * KiB), ("1MiB", MiB), ("8MiB", 8 * MiB),
         ("16MiB", 16 * MiB)]


@pytest.mark.parametrize("label,size", [pytest.param(*s, id=s[0]) for s in SIZES])
def test_echo_sizes(server, build, base_seed, label, size):
    srv = server()
    data = payload(mix_seed(base_seed, "sizes", size), size)
    # 0 B: the client half-closes at once and must get EOF back, nothing else
    s = echo(srv.addr, data, half_close=(size == 0), timeout=budget(build, size))
    check_echo(data, bytes(s.got), f"{label} payload")
    if size == 0:
        assert s.eof, f"0 B then half-close: expected EOF, got {s.describe()}"
    srv.stop()
    assert_clean(srv)


@pytest.mark.parametrize("index", range(5), ids=[f"seed_{i}" for i in range(5)])
def test_echo_random_content(server, build, base_seed, index):
    """Random sizes and bytes from the seed: the seed is in the replay line."""
    srv = server()
    rnd = random.Random(mix_seed(base_seed, "random", index))
    data = payload(rnd.getrandbits(63), rnd.randint(1, scale(build, 512 * KiB)))
    s = echo(srv.addr, data, timeout=budget(build, len(data)))
    check_echo(data, bytes(s.got), f"random payload ({len(data)} B, seed {base_seed}/{index})")
    srv.stop()
    assert_clean(srv)


@pytest.mark.parametrize("pattern", ["one_write", "many_small_writes", "byte_at_a_time"])
def test_write_patterns(server, build, base_seed, pattern):
    srv = server()
    rnd = random.Random(mix_seed(base_seed, "patterns", pattern))
    if pattern == "one_write":
        data, chunks = payload(rnd.getrandbits(63), 256 * KiB), [256 * KiB]
    elif pattern == "many_small_writes":
        data = payload(rnd.getrandbits(63), scale(build, 64 * KiB))
        chunks = [rnd.randint(1, 100) for _ in range(len(data))]
    else:
        data = payload(rnd.getrandbits(63), scale(build, 3 * KiB))
        chunks = [1] * len(data)
    s = echo(srv.addr, data, chunks=chunks, timeout=budget(build, len(data), 20))
    check_echo(data, bytes(s.got), f"{pattern} ({len(data)} B)")
    srv.stop()
    assert_clean(srv)


def test_pipelined_messages_read_after_all_writes(server, build, base_seed):
    """1000 small messages written back to back, nothing read until the last is
    written (they fit in the socket buffers), then every echo in order."""
    srv = server()
    rnd = random.Random(mix_seed(base_seed, "pipelined"))
    msgs = [payload(rnd.getrandbits(63), rnd.randint(1, 48)) for _ in range(1000)]
    data = b"".join(msgs)
    with connect(srv.addr, 10 * slowness(build)) as s:
        for m in msgs:
            s.sendall(m)
        got, how = bytearray(), None
        deadline = time.monotonic() + 20 * slowness(build)
        while len(got) < len(data) and time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                how = "timeout"
                break
            if not chunk:
                how = "eof"
                break
            got += chunk
    check_echo(data, bytes(got), f"1000 pipelined messages ({how or 'complete'})")
    srv.stop()
    assert_clean(srv)


def test_pipelined_writes_reads_lagging(server, build, base_seed):
    """Writes run 256 KiB ahead of reads (in random chunks) over 4 MiB."""
    srv = server()
    rnd = random.Random(mix_seed(base_seed, "lagging"))
    data = payload(rnd.getrandbits(63), scale(build, 4 * MiB))
    chunks = [rnd.randint(1, 8 * KiB) for _ in range(len(data) // KiB)]
    s = echo(srv.addr, data, chunks=chunks, lag=256 * KiB, timeout=budget(build, len(data)))
    check_echo(data, bytes(s.got), "lagging reads")
    srv.stop()
    assert_clean(srv)


@pytest.mark.parametrize("size", [1, 100 * KiB, 2 * MiB], ids=["1B", "100KiB", "2MiB"])
def test_half_close_gets_everything_then_eof(server, build, base_seed, size):
    srv = server()
    data = payload(mix_seed(base_seed, "half", size), size)
    s = echo(srv.addr, data, half_close=True, timeout=budget(build, size))
    check_echo(data, bytes(s.got), "half-close")
    assert s.eof and s.error is None, f"expected all bytes then EOF: {s.describe()}"
    srv.stop()
    assert_clean(srv)


def test_concurrent_clients_each_get_their_own_stream(server, build, base_seed):
    srv = server()
    rnd = random.Random(mix_seed(base_seed, "concurrent"))
    n = 200
    sessions = []
    for i in range(n):
        data = payload(rnd.getrandbits(63), rnd.randint(1, scale(build, 64 * KiB)))
        chunks = [rnd.randint(1, 16 * KiB) for _ in range(64)] if i % 2 else None
        sessions.append(Session(srv.addr, data, chunks, half_close=(i % 3 == 0),
                                name=f"client{i}"))
    run_sessions(sessions, timeout=budget(build, sum(len(s.data) for s in sessions), 30))
    bad = []
    for s in sessions:
        if bytes(s.got) != s.data or (s.half_close and not s.eof):
            bad.append(f"{s.describe()} {prefix_problem(s.data, bytes(s.got)) or ''}")
    assert not bad, f"{len(bad)} of {n} clients were not echoed exactly:\n" + "\n".join(bad[:10])
    final = srv.stop()
    assert_clean(srv)
    if final:
        assert final["accepted"] >= n, f"only {final['accepted']} accepted of {n} clients"


def test_connect_and_close_without_data(server, build, base_seed):
    srv = server()
    for i in range(50):
        s = connect(srv.addr)
        if i % 2:
            s.shutdown(socket.SHUT_WR)
            data, how = wait_eof(s, 10 * slowness(build))
            assert (data, how) == (b"", "eof"), f"connection {i}: expected EOF, got {how} {data!r}"
        s.close()
    ok, errors = served(srv.addr, attempts=1)
    assert ok, f"a fresh client was not served after 50 silent connect/close: {errors}"
    srv.stop()
    assert_clean(srv)


def test_abrupt_reset_mid_transfer_then_fresh_client(server, build, base_seed):
    """Clients reset (SO_LINGER 0) while the server is receiving and sending; the
    server survives and a fresh client is echoed 1 MiB exactly."""
    srv = server()
    rnd = random.Random(mix_seed(base_seed, "reset"))
    for i in range(20):
        s = connect(srv.addr)
        s.setblocking(False)
        data = payload(rnd.getrandbits(63), 4 * MiB)
        sent = 0
        target = rnd.randint(1, 2 * MiB)
        while sent < target:
            try:
                sent += s.send(memoryview(data)[sent:target])
            except BlockingIOError:
                break
        if i % 2:
            try:
                s.recv(rnd.randint(1, 64 * KiB))  # read a little of the echo
            except BlockingIOError:
                pass
        abort(s)
    data = payload(rnd.getrandbits(63), MiB)
    s = echo(srv.addr, data, timeout=budget(build, len(data)))
    check_echo(data, bytes(s.got), "fresh client after 20 resets")
    srv.stop()
    assert_clean(srv, bytes_equal=False)  # a reset may cut an echo in flight


def test_ipv6_loopback(server, build, base_seed):
    if not has_ipv6_loopback():
        pytest.skip("this host has no IPv6 loopback ([::1])")
    srv = server(listen="[::1]:0")
    assert srv.host == "::1", f"expected 'listening on [::1]:PORT', got host {srv.host!r}"
    data = payload(mix_seed(base_seed, "ipv6"), scale(build, MiB))
    s = echo(srv.addr, data, half_close=True, timeout=budget(build, len(data)))
    check_echo(data, bytes(s.got), "IPv6 echo")
    assert s.eof
    srv.stop()
    assert_clean(srv)
