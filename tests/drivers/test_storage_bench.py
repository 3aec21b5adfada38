"""The storage benchmark: real devices replay a trace, the nodes say what was stored.

The assertions are relations the real code must produce (the nodes' counts follow the
devices' sends and modes, p2p stores least, what the trace makes unreachable bounds the
sync copies), not the benchmark's own numbers.
"""

from __future__ import annotations

import doctest
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import p2psync
from benchmarks import storage
from p2psync import Scenario, Send, Trace, run_scenario
from p2psync.device.content import MAX_TEXT_CHARS
from p2psync.sim import runner
from p2psync.sim.model import ModelConfig, run_model
from p2psync.sim.replay import LINK_PROFILE
from p2psync.sim.runner import floor_sync_copies_per_message, sibling_away_at_send
from p2psync.sim.scenario import KINDS, MAX_SEND_BYTES, build_trace

H = 3_600_000
M = 60_000

#: Two users for three hours. User 0's desktop comes online at 00:10; user 1's phone is away
#: 01:00–02:00. Every send is made while the sender's other device is online too; the third
#: one reaches user 1 while the phone is away, so its inbound copy waits for the phone.
HAND = Trace(
    users=2,
    duration_ms=3 * H,
    online={
        (0, "phone"): [(0, 3 * H)],
        (0, "desktop"): [(10 * M, 3 * H)],
        (1, "phone"): [(0, H), (2 * H, 3 * H)],
        (1, "desktop"): [(0, 3 * H)],
    },
    sends=[
        Send(20 * M, 0, "phone", 1, 300),
        Send(40 * M, 1, "desktop", 0, 1200),
        Send(90 * M, 0, "desktop", 1, 50),
        Send(150 * M, 1, "phone", 0, 700),
    ],
)

#: User 0's desktop leaves at 00:10 and is back after 26 h, longer than the swarm's TTL
#: (a day); user 1 writes to user 0 at 00:20 and 00:30 while the phone is online.
AWAY = Trace(
    users=2,
    duration_ms=27 * H,
    online={
        (0, "phone"): [(0, H), (26 * H, 27 * H)],
        (0, "desktop"): [(0, 10 * M), (26 * H, 27 * H)],
        (1, "phone"): [(0, H)],
    },
    sends=[Send(20 * M, 1, "phone", 0, 400), Send(30 * M, 1, "phone", 0, 90)],
)


@pytest.fixture(scope="module")
def hand() -> dict[str, dict[str, Any]]:
    return {name: run_scenario(HAND, name) for name in runner.STRATEGIES}


def test_traces_are_deterministic() -> None:
    small = Scenario(users=2, days=1.5, messages_per_user_per_day=8, seed=3)
    assert build_trace(small).sends == build_trace(small).sends
    assert build_trace(small).sends != build_trace(replace(small, seed=4)).sends


def test_trace_types_are_public() -> None:
    assert {"Scenario", "Send", "Trace", "run_scenario"} <= set(p2psync.__all__)


def test_the_nodes_hold_what_each_mode_stores_per_send(hand: dict[str, dict[str, Any]]) -> None:
    """Every figure is read from the nodes; the counts follow the devices' modes: a
    mapped sender stores one copy per recipient device and one per own other device, a
    linked one a copy per account and a sync copy, p2p no sync copy for a sibling online."""
    fanout, linked, p2p = (hand[name] for name in runner.STRATEGIES)
    for result in hand.values():
        assert result["messages"] == len(HAND.sends)
        assert result["source"] == "devices"
        assert result["lost"] == 0
        assert set(result["completeness_by_device"].values()) == {1.0}
        assert 0 < result["peak_bytes"] <= max(result["stored_bytes_by_hour"])
    assert fanout["copies_per_message"] == len(KINDS) + (len(KINDS) - 1)
    assert fanout["sync_copies_per_message"] == len(KINDS) - 1
    assert linked["copies_per_message"] == 2 * linked["sync_copies_per_message"] == 2
    assert p2p["sync_copies_per_message"] <= floor_sync_copies_per_message(HAND) + 0.02
    assert p2p["copies_per_message"] == 1.0
    assert p2p["byte_hours"] < min(linked["byte_hours"], fanout["byte_hours"])
    assert p2p["byte_hours"] >= run_model(HAND, ("p2p",))["floor_byte_hours"] > 0
    assert p2p["peak_bytes"] < min(linked["peak_bytes"], fanout["peak_bytes"])
    # p2p's inbound copies go once both devices hold them: the store count stays, what
    # is held at the end does not.
    assert p2p["stored_copies_by_hour"][-1] < p2p["copies_per_message"] * len(HAND.sends)


