"""The report: one table (rows = cells, columns = servers), targets, machine info,
bench/results/latest.md, latest.json and the two plots."""
import datetime
import json
import os
import platform
import subprocess

from .procs import ROOT, say
from .servers import ECHOPORT, REFERENCE, WINE_ECHOPORT, WINE_SEED, peers_of
from .throughput import ISSUE10_CELLS, KEY_CELL

RESULTS = ROOT / "bench" / "results"


# ---- machine ----------------------------------------------------------------

def machine_info():
    def first(path, prefix):
        try:
            for line in open(path):
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip() if ":" in line else line.split("=", 1)[1]
        except OSError:
            pass
        return "?"

    return {
        "cpu": first("/proc/cpuinfo", "model name"),
        "cpus": os.cpu_count(),
        "memory_gib": round(int(first("/proc/meminfo", "MemTotal").split()[0]) / 2**20, 1),
        "kernel": platform.release(),
        "os": first("/etc/os-release", "PRETTY_NAME=").strip().strip('"'),
        "gcc": _cmd(["gcc", "-dumpfullversion"]),
        "packages": _cmd(["dpkg-query", "-W", "-f", "${Package} ${Version}, ",
                          "liburing-dev", "libuv1-dev", "libboost-dev", "wine"]).rstrip(", "),
        "commit": _cmd(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
        "open_files_limit": _cmd(["sh", "-c", "ulimit -n"]),
    }


def _cmd(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def now():
    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


# ---- formatting -------------------------------------------------------------

def rate(x):
    if x is None:
        return "-"
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.0f}"


def num(x, digits=1):
    return "-" if x is None else f"{x:.{digits}f}"


def entry(s):
    """`msgs/s · p99 µs · CPU µs/msg` of one server in one cell, with flags."""
    if not s:
        return ""
    if s.get("skipped"):
        return "skipped"
    if s.get("msgs_per_s") is None:
        return "FAILED"
    text = f"{rate(s['msgs_per_s'])} · {num(s['lat_us'].get('p99'), 0)} · {num(s.get('cpu_us'), 2)}"
    if s.get("load_saturated"):
        text += " !"
    if s.get("noisy"):
        text += " ~"
    if s.get("errors"):
        text += f" E{s['errors']}"
    return text


def best_peer(results, peers, cell, metric, better):
    """(name, value) of the best peer in a cell: better is max or min."""
    vals = [(n, _metric(results[n].get(cell), metric)) for n in peers if n in results]
    vals = [(n, v) for n, v in vals if v is not None]
    return better(vals, key=lambda nv: nv[1]) if vals else (None, None)


def _metric(s, metric):
    if not s or s.get("msgs_per_s") is None:
        return None
    return s["lat_us"].get("p99") if metric == "p99" else s.get(metric)


def ratio(results, subject, peers, cell, metric, better):
    name, best = best_peer(results, peers, cell, metric, better)
    mine = _metric(results.get(subject, {}).get(cell), metric)
    if mine is None or not best:
        return None, name
    return mine / best, name


# ---- the table --------------------------------------------------------------

def table(tp):
    """Rows of the main table: cells x servers, then echoport's ratios to the best peer."""
    results, cells = tp["results"], tp["cells"]
    servers = [s for s in tp["servers"] if s != REFERENCE]
    peers = peers_of(servers)
    show_ratio = ECHOPORT in servers and peers
    header = ["cell"] + servers + ([REFERENCE] if REFERENCE in results else [])
    if show_ratio:
        header += ["echoport msgs/s ÷ best", "p99 ÷ best", "CPU/msg ÷ best"]
    rows = [header]
    for cell in cells:
        row = [cell] + [entry(results.get(s, {}).get(cell)) for s in servers]
        if REFERENCE in results:
            row.append(entry(results[REFERENCE].get(cell)))
        if show_ratio:
            row += [_ratio_text(results, peers, cell, m, b)
                    for m, b in (("msgs_per_s", max), ("p99", min), ("cpu_us", min))]
        rows.append(row)
    return rows


def spread_table(tp):
    """Rows of the repetitions table: per cell and server, min / median / max over the
    repetitions of msgs/s and of server CPU µs per message."""
    results, cells = tp["results"], tp["cells"]
    servers = [s for s in tp["servers"] if s != REFERENCE]
    rows = [["cell", "metric"] + servers]
    for cell in cells:
        for key, label, fmt in (("msgs_per_s", "msgs/s", rate),
                                ("cpu_us", "CPU µs/msg", lambda v: num(v, 2))):
            row = [cell, label]
            for name in servers:
                sp = ((results.get(name, {}).get(cell) or {}).get("spread") or {}).get(key)
                row.append(" / ".join(fmt(v) for v in sp) if sp else "-")
            rows.append(row)
    return rows


SPREAD_LEGEND = ("Each entry: min / median / max over the repetitions (the main table shows "
                 "the median).")


def _ratio_text(results, peers, cell, metric, better):
    r, name = ratio(results, ECHOPORT, peers, cell, metric, better)
    return "-" if r is None else f"{r:.2f} ({name})"


def markdown(rows):
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(rows[0]), sep] + [line(r) for r in rows[1:]])


