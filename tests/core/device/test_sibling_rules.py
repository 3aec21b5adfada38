"""The rules for siblings' sync copies (:mod:`p2psync.device.sibling_rules`), as tables."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from overlay.constants import INTROSET_LIFETIME_MS, INTROSET_REPUBLISH_MS, PATH_PING_INTERVAL_MS
from p2psync.device.sibling_rules import (
    TAKEOVER_GRACES,
    FallBack,
    SiblingTimings,
    complete_until_after_resync,
    deleted_once_acknowledged,
    fall_back_plan,
    publish_terms,
    push_at,
    sibling_timings,
    stands_in,
    syncs_directly,
)
from p2psync.swarm.constants import NAMESPACE_MESSAGES
from p2psync.sync.presence import KEEPALIVE_S

TABLET = "05" + "ab" * 32


@dataclass(frozen=True)
class Waiting:
    inbound: bool = False
    fell_back: bool = False
    relayed_from: str | None = None


@pytest.mark.parametrize(
    ("pending", "connected", "plan"),
    [
        (None, set(), FallBack.NOTHING),  # acknowledged meanwhile
        (Waiting(fell_back=True), set(), FallBack.NOTHING),  # decided before a restart
        (Waiting(inbound=True), set(), FallBack.SETTLED),  # in the account's swarm already
        (Waiting(relayed_from=TABLET), {TABLET}, FallBack.SETTLED),  # its sender is here
        (Waiting(relayed_from=TABLET), set(), FallBack.STORE),  # its sender went away
        (Waiting(), {TABLET}, FallBack.STORE),  # sent here: this device stores it
    ],
)
def test_what_a_missed_acknowledgement_leads_to(
    pending: Waiting | None, connected: set[str], plan: FallBack
) -> None:
    assert fall_back_plan(pending, connected) is plan


@pytest.mark.parametrize(
    ("others", "age_ms", "stands"),
    [(1, 0, True), (1, 30_000, True), (1, 30_001, False), (0, 0, False)],
)
def test_standing_in_is_for_news_and_for_someone(others: int, age_ms: int, stands: bool) -> None:
    assert stands_in(others, age_ms, takeover_ms=30_000) is stands


def test_only_a_received_message_leaves_the_account_swarm_early() -> None:
    digest = bytes(32)
    assert deleted_once_acknowledged([Waiting()], TABLET, digest) == []
    assert deleted_once_acknowledged([Waiting(inbound=True)], TABLET, digest) == [
        (TABLET, NAMESPACE_MESSAGES, digest)
    ]
    assert deleted_once_acknowledged([], TABLET, digest) == []


def test_the_watermark_moves_up_to_the_resyncs_start_less_the_grace_and_never_back() -> None:
    assert complete_until_after_resync(0, started_ms=50_000, grace_ms=10_000) == 40_000
    assert complete_until_after_resync(45_000, started_ms=50_000, grace_ms=10_000) == 45_000


def test_without_a_keep_alive_the_overlay_and_live_sync_keep_their_own_intervals() -> None:
    assert sibling_timings(10.0, None) == SiblingTimings(
        10_000, TAKEOVER_GRACES * 10_000, KEEPALIVE_S, PATH_PING_INTERVAL_MS, INTROSET_REPUBLISH_MS
    )


@pytest.mark.parametrize(
    ("keepalive_s", "republish_ms"),
    [
        # 2.5 min of republishing per 5 s of pings, never sooner than the overlay's own
        (1.0, INTROSET_REPUBLISH_MS),
        (10.0, 2 * INTROSET_REPUBLISH_MS),
        # and never later than half an introset's life: a sibling must find one unexpired
        (3_600.0, INTROSET_LIFETIME_MS // 2),
    ],
)
def test_a_keep_alive_sets_the_session_and_path_checks_and_stretches_republishing(
    keepalive_s: float, republish_ms: int
) -> None:
    timings = sibling_timings(2.5, keepalive_s)
    assert (timings.grace_ms, timings.takeover_ms) == (2_500, TAKEOVER_GRACES * 2_500)
    assert timings.session_keepalive_s == keepalive_s
    assert timings.path_ping_ms == int(keepalive_s * 1000)
    assert timings.republish_ms == republish_ms


def test_a_message_stood_in_for_names_its_origin_and_the_takeover_grace() -> None:
    timings = sibling_timings(10.0, None)
    assert publish_terms(None, timings) == (None, ())
    assert publish_terms(TABLET, timings) == (timings.takeover_ms, (TABLET,))


def test_a_received_message_goes_to_the_siblings_after_a_drawn_delay_a_sent_one_at_once() -> None:
    drawn: list[tuple[float, float]] = []

    def draw(low: float, high: float) -> float:
        drawn.append((low, high))
        return 7.5

    assert push_at(1_000, False, (2.0, 20.0), draw) == 1_000
    assert drawn == []
    assert push_at(1_000, True, (2.0, 20.0), draw) == 8_500
    assert drawn == [(2.0, 20.0)]


@pytest.mark.parametrize(
    ("direct_sync", "keys", "secret", "runs"),
    [
        (True, {"tablet": b"k"}, b"s", True),
        (False, {"tablet": b"k"}, b"s", False),
        (True, {}, b"s", False),
        (True, {"tablet": b"k"}, None, False),  # no secret: no introset to find them by
    ],
)
def test_sibling_sync_runs_only_with_a_sibling_to_find_and_the_secret_to_find_it_by(
    direct_sync: bool, keys: dict[str, bytes], secret: bytes | None, runs: bool
) -> None:
    assert syncs_directly(direct_sync, keys, secret) is runs
