"""The trace-level storage model: on hand-built traces its figures are the ones worked out
by hand from the rules of DESIGN.md §7 and the device layer; on seeded traces it agrees
with real devices within 2 %; it reports progress, refuses what it cannot model, and
writes the §9 JSON with every figure marked as modelled."""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import model_bench
from benchmarks.model_bench import run_model_bench
from p2psync.clock import TEST_EPOCH_MS
from p2psync.device.content import SyncSent, Text, encode_content
from p2psync.envelope import seal_envelope
from p2psync.identity import Identity
from p2psync.sim import model
from p2psync.sim.model import (
    FIGURES,
    TOLERANCE,
    VALIDATED,
    VALIDATION,
    ModelConfig,
    relative_errors,
    run_model,
    validate_model,
)
from p2psync.sim.scenario import (
    DAY_MS,
    Scenario,
    Send,
    Trace,
    TraceFileError,
    build_trace,
    dump_trace,
)

H = 3_600_000
S = 1_000
SETUP = ModelConfig().session_setup_ms
#: Hand-worked figures need delays fixed: every deletion goes out this long after its
#: moment, and a message read from the swarm is offered to the sibling this long after.
DELETE, PUSH = 165 * S, 11 * S
FIXED = ModelConfig(delete_delay_s=(DELETE / S,) * 2, push_delay_s=(PUSH / S,) * 2)


def _stored(content: Text | SyncSent) -> int:
    """What a node stores for ``content``: its sealed envelope, as a device makes it."""
    kind, body = encode_content(content)
    sender, recipient = Identity.from_label("test/a"), Identity.from_label("test/b")
    return len(seal_envelope(sender, recipient.x25519_public, kind, body, TEST_EPOCH_MS + 5))


USER = Identity.from_label("test/user").session_id
#: The three kinds of copy of a 300-character message.
PLAIN = _stored(Text(USER, "x" * 300))
WITH_ID = _stored(Text(USER, "x" * 300, bytes(range(32))))
SYNC = _stored(SyncSent(bytes(32), USER, TEST_EPOCH_MS, "x" * 300))


def _trace(duration_ms: int, online: dict[tuple[int, str], list[tuple[int, int]]]) -> Trace:
    """Two users; user 0's phone writes 300 characters to user 1 an hour in; devices not
    named are online throughout."""
    full = [(0, duration_ms)]
    return Trace(
        users=2,
        duration_ms=duration_ms,
        online={(u, k): online.get((u, k), full) for u in (0, 1) for k in ("phone", "desktop")},
        sends=[Send(H, 0, "phone", 1, 300)],
    )


def _figures(trace: Trace) -> dict[str, dict[str, Any]]:
    return run_model(trace, config=FIXED)["strategies"]  # type: ignore[no-any-return]


def test_copy_sizes_are_the_sealed_envelopes() -> None:
    # Padded to buckets: the id and recipient a sync copy names seldom move it up one.
    assert (PLAIN - 48) % 256 == 0 and PLAIN <= WITH_ID <= SYNC
    trace = _trace(3 * H, {})
    result = _figures(trace)
    # linked stores the recipient's copy and the sync copy for a whole day.
    assert result["linked"]["byte_hours"] == round((PLAIN + SYNC) * 24, 1)
    assert result["fanout"]["peak_bytes"] == PLAIN + WITH_ID + SYNC


