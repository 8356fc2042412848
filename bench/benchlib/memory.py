"""Memory: the server's RSS per idle connection (10,000 silent connections), and the
scale run (19,000 concurrent echoing connections from several load processes)."""
import socket
import time

from . import procs
from .procs import Server, fd_count, say

IDLE_SOURCES = [f"127.0.0.{i}" for i in range(1, 5)]
PROBE = bytes(range(64))


def idle_connections(name, cmd, n=10000, settle_timeout=20.0, env=None, helpers=None,
                     start_timeout=20.0):
    """RSS before/after n idle connections; checks a few of them still echo. helpers()
    gives the pids of processes that hold the server's sockets for it (the wineserver):
    their descriptors are the ones waited for, and their RSS is reported apart."""
    with Server(name, cmd, env=env, start_timeout=start_timeout) as srv:
        time.sleep(0.3)
        extra = helpers() if helpers else []
        holders = extra or [srv.pid]
        rss0, fd0, extra0 = srv.rss_kib(), _fds(holders), _rss(extra)
        socks, errors = [], 0
        try:
            t0 = time.monotonic()
            socks, errors = _open_idle(srv.port, n)
            connect_s = time.monotonic() - t0
            accepted = _settle(srv, holders, fd0 + len(socks), settle_timeout)
            rss1, extra1 = srv.rss_kib(), _rss(extra)
            echoing = sum(_probe(s) for s in socks[:2] + socks[-2:])
        finally:
            for s in socks:
                s.close()
    held = len(socks)
    out = {
        "conns": held, "connect_errors": errors, "connect_s": round(connect_s, 2),
        "accepted_fds": accepted, "rss_before_kib": rss0, "rss_after_kib": rss1,
        "kib_per_conn": (rss1 - rss0) / held if held else None,
        "probes_echoed": f"{echoing}/4",
    }
    if extra:
        out.update(helper_rss_before_kib=extra0, helper_rss_after_kib=extra1,
                   helper_kib_per_conn=(extra1 - extra0) / held if held else None)
    return out


def _fds(pids):
    return sum(fd_count(p) for p in pids)


def _rss(pids):
    return sum(procs.rss_kib(p) for p in pids)


def _open_idle(port, n):
    socks, errors = [], 0
    for i in range(n):
        s = socket.socket()
        try:
            s.bind((IDLE_SOURCES[i % len(IDLE_SOURCES)], 0))
            s.settimeout(5.0)
            s.connect(("127.0.0.1", port))
            socks.append(s)
        except OSError:
            s.close()
            errors += 1
            if errors > 100:
                break
    return socks, errors


def _settle(srv, holders, want_fds, timeout):
    """Waits until the holders hold want_fds descriptors and the server's RSS stops
    moving; returns the descriptors held then."""
    deadline, last, stable_since = time.monotonic() + timeout, -1, time.monotonic()
    while time.monotonic() < deadline and srv.alive():
        rss, fds = srv.rss_kib(), _fds(holders)
        if rss != last:
            last, stable_since = rss, time.monotonic()
        if fds >= want_fds and time.monotonic() - stable_since >= 0.5:
            break
        time.sleep(0.1)
    return _fds(holders)


def _probe(s):
    try:
        s.sendall(PROBE)
        got = b""
        while len(got) < len(PROBE):
            chunk = s.recv(len(PROBE) - len(got))
            if not chunk:
                return 0
            got += chunk
        return int(got == PROBE)
    except OSError:
        return 0


def scale(name, cmd, client, total=19000, nprocs=4, duration=10.0, size=128):
    """total echoing connections split over nprocs load processes, each from its own
    127.0.0.x sources; samples the server's RSS and descriptors while they run."""
    with Server(name, cmd) as srv:
        time.sleep(0.3)
        rss0 = srv.rss_kib()
        t0 = time.monotonic()
        loads = [procs.start_load(procs.load_cmd(
            client, srv.port, _share(total, nprocs, i), size, 1, duration,
            sources=f"127.0.0.{2 * i + 1},127.0.0.{2 * i + 2}")) for i in range(nprocs)]
        rss_peak, fd_peak = _watch(srv, loads, duration + 120)
        results = [procs.finish_load(p, timeout=5) for p in loads]
        wall = time.monotonic() - t0
    return _scale_summary(results, total, nprocs, wall, rss0, rss_peak, fd_peak)


def _share(total, n, i):
    return total // n + (1 if i < total % n else 0)


def _watch(srv, loads, timeout):
    rss_peak = fd_peak = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.poll() is None for p in loads):
        if srv.alive():
            rss_peak, fd_peak = max(rss_peak, srv.rss_kib()), max(fd_peak, fd_count(srv.pid))
        time.sleep(0.2)
    return rss_peak, fd_peak


def _scale_summary(results, total, nprocs, wall, rss0, rss_peak, fd_peak):
    ok = [r for r in results if r.get("msgs_per_s") is not None]
    per_conn = (rss_peak - rss0) / total
    failures = [r["failure"] for r in results if r.get("failure")]
    if failures:
        say("scale: " + "; ".join(failures))
    return {
        "conns": total, "load_processes": nprocs, "wall_s": round(wall, 1),
        "connect_ms_max": max((r.get("connect_ms") or 0 for r in ok), default=None),
        "messages": sum(r.get("messages") or 0 for r in ok),
        "msgs_per_s": sum(r["msgs_per_s"] for r in ok),
        "p99_us_max": max(((r.get("lat_us") or {}).get("p99") or 0 for r in ok), default=None),
        "errors": sum(int(r.get("errors") or 0) for r in results),
        "failures": failures,
        "rss_before_kib": rss0, "rss_peak_kib": rss_peak, "fds_peak": fd_peak,
        "kib_per_conn": per_conn,
        "projected_1m_gib": (rss0 + per_conn * 1e6) / 2**20,
    }
