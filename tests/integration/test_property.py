"""Property: any payload, cut into any writes, from a few clients at once, comes back
exactly (Hypothesis, shrinking to the smallest failing case). Seeded from --seed,
printed, so a failure replays."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from echolib import KiB, Session, assert_clean, hypothesis_cases, prefix_problem, run_sessions

pytestmark = pytest.mark.conformance

client_st = st.tuples(st.binary(min_size=0, max_size=48 * KiB),
                      st.lists(st.integers(min_value=1, max_value=8 * KiB), max_size=40),
                      st.booleans())


def test_property_any_payload_any_chunking_echoes_exactly(server, build, base_seed):
    srv = server()

    @hypothesis_cases(base_seed, 30)
    @given(clients=st.lists(client_st, min_size=1, max_size=4))
    def prop(clients):
        sessions = [Session(srv.addr, data, chunks or None, half_close=half, name=f"client{i}")
                    for i, (data, chunks, half) in enumerate(clients)]
        run_sessions(sessions, timeout=10)
        for s in sessions:
            got = bytes(s.got)
            assert got == s.data, (f"{s.describe()}: "
                                   f"{prefix_problem(s.data, got) or 'echo incomplete'}")
            assert not s.half_close or s.eof, f"{s.name}: no EOF after half-close"

    prop()
    srv.stop()
    assert_clean(srv)