def test_a_send_while_the_sibling_is_away_two_days() -> None:
    """User 0's desktop is away the first two days: p2p's one sync copy lives its whole
    day, the recipient's copy goes as soon as it can (both of their devices are on: the
    offer, then the deletion); without direct sync the desktop, back after the TTL, never
    gets the message."""
    trace = _trace(3 * DAY_MS, {(0, "desktop"): [(2 * DAY_MS, 3 * DAY_MS)]})
    result = run_model(trace, config=FIXED)
    assert result["floor_sync_copies_per_message"] == 1.0
    p2p, linked, fanout = (result["strategies"][s] for s in ("p2p", "linked", "fanout"))
    assert (p2p["copies_per_message"], p2p["sync_copies_per_message"]) == (2.0, 1.0)
    assert p2p["byte_hours"] == round(SYNC * 24 + PLAIN * (PUSH + DELETE) / H, 1)
    assert p2p["peak_bytes"] == SYNC + PLAIN
    assert (p2p["lost"], p2p["completeness"]) == (0, 1.0)  # re-synced when they meet
    assert (linked["copies_per_message"], linked["byte_hours"]) == (
        2.0,
        round((PLAIN + SYNC) * 24, 1),
    )
    assert linked["completeness"] == fanout["completeness"] == 0.0
    assert fanout["copies_per_message"] == 3.0
    assert fanout["byte_hours"] == round((PLAIN + WITH_ID + SYNC) * 24, 1)
    for figures in result["strategies"].values():
        assert figures["source"] == "model" and figures["messages"] == 1
    # §7 keeps the sync copy until the desktop has it, which is after it expired; the
    # recipient's copy costs nothing, both their devices being online at the send.
    assert result["floor_byte_hours"] == round(SYNC * 24, 1)


def test_a_sender_leaving_inside_the_grace_period_stores_the_sync_copy_as_it_goes() -> None:
    """The phone leaves 5 s after writing; the desktop comes at 2 h and reads the sync copy
    from the swarm, but only the phone, back at 3 h, can delete it, once they meet (and
    its deletion goes out)."""
    trace = _trace(
        4 * H,
        {(0, "phone"): [(0, H + 5 * S), (3 * H, 4 * H)], (0, "desktop"): [(2 * H, 4 * H)]},
    )
    p2p = _figures(trace)["p2p"]
    assert p2p["sync_copies_per_message"] == 1.0
    recipient = PLAIN * (PUSH + DELETE)
    assert p2p["byte_hours"] == round(
        (SYNC * ((3 * H + SETUP + DELETE) - (H + 5 * S)) + recipient) / H, 1
    )
    assert p2p["completeness"] == 1.0
    # The floor stores the sync copy as the phone leaves and drops it as the desktop comes.
    assert run_model(trace, ("p2p",))["floor_byte_hours"] == round(SYNC * (H - 5 * S) / H, 1)


@pytest.mark.parametrize(
    ("arrives_s", "sync_copies", "floor", "sync_lives_s"),
    [
        (0, 0.0, 0.0, 0),  # already in session
        (3, 0.0, 0.0, 0),  # session up at 8 s, inside the 10 s grace
        (6, 1.0, 0.0, 1),  # online at 6 s, but the session is only up at 11 s
        (12, 1.0, 1.0, 7),  # after the grace: a copy from 10 s to 17 s
    ],
)
def test_a_sibling_arriving_around_the_grace_period(
    arrives_s: int, sync_copies: float, floor: float, sync_lives_s: int
) -> None:
    trace = _trace(3 * H, {(0, "desktop"): [(H + arrives_s * S if arrives_s else 0, 3 * H)]})
    result = run_model(trace, ("p2p",), config=FIXED)
    p2p = result["strategies"]["p2p"]
    assert p2p["sync_copies_per_message"] == sync_copies
    assert result["floor_sync_copies_per_message"] == floor
    sync = SYNC * (sync_lives_s * S + DELETE) if sync_copies else 0
    assert p2p["byte_hours"] == round((sync + PLAIN * (PUSH + DELETE)) / H, 1)


def test_the_recipients_copy_waits_until_both_their_devices_meet() -> None:
    trace = _trace(6 * H, {(1, "phone"): [(5 * H, 6 * H)]})
    result = _figures(trace)
    assert result["p2p"]["copies_per_message"] == 1.0
    assert result["p2p"]["byte_hours"] == round(PLAIN * (4 * H + SETUP + DELETE) / H, 1)
    assert result["p2p"]["stored_copies_by_hour"] == [0, 1, 1, 1, 1, 1, 0, 0, 0]


