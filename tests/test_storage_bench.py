"""The storage benchmark's trace runner on a small scenario: the §9 accounting holds."""

from __future__ import annotations

import pytest

from p2psync.bench.scenario import Scenario, build_trace
from p2psync.bench.storage import run_scenario, sibling_away_at_send

SMALL = Scenario(users=2, days=1.5, messages_per_user_per_day=8, long_offline_days=0.0, seed=3)


def test_traces_are_deterministic() -> None:
    assert build_trace(SMALL).sends == build_trace(SMALL).sends
    assert build_trace(SMALL).sends != build_trace(Scenario(seed=4)).sends


@pytest.mark.slow
def test_strategies_store_what_the_design_says() -> None:
    fanout = run_scenario(SMALL, "fanout")
    linked = run_scenario(SMALL, "linked")
    p2p = run_scenario(SMALL, "p2p")
    assert fanout["messages"] == linked["messages"] == p2p["messages"] > 0
    assert fanout["copies_per_message"] == 3.0
    assert linked["copies_per_message"] == 2.0
    assert 1.0 <= p2p["copies_per_message"] < linked["copies_per_message"]
    # Sync copies only for what was sent while the other device was away.
    assert p2p["sync_copies_per_message"] <= sibling_away_at_send(build_trace(SMALL))
    assert linked["sync_copies_per_message"] == 1.0
    assert p2p["byte_hours"] < linked["byte_hours"] < fanout["byte_hours"]
    for result in (fanout, linked, p2p):
        assert result["lost"] == 0
        assert result["completeness"] == 1.0
