"""Tests of the harness itself: a failing case's output ends with its replay lines
(the pytest command and the server's exact command line with its --faults plan)."""

import re
import shutil
from pathlib import Path

import pytest

import echolib

HERE = Path(__file__).resolve().parent

INNER = '''
import pytest
from echolib import EchoportError, exchange

@pytest.mark.faults
def test_inner_fails_with_a_server(server, build):
    srv = server(faults="seed=13,partial_send=0.5")
    assert exchange(srv.addr, b"ping") == b"ping"
    assert 1 + 1 == 3, "deliberate failure"

def test_inner_fails_without_a_server(build):
    assert False, "deliberate failure, no server"

def test_inner_passes(build):
    pass
'''


def test_failure_output_ends_with_replay_lines(pytester, build_name, monkeypatch):
    if build_name == "target":
        pytest.skip("the harness test runs the suite's own builds")
    for name in ("conftest.py", "echolib.py", "pytest.ini"):
        shutil.copy(HERE / name, pytester.path / name)
    pytester.makepyfile(test_inner=INNER)
    monkeypatch.setenv("ECHOPORT_ROOT", str(echolib.ROOT))
    monkeypatch.setenv("ECHOPORT_KEEP_WINESERVER", "1")  # the outer session owns it
    result = pytester.runpytest_subprocess("--build", build_name, "-p", "no:xdist",
                                           "--seed", "7", timeout=300)
    out = result.stdout.str()
    result.assert_outcomes(passed=1, failed=2)
    for test in ("test_inner_fails_with_a_server", "test_inner_fails_without_a_server"):
        line = (f"replay: {echolib.REPLAY_PYTHON} -m pytest tests/integration -k"
                f" '{test}[{build_name}]' --build {build_name} --seed 7")
        assert line in out, f"no {line!r} in the inner run's output:\n{out}"
    assert "--faults seed=13,partial_send=0.5" in out, out
    assert "server: " in out
    # the replay lines are the last thing printed for each failure
    lines = out.splitlines()
    heads = [i for i, l in enumerate(lines)
             if re.match(r"^_{3,} .* _{3,}$", l) or re.match(r"^=+ short test summary", l)]
    assert len(heads) == 3, f"expected 2 failure blocks and the summary:\n{out}"
    for start, end in zip(heads, heads[1:]):
        block = [l for l in lines[start + 1:end] if l.strip() and not l.startswith("---")]
        assert block[-1].startswith(("replay:", "server:")), (
            "a failure's output does not end with the replay lines:\n"
            + "\n".join(lines[start:end]))
        assert any(l.startswith("replay:") for l in block[-3:]), block[-3:]
