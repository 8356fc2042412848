"""echolib - the integration suite's helpers: builds, the server under test, sockets.

Nothing here sleeps to synchronise: every wait is on a pipe, a socket or a polled
condition, each bounded by a deadline.
"""

import errno
import os
import random
import re
import selectors
import shlex
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(os.environ.get("ECHOPORT_ROOT") or Path(__file__).resolve().parents[2])
WINEPREFIX = Path(os.environ.get("ECHOPORT_WINEPREFIX") or ROOT / "build" / "wineprefix")
# The suite runs on a Linux host (the Windows build under Wine) or natively on Windows
# (the GitHub windows-latest job), where POSIX-only calls have a Windows counterpart.
NATIVE_WINDOWS = os.name == "nt"
# The interpreter a replay line names: on Linux Debian's (the python3 first on PATH may
# lack pytest), natively on Windows the one on PATH (MSYS2's in the workflow).
REPLAY_PYTHON = "python" if NATIVE_WINDOWS else "/usr/bin/python3"

KiB = 1024
MiB = 1024 * 1024

STATS_RE = re.compile(r"^stats( [a-z_0-9]+=\d+)+$")
LISTEN_RE = re.compile(r"^listening on (127\.0\.0\.1|\[::1\]|[^\s]+):(\d+)$")
ADMIN_RE = re.compile(r"^admin on 127\.0\.0\.1:(\d+)$")


# What the running test started (servers, CLI runs): the harness resets it per test,
# kills what is left at teardown and prints each one's command in the replay lines.
started = []


class EchoportError(AssertionError):
    """A failed expectation about the server (an assertion: the test fails)."""


# --------------------------------------------------------------------------- builds

class Build:
    """One build of echoport: where its binaries are and how to run them."""

    def __init__(self, name, bindir, wrapper=()):
        self.name = name
        self.wrapper = list(wrapper)  # e.g. valgrind: prefixes the server, never the client
        self.bindir = Path(bindir)
        exe = ".exe" if name == "windows" else ""
        self.server_path = self.bindir / f"echoport{exe}"
        self.client_path = self.bindir / f"echoport-client{exe}"
        self.wine = name == "windows" and not NATIVE_WINDOWS
        # Wine runs each process through a loader and the prefix's wineserver:
        # slower starts, slower bulk transfer; workloads are sized down by `scale`.
        self.scale = 1.0
        self.slowness = 2.0 if self.wine else 4.0 if self.wrapper else 1.0

    def hint(self):
        return (f"build it first: (cd {ROOT} && cmake --preset {self.name} -DEP_BUILD_TESTS=OFF"
                f" && cmake --build --preset {self.name})")

    def require(self, client=False):
        path = self.client_path if client else self.server_path
        if not path.is_file():
            pytest.fail(f"the {self.name} build is missing: {path} does not exist; {self.hint()}",
                        pytrace=False)

    def env(self, extra=None):
        env = dict(os.environ)
        env.pop("ECHOPORT_FAULTS", None)
        if self.wine:
            env.update(WINEDEBUG="-all", WINEPREFIX=str(WINEPREFIX),
                       WINEDLLOVERRIDES="winedbg.exe=d")
        env.update(extra or {})
        return env

    def argv(self, client=False):
        path = str(self.client_path if client else self.server_path)
        if self.wine:
            return ["wine", path]
        return [path] if client else self.wrapper + [path]

    def display_env(self, extra=None):
        """The environment variables a replay needs, as shell assignments."""
        parts = []
        if self.wine:
            parts += ["WINEDEBUG=-all", f"WINEPREFIX={rel(WINEPREFIX)}"]
        for k, v in (extra or {}).items():
            parts.append(f"{k}={shlex.quote(v)}")
        return parts


def rel(path):
    """path relative to the repository root when inside it (for replay lines)."""
    try:
        return str(Path(path).relative_to(ROOT))
    except ValueError:
        return str(path)


def command_line(build, args, env_extra=None, client=False, launcher=()):
    """The shell command that runs build's server (or client) with args, from ROOT."""
    argv = list(launcher) + build.argv(client)
    argv = argv[:-1] + [rel(argv[-1])]
    return " ".join(build.display_env(env_extra) + [shlex.join(argv + [str(a) for a in args])])