@pytest.mark.parametrize(
    ("phone", "desktop", "floor_hours"),
    [
        ([(5 * H, 6 * H)], [(0, 6 * H)], 4),  # the desktop at the send, the phone at 5 h
        ([(0, 2 * H)], [(5 * H, 6 * H)], 4),  # the phone reads it and leaves; the desktop
        ([(4 * H, 6 * H)], [(3 * H, 6 * H)], 3),  # both away at the send
        ([], [], 24),  # nobody comes: it lives the whole TTL, and is lost
    ],
)
def test_the_recipients_copy_floor_lasts_until_each_of_their_devices_has_come(
    phone: list[tuple[int, int]], desktop: list[tuple[int, int]], floor_hours: int
) -> None:
    """User 0's devices are online throughout, so no sync copy is owed: the floor is the
    recipient's copy alone, from the send (1 h) until both of user 1's devices have been
    online, or the TTL."""
    online = {(1, "phone"): phone, (1, "desktop"): desktop}
    result = run_model(_trace(2 * DAY_MS, online), ("p2p",))
    assert result["floor_byte_hours"] == round(PLAIN * floor_hours, 1)
    assert result["floor_byte_hours"] <= result["strategies"]["p2p"]["byte_hours"]


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    profile=st.sampled_from(("office", "mobile")),
    long_offline_days=st.sampled_from((0.0, 1.2)),
)
def test_no_strategy_holds_less_than_the_floor(
    seed: int, profile: str, long_offline_days: float
) -> None:
    """p2p's rules are §7's with delays: never below the floor."""
    scenario = Scenario(
        users=4, days=2.5, profile=profile, long_offline_days=long_offline_days, seed=seed
    )
    result = run_model(scenario)
    p2p = result["strategies"]["p2p"]["byte_hours"]
    assert 0 < result["floor_byte_hours"] <= p2p


def test_recipients_away_past_the_ttl_lose_the_message() -> None:
    trace = _trace(3 * DAY_MS, {(1, k): [(2 * DAY_MS, 3 * DAY_MS)] for k in ("phone", "desktop")})
    for figures in _figures(trace).values():
        assert (figures["lost"], figures["completeness"]) == (1, 0.0)


def test_a_fanout_sync_copy_goes_when_the_sibling_reads_it() -> None:
    trace = _trace(6 * H, {(0, "desktop"): [(4 * H, 6 * H)]})
    fanout = _figures(trace)["fanout"]
    assert fanout["byte_hours"] == round((PLAIN + WITH_ID) * 24 + SYNC * (3 * H + DELETE) / H, 1)


def test_nobody_online_until_the_settling_period() -> None:
    """Every device comes online when the trace ends: copies still waiting go then."""
    trace = Trace(
        users=2,
        duration_ms=2 * H,
        online={(0, "phone"): [(0, 2 * H)]},
        sends=[Send(H, 0, "phone", 1, 300)],
    )
    p2p = _figures(trace)["p2p"]
    # The recipient's copy waits for their session and the offer of the device that read
    # it, the sync copy (stored after the grace) for the sender's session: both from the
    # settling period on; then their deletions go out.
    assert p2p["byte_hours"] == round(
        (PLAIN * (H + max(SETUP, PUSH) + DELETE) + SYNC * (H + SETUP - 10 * S + DELETE)) / H, 1
    )
    assert (p2p["lost"], p2p["completeness"]) == (0, 1.0)


def test_the_model_refuses_what_it_cannot_model() -> None:
    with pytest.raises(ValueError, match="strategies must be some of"):
        run_model(_trace(3 * H, {}), ("gossip",))
    with pytest.raises(ValueError, match="expected a Trace or a Scenario, not dict"):
        run_model({"users": 2})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="trace sends"):
        run_model(replace(_trace(3 * H, {}), sends=[Send(H, 0, "phone", 0, 3)]))
    with pytest.raises(ValueError, match="a device sends at most 16000 characters"):
        run_model(replace(_trace(3 * H, {}), sends=[Send(H, 0, "phone", 1, 20_000)]))


