"""The throughput/latency cells of DESIGN §5 and issue 6, in rounds (one per repetition):
each server in turn, each cell a warm-up run then a measured run; the server's CPU time
per echoed message from /proc/PID/stat; medians over the rounds."""
import resource
import statistics
import subprocess
import time
from contextlib import nullcontext
from dataclasses import dataclass

from . import procs
from .procs import Server, say
from .servers import REFERENCE

LOAD_SATURATED_PCT = 95.0
NOISY_PCT = 10.0  # CPU % of one core used by other processes during a run
QUIET_SAMPLE_S = 0.5
MAX_RETRIES = 2  # re-measurements of one disturbed run


@dataclass(frozen=True)
class Cell:
    key: str
    conns: int
    size: int
    pipeline: int = 1
    dma: bool = False  # hold /dev/cpu_dma_latency at 0 during the cell

    @property
    def single(self):
        return self.conns == 1 and self.pipeline == 1


CELLS = [
    Cell("1 x 64 B", 1, 64),
    Cell("1 x 64 B, dma 0", 1, 64, dma=True),
    Cell("50 x 128 B", 50, 128),
    Cell("500 x 128 B", 500, 128),
    Cell("50 x 16 KiB", 50, 16384),
    Cell("50 x 64 B, pipeline 16", 50, 64, pipeline=16),
]
KEY_CELL = "50 x 128 B"  # the cell of the CPU target, the Wine comparison and the profile
ISSUE10_CELLS = ["50 x 128 B", "500 x 128 B", "50 x 16 KiB"]  # the Linux CPU/p99 targets


def select_cells(keys):
    """The cells named in `keys` (comma-separated), all when empty; ValueError if unknown."""
    if not keys:
        return list(CELLS)
    want, rest = [], keys.strip()
    known = sorted((c.key for c in CELLS), key=len, reverse=True)  # a key may hold a comma
    while rest:
        key = next((k for k in known if rest == k or rest.startswith(k + ",")), None)
        if key is None:
            raise ValueError(f"unknown cell {rest.split(',')[0].strip()!r}; known: "
                             + "; ".join(c.key for c in CELLS))
        want.append(key)
        rest = rest[len(key):].lstrip(",").strip()
    return [c for c in CELLS if c.key in want]


@dataclass
class Settings:
    client: str
    reps: int
    duration: float
    warmup: float  # a separate unmeasured run before each cell
    quiet_wait: float = 0.0  # wait up to this long for other processes to go quiet
    retry_budget: float = 0.0  # seconds of re-measuring noisy runs this section may spend


def foreign_cpu_pct(seconds=QUIET_SAMPLE_S):
    """CPU % (of one core) other processes use now: ours are idle between runs."""
    b0 = procs.system_busy_seconds()
    time.sleep(seconds)
    return 100.0 * (procs.system_busy_seconds() - b0) / seconds


def wait_quiet(max_wait):
    """The machine may be shared: wait (bounded) until other processes are quiet."""
    deadline = time.monotonic() + max_wait
    busy = foreign_cpu_pct()
    while busy > NOISY_PCT and time.monotonic() < deadline:
        time.sleep(1.0)
        busy = foreign_cpu_pct()
    if busy > NOISY_PCT:
        say(f"  machine busy ({busy:.0f} % of a CPU used by other processes): measuring anyway")


def run_all(servers, cells, st, reference=False, env=None, extra_pids=None,
            start_timeout=20.0):
    """Rounds of: each server started in turn, every cell measured once, server stopped.
    Repetitions are rounds, so a burst of noise on a shared machine spreads over the
    servers instead of hitting one. servers: {name: argv}; returns {name: {cell: summary}}."""
    runs = {name: {c.key: [] for c in cells} for name in servers}
    if reference:
        runs[REFERENCE] = {c.key: [] for c in cells if c.single}
    for rnd in range(st.reps):
        for name, cmd in servers.items():
            got = _guarded(name, lambda: run_round(name, cmd, cells, st, rnd, env, extra_pids,
                                                   start_timeout))
            for key, run in got.items():
                runs[name][key].append(run)
        if reference:
            for key, run in reference_round(cells, st, rnd).items():
                runs[REFERENCE][key].append(run)
    return {name: {key: summarize(r) for key, r in cells_runs.items()}
            for name, cells_runs in runs.items()}


def _guarded(name, fn):
    """A server that cannot start fails its cells, not the whole benchmark."""
    try:
        return fn()
    except RuntimeError as e:
        say(str(e))
        return {}


def run_round(name, cmd, cells, st, rnd, env=None, extra_pids=None, start_timeout=20.0):
    """Starts one server, measures every cell once, stops it; returns {cell key: run}."""
    out = {}
    with Server(name, cmd, env=env, start_timeout=start_timeout) as srv:
        if extra_pids:
            srv.extra_pids = extra_pids()
        for cell in cells:
            say(f"{name}: {cell.key} (round {rnd + 1}/{st.reps})")
            out[cell.key] = run_cell(srv, cell, st)
    return out