# --------------------------------------------------------------------------- output lines

class LineReader:
    """Collects a pipe's lines on a daemon thread; waiters block on a condition."""

    def __init__(self, pipe, name):
        self.lines = []
        self.closed = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, args=(pipe,), name=name, daemon=True)
        self.thread.start()

    def _run(self, pipe):
        try:
            for raw in iter(pipe.readline, b""):
                with self.cond:
                    self.lines.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
                    self.cond.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            with self.cond:
                self.closed = True
                self.cond.notify_all()

    def wait_for(self, pattern, deadline, alive=lambda: True, start=0):
        """The first match of pattern among lines[start:], waiting until deadline."""
        rx = re.compile(pattern)
        with self.cond:
            seen = start
            while True:
                for i in range(seen, len(self.lines)):
                    m = rx.search(self.lines[i])
                    if m:
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or self.closed or not alive():
                    return None
                self.cond.wait(min(left, 0.1))

    def text(self, last=60):
        with self.cond:
            return "\n".join(self.lines[-last:])


# --------------------------------------------------------------------------- the server

_prctl = None
if not NATIVE_WINDOWS:
    try:
        import ctypes
        _prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        pass


def _die_with_parent():
    """In the child before exec: SIGKILL it when the test process dies, so a killed
    pytest (a CI timeout, Ctrl-C twice) leaves no server behind. Prepared at import:
    nothing here may take a lock another thread held at fork."""
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _own_group():
    """Popen options that start the server in a process group of its own, so a stop
    signal reaches it alone: a new session on POSIX (dying with the test process on
    Linux); on Windows a new console process group, which Ctrl-Break can address."""
    if NATIVE_WINDOWS:
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True, "preexec_fn": _die_with_parent}


def parse_stats(line):
    if not line or not STATS_RE.match(line.strip()):
        raise EchoportError(f"not a stats line: {line!r}")
    return {k: int(v) for k, v in (kv.split("=", 1) for kv in line.split()[1:])}