def test_the_floor_is_the_device_benchmarks() -> None:
    """The same definition as the device benchmark's, computed in the model's pass."""
    from p2psync.sim.runner import floor_sync_copies_per_message

    for profile in ("office", "mobile"):
        trace = build_trace(Scenario(users=6, days=3, profile=profile, seed=4))
        assert run_model(trace, ("p2p",))["floor_sync_copies_per_message"] == (
            floor_sync_copies_per_message(trace)
        )


def test_a_scenario_is_modelled_with_progress() -> None:
    seen: list[float] = []
    result = run_model(Scenario(users=30, days=3, seed=2), on_progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) > 50
    fanout, linked, p2p = (result["strategies"][s] for s in ("fanout", "linked", "p2p"))
    assert fanout["copies_per_message"] == 3.0 and linked["copies_per_message"] == 2.0
    floor = result["floor_sync_copies_per_message"]
    assert floor <= p2p["sync_copies_per_message"] <= floor + 0.02
    assert p2p["byte_hours"] < linked["byte_hours"] < fanout["byte_hours"]
    assert p2p["completeness"] == 1.0


def test_relative_errors() -> None:
    modelled = {"p2p": {"copies_per_message": 1.5, "byte_hours": 0.0, "peak_bytes": 99}}
    measured = {"p2p": {"copies_per_message": 1.2, "byte_hours": 0.0, "peak_bytes": 100}}
    assert relative_errors(modelled, measured) == {
        "p2p": {"copies_per_message": 0.25, "byte_hours": 0.0, "peak_bytes": -0.01}
    }
    measured["p2p"]["byte_hours"] = 0.0
    modelled["p2p"]["byte_hours"] = 3.0
    assert relative_errors(modelled, measured)["p2p"]["byte_hours"] == float("inf")


def _fake_measure(
    scenario: Scenario, sync_copy_ttl_ms: int | None = None
) -> dict[str, dict[str, Any] | str]:
    """Stands in for the device run in :func:`run_model_bench`'s worker: the model itself,
    3 % high on byte·hours, and a ``fanout`` run that failed."""
    config = ModelConfig(sync_copy_ttl_ms=sync_copy_ttl_ms)
    figures: dict[str, dict[str, Any]] = run_model(scenario, config=config)["strategies"]
    measured: dict[str, dict[str, Any] | str] = {
        name: {**f, "byte_hours": f["byte_hours"] / 1.03} for name, f in figures.items()
    }
    return measured | {"fanout": "BenchmarkError: no figures"}


def test_the_bench_writes_modelled_figures_with_their_validation_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model_bench, "measure_strategies", _fake_measure)
    path = tmp_path / "bench.json"
    report = run_model_bench(40, 2.0, 10.0, "mobile", 3, str(path), None)
    assert json.loads(path.read_text()) == json.loads(json.dumps(report))
    assert report["scenario"]["profile"] == "mobile" and report["scenario"]["users"] == 40
    assert report["validation"]["scenario"]["profile"] == "mobile"
    assert report["validation"]["failed"] == {"fanout": "BenchmarkError: no figures"}
    assert report["strategies"]["fanout"]["validation_error"] is None
    for name, figures in report["strategies"].items():
        assert set(figures) == {*FIGURES, "validation_error"}
        assert figures["source"] == "model"
        if name != "fanout":
            assert figures["validation_error"]["byte_hours"] == pytest.approx(0.03, abs=2e-4)
    assert 0 <= report["floor_sync_copies_per_message"] <= 1