LEGEND = ("Each entry: msgs/s · p99 round-trip µs · server CPU µs per echoed message "
          "(utime+stime from /proc/PID/stat over the run ÷ messages). `!` = the load "
          "generator used ≥ 95 % of its CPU (msgs/s then bounds the load, not the server); "
          "`~` = other processes used ≥ 10 % of a CPU during the run (shared machine: "
          "treat as noisy); `E<n>` = errors. Ratios: echoport ÷ the best peer for that metric (msgs/s: higher "
          "is better; p99 and CPU: lower is better). pingpong = blocking 64 B ping-pong "
          "between two pinned threads, the round-trip reference.")


# ---- targets ----------------------------------------------------------------

def targets(data):
    """Issue 6's targets, each with its numbers and met/missed."""
    out = []
    tp = data.get("throughput")
    if tp and ECHOPORT in tp["results"]:
        out += _throughput_targets(tp)
        out += _issue10_targets(tp)
    out += _idle_target((data.get("memory") or {}).get("results", {}).get(ECHOPORT))
    sc = (data.get("scale") or {}).get("results", {}).get(ECHOPORT)
    if sc:
        out.append(_verdict(sc["errors"] == 0, f"{sc['conns']} concurrent connections: "
                            f"{sc['errors']} errors (target 0)"))
    if data.get("wine"):
        out += wine_targets(data["wine"])
    return out


def _throughput_targets(tp):
    res, peers, out = tp["results"], peers_of(tp["servers"]), []
    for cell in tp["cells"]:
        for metric, better, goal, label in (("cpu_us", min, 0.8, "CPU/msg"),
                                            ("msgs_per_s", max, 1.0, "msgs/s"),
                                            ("p99", min, 1.0, "p99")):
            r, name = ratio(res, ECHOPORT, peers, cell, metric, better)
            if r is None:
                continue
            ok = r <= goal if better is min else r >= goal
            sign = "≤" if better is min else "≥"
            out.append(_verdict(ok, f"{cell}: {label} ÷ best peer ({name}) = {r:.2f} "
                                f"(target {sign} {goal})"))
    dma = [c for c in tp["cells"] if "dma" in c]
    if dma and REFERENCE in res:
        r, _ = ratio(res, ECHOPORT, [REFERENCE], dma[0], "msgs_per_s", max)
        if r is not None:
            out.append(_verdict(r >= 0.85, f"{dma[0]}: msgs/s ÷ pingpong = {r:.2f} "
                                "(target ≥ 0.85)"))
    return out


def _issue10_targets(tp):
    """Issue 10 on Linux: CPU/msg ≤ 0.8 x and p99 ≤ 1.0 x the best peer in each of its
    cells, on medians; the CPU line also gives the worst case over the repetitions
    (echoport's max ÷ the best peer's min), so a MET is not noise."""
    res, peers, out = tp["results"], peers_of(tp["servers"]), []
    for cell in (c for c in ISSUE10_CELLS if c in tp["cells"]):
        r, name = ratio(res, ECHOPORT, peers, cell, "cpu_us", min)
        if r is not None:
            mine = (res[ECHOPORT].get(cell) or {}).get("spread", {}).get("cpu_us")
            theirs = (res[name].get(cell) or {}).get("spread", {}).get("cpu_us")
            worst = f", worst case {mine[2] / theirs[0]:.2f}" if mine and theirs else ""
            out.append(_verdict(r <= 0.8, f"issue 10, {cell}: CPU/msg ÷ best peer ({name}) = "
                                f"{r:.2f}{worst} (target ≤ 0.8)"))
        r, name = ratio(res, ECHOPORT, peers, cell, "p99", min)
        if r is not None:
            out.append(_verdict(r <= 1.0, f"issue 10, {cell}: p99 ÷ best peer ({name}) = "
                                f"{r:.2f} (target ≤ 1.0)"))
    return out