class Server:
    """A running echoport: host, port, admin(), stats(), stop()."""

    has_stats = True

    def __init__(self, build, args, env_extra=None, start_timeout=None, launcher=()):
        """launcher: a command that execs the server (e.g. prlimit --nofile=64:64)."""
        build.require()
        self.build = build
        self.args = [str(a) for a in args]
        self.env_extra = dict(env_extra or {})
        self.cmdline = command_line(build, self.args, self.env_extra, launcher=launcher)
        self.final = None
        self.final_line = None
        self.returncode = None
        self.host = self.port = self.admin_port = None
        self.proc = subprocess.Popen(
            list(launcher) + build.argv() + self.args, cwd=ROOT, env=build.env(self.env_extra),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            **_own_group())
        self.pid = self.proc.pid
        self.t_start = time.monotonic()
        self.t_stop = self.t_exit = None
        # under Wine: the prefix's wineserver now, to tell if someone restarted it
        self.wineserver = wineserver_pid() if build.wine else None
        started.append(self)
        self.out = LineReader(self.proc.stdout, f"stdout-{self.pid}")
        self.err = LineReader(self.proc.stderr, f"stderr-{self.pid}")
        timeout = start_timeout or 15 * build.slowness
        deadline = time.monotonic() + timeout
        m = self.out.wait_for(LISTEN_RE.pattern, deadline, self.alive)
        if not m:
            self._fail_start(f"no 'listening on HOST:PORT' line on stdout within {timeout:.0f} s")
        self.host = m.group(1).strip("[]")
        self.port = int(m.group(2))
        if "--admin-port" in self.args:
            m = self.err.wait_for(ADMIN_RE.pattern, deadline, self.alive)
            if not m:
                self._fail_start("no 'admin on 127.0.0.1:PORT' line on stderr")
            self.admin_port = int(m.group(1))

    @property
    def addr(self):
        return (self.host, self.port)

    def alive(self):
        return self.proc.poll() is None

    def _fail_start(self, why):
        exited = self.proc.poll() is not None
        self.kill()
        e = EchoportError(f"{self.build.name} server did not start: {why}\n"
                          f"exit code: {self.proc.returncode}\n"
                          f"stdout:\n{self.out.text()}\nstderr:\n{self.err.text()}")
        # every exit of echoport before it listens says why on stderr: one that says
        # nothing never ran our code (seen once under Wine: exit 1, no output)
        e.silent_exit = exited and not self.out.text() and not self.err.text()
        raise e

    # admin port ---------------------------------------------------------------
    def admin(self, command, timeout=None):
        """Sends one admin command line, returns the reply line. Half-closes and
        reads to EOF: when this returns, the server has closed its admin socket
        (so descriptor counts taken afterwards do not include it)."""
        assert self.admin_port, "this server was started without --admin-port"
        timeout = timeout or 10 * self.build.slowness
        deadline = time.monotonic() + timeout
        with socket.create_connection(("127.0.0.1", self.admin_port), timeout=timeout) as s:
            s.sendall(command.encode() + b"\n")
            s.shutdown(socket.SHUT_WR)
            buf = b""
            while True:
                s.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    chunk = s.recv(4096)
                except socket.timeout:
                    raise EchoportError(f"admin '{command}': no reply and EOF within"
                                        f" {timeout:.0f} s (got {buf!r})")
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                buf += chunk
        line = buf.split(b"\n", 1)[0].decode("utf-8", "replace").strip()
        if not line:
            raise EchoportError(f"admin '{command}': connection closed without a reply")
        return line

    def stats(self):
        return parse_stats(self.admin("stats"))

    # stopping -----------------------------------------------------------------
    def request_stop(self, via="admin"):
        self.t_stop = time.monotonic()
        if via == "admin":
            reply = self.admin("shutdown")
            if reply != "ok shutting down":
                raise EchoportError(f"admin 'shutdown' replied {reply!r}")
        elif via in ("sigint", "signal"):
            # natively on Windows: Ctrl-Break, the console event a process group of its
            # own receives (Ctrl-C is disabled in one); Wine turns SIGINT into Ctrl-C
            os.kill(self.pid, signal.CTRL_BREAK_EVENT if NATIVE_WINDOWS else signal.SIGINT)
        elif via == "sigterm":
            os.kill(self.pid, signal.SIGTERM)
        else:
            raise ValueError(via)

    def wait_exit(self, timeout=None):
        timeout = timeout or 20 * self.build.slowness
        try:
            self.returncode = self.proc.wait(timeout)
            self.t_exit = time.monotonic()
        except subprocess.TimeoutExpired:
            self.kill()
            raise EchoportError(f"the server did not exit within {timeout:.0f} s of a stop request;"
                                f" killed.\nstdout:\n{self.out.text()}\nstderr:\n{self.err.text()}")
        # the readers end at EOF; under Wine a helper may hold the pipe: bounded join
        self.out.thread.join(5)
        self.err.thread.join(1)
        return self.returncode

    def stop(self, via="admin", expect_rc=0, timeout=None):
        """Graceful stop; returns the parsed final stats line (None when expect_rc != 0)."""
        if not self.alive():
            raise EchoportError(f"the server died before it was stopped (exit {self.proc.poll()})\n"
                                f"stdout:\n{self.out.text()}\nstderr:\n{self.err.text()}")
        self.request_stop(via)
        rc = self.wait_exit(timeout)
        if expect_rc is not None and rc != expect_rc:
            raise EchoportError(f"the server exited {rc} after a stop via {via}, expected"
                                f" {expect_rc}\nstdout:\n{self.out.text()}\nstderr:\n{self.err.text()}")
        if rc == 0:
            self.read_final()
        return self.final

    def read_final(self):
        """After a clean exit: the final stats line, parsed into self.final (and returned)."""
        finals = [l for l in self.out.lines if l.startswith("stats ")]
        if not finals:
            raise EchoportError(f"no final 'stats ...' line on stdout\nstdout:\n"
                                f"{self.out.text()}\nstderr:\n{self.err.text()}")
        self.final_line = finals[-1]
        self.final = parse_stats(self.final_line)
        return self.final

    def kill(self):
        if self.proc.poll() is None:
            if NATIVE_WINDOWS:
                self.proc.kill()  # TerminateProcess
            else:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except OSError:
                    self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        for p in (self.proc.stdout, self.proc.stderr):
            pass  # left to the reader threads, which end at EOF

    def describe(self):
        times = f"started {time.monotonic() - self.t_start:.1f} s ago"
        if self.t_stop:
            times += f", stop requested at +{self.t_stop - self.t_start:.1f} s"
        if self.t_exit:
            times += f", exited at +{self.t_exit - self.t_start:.1f} s"
        note = ""
        if self.build.wine:
            now = wineserver_pid()
            if now != self.wineserver:
                note = (f"\n  NOTE: the prefix's wineserver changed during the test (pid"
                        f" {self.wineserver} -> {now}): something else ran 'wineserver -k'"
                        f" on {rel(WINEPREFIX)} and killed this server")
        return (f"server: {self.cmdline}\n  pid {self.pid}, exit {self.proc.poll()}, {times}"
                + (f", final: {self.final_line}" if self.final_line else "") + note
                + "\n  stderr (last lines):\n    "
                + "\n    ".join(self.err.text(25).splitlines() or ["(empty)"]))


