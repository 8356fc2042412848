"""Where the Windows build's CPU per message goes under Wine (issue 10): wineserver
requests and system calls per echoed message, echoport.exe beside the seed.

Every socket call of a Wine process is one or more wineserver requests, so the count
of requests per echo is the cost model: a traced wineserver (-d1) logs each one. The
system calls of the server process and of its wineserver come from `perf stat` on
their syscall tracepoints, in an untraced run."""
import re
import signal
import subprocess
import time

from . import report
from .procs import BENCH_BIN, LOAD_CPU, SERVER_CPU, Server, finish_load, say, spawn
from .servers import WINE
from .wine import stop_prefix, wine_env, wineserver_pids

REQUEST_RE = re.compile(rb"^[0-9a-f]+: ([a-z_]+)\( ", re.M)
SYSCALLS = ["read", "write", "writev", "recvmsg", "sendmsg", "rt_sigprocmask", "rt_sigreturn",
            "close", "fcntl", "getsockopt", "sched_yield", "epoll_wait", "poll", "tgkill"]
WARMUP_MSGS = 2000


def start_wineserver(env, log=None):
    """A fresh persistent wineserver for the prefix, pinned with the server; traced
    (every request on stderr, into `log`) when log is given."""
    stop_prefix(env)
    subprocess.run(["wineserver", "-w"], env=env, timeout=60)
    cmd = ["wineserver", "-f", "-p30"] + (["-d1"] if log else [])
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = spawn(cmd, cpu=SERVER_CPU, env=env, stderr=out)
    deadline = time.monotonic() + 30
    while not wineserver_pids() and time.monotonic() < deadline:
        time.sleep(0.05)  # polling for the process to appear: there is no event for it
    return proc


def load(client, port, args, messages=None, seconds=None):
    cmd = [client, "--load", "--connect", f"127.0.0.1:{port}", "--conns", args.conns,
           "--size", args.size, "--json"]
    cmd += ["--messages", messages] if messages else ["--duration", seconds]
    return spawn(cmd, cpu=LOAD_CPU, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def requests_per_msg(name, argv, args, env, tmp):
    """wineserver requests per echoed message, by request type."""
    log = tmp / f"{name}.server-trace"
    ws = start_wineserver(env, log)
    try:
        with Server(name, ["wine"] + argv, env=env, start_timeout=120.0) as srv:
            finish_load(load(args.client, srv.port, args, messages=WARMUP_MSGS), 120)
            start = log.stat().st_size
            res = finish_load(load(args.client, srv.port, args, messages=args.messages), 300)
            end = log.stat().st_size
    finally:
        stop_prefix(env)
        ws.wait(timeout=30)
    if res.get("errors"):
        raise RuntimeError(f"{name}: the traced load failed: {res}")
    with open(log, "rb") as f:
        f.seek(start)
        text = f.read(end - start)
    log.unlink()
    counts = {}
    for m in REQUEST_RE.finditer(text):
        key = m.group(1).decode()
        counts[key] = counts.get(key, 0) + 1
    return {k: v / args.messages for k, v in counts.items()}


def syscalls_per_msg(name, argv, args, env, tmp):
    """System calls per echoed message of the server process and of its wineserver,
    counted over exactly the messages of one load (perf stops when it ends)."""
    events = ",".join(f"syscalls:sys_enter_{s}" for s in SYSCALLS)
    ws = start_wineserver(env)
    out, stats, perfs = {}, {}, []
    try:
        with Server(name, ["wine"] + argv, env=env, start_timeout=120.0) as srv:
            finish_load(load(args.client, srv.port, args, messages=WARMUP_MSGS), 120)
            for who, pid in (("process", srv.pid), ("wineserver", wineserver_pids()[0])):
                stats[who] = tmp / f"{name}.{who}.stat"
                perfs.append(subprocess.Popen(
                    ["perf", "stat", "-x", ",", "-o", str(stats[who]), "-e", events, "-p",
                     str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(0.5)  # perf attaches asynchronously; nothing else runs meanwhile
            res = finish_load(load(args.client, srv.port, args, messages=args.messages), 300)
            for p in perfs:
                p.send_signal(signal.SIGINT)
                p.wait(timeout=60)
    finally:
        stop_prefix(env)
        ws.wait(timeout=30)
    if res.get("errors"):
        raise RuntimeError(f"{name}: the counted load failed: {res}")
    for who in ("process", "wineserver"):
        for line in stats[who].read_text().splitlines():
            f = line.split(",")
            if len(f) > 2 and f[0].isdigit():
                out[f"{who}: {f[2].split('sys_enter_')[-1]}"] = int(f[0]) / args.messages
    return res.get("msgs_per_s"), out


def run(args):
    """Profiles every Wine server; writes bench/results/profile-wine-<conns>x<size>.md."""
    env = wine_env()
    tmp = BENCH_BIN / "profile"
    tmp.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, argv in WINE.items():
        say(f"wine profile: {name}: requests ({args.messages} messages, traced wineserver)")
        reqs = requests_per_msg(name, argv, args, env, tmp)
        say(f"wine profile: {name}: system calls ({args.messages} messages, perf stat)")
        rate, sys = syscalls_per_msg(name, argv, args, env, tmp)
        results[name] = {"requests": reqs, "syscalls": sys, "msgs_per_s": rate}
    write(results, args)


def table(results, key, total_label):
    names = list(results)
    kinds = sorted({k for n in names for k in results[n][key]},
                   key=lambda k: -max(results[n][key].get(k, 0) for n in names))
    rows = [["per echoed message"] + names]
    for k in kinds:
        if max(results[n][key].get(k, 0) for n in names) >= 0.005:
            rows.append([k] + [report.num(results[n][key].get(k, 0), 3) for n in names])
    rows.append([total_label] + [report.num(sum(results[n][key].values()), 3) for n in names])
    return report.markdown(rows)


def write(results, args):
    cell = f"{args.conns} x {args.size} B"
    parts = [f"# Wine profile at {cell} ({report.now()})", "",
             "Server and its wineserver on CPU 0, load generator (native) on CPU 1.", "",
             f"## wineserver requests per echoed message ({args.messages} messages, "
             "wineserver -d1)", "",
             table(results, "requests", "all requests"), "",
             f"## System calls per echoed message ({args.messages} messages, perf stat, untraced)",
             "", "msgs/s: " + ", ".join(f"{n} {report.rate(r['msgs_per_s'])}"
                                        for n, r in results.items()), "",
             table(results, "syscalls", "all counted"), ""]
    text = "\n".join(parts)
    (report.RESULTS / f"profile-wine-{args.conns}x{args.size}.md").write_text(text)
    print(text)
