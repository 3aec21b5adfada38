"""Reading the listing from service nodes' copies: how answers merge with what a device
knew (:func:`merge_listings`) and what a page sequence must look like
(:func:`read_listing_pages`), called directly."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from p2psync.errors import DecodeError
from p2psync.identity import Identity
from p2psync.swarm.constants import CLOCK_SKEW_MS
from p2psync.swarm.directory import read_listing_pages
from p2psync.swarm.listing import (
    ANNOUNCEMENT_TTL_MS,
    CACHED_LISTING_MAX_AGE_MS,
    Snapshot,
    merge_listings,
    sign_announcement,
)

NOW = 1_700_000_000_000
NODE = Identity.from_label("merge/node")
RELAYS = [Identity.from_label(f"merge/relay{i}") for i in range(3)]


def entry(identity: Identity, kind: str, at: int) -> dict[str, Any]:
    return sign_announcement(identity, kind, f"mem:{identity.session_id[:8]}", at)


def listing(*entries: dict[str, Any], now: int = NOW) -> Snapshot:
    return Snapshot.from_announcements(
        {"announcements": list(entries)},
        now,
        ledger=None,
        max_age_ms=CACHED_LISTING_MAX_AGE_MS,
    )


def relays_of(snapshot: Snapshot) -> set[str]:
    return {relay.pubkey for relay in snapshot.relays}


def test_a_registry_outage_ages_the_listing_as_a_whole() -> None:
    """An hour into a registry outage the nodes serve their last copy, an hour old:
    measured from its own newest entry it still lists everything (measured from now,
    every entry would be stale and the device would know no node); and an entry already
    stale then stays out."""
    outage = NOW - 3_600_000
    stale = outage - ANNOUNCEMENT_TTL_MS - CLOCK_SKEW_MS - 60_000
    known = listing(entry(NODE, "node", outage), entry(RELAYS[0], "relay", outage))
    copy = listing(
        entry(NODE, "node", outage),
        entry(RELAYS[0], "relay", outage),
        entry(RELAYS[1], "relay", stale),
    )
    merged = merge_listings(known, [copy, copy], NOW, ledger=None, agree=2)
    assert [node.pubkey for node in merged.nodes] == [NODE.ed25519_public.hex()]
    assert relays_of(merged) == {RELAYS[0].ed25519_public.hex()}


def test_new_relays_need_as_many_answers_as_agree_and_nodes_one() -> None:
    known = listing(entry(NODE, "node", NOW), entry(RELAYS[0], "relay", NOW))
    one = listing(entry(NODE, "node", NOW), entry(RELAYS[1], "relay", NOW))
    both = listing(entry(NODE, "node", NOW), entry(RELAYS[2], "relay", NOW))
    other_node = Identity.from_label("merge/other-node")
    also = listing(entry(other_node, "node", NOW), entry(RELAYS[2], "relay", NOW))
    merged = merge_listings(known, [one, both, also], NOW, ledger=None, agree=2)
    assert relays_of(merged) == {r.ed25519_public.hex() for r in (RELAYS[0], RELAYS[2])}
    assert len(merged.nodes) == 2  # a node one answer names is taken
    assert relays_of(merge_listings(known, [one], NOW, ledger=None, agree=2)) == {
        RELAYS[0].ed25519_public.hex()
    }


def test_pages_must_move_on() -> None:
    """A server that answers an empty page, or a next key that does not move on, would
    keep a reader asking for ever: the read fails instead."""
    page = {"announcements": [entry(RELAYS[0], "relay", NOW)], "next": ["relay", "b" * 64]}

    def read(pages: list[dict[str, Any]]) -> list[object]:
        async def list_page(params: dict[str, Any]) -> Any:
            return pages.pop(0)

        async def main() -> list[object]:
            return await read_listing_pages(list_page)

        return trio.run(main)

    with pytest.raises(DecodeError, match="does not move on"):
        read([page, page])
    with pytest.raises(DecodeError, match="does not move on"):
        read([{"announcements": [], "next": ["relay", "a" * 64]}])
    assert len(read([page, {"announcements": [], "next": None}])) == 1
