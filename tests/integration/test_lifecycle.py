"""The server's life: start-up output, graceful shutdown (admin, signals), the final
stats equalities, bad command lines, --max-conns, --idle-timeout."""

import random
import socket
import threading
import time

import pytest

from echolib import (KiB, MiB, Session, assert_clean, check_echo, connect, exchange_on, mix_seed,
                     never_reader, only_builds, payload, run_cli, run_sessions, wait_eof,
                     wait_until)

STOPS = {"linux": ["admin", "sigint", "sigterm"], "windows": ["admin", "sigint"]}


@pytest.mark.parametrize("via", ["admin", "sigint", "sigterm"])
def test_graceful_shutdown(server, build, base_seed, via):
    """Echo traffic, idle clients left open, then a stop request: the idle clients
    get EOF, the server prints a final stats line, exits 0, and the books balance."""
    if via not in STOPS[build.name]:
        pytest.skip(f"{via} is not a stop request on {build.name} (its stop requests are"
                    " console events: SIGINT becomes CTRL_C_EVENT under Wine, natively the"
                    " harness sends CTRL_BREAK_EVENT)")
    srv = server()
    rnd = random.Random(mix_seed(base_seed, "shutdown", via))
    sessions = [Session(srv.addr, payload(rnd.getrandbits(63), rnd.randint(1, 256 * KiB)))
                for _ in range(10)]
    run_sessions(sessions, 60)
    for s in sessions:
        check_echo(s.data, bytes(s.got))
    idle = [connect(srv.addr) for _ in range(5)]
    for c in idle:
        assert exchange_on(c, b"ping") == b"ping"
    # the 10 finished clients' closes reach the server asynchronously
    wait_until(lambda: srv.stats()["active"] == 5, 10 * build.slowness,
               "active == 5 (the idle clients) in the stats")
    final = srv.stop(via=via)
    for i, c in enumerate(idle):
        data, how = wait_eof(c, 10 * build.slowness)
        assert how in ("eof", "reset") and data == b"", f"idle client {i}: {how} {data!r}"
        c.close()
    assert_clean(srv)
    assert final["accepted"] == 15 and final["closed"] == 15, srv.final_line
    total = sum(len(s.data) for s in sessions) + 5 * 4
    assert final["bytes_in"] == total, f"bytes_in={final['bytes_in']}, clients sent {total}"


def test_shutdown_lets_an_echo_in_flight_finish(server, build, base_seed):
    """A stop request while a client streams: what it gets is a prefix of what it
    sent, then EOF; every byte the server took in was sent back (bytes_in == bytes_out)."""
    srv = server()
    data = payload(mix_seed(base_seed, "inflight"), 64 * MiB)
    s = connect(srv.addr)
    s.setblocking(False)
    sent, got = 0, bytearray()
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
    stop_at = 2 * MiB
    stopped = False
    deadline = time.monotonic() + 60 * build.slowness
    eof = False
    try:
        while not eof and time.monotonic() < deadline:
            if not stopped and len(got) >= stop_at:
                srv.request_stop("admin")
                stopped = True
            for key, mask in sel.select(0.5):
                if mask & selectors.EVENT_WRITE and sent < len(data):
                    try:
                        sent += s.send(memoryview(data)[sent:sent + 256 * KiB])
                    except BlockingIOError:
                        pass
                    except (BrokenPipeError, ConnectionResetError):
                        sent = len(data)
                if mask & selectors.EVENT_READ:
                    try:
                        chunk = s.recv(256 * KiB)
                    except BlockingIOError:
                        continue
                    except ConnectionResetError:
                        eof = True
                        break
                    if not chunk:
                        eof = True
                        break
                    got += chunk
            if sent >= len(data):
                sel.modify(s, selectors.EVENT_READ)
    finally:
        sel.close()
        s.close()
    assert stopped, f"never got {stop_at} bytes back before the deadline ({len(got)})"
    assert eof, f"no EOF after the stop request ({len(got)} bytes back)"
    assert bytes(got) == data[:len(got)], "the echo before EOF is not a prefix of the stream"
    srv.wait_exit()
    assert srv.returncode == 0, f"exit {srv.returncode}"
    final = srv.read_final()
    # every byte the server took in went back out (the echo in flight was finished);
    # the client may miss the tail: the server's close with unread input sends a RST
    assert_clean(srv)
    assert final["bytes_out"] >= len(got), (f"server sent {final['bytes_out']} bytes, the client"
                                            f" got {len(got)}")