def _idle_target(mem, who=""):
    """Issue 10's idle memory target (issue 6 asked ≤ 0.5) on one memory summary."""
    v = (mem or {}).get("kib_per_conn")
    if v is None:
        return []
    return [_verdict(v <= 0.25, f"{who}idle memory {v:.2f} KiB/conn (target ≤ 0.25)")]


def _verdict(ok, text):
    return f"{'met   ' if ok else 'MISSED'} {text}"


# ---- sections of latest.md --------------------------------------------------

def memory_md(mem):
    return _idle_table(mem["results"])


def _idle_table(results, helper=None):
    """The idle-connection summaries as a table; with helper (the name of the process that
    holds the sockets for the server), a column for its KiB per connection."""
    head = ["server", "idle conns", "RSS before KiB", "RSS after KiB", "KiB per idle conn"]
    head += [f"{helper} KiB per idle conn"] * bool(helper) + ["probes echoed", "connect errors"]
    rows = [head]
    for name, m in results.items():
        if m.get("failure"):
            rows.append([name, "FAILED: " + m["failure"]] + [""] * (len(head) - 2))
            continue
        extra = [num(m.get("helper_kib_per_conn"), 2)] * bool(helper)
        rows.append([name, str(m["conns"]), str(m["rss_before_kib"]), str(m["rss_after_kib"]),
                     num(m["kib_per_conn"], 2)] + extra +
                    [m["probes_echoed"], str(m["connect_errors"])])
    return markdown(rows)


def projection_md(sc, mem):
    """1,000,000 connections, from the idle and from the active per-connection cost."""
    lines = []
    for name, s in sc["results"].items():
        if s.get("failure"):
            continue
        m = (mem or {}).get("results", {}).get(name) or {}
        idle = m.get("kib_per_conn")
        idle_text = (f"{(s['rss_before_kib'] + idle * 1e6) / 2**20:.2f} GiB idle "
                     f"({idle:.2f} KiB/conn), " if idle is not None else "")
        lines.append(f"- {name}: 1,000,000 connections ≈ {idle_text}"
                     f"{s['projected_1m_gib']:.2f} GiB all echoing "
                     f"({s['kib_per_conn']:.2f} KiB/conn)")
    return "\n".join(lines)


def scale_md(sc):
    rows = [["server", "conns", "wall s", "connect ms (max)", "msgs/s", "p99 µs (max)",
             "errors", "RSS peak MiB", "KiB/conn", "projected 1M conns GiB"]]
    for name, s in sc["results"].items():
        if s.get("failure"):
            rows.append([name, "FAILED: " + s["failure"]] + [""] * 8)
            continue
        rows.append([name, str(s["conns"]), num(s["wall_s"]), num(s["connect_ms_max"], 0),
                     rate(s["msgs_per_s"]), num(s["p99_us_max"], 0), str(s["errors"]),
                     num(s["rss_peak_kib"] / 1024), num(s["kib_per_conn"], 2),
                     num(s["projected_1m_gib"], 2)])
    return markdown(rows)


WINE_TARGETS = (("msgs_per_s", "msgs/s", 1.5, max), ("cpu_us", "CPU/msg", 0.67, min))


def _spread(s, metric):
    """`min / median / max` of one metric over the measured runs of a summary."""
    key = "server_cpu_us" if metric == "cpu_us" else metric
    vals = sorted(r[key] for r in (s or {}).get("runs", []) if r.get(key) is not None)
    if not vals:
        return "-"
    fmt = rate if metric == "msgs_per_s" else (lambda v: num(v, 1))
    return f"{fmt(vals[0])} / {fmt(s[metric])} / {fmt(vals[-1])}"


def wine_md(wine):
    """The Wine cells: the usual entries, min/median/max of msgs/s and CPU per message,
    and echoport.exe ÷ the seed per metric (medians of the same run)."""
    res = wine["results"]
    cells = wine.get("cells") or [KEY_CELL]
    names = list(res)
    head = ["cell"] + names + [f"{n} msgs/s min/med/max" for n in names] + \
        [f"{n} CPU µs/msg min/med/max" for n in names] + \
        ["msgs/s ÷ seed", "CPU/msg ÷ seed"]
    rows = [head]
    for cell in cells:
        row = [cell] + [entry(res[n].get(cell)) for n in names]
        row += [_spread(res[n].get(cell), "msgs_per_s") for n in names]
        row += [_spread(res[n].get(cell), "cpu_us") for n in names]
        for metric, _, _, better in WINE_TARGETS:
            r, _ = ratio(res, WINE_ECHOPORT, [WINE_SEED], cell, metric, better)
            row.append("-" if r is None else f"{r:.2f}")
        rows.append(row)
    return markdown(rows)