def run_cell(srv, cell, st):
    """A warm-up run, then the measured one (with /dev/cpu_dma_latency held if asked)."""
    with procs.dma_latency_zero() if cell.dma else nullcontext(True) as held:
        if not held:
            return {"skipped": "/dev/cpu_dma_latency not writable"}
        wait_quiet(st.quiet_wait)
        if st.warmup > 0:
            one_run(srv, cell, st.warmup, st)
        run = one_run(srv, cell, st.duration, st)
        for _ in range(MAX_RETRIES):
            if not _noisy(run) or st.retry_budget <= 0:
                break
            t0 = time.monotonic()
            say(f"  noisy run ({run['foreign_cpu_pct']:.0f} % of a CPU used by others): again")
            wait_quiet(st.quiet_wait)
            again = one_run(srv, cell, st.duration, st)
            st.retry_budget -= time.monotonic() - t0
            if again.get("foreign_cpu_pct", 1e9) < run["foreign_cpu_pct"]:
                run = again
        return run


def _noisy(run):
    return (run.get("foreign_cpu_pct") or 0) >= NOISY_PCT


def one_run(srv, cell, duration, st):
    """One load-generator run; adds the server's CPU µs per message to its JSON result."""
    if not srv.alive():
        return {"errors": 1, "failure": f"{srv.name} is not running"}
    cmd = procs.load_cmd(st.client, srv.port, cell.conns, cell.size, cell.pipeline, duration)
    cpu0, ru0, t0 = srv.cpu_seconds(), _children_cpu(), time.monotonic()
    busy0 = procs.system_busy_seconds()
    res = procs.finish_load(procs.start_load(cmd), timeout=duration + 60)
    cpu1, ru1, wall = srv.cpu_seconds(), _children_cpu(), time.monotonic() - t0
    busy = procs.system_busy_seconds() - busy0
    msgs = res.get("messages") or 0
    res["server_cpu_s"] = cpu1 - cpu0
    res["server_cpu_us"] = (cpu1 - cpu0) * 1e6 / msgs if msgs else None
    res["load_cpu_s"] = ru1 - ru0
    res["foreign_cpu_pct"] = max(0.0, 100.0 * (busy - (cpu1 - cpu0) - (ru1 - ru0)) / wall)
    if res.get("cpu_pct") is None:
        res["cpu_pct"] = 100.0 * (ru1 - ru0) / wall
    if res.get("failure"):
        say(f"  run failed: {res['failure']}")
    return res


def _children_cpu():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def reference_round(cells, st, rnd):
    """The blocking ping-pong between two pinned threads, for the 1-connection cells."""
    out = {}
    for cell in (c for c in cells if c.single):
        say(f"{REFERENCE}: {cell.key} (round {rnd + 1}/{st.reps})")
        with procs.dma_latency_zero() if cell.dma else nullcontext(True) as held:
            out[cell.key] = _pingpong(cell, st) if held else {
                "skipped": "/dev/cpu_dma_latency not writable"}
    return out


def _pingpong(cell, st):
    cmd = [procs.BENCH_BIN / "pingpong", "--size", cell.size, "--duration", st.duration,
           "--warmup", st.warmup, "--cpus", f"{procs.SERVER_CPU},{procs.LOAD_CPU}", "--json"]
    wait_quiet(st.quiet_wait)
    busy0, ru0, t0 = procs.system_busy_seconds(), _children_cpu(), time.monotonic()
    proc = procs.spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    res = procs.finish_load(proc, timeout=st.duration + st.warmup + 30)
    busy, ru = procs.system_busy_seconds() - busy0, _children_cpu() - ru0
    res["foreign_cpu_pct"] = max(0.0, 100.0 * (busy - ru) / (time.monotonic() - t0))
    res["server_cpu_us"] = None
    return res


def summarize(runs):
    """Medians over the runs that produced numbers; errors summed; all runs kept."""
    if runs and all(r.get("skipped") for r in runs):
        return runs[0]
    ok = [r for r in runs if r.get("msgs_per_s") is not None]
    errors = sum(int(r.get("errors") or 0) for r in runs)
    if not ok:
        failure = runs[-1].get("failure") if runs else "server did not start"
        return {"errors": errors or 1, "runs": runs, "failure": failure}

    def med(get):
        vals = [v for v in (get(r) for r in ok) if v is not None]
        return statistics.median(vals) if vals else None

    def spread(key):
        vals = [r[key] for r in ok if r.get(key) is not None]
        return [min(vals), statistics.median(vals), max(vals)] if vals else None

    lat = {p: med(lambda r, p=p: (r.get("lat_us") or {}).get(p))
           for p in ("p50", "p90", "p99", "p999", "max")}
    load_cpu = med(lambda r: r.get("cpu_pct"))
    foreign = med(lambda r: r.get("foreign_cpu_pct"))
    return {
        "msgs_per_s": med(lambda r: r["msgs_per_s"]),
        "mb_per_s": med(lambda r: r.get("mb_per_s")),
        "lat_us": lat,
        "cpu_us": med(lambda r: r.get("server_cpu_us")),
        "load_cpu_pct": load_cpu,
        "load_saturated": load_cpu is not None and load_cpu >= LOAD_SATURATED_PCT,
        "foreign_cpu_pct": foreign,
        "noisy": foreign is not None and foreign >= NOISY_PCT,
        "errors": errors,
        "reps": len(ok),
        "spread": {"msgs_per_s": spread("msgs_per_s"), "cpu_us": spread("server_cpu_us")},
        "runs": runs,
    }