def owed_an_echo(srv, build):
    """A client that never reads, pushing until the server owes it an echo it cannot
    send (bytes_in > bytes_out, bytes_out no longer moving): a drain runs to its
    deadline. Returns its socket."""
    hog = never_reader(srv.addr)
    seen = []

    def stuck_owing():  # bytes taken in and not sent, and no send progress since last look
        st = srv.stats()
        seen.append(st["bytes_out"])
        return st["bytes_in"] > st["bytes_out"] and seen[-2:] == [st["bytes_out"]] * 2

    wait_until(stuck_owing, 5 * build.slowness, "the server owing the client an echo it "
               "cannot send")
    return hog


def refuses_new_clients(srv):
    """Whether a connect to the data port is refused: nothing listens there any more."""
    try:
        socket.create_connection(srv.addr, timeout=1).close()
        return False
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:  # queued just before the listener went: ask again
        return False


def test_new_clients_are_refused_at_once_while_the_server_drains(server, build):
    """After a stop request, while a client that never reads keeps an echo owed (the drain
    runs to its deadline), the port refuses new clients at once: nothing listens any more,
    so none is left in a backlog to wait out the drain and then be reset."""
    srv = server("--drain-timeout", 5000)
    hog = owed_an_echo(srv, build)
    srv.request_stop("admin")
    wait_until(lambda: refuses_new_clients(srv), 2 * build.slowness,
               "a new client refused after the stop request")
    assert srv.alive(), "the server was no longer draining: the test proves nothing"
    hog.close()
    assert srv.wait_exit() == 0, f"exit {srv.returncode}"
    srv.read_final()
    assert_clean(srv, bytes_equal=False)


def test_stats_line_format(server, build):
    srv = server()
    st = srv.stats()
    keys = ["accepted", "closed", "active", "refused", "accept_errors", "admin_waits", "bytes_in",
            "bytes_out", "sockets_opened", "sockets_closed", "ctx_alloc", "ctx_free", "faults"]
    missing = [k for k in keys if k not in st]
    assert not missing, f"stats line lacks {missing}: {st}"
    assert ("fds" if build.name == "linux" else "handles") in st, st
    assert srv.admin("ping") == "pong"
    assert srv.admin("frobnicate").startswith("error"), "unknown admin commands are errors"
    srv.stop()
    assert_clean(srv)


BAD_CLI = {
    "threads_0": (["--threads", "0"], None, "--threads"),
    "listen_nonsense": (["--listen", "nonsense"], None, "nonsense"),
    "listen_bad_port": (["--listen", "127.0.0.1:70000"], None, "70000"),
    "listen_ipv4_octet_999": (["--listen", "999.1.1.1:1"], None, "999.1.1.1"),
    "unknown_option": (["--frobnicate"], None, "--frobnicate"),
    "missing_value": (["--threads"], None, "--threads"),
    "faults_probability_2": (["--faults", "partial_send=2"], None,
                             "--faults: bad fault plan token 'partial_send=2'"),
    "faults_unknown_key": (["--faults", "seed=1,bogus=0.5"], None, "bogus"),
    "env_faults_bogus": ([], {"ECHOPORT_FAULTS": "bogus=1"},
                         "ECHOPORT_FAULTS: bad fault plan token 'bogus=1'"),
    "env_faults_unknown_key": ([], {"ECHOPORT_FAULTS": "seed=1,bogus=0.5"}, "bogus"),
}


