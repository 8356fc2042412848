"""The integration suite's harness: options, the build matrix, the `server` fixture,
Wine prefix handling, per-test hard timeouts, replay lines and the conformance table.

    /usr/bin/python3 -m pytest tests/integration [--build linux|windows|all]
        [--fault-seeds N] [--seed S] [--target HOST:PORT]
"""

import faulthandler
import os
import shlex
import signal
import subprocess
import sys
import threading

import pytest

import echolib
from echolib import ROOT, WINEPREFIX, Build, Server, Target

pytest_plugins = ["pytester"]

DEFAULT_FAULT_SEEDS = 10
DEFAULT_SEED = 1
DEFAULT_TIMEOUT = 90  # seconds per test, setup and teardown included; ep_timeout(N) overrides


def pytest_addoption(parser):
    g = parser.getgroup("echoport")
    g.addoption("--build", choices=["linux", "windows", "all"], default="all",
                help="which build(s) of echoport to test (default: all)")
    g.addoption("--fault-seeds", type=int, default=DEFAULT_FAULT_SEEDS,
                help="number of fault-plan seeds per fault kind (default: %(default)s)")
    g.addoption("--seed", type=int, default=int(os.environ.get("ECHOPORT_TEST_SEED",
                                                                DEFAULT_SEED)),
                help="base seed of the random payloads (default: %(default)s)")
    g.addoption("--target", metavar="HOST:PORT", default=None,
                help="conformance mode: run the fault-free fidelity cases against this"
                     " running echo server and print a per-case pass/fail table")
    g.addoption("--bindir-linux", default=str(ROOT / "build" / "linux" / "bin"),
                help="where the Linux build's binaries are (e.g. build/asan/bin)")
    g.addoption("--server-threads", default=None, metavar="N",
                help="--threads for every server started without its own (e.g. 4 under TSan)")
    g.addoption("--server-wrapper", default="", metavar="COMMAND",
                help="prefix the Linux server's command line, e.g. 'valgrind -q --error-exitcode=99'")
    g.addoption("--bindir-windows", default=str(ROOT / "build" / "windows" / "bin"),
                help="where the Windows build's binaries are")


def is_worker(config):
    return hasattr(config, "workerinput")


def selected_builds(config):
    if config.getoption("--target"):
        return ["target"]
    b = config.getoption("--build")
    return ["linux", "windows"] if b == "all" else [b]


def pytest_configure(config):
    # with xdist, -n N means --dist loadgroup here: the Wine tests must share one
    # worker (see pytest_collection_modifyitems). The controller switches its
    # scheduler before xdist's (trylast) configure; workers learn it from workerinput.
    if not is_worker(config) and getattr(config.option, "dist", "no") == "load":
        config.option.dist = "loadgroup"
    if is_worker(config) and config.workerinput.get("echoport_loadgroup"):
        config.option.loadgroup = True
    config.pluginmanager.register(_LateParametrize(), "echoport-late-parametrize")
    config.addinivalue_line("markers", "ep_timeout(seconds): hard time limit of one test")
    config._ep_outcomes = {}
    config._ep_builds = {
        "linux": Build("linux", config.getoption("--bindir-linux"),
                       wrapper=shlex.split(config.getoption("--server-wrapper"))),
        "windows": Build("windows", config.getoption("--bindir-windows")),
    }


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """xdist, on the controller: tell each worker to tag tests with their group."""
    if node.config.getoption("dist", "no") == "loadgroup":
        node.workerinput["echoport_loadgroup"] = True


def pytest_report_header(config):
    return (f"echoport: builds={','.join(selected_builds(config))} seed={config.getoption('--seed')}"
            f" fault-seeds={config.getoption('--fault-seeds')} root={ROOT}")


# --------------------------------------------------------------------------- the matrix

def pytest_generate_tests(metafunc):
    config = metafunc.config
    if "build_name" not in metafunc.fixturenames:
        return
    params = []
    only = getattr(metafunc.function, "ep_builds", None)
    for name in selected_builds(config):
        if only and name != "target" and name not in only:
            continue
        marks = [getattr(pytest.mark, name)] if name != "target" else []
        params.append(pytest.param(name, marks=marks, id=name))
    metafunc.parametrize("build_name", params)


