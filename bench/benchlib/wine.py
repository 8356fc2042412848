"""Windows build under Wine: echoport.exe against the seed-style IOCP echo (issue 10)."""
import os
import subprocess
from pathlib import Path

from . import memory
from .procs import BUILD, say
from .throughput import CELLS, run_all

PREFIX = BUILD / "wineprefix-bench"
CELL_KEYS = ["1 x 64 B", "50 x 128 B", "500 x 128 B"]
WINE_CELLS = [c for c in CELLS if c.key in CELL_KEYS]


def wine_env():
    return dict(os.environ, WINEPREFIX=str(PREFIX), WINEDEBUG="-all",
                WINEDLLOVERRIDES="winedbg.exe=d")


def wineserver_pids():
    """The wineserver of our prefix: socket calls of a Wine process go through it, so its
    CPU counts as the server's."""
    want = f"WINEPREFIX={PREFIX}".encode()
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if (d / "comm").read_text().strip().startswith("wineserver") and \
                    want in (d / "environ").read_bytes().split(b"\0"):
                pids.append(int(d.name))
        except OSError:
            continue
    return pids


def run(servers, cells, st):
    """The cells under Wine; servers: {name: argv without wine}; returns {name: {cell key:
    summary}}."""
    env = wine_env()
    try:
        return run_all({n: ["wine"] + argv for n, argv in servers.items()}, cells, st,
                       env=env, extra_pids=wineserver_pids, start_timeout=120.0)
    finally:
        stop_prefix(env)


def idle(servers, n):
    """n idle connections to each server under Wine ({name: argv without wine}); returns
    {name: memory.idle_connections summary}, the wineserver's RSS reported apart (a fresh
    wineserver for each, so none starts with a heap the other grew)."""
    env, out = wine_env(), {}
    for name, argv in servers.items():
        say(f"{name}: {n} idle connections under Wine")
        try:
            out[name] = memory.idle_connections(name, ["wine"] + argv, n, env=env,
                                                helpers=wineserver_pids, start_timeout=120.0)
        except RuntimeError as e:
            out[name] = {"failure": str(e)}
        finally:
            stop_prefix(env)
    return out


def stop_prefix(env):
    try:
        subprocess.run(["wineserver", "-k"], env=env, timeout=30,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        say(f"wineserver -k: {e}")