def test_latency_is_measured_over_the_emulated_links(hand: dict[str, dict[str, Any]]) -> None:
    """Send → filed crosses device → node → device at least: two link latencies."""
    for result in hand.values():
        assert result["latency_p50_ms"] >= 2 * LINK_PROFILE.latency_ms
        assert result["latency_p50_ms"] <= result["latency_p99_ms"]
    assert hand["p2p"]["sibling_latency_p50_ms"] < 3000  # pushed, not polled


@pytest.mark.slow
@pytest.mark.parametrize("strategy", runner.STRATEGIES)
def test_a_device_away_past_the_ttl_is_whole_only_with_direct_sync(strategy: str) -> None:
    result = run_scenario(AWAY, strategy)
    assert result["lost"] == 0
    assert result["completeness_by_device"]["u0-phone"] == 1.0
    desktop = result["completeness_by_device"]["u0-desktop"]
    assert desktop == 1.0 if strategy == "p2p" else desktop == 0.0


def test_the_floor_counts_sends_whose_sibling_stays_unreachable() -> None:
    """A sibling back within the grace period, or online at the send, needs no copy; one
    back later does; so does one back in time if the sender left first."""
    trace = Trace(
        users=2,
        duration_ms=10 * H,
        online={
            (0, "phone"): [(0, 5 * H)],
            (0, "desktop"): [(H + 5_000, 4 * H)],
            (1, "phone"): [(0, 2 * H)],
            (1, "desktop"): [(2 * H, 3 * H)],
        },
        sends=[
            Send(H, 0, "phone", 1, 10),  # desktop back 5 s later, within the grace
            Send(H - M, 0, "phone", 1, 10),  # desktop back a minute later
            Send(2 * H - 2_000, 1, "phone", 0, 10),  # desktop back after the phone left
            Send(2 * H, 0, "desktop", 1, 10),  # phone online
        ],
    )
    trace.validate()
    assert floor_sync_copies_per_message(trace) == 0.5
    assert sibling_away_at_send(trace) == 0.75
    assert floor_sync_copies_per_message(trace, grace_ms=0) == sibling_away_at_send(trace)


def test_the_docstring_example_runs() -> None:
    finder = doctest.DocTestFinder()
    (test,) = finder.find(runner.run_scenario, "run_scenario", globs={})
    assert test.examples
    outcome = doctest.DocTestRunner().run(test, out=lambda text: None)
    assert outcome.failed == 0


def test_the_plot_has_copies_and_bytes_per_strategy(tmp_path: Path) -> None:
    results = {
        name: {
            "messages": 3,
            "copies_per_message": copies,
            "stored_copies_by_hour": [int(3 * copies), 1, 0],
            "stored_bytes_by_hour": [900 * int(copies), 300, 0],
        }
        for name, copies in (("fanout", 3.0), ("linked", 2.0), ("p2p", 1.0))
    }
    storage.plot(results, str(tmp_path / "plot.png"), Scenario(users=2, days=0.1))
    assert (tmp_path / "plot.png").read_bytes().startswith(b"\x89PNG")


def test_a_send_longer_than_a_device_accepts_is_refused() -> None:
    trace = replace(HAND, sends=[Send(20 * M, 0, "phone", 1, MAX_TEXT_CHARS + 1)])
    with pytest.raises(ValueError, match=f"at most {MAX_TEXT_CHARS} characters"):
        run_scenario(trace, "fanout")


# --- refusing bad traces -------------------------------------------------------------------

ALL_ON = {(u, k): [(0, 3 * H)] for u in (0, 1) for k in KINDS}


def _with(online: dict[Any, Any] | None = None, sends: list[Any] | None = None) -> Trace:
    return replace(
        HAND,
        online=HAND.online if online is None else {**ALL_ON, **online},
        sends=HAND.sends if sends is None else sends,
    )


def _send(**changes: Any) -> Send:
    return replace(Send(20 * M, 0, "phone", 1, 300), **changes)


