"""Child processes of the benchmark: servers and load generators, always bounded in
time and always killed at the end (also on Ctrl-C or an exception)."""
import atexit
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"
BENCH_BIN = BUILD / "bench"
LOG_DIR = BENCH_BIN / "logs"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVER_CPU, LOAD_CPU = "0", "1"

_live = set()  # every child still running


def say(*args):
    print("[bench]", *args, file=sys.stderr, flush=True)


def kill_all():
    """Kills every child still running (the process group of each)."""
    for proc in list(_live):
        _kill(proc)


def _kill(proc, grace=3.0, sig=signal.SIGTERM):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
            proc.wait(grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    _live.discard(proc)


def install_cleanup():
    """Children die with us: at exit, on SIGTERM/SIGHUP and on Ctrl-C."""
    atexit.register(kill_all)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))


def spawn(cmd, cpu=None, env=None, **kw):
    """Starts cmd in its own process group, pinned to cpu with taskset."""
    if cpu is not None:
        cmd = ["taskset", "-c", cpu] + list(cmd)
    proc = subprocess.Popen([str(c) for c in cmd], env=env, start_new_session=True, **kw)
    _live.add(proc)
    return proc


# ---- /proc readings ---------------------------------------------------------

def cpu_seconds(pid):
    """utime + stime of a process (all its threads, dead ones included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def system_busy_seconds():
    """CPU seconds all CPUs have spent busy since boot (from /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return (sum(v[:8]) - idle) / CLK_TCK


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


# ---- servers ----------------------------------------------------------------

class Server:
    """A running echo server: start() reads its `listening on HOST:PORT` line."""

    LISTEN_RE = re.compile(rb"listening on (\S+):(\d+)")

    def __init__(self, name, cmd, env=None, start_timeout=20.0):
        self.name, self.cmd, self.env, self.start_timeout = name, cmd, env, start_timeout
        self.proc, self.port, self.extra_pids = None, None, []
        self.stdout_tail = []

    def start(self):
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        log = open(LOG_DIR / f"{self.name}.stderr", "wb")
        self.proc = spawn(self.cmd, cpu=SERVER_CPU, env=self.env,
                          stdout=subprocess.PIPE, stderr=log)
        log.close()
        self.port = self._read_port()
        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def _read_port(self):
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline, buf = time.monotonic() + self.start_timeout, b""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if sel.select(0.2):
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
                m = self.LISTEN_RE.search(buf)
                if m:
                    return int(m.group(2))
        self.stop()
        raise RuntimeError(f"{self.name}: no 'listening on' line "
                           f"(see {LOG_DIR / (self.name + '.stderr')})")

    def _drain(self):
        for line in self.proc.stdout:
            self.stdout_tail = (self.stdout_tail + [line.decode(errors="replace")])[-5:]

    @property
    def pid(self):
        return self.proc.pid

    def cpu_seconds(self):
        """CPU of the server and of helper processes (wineserver) that serve it."""
        return sum(cpu_seconds(p) for p in [self.pid] + self.extra_pids)

    def rss_kib(self):
        return rss_kib(self.pid)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc is not None:
            _kill(self.proc, grace=5.0)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# ---- load generator ---------------------------------------------------------

def load_cmd(client, port, conns, size, pipeline=1, duration=None, warmup=None,
             sources=None, threads=None):
    cmd = [client, "--load", "--connect", f"127.0.0.1:{port}", "--conns", conns,
           "--size", size, "--pipeline", pipeline, "--duration", duration, "--json"]
    if warmup:
        cmd += ["--warmup", warmup]
    if sources:
        cmd += ["--sources", sources]
    if threads:
        cmd += ["--threads", threads]
    return cmd


def start_load(cmd):
    return spawn(cmd, cpu=LOAD_CPU, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish_load(proc, timeout):
    """Waits for a load process; returns its JSON result (errors noted on failure)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        return {"errors": 1, "failure": f"load generator timed out after {timeout:.0f} s"}
    _live.discard(proc)
    result = parse_json(out)
    if result is None:
        return {"errors": 1, "failure": f"exit {proc.returncode}: "
                f"{err.decode(errors='replace').strip()[-300:]}"}
    if proc.returncode != 0:
        result["errors"] = max(1, int(result.get("errors") or 0))
        result.setdefault("failure", f"exit {proc.returncode}")
    return result


def parse_json(out):
    for line in reversed(out.decode(errors="replace").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


@contextmanager
def dma_latency_zero():
    """Holds /dev/cpu_dma_latency at 0 (idle CPUs stay awake); yields False if not writable."""
    try:
        f = open("/dev/cpu_dma_latency", "r+b", buffering=0)
        f.write((0).to_bytes(4, sys.byteorder))
    except OSError as e:
        say(f"cannot hold /dev/cpu_dma_latency at 0: {e}")
        yield False
        return
    try:
        yield True
    finally:
        f.close()