class Target:
    """Conformance mode: someone else's running echo server; no stats, no control."""

    has_stats = False
    admin_port = None
    pid = None
    final = None
    cmdline = None

    def __init__(self, spec):
        host, _, port = spec.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)

    @property
    def addr(self):
        return (self.host, self.port)

    def stop(self, *a, **k):
        return None

    def kill(self):
        pass

    def describe(self):
        return f"target: {self.host}:{self.port}"


def check_clean(final, stats_line="", bytes_equal=True, faults_possible=False):
    """The equalities every clean shutdown must show; returns a list of violations."""
    if final is None:
        return []
    bad = []
    for a, b in (("sockets_opened", "sockets_closed"), ("ctx_alloc", "ctx_free"),
                 ("accepted", "closed"), ("admin_sockets_opened", "admin_sockets_closed")):
        if final.get(a) != final.get(b):
            bad.append(f"{a}={final.get(a)} != {b}={final.get(b)}")
    if final.get("active") != 0:
        bad.append(f"active={final.get('active')} != 0")
    if bytes_equal and final.get("bytes_in") != final.get("bytes_out"):
        bad.append(f"bytes_in={final.get('bytes_in')} != bytes_out={final.get('bytes_out')}")
    if not faults_possible and final.get("faults", 0) != 0:
        bad.append(f"faults={final.get('faults')} with no fault plan")
    return bad


def assert_clean(srv, bytes_equal=True, faults_possible=False):
    if srv.final is None:
        return
    bad = check_clean(srv.final, bytes_equal=bytes_equal, faults_possible=faults_possible)
    if bad:
        raise EchoportError("final stats violate the clean-shutdown equalities: "
                            + "; ".join(bad) + f"\nfinal line: {srv.final_line}")


class CliRun:
    """A command run to completion, for the replay lines."""

    def __init__(self, cmdline):
        self.cmdline = cmdline

    def kill(self):
        pass

    def describe(self):
        return f"ran: {self.cmdline}"


def run_cli(build, args, env_extra=None, timeout=None, client=False):
    """Runs the server (or client) to completion; (returncode, stdout, stderr)."""
    build.require(client)
    timeout = timeout or 30 * build.slowness
    started.append(CliRun(command_line(build, args, env_extra, client)))
    p = subprocess.run(build.argv(client) + [str(a) for a in args], cwd=ROOT,
                       env=build.env(env_extra), stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=timeout)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


# --------------------------------------------------------------------------- payloads

def payload(seed, n):
    return random.Random(seed).randbytes(n) if n else b""


def hypothesis_cases(base_seed, examples):
    """Decorator for a Hypothesis property of the suite: `examples` cases drawn from
    --seed (printed first, so a failure replays), no example database, no deadline."""
    from hypothesis import HealthCheck, seed, settings
    print(f"hypothesis: seed={base_seed} max_examples={examples} (replay with --seed {base_seed})")

    def apply(prop):
        return seed(base_seed)(settings(max_examples=examples, deadline=None, database=None,
                                        print_blob=True,
                                        suppress_health_check=list(HealthCheck))(prop))
    return apply