BAD = {
    "unknown kind": (_with(online={(0, "tablet"): [(0, H)]}), "unknown device kind 'tablet'"),
    "unknown user": (_with(online={(2, "phone"): [(0, H)]}), r"user must be in 0\.\.1, not 2"),
    "key not a pair": (_with(online={0: [(0, H)]}), r"a \(user, kind\) pair"),
    "spans out of order": (
        _with(online={(0, "phone"): [(2 * H, 3 * H), (0, H)]}),
        r"online\[\(0, 'phone'\)\]\[1\]: .* starts before the previous one ends",
    ),
    "spans overlap": (
        _with(online={(1, "desktop"): [(0, 2 * H), (H, 3 * H)]}),
        "spans must be in order and not overlap",
    ),
    "empty span": (_with(online={(0, "phone"): [(H, H)]}), "does not end after it starts"),
    "negative start": (_with(online={(0, "phone"): [(-1, H)]}), r"outside 0\.\."),
    "span past the end": (_with(online={(0, "phone"): [(0, 3 * H + 1)]}), r"outside 0\.\."),
    "span of floats": (_with(online={(0, "phone"): [(0.0, 1.5)]}), "a pair of ints"),
    "spans not a list": (_with(online={(0, "phone"): "0-3600000"}), "list of"),
    "sent while offline": (
        _with(sends=[_send(at_ms=5 * M, kind="desktop")]),
        r"sends\[0\]: user 0's desktop is offline at 300000 ms",
    ),
    "sent as a span ends": (
        _with(sends=[_send(at_ms=H, user=1, to_user=0)]),
        "user 1's phone is offline at 3600000 ms",
    ),
    "sent at a negative time": (_with(sends=[_send(at_ms=-1)]), "at_ms must be an int"),
    "sent after the end": (_with(sends=[_send(at_ms=3 * H)]), "at_ms must be an int"),
    "sent to oneself": (_with(sends=[_send(to_user=0)]), "user 0 sends to itself"),
    "sent to nobody": (_with(sends=[_send(to_user=5)]), "to_user must be a user"),
    "sent from a tablet": (_with(sends=[_send(kind="tablet")]), "unknown device kind"),
    "negative size": (_with(sends=[_send(size=-1)]), "size must be an int"),
    "oversized": (_with(sends=[_send(size=MAX_SEND_BYTES + 1)]), "size must be an int"),
    "size as text": (_with(sends=[_send(size="300")]), "size must be an int"),
    "user as bool": (_with(sends=[_send(user=True)]), "user must be in"),
    "not a Send": (_with(sends=[(20 * M, 0, "phone", 1, 300)]), "expected a Send, not tuple"),
    "no users": (replace(HAND, users=0, online={}, sends=[]), "users must be an int"),
    "no time": (replace(HAND, duration_ms=0), "duration_ms must be an int"),
    "a thousand years": (replace(HAND, duration_ms=10**15), "duration_ms must be an int"),
}


@pytest.mark.parametrize("name", BAD)
def test_a_bad_trace_is_refused(name: str) -> None:
    trace, message = BAD[name]
    with pytest.raises(ValueError, match=message):
        run_scenario(trace, "p2p")


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="strategy must be one of"):
        run_scenario(HAND, "gossip")
    with pytest.raises(ValueError, match="expected a Trace or a Scenario, not dict"):
        run_scenario({"users": 2}, "p2p")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Scenario\.users"):
        Scenario(users=0)
    with pytest.raises(ValueError, match=r"Scenario\.message_bytes"):
        Scenario(message_bytes=(500, 100))
    with pytest.raises(ValueError, match=r"Scenario\.days"):
        Scenario(days=-1)


@settings(max_examples=60, deadline=None)
@given(
    users=st.integers(1, 5),
    days=st.floats(0.1, 8),
    rate=st.floats(0, 60),
    away=st.floats(0, 4),
    seed=st.integers(0, 2**32),
)
def test_generated_traces_are_valid(
    users: int, days: float, rate: float, away: float, seed: int
) -> None:
    scenario = Scenario(users, days, rate, away, seed=seed)
    trace = build_trace(scenario)
    trace.validate()
    assert trace.users == users and trace.seed == seed


@st.composite
def _spans(draw: st.DrawFn, end: int) -> list[tuple[int, int]]:
    points = sorted(draw(st.sets(st.integers(0, end), max_size=8)))
    return list(zip(points[::2], points[1::2], strict=False))


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_a_send_is_accepted_exactly_when_its_device_is_online(data: st.DataObject) -> None:
    end = 10 * H
    online = {(u, k): data.draw(_spans(end)) for u in (0, 1) for k in KINDS}
    send = Send(
        data.draw(st.integers(-H, end + H)),
        data.draw(st.integers(-1, 2)),
        data.draw(st.sampled_from([*KINDS, "tablet"])),
        data.draw(st.integers(-1, 2)),
        data.draw(st.integers(-10, MAX_SEND_BYTES + 10)),
    )
    trace = Trace(users=2, duration_ms=end, online=online, sends=[send])
    fine = (
        0 <= send.at_ms < end
        and send.user in (0, 1)
        and send.to_user in (0, 1)
        and send.to_user != send.user
        and send.kind in KINDS
        and 0 <= send.size <= MAX_SEND_BYTES
        and any(a <= send.at_ms < b for a, b in online[(send.user, send.kind)])
    )
    if fine:
        trace.validate()
    else:
        with pytest.raises(ValueError):
            trace.validate()


_JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=True),
    st.text(max_size=4),
    st.binary(max_size=4),
    st.lists(st.integers(-5, 5), max_size=3),
    st.tuples(st.integers(-5, 5), st.integers(-5, 5)),
)


@settings(max_examples=300, deadline=None)
@given(
    users=_JUNK,
    duration=_JUNK,
    key=st.one_of(_JUNK, st.tuples(_JUNK, _JUNK), st.tuples(st.integers(0, 1), st.just("phone"))),
    spans=st.one_of(_JUNK, st.lists(st.one_of(_JUNK, st.tuples(_JUNK, _JUNK)), max_size=3)),
    # Never a valid send (no junk is a device kind), so the trace is always refused: the
    # point is that whatever is wrong first, the refusal is a ValueError.
    send=st.one_of(_JUNK, st.builds(Send, _JUNK, _JUNK, _JUNK, _JUNK, _JUNK)),
)
def test_junk_raises_value_error_only(
    users: Any, duration: Any, key: Any, spans: Any, send: Any
) -> None:
    try:
        hash(key)
    except TypeError:
        key = repr(key)
    trace = Trace(users=users, duration_ms=duration, online={key: spans}, sends=[send])
    with pytest.raises(ValueError):
        trace.validate()


def test_the_report_carries_the_traces_floor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The JSON and the goals carry the byte·hours floor the model computes from the
    trace, beside the figures measured (here the model's own, standing in for the device
    workers: what is checked is the report's wiring, not the figures)."""
    quick = build_trace(replace(storage.QUICK, seed=1))
    modelled = run_model(quick)

    def measured(
        scenario: Scenario, console: Any, sync_copy_ttl_ms: int | None = None
    ) -> dict[str, dict[str, Any]]:
        latencies = dict.fromkeys(
            (
                "latency_p50_ms",
                "latency_p99_ms",
                *storage.SIBLING_FIGURES,
            ),
            1.0,
        )
        return {
            name: {**figures, **latencies, "wall_s": 0.0}
            for name, figures in modelled["strategies"].items()
        }

    monkeypatch.setattr(storage, "run_strategies", measured)
    path = tmp_path / "storage.json"
    report = storage.run_storage_bench(quick=True, json_path=str(path))
    written = json.loads(path.read_text())
    assert written["floor_byte_hours"] == report["floor_byte_hours"] == modelled["floor_byte_hours"]
    share = modelled["floor_byte_hours"] / modelled["strategies"]["fanout"]["byte_hours"]
    assert f"this trace's floor {share:.1%}" in capsys.readouterr().err


#: User 0's desktop is away from 00:10 to 03:00 while the phone writes at 01:00.
DESKTOP_AWAY = Trace(
    users=2,
    duration_ms=4 * H,
    online={
        (0, "phone"): [(0, 4 * H)],
        (0, "desktop"): [(0, 10 * M), (3 * H, 4 * H)],
        (1, "phone"): [(0, 4 * H)],
        (1, "desktop"): [(0, 4 * H)],
    },
    sends=[Send(H, 0, "phone", 1, 300)],
)


def test_a_sync_copy_that_expires_first_is_made_good_when_the_siblings_meet() -> None:
    """With sync copies kept 30 min, the one stored as the grace period ends is gone
    before the desktop comes back: the nodes held it for less, and the desktop still gets
    the message, from the phone directly."""
    kept = run_scenario(DESKTOP_AWAY, "p2p")
    short = run_scenario(DESKTOP_AWAY, "p2p", sync_copy_ttl_ms=30 * M)
    for result in (kept, short):
        assert result["sync_copies_per_message"] == 1.0
        assert result["lost"] == 0
        assert set(result["completeness_by_device"].values()) == {1.0}
    assert short["byte_hours"] < kept["byte_hours"]
    # Back at 03:00 with the phone online, the desktop files it within a minute either
    # way: from its swarm, or from the phone once their session is up.
    for result in (kept, short):
        assert 0 < result["sibling_catch_up_max_ms"] == result["sibling_catch_up_p50_ms"] < 60_000
    floor = run_model(DESKTOP_AWAY, ("p2p",), config=ModelConfig(sync_copy_ttl_ms=30 * M))
    assert short["byte_hours"] >= floor["floor_byte_hours"] > 0
    with pytest.raises(ValueError, match="p2p only"):
        run_scenario(DESKTOP_AWAY, "linked", sync_copy_ttl_ms=30 * M)
