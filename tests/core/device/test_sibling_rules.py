"""The rules for siblings' sync copies (:mod:`p2psync.device.sibling_rules`), as tables."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from p2psync.device.sibling_rules import (
    FallBack,
    complete_until_after_resync,
    deleted_once_acknowledged,
    fall_back_plan,
    stands_in,
)
from p2psync.swarm.constants import NAMESPACE_MESSAGES

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