def test_the_bench_models_a_trace_file(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    dump_trace(_trace(3 * DAY_MS, {(0, "desktop"): [(2 * DAY_MS, 3 * DAY_MS)]}), path)
    report = run_model_bench(trace_path=str(path), validation=None)
    assert report["scenario"] == {
        "trace": str(path),
        "messages": 1,
        "devices": 4,
        "sync_copy_ttl_ms": ModelConfig().ttl_ms,
    }
    assert report["strategies"]["p2p"]["sync_copies_per_message"] == 1.0
    assert report["strategies"]["p2p"]["validation_error"] is None
    assert report["validation"] is None


PROFILES = ("office", "mobile")


@pytest.fixture(scope="module")
def device_runs() -> dict[str, dict[str, dict[str, Any]]]:
    """Every strategy on both profiles' validation traces on real devices
    (:func:`p2psync.run_scenario`), in worker processes, one per core: the six runs take
    four minutes one after another; ``p2p``'s, the longest, go first."""
    from p2psync.sim.runner import run_scenario

    jobs = [(p, s) for s in sorted(model.STRATEGIES, key=lambda s: s != "p2p") for p in PROFILES]
    workers = min(2, os.cpu_count() or 1)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {
            job: pool.submit(run_scenario, build_trace(replace(VALIDATION, profile=job[0])), job[1])
            for job in jobs
        }
        runs: dict[str, dict[str, dict[str, Any]]] = {p: {} for p in PROFILES}
        for (profile, strategy), future in futures.items():
            runs[profile][strategy] = future.result()
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("profile", PROFILES)
def test_the_model_agrees_with_real_devices(
    profile: str, device_runs: dict[str, dict[str, dict[str, Any]]]
) -> None:
    """The check the model's figures are trusted on: the same seeded trace on real devices
    and through the model, within the tolerance."""
    trace = build_trace(replace(VALIDATION, profile=profile))
    measured = device_runs[profile]
    assert set(measured) == set(model.STRATEGIES)
    errors = validate_model(trace, measured)
    for name, figures in measured.items():
        assert figures["source"] == "devices", "run_scenario is not the device run"
        for key in VALIDATED:
            assert abs(errors[name][key]) <= TOLERANCE, (name, key, errors[name], figures)


def test_the_bench_refuses_a_bad_trace_file_before_starting(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("users,2\nduration_ms,5\nsend,1,0,phone,1,5\n")
    with pytest.raises(TraceFileError, match=r"t\.csv:3: user 0's phone is offline at 1 ms"):
        run_model_bench(trace_path=str(path))  # no device run started, nothing to wait for


def test_shorter_lived_sync_copies_hold_less_and_lose_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sync copy of a send whose sibling is away two days lives 6 h rather than the
    TTL; the desktop still has the message in the end (the siblings meet), and the floor
    follows the shorter life. The bench carries the setting to the model and to the
    devices it is validated on."""
    trace = _trace(3 * DAY_MS, {(0, "desktop"): [(2 * DAY_MS, 3 * DAY_MS)]})
    six_hours = 6 * H
    short = run_model(trace, ("p2p",), config=replace(FIXED, sync_copy_ttl_ms=six_hours))
    p2p = short["strategies"]["p2p"]
    assert p2p["byte_hours"] == round(SYNC * 6 + PLAIN * (PUSH + DELETE) / H, 1)
    assert (p2p["lost"], p2p["completeness"]) == (0, 1.0)
    assert short["floor_byte_hours"] == round(SYNC * 6, 1)
    monkeypatch.setattr(model_bench, "measure_strategies", _fake_measure)
    scenario = dict(users=40, days=2.0, rate=10.0, profile="office", seed=3)
    default = run_model_bench(**scenario)  # type: ignore[arg-type]
    shorter = run_model_bench(**scenario, sync_copy_ttl_ms=six_hours)  # type: ignore[arg-type]
    assert shorter["scenario"]["sync_copy_ttl_ms"] == six_hours
    assert shorter["strategies"]["p2p"]["byte_hours"] < default["strategies"]["p2p"]["byte_hours"]
    assert shorter["strategies"]["fanout"] == default["strategies"]["fanout"]
    assert shorter["strategies"]["p2p"]["validation_error"]["byte_hours"] == pytest.approx(
        0.03, abs=2e-4
    )
