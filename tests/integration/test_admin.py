"""The admin port under hostile clients: silent and slow-drip clients hold nobody up,
each client has a total deadline of about 1 s, an over-long line is answered before
the close, and the number of admin clients is bounded (the oldest is dropped); every
line of a client is answered, however many it writes at once, its last one even
without a newline."""

import socket
import statistics
import threading
import time

from echolib import assert_clean, connect, hypothesis_cases, wait_eof

DEADLINE = 1.0  # the admin port's per-client deadline (src/admin.c ADMIN_DEADLINE_MS)
CLIENTS_MAX = 32  # src/admin.c ADMIN_CLIENTS_MAX


class Drip:
    """An admin client that sends one byte every 300 ms and never a newline (load,
    not synchronisation) until the server closes it or `stop` is set."""

    def __init__(self, port):
        self.sock = connect(("127.0.0.1", port))
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            while self.sent < 30 and not self.stop.wait(0.3):
                self.sock.sendall(b"x")
                self.sent += 1
        except OSError:
            pass

    def close(self):
        self.stop.set()
        self.thread.join(10)
        self.sock.close()


def hostile_clients(srv):
    """A silent admin client and a slow-drip one, connected (in the accept queue)
    before anything else, as a one-client-at-a-time admin port would serve them."""
    silent = connect(("127.0.0.1", srv.admin_port))
    drip = Drip(srv.admin_port)
    return silent, drip


def still_open(sock):
    """True when the server has not closed sock yet (no EOF, no reset, nothing to read)."""
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)
        return False  # EOF, or the error line that comes before the close
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def test_hostile_admin_clients_do_not_delay_stats(server, build):
    srv = server()
    silent, drip = hostile_clients(srv)
    try:
        t0 = time.monotonic()
        rtts = []
        for _ in range(5):
            t = time.monotonic()
            st = srv.stats()
            rtts.append(time.monotonic() - t)
            assert "accepted" in st, st
        elapsed = time.monotonic() - t0
        # the round trips happened while both hostile clients were still being served
        assert elapsed < DEADLINE and still_open(silent), (
            f"the stats round trips took {elapsed:.2f} s in all: not measured while the"
            f" hostile clients were connected ({rtts})")
        assert statistics.median(rtts) <= 0.1 and max(rtts) <= 0.1 * build.slowness, (
            f"stats round trips with a silent and a drip admin client: "
            f"{[round(r * 1000) for r in rtts]} ms")
    finally:
        silent.close()
        drip.close()
    srv.stop()


def test_hostile_admin_clients_do_not_delay_shutdown(server, build):
    srv = server()
    silent, drip = hostile_clients(srv)
    try:
        t = time.monotonic()
        assert srv.admin("shutdown") == "ok shutting down"
        rtt = time.monotonic() - t
        assert rtt <= 0.1 * build.slowness, f"shutdown answered after {rtt * 1000:.0f} ms"
        rc = srv.wait_exit(timeout=DEADLINE + 4 * build.slowness)
        assert rc == 0, f"exit {rc}"
        waited = srv.t_exit - t
        assert waited < DEADLINE, (
            f"the server exited {waited:.2f} s after 'shutdown': the hostile admin clients"
            f" held it until their deadline or beyond")
        assert any(l.startswith("stats ") for l in srv.out.lines), srv.out.text()
    finally:
        silent.close()
        drip.close()


def test_admin_client_past_its_deadline_is_closed(server, build):
    """A silent client and a drip client are both closed about 1 s after connecting,
    whatever they send, with a one-line reason; the admin port serves on."""
    srv = server()
    silent, drip = hostile_clients(srv)
    t0 = time.monotonic()
    try:
        data, how = wait_eof(silent, DEADLINE + 5 * build.slowness)
        waited = time.monotonic() - t0
        assert how == "eof" and data == b"error admin deadline passed\n", (how, data)
        assert DEADLINE - 0.1 <= waited <= DEADLINE + 1.0 * build.slowness, (
            f"silent admin client closed after {waited:.2f} s")
        data, how = wait_eof(drip.sock, DEADLINE + 5 * build.slowness)
        assert how in ("eof", "reset"), (how, data)
        assert data in (b"", b"error admin deadline passed\n"), data
        assert drip.sent < 10, f"the drip client sent {drip.sent} bytes before it was closed"
    finally:
        silent.close()
        drip.close()
    assert srv.admin("ping") == "pong"
    srv.stop()


def test_admin_over_long_line_gets_an_error(server, build):
    srv = server()
    with connect(("127.0.0.1", srv.admin_port)) as s:
        s.sendall(b"a" * 300)
        data, how = wait_eof(s, 5 * build.slowness)
    assert how == "eof" and data == b"error line too long\n", (how, data)
    with connect(("127.0.0.1", srv.admin_port)) as s:
        s.sendall(b"ping\nping\r\n" + b"b" * 255 + b"\n")
        s.shutdown(socket.SHUT_WR)
        data, how = wait_eof(s, 5 * build.slowness)
    assert how == "eof" and data.startswith(b"pong\npong\nerror unknown command 'bbb"), data
    srv.stop()