@pytest.mark.parametrize("case", list(BAD_CLI))
def test_bad_command_line_exits_2_with_one_line(build, case):
    args, env, named = BAD_CLI[case]
    rc, out, err = run_cli(build, ["--listen", "127.0.0.1:0"] + args
                           if "--listen" not in args else args, env)
    lines = err.splitlines()
    assert rc == 2, f"exit {rc}, expected 2; stderr: {err!r}"
    assert len(lines) == 1 and lines[0].startswith("echoport: "), (
        f"expected one 'echoport: ...' line on stderr, got {lines!r}")
    assert named in lines[0], f"the error should name {named!r}: {lines[0]!r}"
    assert "listening" not in out, f"it must not start serving: {out!r}"


@pytest.mark.parametrize("which", ["data", "admin"])
def test_a_port_in_use_is_one_line_that_says_so(build, which):
    """Another process holds the port: exit 1 with one line naming the port and the
    reason in words (on Windows too, where Winsock has only a number for it)."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        args = (["--listen", f"127.0.0.1:{port}"] if which == "data"
                else ["--listen", "127.0.0.1:0", "--admin-port", port])
        rc, out, err = run_cli(build, args)
    finally:
        holder.close()
    lines = err.splitlines()
    assert rc == 1, f"exit {rc}, expected 1; stderr: {err!r}"
    assert len(lines) == 1 and lines[0].startswith("echoport: "), lines
    assert str(port) in lines[0] and "address already in use" in lines[0].lower(), lines[0]


def test_help_and_version(build):
    rc, out, err = run_cli(build, ["--help"])
    assert rc == 0 and "--listen" in out and "--faults" in out, (rc, out, err)
    rc, out, err = run_cli(build, ["--version"])
    assert rc == 0 and out.startswith("echoport "), (rc, out, err)


def test_max_conns_refuses_the_extra(server, build):
    srv = server("--max-conns", 2)
    a, b = connect(srv.addr), connect(srv.addr)
    assert exchange_on(a, b"alpha") == b"alpha"
    assert exchange_on(b, b"bravo") == b"bravo"
    c = connect(srv.addr)  # the kernel completes the handshake; the server refuses it
    try:
        c.sendall(b"charlie")
    except OSError:
        pass
    data, how = wait_eof(c, 10 * build.slowness)
    assert how in ("eof", "reset") and data == b"", (
        f"the 3rd connection beyond --max-conns 2 should be closed unanswered: {how} {data!r}")
    c.close()
    st = srv.stats()
    assert st["refused"] >= 1 and st["active"] == 2, st
    assert exchange_on(a, b"still here") == b"still here"
    a.close()
    wait_until(lambda: srv.stats()["active"] == 1, 10 * build.slowness, "active == 1 after a close")
    d = connect(srv.addr)
    assert exchange_on(d, b"delta") == b"delta", "a freed slot serves a new client"
    b.close()
    d.close()
    srv.stop()
    assert_clean(srv)


def test_idle_timeout_closes_a_quiet_client(server, build):
    """--idle-timeout 1: a quiet client gets EOF after about a second; a client
    that talks every 300 ms for 2.4 s meanwhile is not cut."""
    srv = server("--idle-timeout", 1)
    quiet, busy = connect(srv.addr), connect(srv.addr)
    assert exchange_on(quiet, b"hello") == b"hello"
    assert exchange_on(busy, b"hello") == b"hello"
    t0 = time.monotonic()
    busy_result = []

    def talk():
        pace = threading.Event()
        try:
            for i in range(8):
                pace.wait(0.3)  # the busy client's traffic pattern, not synchronisation
                msg = f"tick {i}".encode()
                if exchange_on(busy, msg) != msg:
                    busy_result.append(f"message {i} not echoed")
                    return
        except OSError as e:
            busy_result.append(f"{type(e).__name__}: {e}")

    talker = threading.Thread(target=talk, daemon=True)
    talker.start()
    data, how = wait_eof(quiet, 10 * build.slowness)
    waited = time.monotonic() - t0
    talker.join(30)
    assert how in ("eof", "reset") and data == b"", f"quiet client: {how} {data!r}"
    assert 0.9 <= waited <= 1.0 + 3 * build.slowness, (
        f"quiet client closed after {waited:.2f} s with --idle-timeout 1")
    assert not talker.is_alive() and not busy_result, f"busy client: {busy_result}"
    assert exchange_on(busy, b"still busy") == b"still busy"
    quiet.close()
    busy.close()
    srv.stop()
    assert_clean(srv)


@only_builds("linux")
def test_admin_port_answers_with_descriptors_above_fd_setsize(server, build):
    """With more than 1024 clients connected the admin connection's descriptor is above
    FD_SETSIZE: the admin port must still answer (it once waited with select(), whose
    fd_set cannot hold such a descriptor) and the server must stay sound."""
    srv = server(threads="1")
    clients = []
    try:
        for _ in range(1100):
            clients.append(connect(srv.addr, timeout=5))
        wait_until(lambda: srv.stats()["active"] >= 1100, 20, "1100 clients to be accepted")
        for _ in range(3):
            assert srv.stats()["active"] >= 1100
        clients[-1].sendall(b"still echoing")
        check_echo(b"still echoing", read_exactly(clients[-1], 13))
    finally:
        for c in clients:
            c.close()
    srv.stop()
    assert_clean(srv)


def read_exactly(sock, want, timeout=10):
    """Reads exactly `want` bytes (or what came before EOF / the deadline)."""
    got = bytearray()
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(want - len(got))
        if not chunk:
            break
        got += chunk
    return bytes(got)


def test_a_second_stop_signal_ends_the_drain_at_once(server, build):
    """Ctrl-C twice: the first starts a drain that would wait 60 s for an echo the client
    never reads; the second ends it, and the server exits 0 within seconds with its final
    stats line, every socket and context released (the owed echo is dropped)."""
    srv = server("--drain-timeout", 60000)
    hog = owed_an_echo(srv, build)
    try:
        srv.request_stop("sigint")
        # signals do not queue: the second must come after the first was handled
        wait_until(lambda: refuses_new_clients(srv), 5 * build.slowness,
                   "a new client refused after the first stop signal")
        assert srv.alive(), "the server was no longer draining: the test proves nothing"
        srv.request_stop("sigint")
        assert srv.wait_exit(15 * build.slowness) == 0, f"exit {srv.returncode}"
    finally:
        hog.close()
    srv.read_final()
    assert_clean(srv, bytes_equal=False)


@pytest.mark.parametrize("ending", ["drain_deadline", "idle_timeout"])
def test_a_client_that_never_reads_is_closed_and_freed_at_its_deadline(server, build, ending):
    """The server owes an echo to a client that never reads (a send stays pending):
    the drain deadline or the idle timeout still closes that connection and frees it
    (Wine 8.0 leaves such a send pending after closesocket until it is cancelled)."""
    if ending == "drain_deadline":
        srv = server("--drain-timeout", 1000)
    else:
        srv = server("--idle-timeout", 1)
    hog = owed_an_echo(srv, build)
    try:
        if ending == "drain_deadline":
            srv.request_stop("admin")
            assert srv.wait_exit(10 * build.slowness) == 0, f"exit {srv.returncode}"
            srv.read_final()
        else:
            wait_until(lambda: srv.stats()["ctx_free"] == 1, 10 * build.slowness,
                       "the idle connection's context freed")
            assert srv.stats()["active"] == 0
            srv.stop()
    finally:
        hog.close()
    assert_clean(srv, bytes_equal=False)
