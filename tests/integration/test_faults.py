"""Echo fidelity and cleanup under every fault kind, over --fault-seeds seeds.

Under a fault plan an echo may be cut (connreset, zero_read, accept_fail close the
connection): what came back must still be a correct prefix of what was sent, and
complete when the kind cannot close (partial_send alone). Afterwards the server
still serves, and its final stats balance.
"""

import random
import re

import pytest

from echolib import (KiB, MiB, Session, assert_clean, connect, mix_seed, payload, prefix_problem,
                     run_sessions, served)

KINDS = {
    "connreset": "connreset=0.02",
    "partial_send": "partial_send=0.5",
    "zero_read": "zero_read=0.02",
    "accept_fail": "accept_fail=0.3",
    "mix": "connreset=0.01,partial_send=0.3,zero_read=0.01,accept_fail=0.1",
}
CLOSING = {"connreset", "zero_read", "accept_fail", "mix"}

# (build, kind) -> {fault seed: faults injected}; read by test_fault_kind_fired
_TALLY = {}


def fault_counts(final):
    return {k[len("faults_"):]: v for k, v in final.items() if k.startswith("faults_")}


@pytest.mark.faults
@pytest.mark.parametrize("kind", list(KINDS))
def test_faults(server, build, base_seed, kind, fault_seed, tmp_path):
    plan = f"seed={fault_seed},{KINDS[kind]}"
    srv = server(faults=plan, fault_log=str(tmp_path / "faults.log"))
    rnd = random.Random(mix_seed(base_seed, "faults", kind, fault_seed))
    nclients = 6
    top = int(MiB * build.scale)
    sessions = [Session(srv.addr, payload(rnd.getrandbits(63), rnd.randint(64 * KiB, top)),
                        chunks=[rnd.randint(1, 64 * KiB) for _ in range(32)],
                        half_close=bool(i % 2), name=f"client{i}")
                for i in range(nclients)]
    run_sessions(sessions, timeout=30 * build.slowness)
    bad = []
    for s in sessions:
        got = bytes(s.got)
        problem = prefix_problem(s.data, got)
        if problem:
            bad.append(f"{s.name}: {problem}")
        elif kind not in CLOSING and (got != s.data or (s.half_close and not s.eof)):
            bad.append(f"{s.name}: incomplete under {kind} alone: {s.describe()}")
    assert not bad, f"plan {plan!r}:\n" + "\n".join(bad)

    ok, errors = served(srv.addr, attempts=40, timeout=5 * build.slowness)
    assert ok, f"plan {plan!r}: no fresh client was served afterwards:\n" + "\n".join(errors[-5:])
    final = srv.stop()
    assert_clean(srv, bytes_equal=kind not in CLOSING, faults_possible=True)
    counts = fault_counts(final)
    assert sum(counts.values()) == final["faults"], f"per-kind counts {counts} vs {final}"
    log = (tmp_path / "faults.log").read_text().splitlines()
    assert len(log) == final["faults"], (
        f"the fault log has {len(log)} lines, stats say faults={final['faults']}")
    for line in log:
        assert re.fullmatch(r"fault site=\w+ conn=\d+ op=\d+ kind=\w+ code=-?\d+", line), line
    if kind == "partial_send":
        assert set(k for k, v in counts.items() if v) <= {"partial_send"}, counts
    _TALLY.setdefault((build.name, kind), {})[fault_seed] = final["faults"]



@pytest.mark.faults
@pytest.mark.parametrize("kind", list(KINDS))
def test_fault_kind_fired(build, kind, request):
    """Summed over its seeds, each kind injected at least one fault (runs after the
    seeds: same module, same xdist group)."""
    n = request.config.getoption("--fault-seeds")
    seen = _TALLY.get((build.name, kind), {})
    if len(seen) < n:
        pytest.skip(f"only {len(seen)} of {n} seeds of {kind} ran in this process"
                    f" ({sorted(seen)})"
                    " (select them all, and with xdist use --dist loadgroup)")
    assert sum(seen.values()) > 0, f"{kind}: no fault injected over {n} seeds: {seen}"


def lockstep(addr, base_seed, nmsgs=60):
    """One client, one message at a time, each echoed before the next: the server's
    per-connection operations are then the same on every run."""
    rnd = random.Random(mix_seed(base_seed, "lockstep"))
    sent = got = b""
    try:
        with connect(addr) as s:
            for _ in range(nmsgs):
                msg = payload(rnd.getrandbits(63), rnd.randint(1, 300))
                s.sendall(msg)
                sent += msg
                want = len(sent)
                while len(got) < want:
                    chunk = s.recv(4096)
                    if not chunk:
                        return sent, got
                    got += chunk
    except OSError:
        pass
    return sent, got


def parse_log(path):
    out = []
    for line in path.read_text().splitlines():
        f = dict(kv.split("=", 1) for kv in line.split()[1:])
        out.append((int(f["conn"]), int(f["op"]), f["site"], line))
    return sorted(out)


@pytest.mark.faults
@pytest.mark.parametrize("seed", [3, 11])
def test_fault_log_is_deterministic_per_seed(server, build, base_seed, seed, tmp_path):
    """The same seed twice, --threads 2: the same faults, by (conn, op)."""
    plan = f"seed={seed},partial_send=0.5,connreset=0.01,zero_read=0.01,sites=recv|send"
    logs = []
    for run in range(2):
        path = tmp_path / f"run{run}.log"
        srv = server(threads=2, faults=plan, fault_log=str(path))
        sent, got = lockstep(srv.addr, base_seed)
        problem = prefix_problem(sent, got)
        assert problem is None, f"run {run}: {problem}"
        srv.stop()
        assert_clean(srv, bytes_equal=False, faults_possible=True)
        logs.append(parse_log(path))
    a = [l[3] for l in logs[0]]
    b = [l[3] for l in logs[1]]
    assert a, f"plan {plan!r} injected no fault: nothing to compare"
    assert a == b, "same seed, different faults:\n" + "\n".join(
        f"{x!r:60} | {y!r}" for x, y in zip(a + [""] * len(b), b + [""] * len(a)) if x != y)
