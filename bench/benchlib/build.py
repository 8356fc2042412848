"""Builds what the benchmark runs: echoport (CMake presets) and the peers (bench/Makefile)."""
import os
import subprocess
import sys

from .procs import BUILD, ROOT, say

LINUX_BIN = BUILD / "linux" / "bin"
WINDOWS_BIN = BUILD / "windows" / "bin"


def _run(cmd, what):
    say(what + ": " + " ".join(cmd))
    r = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=900)
    if r.returncode != 0:
        say(f"{what} failed:\n" + r.stdout.decode(errors="replace")[-3000:])
    return r.returncode == 0


def dependencies():
    """Installs the peers' libraries and the plotting and perf packages (ci/setup with
    ECHOPORT_SETUP_BENCH=1: idempotent, quiet when everything is there)."""
    r = subprocess.run(["bash", "ci/setup"], cwd=ROOT, env=dict(os.environ, ECHOPORT_SETUP_BENCH="1"),
                       timeout=1800)
    if r.returncode != 0:
        sys.exit("bench/run: ci/setup failed: cannot install the benchmark's packages")


def echoport_linux():
    """Configures if needed, then builds incrementally; returns True if the binaries exist."""
    if not (BUILD / "linux" / "CMakeCache.txt").exists():
        _run(["cmake", "--preset", "linux"], "configure echoport")
    ok = _run(["cmake", "--build", "--preset", "linux", "--target", "echoport",
               "echoport-client"], "build echoport")
    have = all((LINUX_BIN / b).exists() for b in ("echoport", "echoport-client"))
    if not ok and have:
        say("build failed: using the binaries already in build/linux/bin")
    return have


def echoport_windows():
    exe = WINDOWS_BIN / "echoport.exe"
    if not (BUILD / "windows" / "CMakeCache.txt").exists():
        _run(["cmake", "--preset", "windows", "-DEP_BUILD_TESTS=OFF"], "configure echoport.exe")
    ok = _run(["cmake", "--build", "--preset", "windows", "--target", "echoport"],
              "build echoport.exe")
    if not ok and exe.exists():
        say("build failed: using the echoport.exe already in build/windows/bin")
    return exe.exists()


def peers(windows=False):
    target = ["linux", "windows"] if windows else ["linux"]
    return _run(["make", "-s", "-C", "bench"] + target, "build peers")