class _LateParametrize:
    """Parametrises fault_seed and client_name after the @parametrize markers, so
    that ids read build-kind-seed_N (test_faults[windows-partial_send-seed_3])."""

    @pytest.hookimpl(trylast=True)
    def pytest_generate_tests(self, metafunc):
        if "fault_seed" in metafunc.fixturenames:
            n = metafunc.config.getoption("--fault-seeds")
            metafunc.parametrize("fault_seed", range(n), ids=[f"seed_{i}" for i in range(n)])
        if "client_name" in metafunc.fixturenames:
            names = [b for b in selected_builds(metafunc.config) if b != "target"]
            metafunc.parametrize("client_name", names, ids=[f"client_{b}" for b in names])


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """xdist groups (for --dist loadgroup): one worker runs every Wine test, in
    order (they share one prefix and its wineserver, whose fd count the leak check
    reads); each Linux fault kind's seeds run on one worker, followed by the check
    that the kind fired at all. In conformance mode, only conformance cases run."""
    if config.getoption("--target"):
        keep = [i for i in items if i.get_closest_marker("conformance") is not None]
        dropped = [i for i in items if i.get_closest_marker("conformance") is None]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = keep
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec else {}
        b = params.get("build_name")
        if b == "windows":
            item.add_marker(pytest.mark.xdist_group("wine"))
        elif b == "linux" and "kind" in params and item.get_closest_marker("faults"):
            item.add_marker(pytest.mark.xdist_group(f"linux-faults-{params['kind']}"))


@pytest.fixture
def build_name(request):  # parametrised by pytest_generate_tests
    return request.param


@pytest.fixture
def build(build_name, request):
    """The Build under test (None in conformance mode)."""
    if build_name == "target":
        return None
    b = request.config._ep_builds[build_name]
    if b.wine:
        request.getfixturevalue("wine_prefix")
        if echolib.wineserver_pid() is None:  # stopped meanwhile (wineserver -k elsewhere)
            _start_wineserver()
    return b


# --------------------------------------------------------------------------- Wine

def _prefix_ready():
    return (WINEPREFIX / "system.reg").is_file()


def _wine_env():
    env = dict(os.environ, WINEDEBUG="-all", WINEPREFIX=str(WINEPREFIX),
               WINEDLLOVERRIDES="winedbg.exe=d")
    env.pop("DISPLAY", None)
    return env


def _start_wineserver():
    WINEPREFIX.parent.mkdir(parents=True, exist_ok=True)
    import fcntl  # only a Linux host runs Wine
    with open(str(WINEPREFIX) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        quiet = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, env=_wine_env())
        if not _prefix_ready():
            subprocess.run(["wineboot", "-i"], timeout=180, **quiet)
        subprocess.run(["wineserver", "-p"], timeout=60, **quiet)
        # settle the prefix: services started now, not by a test's server (which
        # would hand them its stdout and stderr pipes)
        subprocess.run(["wine", "cmd", "/c", "exit"], timeout=120, **quiet)


@pytest.fixture(scope="session")
def wine_prefix():
    """Creates the private prefix once (under a lock: xdist workers share it) and
    starts its wineserver persistently with no pipes of ours, so it never holds a
    server's stdout open and later processes start fast."""
    _start_wineserver()
    if not _prefix_ready():
        pytest.fail(f"could not create the Wine prefix {WINEPREFIX}", pytrace=False)
    return WINEPREFIX


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if is_worker(config) or "windows" not in selected_builds(config) or echolib.NATIVE_WINDOWS:
        return
    if os.environ.get("ECHOPORT_KEEP_WINESERVER"):
        return
    if WINEPREFIX.exists():
        subprocess.run(["wineserver", "-k"], env=_wine_env(), stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)


# --------------------------------------------------------------------------- servers

class ServerFactory:
    """server(*args, threads=, listen=, faults=, env=, launcher=) -> a started Server.
    Every server gets --listen 127.0.0.1:0 --admin-port 0 unless told otherwise.
    In conformance mode a bare server() is the --target; anything more skips."""

    def __init__(self, request, build, target):
        self.request = request
        self.build = build
        self.target = target

    def __call__(self, *args, listen="127.0.0.1:0", threads=None, faults=None, env=None,
                 fault_log=None, start_timeout=None, launcher=()):
        if self.target:
            if args or faults or env or threads or launcher or listen != "127.0.0.1:0":
                pytest.skip("conformance mode: this case needs echoport's own options")
            t = Target(self.target)
            echolib.started.append(t)
            return t
        argv = ["--listen", listen, "--admin-port", "0"]
        threads = threads or self.request.config.getoption("--server-threads")
        if threads:
            argv += ["--threads", threads]
        if faults:
            argv += ["--faults", faults]
        if fault_log:
            argv += ["--fault-log", fault_log]
        argv += list(args)
        try:
            return Server(self.build, argv, env, start_timeout, launcher)
        except echolib.EchoportError as e:
            if not (self.build.wine and getattr(e, "silent_exit", False)):
                raise
            print(f"echoport.exe exited silently before listening (Wine): starting it again\n{e}",
                  file=sys.stderr)
            return Server(self.build, argv, env, start_timeout, launcher)