def wine_memory_md(wine):
    """The idle connections under Wine: the server process's RSS, and the wineserver's
    apart (it holds the sockets, as the kernel does on Linux)."""
    return _idle_table(wine.get("memory") or {}, helper="wineserver")


def wine_targets(wine):
    """Issue 10's Wine targets, set at the key cell and checked at every Wine cell:
    MET/MISSED with the ratio of medians; and its idle memory target."""
    out = _idle_target((wine.get("memory") or {}).get(WINE_ECHOPORT), "Wine: echoport.exe ")
    for cell in wine.get("cells") or [KEY_CELL]:
        for metric, label, goal, better in WINE_TARGETS:
            r, _ = ratio(wine["results"], WINE_ECHOPORT, [WINE_SEED], cell, metric, better)
            if r is None:
                continue
            ok = r >= goal if better is max else r <= goal
            sign = "≥" if better is max else "≤"
            out.append(_verdict(ok, f"Wine: echoport.exe ÷ seed IOCP {label} at {cell} = "
                                f"{r:.2f} (target {sign} {goal})"))
    return out


def write_markdown(data):
    parts = ["# echoport benchmark results", "",
             "Written by `bench/run`; see DESIGN §5 and issue 6 for the protocol. Server pinned "
             "to CPU 0, load generator to CPU 1 (`taskset`).", ""]
    parts += _machine_md(data.get("machine", {}))
    tp = data.get("throughput")
    if tp:
        parts += [f"## Throughput and latency ({tp['mode']}, {tp['date']})", "",
                  _settings_text(tp), "", markdown(table(tp)), "", LEGEND, "",
                  markdown(spread_table(tp)), "", SPREAD_LEGEND, ""]
        parts += [f"- {n}" for n in tp.get("notes", [])] + [""] * bool(tp.get("notes"))
        parts += ["![msgs/s and CPU per message](msgs_cpu.png)", "",
                  "![latency percentiles](latency_cdf.png)", ""]
    for key, title, fn in (("memory", "Memory per idle connection", memory_md),
                           ("scale", "Scale: concurrent echoing connections", scale_md),
                           ("wine", "Windows build under Wine", wine_md)):
        if data.get(key):
            sec = data[key]
            parts += [f"## {title} ({sec['mode']}, {sec['date']})", "", sec.get("about", ""),
                      "", fn(sec), ""]
            if key == "wine" and sec.get("memory"):
                parts += ["Idle connections under Wine (the server's RSS; the wineserver "
                          "holds the sockets, as the kernel does on Linux, and is shown "
                          "apart):", "", wine_memory_md(sec), ""]
            if key == "scale":
                parts += ["Projected server memory (RSS; kernel socket memory not included):",
                          "", projection_md(sec, data.get("memory")), ""]
    tl = targets(data)
    if tl:
        parts += ["## Targets (issues 6 and 10)", "", "```"] + tl + ["```", ""]
    (RESULTS / "latest.md").write_text("\n".join(parts))


def _machine_md(m):
    if not m:
        return []
    return ["## Machine", "",
            f"- CPU: {m['cpu']} × {m['cpus']}, {m['memory_gib']} GiB RAM",
            f"- {m['os']}, kernel {m['kernel']}, gcc {m['gcc']}, open files limit "
            f"{m['open_files_limit']}",
            f"- {m['packages']}",
            f"- echoport commit {m['commit']} (working tree as built)", ""]


def _settings_text(tp):
    s = tp["settings"]
    return (f"{s['reps']} repetition(s), median; {s['duration']} s measured per run after a "
            f"{s['warmup']} s warm-up run; load generator `{s['client']}`.")


# ---- latest.json ------------------------------------------------------------

def load_json():
    try:
        return json.loads((RESULTS / "latest.json").read_text())
    except (OSError, ValueError):
        return {}


def save_json(data):
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(data, indent=1, default=str) + "\n")


def print_table(tp):
    print(markdown(table(tp)))
    print()
    print(LEGEND)
    print()
    print(markdown(spread_table(tp)))
    print()
    print(SPREAD_LEGEND)


def note(msg):
    say(msg)
    return msg