def mix_seed(*parts):
    """A stable 63-bit seed from any printable parts (not Python's salted hash)."""
    h = 1469598103934665603
    for ch in repr(parts).encode():
        h = ((h ^ ch) * 1099511628211) & ((1 << 64) - 1)
    return h >> 1


def prefix_problem(sent, got):
    """None when got is a prefix of sent, else a description of the first difference."""
    if len(got) > len(sent):
        return f"received {len(got)} bytes, more than the {len(sent)} sent"
    if sent[:len(got)] == got:
        return None
    i = next(i for i in range(len(got)) if got[i] != sent[i])
    return (f"byte {i} differs: sent {sent[i:i + 8].hex()} got {got[i:i + 8].hex()}"
            f" ({len(got)} of {len(sent)} bytes received)")


def check_echo(sent, got, what="echo"):
    if got == sent:
        return
    why = prefix_problem(sent, got) or f"only {len(got)} of {len(sent)} bytes came back"
    raise EchoportError(f"{what}: {why}")


# --------------------------------------------------------------------------- waiting

def wait_until(pred, timeout, what, interval=0.02):
    """Polls pred() until it is truthy or timeout passes (a bounded condition wait)."""
    deadline = time.monotonic() + timeout
    event = threading.Event()
    last = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise EchoportError(f"timed out after {timeout:.1f} s waiting for {what}")
        event.wait(interval)
        interval = min(interval * 1.5, 0.25)


def wait_eof(sock, timeout):
    """Reads until EOF or reset; returns (bytes read, 'eof'|'reset'|'timeout')."""
    deadline = time.monotonic() + timeout
    data = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(data), "timeout"
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return bytes(data), "timeout"
        except (ConnectionResetError, ConnectionAbortedError):
            return bytes(data), "reset"
        if not chunk:
            return bytes(data), "eof"
        data += chunk


# --------------------------------------------------------------------------- sockets