@pytest.fixture
def server(request, build, build_name):
    f = ServerFactory(request, build, request.config.getoption("--target")
                      if build_name == "target" else None)
    yield f
    _kill_servers()


@pytest.fixture
def base_seed(request):
    return request.config.getoption("--seed")


# --------------------------------------------------------------------------- hard timeouts

class HardTimeout(BaseException):
    """Raised in the main thread when a test overruns its ep_timeout."""


def _test_limit(item):
    m = item.get_closest_marker("ep_timeout")
    limit = m.args[0] if m else DEFAULT_TIMEOUT
    return limit


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Arms a per-test deadline covering setup, call and teardown: SIGALRM raises
    HardTimeout in the main thread (socket waits are interrupted); off the main
    thread, and on Windows (no SIGALRM), a watchdog kills the test's servers, dumps
    every stack and exits."""
    limit = _test_limit(item)
    del echolib.started[:]
    main = threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGALRM")
    done = threading.Event()
    old = None
    if main:
        def on_alarm(signum, frame):
            _kill_servers()
            raise HardTimeout(f"{item.nodeid} exceeded its hard time limit of {limit} s")
        old = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, limit)
    else:
        def watchdog():
            if not done.wait(limit + 30):
                _kill_servers()
                sys.stderr.write(f"\n{item.nodeid}: hard time limit {limit} s exceeded\n")
                faulthandler.dump_traceback(all_threads=True)
                os._exit(3)
        threading.Thread(target=watchdog, daemon=True).start()
    try:
        yield
    finally:
        done.set()
        if main:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old or signal.SIG_DFL)


def _kill_servers():
    for s in list(echolib.started):
        try:
            s.kill()
        except Exception:
            pass


# --------------------------------------------------------------------------- replay lines

def replay_command(item):
    config = item.config
    name = item.name
    callspec = getattr(item, "callspec", None)
    b = callspec.params.get("build_name") if callspec else None
    cmd = [echolib.REPLAY_PYTHON, "-m", "pytest", "tests/integration", "-k", name]
    if b and b != "target":
        cmd += ["--build", b]
    cmd += ["--seed", str(config.getoption("--seed"))]
    if config.getoption("--fault-seeds") != DEFAULT_FAULT_SEEDS:
        cmd += ["--fault-seeds", str(config.getoption("--fault-seeds"))]
    if config.getoption("--target"):
        cmd += ["--target", config.getoption("--target")]
    for opt in ("--bindir-linux", "--bindir-windows"):
        v = config.getoption(opt)
        if v != str(ROOT / "build" / opt.split("-")[-1] / "bin"):
            cmd += [opt, v]
    return shlex.join(cmd)


def replay_text(item):
    lines = [f"replay: {replay_command(item)}"]
    for s in echolib.started:
        if s.cmdline:
            kind = "server" if isinstance(s, Server) else "ran"
            lines.append(f"{kind}: {s.cmdline}")
    return "\n".join(lines)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed:
        return
    details = "\n".join(s.describe() for s in echolib.started if isinstance(s, (Server, Target)))
    if details:
        if hasattr(rep.longrepr, "addsection"):
            rep.longrepr.addsection("echoport servers", details)
        else:
            rep.longrepr = f"{rep.longrepr}\n{details}"
    # the report's last section: the failure's output ends with the replay lines
    rep.sections.append(("replay", replay_text(item)))


# --------------------------------------------------------------------------- conformance table

_config = None


def pytest_sessionstart(session):
    global _config
    _config = session.config


def pytest_runtest_logreport(report):
    outcomes = getattr(_config, "_ep_outcomes", None)
    if outcomes is None:
        return
    nodeid = report.nodeid.split("@")[0]
    prev = outcomes.get(nodeid)
    if report.when == "call" or report.failed or (report.skipped and prev is None):
        if report.failed:
            outcomes[nodeid] = "FAIL" if report.when == "call" else f"ERROR({report.when})"
        elif report.skipped:
            outcomes[nodeid] = "skip"
        elif prev is None or prev == "skip":
            outcomes[nodeid] = "pass"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    target = config.getoption("--target")
    if not target or is_worker(config):
        return
    outcomes = config._ep_outcomes
    run = {k: v for k, v in outcomes.items() if v != "skip"}
    tr = terminalreporter
    tr.section(f"conformance of the echo server at {target}")
    width = max([len(k) for k in run] + [10])
    for nodeid, result in sorted(run.items()):
        tr.write_line(f"{nodeid.ljust(width)}  {result}")
    passed = sum(1 for v in run.values() if v == "pass")
    skipped = len(outcomes) - len(run)
    tr.write_line(f"{passed} of {len(run)} conformance cases passed"
                  + (f" ({skipped} skipped: they need echoport's own options)" if skipped else "")
                  + "; the cases that need echoport's binary or stats were deselected")
