"""When a node or relay re-reads the listing and when it announces (pure rules)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from p2psync.swarm.constants import LISTING_SETTLING_S
from p2psync.swarm.listing import RelayInfo, Snapshot
from p2psync.swarm.ring import NodeInfo
from p2psync.swarm.settling import announce_due, listed_members, next_listing_read_s


@pytest.mark.parametrize(
    ("previous_s", "changed", "expected_s"),
    [
        (None, False, LISTING_SETTLING_S),  # a start
        (8.0, True, LISTING_SETTLING_S),  # a change
        (8.0, False, 16.0),  # doubling while nothing changes
        (40.0, False, 60.0),  # up to the refresh interval
        (60.0, False, 60.0),
    ],
)
def test_the_listing_is_reread_soon_after_a_change_and_then_ever_less_often(
    previous_s: float | None, changed: bool, expected_s: float
) -> None:
    assert next_listing_read_s(previous_s, changed, 60.0) == expected_s


def test_a_refresh_settles_no_later_than_the_refresh_interval() -> None:
    assert next_listing_read_s(None, False, 0.5) == 0.5


@pytest.mark.parametrize(
    ("announced_at_ms", "now_ms", "due"),
    [
        (None, 1_000, True),  # never announced, failed, or left out of the listing
        (1_000, 1_000, False),
        (1_000, 108_999, False),
        (1_000, 109_000, True),  # a read up to 10 % early (the reads' jitter) counts
    ],
)
def test_an_announcement_is_due_an_interval_after_the_last_one(
    announced_at_ms: int | None, now_ms: int, due: bool
) -> None:
    assert announce_due(announced_at_ms, now_ms, 120_000) is due


def test_a_relay_that_announced_again_is_no_change_but_one_at_a_new_url_is() -> None:
    """Every announcement re-signs a relay's contact: that alone must not bring the next
    read soon, or every announcer would read every second."""
    relay = RelayInfo("aa" * 32, "mem:relay0", b"contact of 12:00")
    listing = Snapshot((NodeInfo("bb" * 32, "mem:node0"),), (relay,))
    again = replace(listing, relays=(replace(relay, contact=b"contact of 12:02"),))
    moved = replace(listing, relays=(replace(relay, url="mem:relay0-moved"),))
    assert listed_members(again) == listed_members(listing)
    assert listed_members(moved) != listed_members(listing)
    assert listed_members(replace(listing, nodes=())) != listed_members(listing)