def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def connect(addr, timeout=10.0):
    s = socket.socket(family_of(addr[0]), socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(addr)
    except BaseException:
        s.close()
        raise
    return s


def abort(sock):
    """Closes with SO_LINGER 0: the peer gets a RST."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class Session:
    """One client's stream, driven by run_sessions: writes payload in `chunks`,
    reads the echo back, optionally half-closes after the last write."""

    def __init__(self, addr, data, chunks=None, half_close=False, lag=0, name="", rcvbuf=None):
        self.addr = addr
        self.rcvbuf = rcvbuf     # SO_RCVBUF before connecting: a small one backs the echo up
        self.data = data
        self.chunks = list(chunks) if chunks else None
        self.half_close = half_close
        self.lag = lag           # bytes written ahead before reading starts
        self.name = name
        self.sock = None
        self.sent = 0
        self.got = bytearray()
        self.eof = False
        self.error = None
        self.connected = False
        self.shut = False
        self.done = False
        self.stalled_since = None

    def want_read(self):
        if not self.connected:
            return False
        return (self.sent - len(self.got) >= self.lag or self.sent == len(self.data)
                or self.stalled_since is not None)

    def want_write(self):
        return (not self.connected) or self.sent < len(self.data) or (
            self.half_close and not self.shut)

    def next_chunk(self):
        if self.chunks:
            size = self.chunks[0]
            return max(1, size)
        return 256 * KiB

    def describe(self):
        return (f"{self.name or 'client'}: sent {self.sent}/{len(self.data)}, got {len(self.got)},"
                f" eof={self.eof}, error={self.error}")


def run_sessions(sessions, timeout, connect_timeout=None):
    """Drives every session to completion on one selector; bounded by timeout.
    A session ends when its whole echo is back (and EOF, when half-closing),
    or at EOF / an error; raises EchoportError on timeout."""
    sel = selectors.DefaultSelector()
    deadline = time.monotonic() + timeout
    open_ = []
    try:
        for s in sessions:
            sock = socket.socket(family_of(s.addr[0]), socket.SOCK_STREAM)
            if s.rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, s.rcvbuf)
            sock.setblocking(False)
            s.sock = sock
            rc = sock.connect_ex(s.addr)
            if rc not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
                s.error = os.strerror(rc)
                s.done = True
                sock.close()
                continue
            open_.append(s)
            sel.register(sock, selectors.EVENT_WRITE, s)
        live = [s for s in open_ if not s.done]
        while live:
            now = time.monotonic()
            if now >= deadline:
                stuck = "\n  ".join(s.describe() for s in live[:10])
                raise EchoportError(f"{len(live)} of {len(sessions)} client streams unfinished after"
                                    f" {timeout:.0f} s:\n  {stuck}")
            for s in live:
                ev = (selectors.EVENT_READ if s.want_read() else 0) | (
                    selectors.EVENT_WRITE if s.want_write() else 0)
                sel.modify(s.sock, ev or selectors.EVENT_READ, s)
            events = sel.select(min(0.25, deadline - now))
            now = time.monotonic()
            if not events:
                # nothing moved: let lagging readers read (they may be why writes stall)
                for s in live:
                    if s.stalled_since is None and s.want_write():
                        s.stalled_since = now
            for key, mask in events:
                s = key.data
                if s.done:
                    continue
                try:
                    if mask & selectors.EVENT_WRITE:
                        _on_writable(s)
                    if mask & selectors.EVENT_READ and s.connected:
                        _on_readable(s)
                except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError) as e:
                    s.error = type(e).__name__
                    s.done = True
                except OSError as e:
                    s.error = f"{type(e).__name__}: {e}"
                    s.done = True
                if s.done:
                    sel.unregister(s.sock)
                    s.sock.close()
            live = [s for s in live if not s.done]
    finally:
        for s in sessions:
            if s.sock is not None and s.sock.fileno() >= 0:
                try:
                    sel.unregister(s.sock)
                except (KeyError, ValueError):
                    pass
                s.sock.close()
        sel.close()
    return sessions


def _on_writable(s):
    if not s.connected:
        err = s.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            s.error = os.strerror(err)
            s.done = True
            return
        s.connected = True
        if not s.data and s.half_close:
            s.sock.shutdown(socket.SHUT_WR)
            s.shut = True
        elif not s.data and not s.half_close:
            s.done = True
        return
    while s.sent < len(s.data):
        n = min(s.next_chunk(), len(s.data) - s.sent)
        try:
            k = s.sock.send(memoryview(s.data)[s.sent:s.sent + n])
        except BlockingIOError:
            return
        s.stalled_since = None
        s.sent += k
        if s.chunks:
            if k >= s.chunks[0]:
                s.chunks.pop(0)
            else:
                s.chunks[0] -= k
            # one write per writable event when chunking: the point is many small writes
            return
    if s.half_close and not s.shut:
        s.sock.shutdown(socket.SHUT_WR)
        s.shut = True


def _on_readable(s):
    for _ in range(16):
        try:
            chunk = s.sock.recv(256 * KiB)
        except BlockingIOError:
            return
        if not chunk:
            s.eof = True
            s.done = True
            return
        start = len(s.got)
        s.got += chunk
        if s.got[start:] != s.data[start:start + len(chunk)]:
            s.error = "echo differs from what was sent"  # no point waiting for more
            s.done = True
            return
        if len(s.got) == len(s.data) and not s.half_close and s.sent == len(s.data):
            s.done = True
            return


def echo(addr, data, chunks=None, half_close=False, lag=0, timeout=30.0):
    """One client: sends data, returns what came back (EOF required when half_close)."""
    (s,) = run_sessions([Session(addr, data, chunks, half_close, lag)], timeout)
    return s


def exchange_on(sock, data, timeout=10.0):
    """Sends data on an open socket and reads len(data) back (less if the peer closes)."""
    sock.sendall(data)
    got = bytearray()
    deadline = time.monotonic() + timeout
    while len(got) < len(data):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return bytes(got)


def exchange(addr, data, timeout=10.0):
    """Blocking one-shot echo for small messages on a fresh connection."""
    with connect(addr, timeout) as s:
        return exchange_on(s, data, timeout)


def stats_if(srv, pred):
    """The stats if pred(stats) holds, else None: a wait_until predicate."""
    st = srv.stats()
    return st if pred(st) else None


def quiescent(srv, base):
    """The stats once no connection is active and the server holds exactly `base`
    sockets (opened - closed), else None: a wait_until predicate."""
    return stats_if(srv, lambda st: st["active"] == 0
                    and st["sockets_opened"] - st["sockets_closed"] == base)


def settle(srv, build, held0=None):
    """Waits until no connection is left (and, given held0, the socket books are back
    at that baseline); returns the stats then."""
    if held0 is None:
        return wait_until(lambda: stats_if(srv, lambda st: st["active"] == 0),
                          10 * build.slowness, "active == 0")
    return wait_until(lambda: quiescent(srv, held0), 20 * build.slowness,
                      f"active == 0 and sockets_opened - sockets_closed == {held0}")


def never_reader(addr):
    """A client that never reads: a 4 KiB receive window, and sends until the kernel
    takes no more (the echo backs up into the server, which then owes it). Its socket,
    non-blocking."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * KiB)  # before the handshake
    s.connect(addr)
    s.setblocking(False)
    try:
        for _ in range(1024):  # 64 MiB at most; blocked after a few MiB
            s.send(b"x" * 64 * KiB)
    except BlockingIOError:
        pass
    return s


def served(addr, attempts=30, timeout=5.0, size=64):
    """True once a fresh client gets a small message echoed whole, trying up to
    `attempts` connections (under a fault plan some may be cut)."""
    msg = payload(mix_seed("served", attempts, size), size)
    errors = []
    for i in range(attempts):
        try:
            if exchange(addr, msg, timeout) == msg:
                return True, errors
            errors.append(f"attempt {i}: short echo")
        except (OSError, socket.timeout) as e:
            errors.append(f"attempt {i}: {type(e).__name__}: {e}")
    return False, errors


# Under Wine a socket is a descriptor of the prefix's wineserver. Its count settles
# back to the baseline exactly in practice; allow this many for descriptors Wine
# itself may open lazily (a thread's request pipes, a cached file) meanwhile.
WINE_FD_SLACK = 4


def wineserver_pid():
    """The pid of this prefix's wineserver (its cwd is /tmp/.wine-UID/server-DEV-INO)."""
    import psutil
    st = os.stat(WINEPREFIX)
    tag = f"server-{st.st_dev:x}-{st.st_ino:x}"
    for p in psutil.process_iter(["name"]):
        if "wineserver" not in (p.info["name"] or ""):
            continue
        try:
            if os.path.basename(p.cwd()) == tag:
                return p.pid
        except (psutil.Error, OSError):
            continue
    return None


def has_ipv6_loopback():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def only_builds(*names):
    """Decorator: run a test on these builds only (the other platform lacks the feature)."""
    def deco(fn):
        fn.ep_builds = names
        return fn
    return deco


# --------------------------------------------------------------------------- process probes

def cpu_seconds(pid):
    """The CPU time (utime + stime, /proc/PID/stat) a process has used so far."""
    if NATIVE_WINDOWS:
        import psutil
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid):
    """A process's resident set size (VmRSS of /proc/PID/status)."""
    if NATIVE_WINDOWS:
        import psutil
        return psutil.Process(pid).memory_info().rss
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * KiB
    raise EchoportError(f"no VmRSS in /proc/{pid}/status")


def wait_eof_all(socks, timeout):
    """Waits on every socket at once for EOF or a reset, reading and keeping what
    arrives; returns [(bytes read, 'eof'|'reset'|'timeout', time.monotonic() then)]."""
    sel = selectors.DefaultSelector()
    deadline = time.monotonic() + timeout
    got = [bytearray() for _ in socks]
    result = [None] * len(socks)
    for i, s in enumerate(socks):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in sel.select(min(left, 0.25)):
                i = key.data
                try:
                    chunk = socks[i].recv(65536)
                except BlockingIOError:
                    continue
                except (ConnectionResetError, ConnectionAbortedError):
                    chunk, how = None, "reset"
                else:
                    how = "eof"
                if chunk:
                    got[i] += chunk
                    continue
                result[i] = (bytes(got[i]), how, time.monotonic())
                sel.unregister(socks[i])
    finally:
        sel.close()
    return [r or (bytes(got[i]), "timeout", deadline) for i, r in enumerate(result)]