def answer_lines(sock, n, timeout):
    """The lines the admin port sent on sock until n came, EOF, or timeout s passed."""
    got = b""
    deadline = time.monotonic() + timeout
    while got.count(b"\n") < n and time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            data = sock.recv(65536)
        except socket.timeout:
            break
        if not data:
            break
        got += data
    return got.decode().splitlines()


def test_admin_answers_every_pipelined_command_before_the_deadline(server, build):
    """A client that writes many commands at once gets every answer, in order, though
    they do not fit the reply queue together: the lines that waited for room are
    answered once it drains, without waiting for more input from the client."""
    srv = server()
    for half_close in (False, True):
        with connect(("127.0.0.1", srv.admin_port)) as s:
            s.sendall(b"stats\n" * 100 + b"ping\n")
            if half_close:
                s.shutdown(socket.SHUT_WR)
            lines = answer_lines(s, 101, DEADLINE)
        assert len(lines) == 101 and lines[-1] == "pong", (
            f"half_close={half_close}: {len(lines)} of 101 answers, the last {lines[-1:]}")
        assert all(l.startswith("stats accepted=") for l in lines[:100]), lines[:3]
    srv.stop()


def test_admin_answers_a_last_line_without_newline_at_eof(server, build):
    """`printf stats | nc`: the line the client ended with EOF instead of a newline is
    answered like any other."""
    srv = server()
    with connect(("127.0.0.1", srv.admin_port)) as s:
        s.sendall(b"ping\nstats")
        s.shutdown(socket.SHUT_WR)
        data, how = wait_eof(s, 5 * build.slowness)
    assert how == "eof", (how, data)
    assert data.startswith(b"pong\nstats accepted=") and data.endswith(b"\n"), data
    assert data.count(b"\n") == 2, data
    srv.stop()


def test_admin_clients_are_bounded_and_the_oldest_is_dropped(server, build):
    srv = server()
    clients = [connect(("127.0.0.1", srv.admin_port)) for _ in range(CLIENTS_MAX + 1)]
    try:
        data, how = wait_eof(clients[0], DEADLINE + 5 * build.slowness)
        assert how == "eof" and data == b"error too many admin clients\n", (how, data)
        assert all(still_open(c) for c in clients[2:]), "only the oldest clients are dropped"
    finally:
        for c in clients:
            c.close()
    assert srv.admin("ping") == "pong"
    srv.stop()


def test_admin_sockets_are_counted_and_every_one_is_closed(server, build):
    """Every admin client is one socket more in admin_sockets_opened, counted apart from
    the data port's: the n-th stats reply counts the admin listener, its descriptor
    reserve and n clients, and after the stop every one of them was closed."""
    srv = server()
    data0 = srv.stats()
    assert data0["admin_sockets_opened"] == 3, f"listener + reserve + this client: {data0}"
    for n in range(2, 6):
        st = srv.stats()
        assert st["admin_sockets_opened"] == 2 + n, f"stats query {n}: {st}"
        assert st["admin_sockets_closed"] == n - 1, f"the {n - 1} clients before: {st}"
        assert (st["sockets_opened"], st["sockets_closed"]) == \
            (data0["sockets_opened"], data0["sockets_closed"]), "admin sockets counted as data"
    final = srv.stop()  # through the admin port: one client more
    assert final["admin_sockets_opened"] == 2 + 5 + 1, srv.final_line
    assert final["admin_sockets_closed"] == final["admin_sockets_opened"], srv.final_line


COMMANDS = {"ping": "pong", "stats": "stats accepted=", "bogus": "error unknown command 'bogus'",
            "": "error unknown command ''"}


def test_property_any_commands_any_chunking_get_every_answer_in_order(server, build, base_seed):
    """Hypothesis: any list of commands (unknown and empty ones too), `\\n` or `\\r\\n`
    ended, cut into any writes, gets one answer per line, in order, within the deadline;
    with a half-close the last line may lack its newline. Seeded from --seed."""
    from hypothesis import given
    from hypothesis import strategies as st

    srv = server()

    @hypothesis_cases(base_seed, 25)
    @given(lines=st.lists(st.tuples(st.sampled_from(sorted(COMMANDS)), st.booleans()),
                          min_size=1, max_size=60),
           cuts=st.lists(st.integers(min_value=1, max_value=64), max_size=30),
           half_close=st.booleans(), unterminated=st.booleans())
    def prop(lines, cuts, half_close, unterminated):
        text = b"".join(cmd.encode() + (b"\r\n" if crlf else b"\n") for cmd, crlf in lines)
        if half_close and unterminated and lines[-1][0]:
            text = text.rstrip(b"\r\n")  # `printf stats | nc`: EOF ends the last line
        chunks, at = [], 0
        for n in cuts:
            chunks.append(text[at:at + n])
            at += n
        chunks.append(text[at:])
        with connect(("127.0.0.1", srv.admin_port)) as s:
            for c in chunks:
                if c:
                    s.sendall(c)
            if half_close:
                s.shutdown(socket.SHUT_WR)
            answers = answer_lines(s, len(lines), DEADLINE)
        assert len(answers) == len(lines), (
            f"{len(answers)} answers to {len(lines)} lines, the last {answers[-2:]}")
        for (cmd, _), answer in zip(lines, answers):
            assert answer.startswith(COMMANDS[cmd]), (cmd, answer)

    prop()
    assert srv.admin("ping") == "pong"
    srv.stop()
    assert_clean(srv)
