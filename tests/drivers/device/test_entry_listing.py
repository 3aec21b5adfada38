"""Siblings deal their entry relays out on one relay listing: the newest either read,
passed over their session, so a device that read the registry later than its sibling
does not deal the relays differently (and could not share an entry relay with it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from overlay.endpoint import Endpoint, open_endpoint
from p2psync.device.relay_listing import RELAY_REREAD_AFTER_FAILURE_S

from ..swarm.helpers import wait_until
from .conftest import SyncEndpoints
from .helpers import device, open_world, pair


@pytest.mark.parametrize("mode", ["linked", "mapped"])
async def test_a_listing_one_sibling_read_becomes_the_one_both_deal_entries_on(
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
    mode: str,
    sync_endpoints: SyncEndpoints,
) -> None:
    """A relay joins; only the phone reads the listing again (a path of its own died,
    through a relay none of the desktop's paths use). The desktop, which would not read it
    for hours, takes the phone's listing over their session within seconds (the joined
    relay's contact with it), and their paths' entries stay apart."""
    async with (
        open_world(relays=8) as network,
        device(network, tmp_path, "phone", mode) as phone,
        device(network, tmp_path, "desktop", mode) as desktop,
    ):
        await pair(phone, desktop)
        await wait_until(
            lambda: (
                phone.sync_status().connected_siblings == {desktop.whoami().device_id}
                and desktop.sync_status().connected_siblings == {phone.whoami().device_id}
            )
        )
        first = phone.sync_status().entry_listing
        assert first is not None and desktop.sync_status().entry_listing == first
        await network.add_relays(1)
        [joined] = {r.public_key for r in network.relays} - first
        phone_paths = sync_endpoints[phone.whoami().overlay_key].paths
        desktop_paths = sync_endpoints[desktop.whoami().overlay_key].paths
        phone_only = {h.pubkey for p in phone_paths for h in p.hops} - {
            h.pubkey for p in desktop_paths for h in p.hops
        }
        assert phone_only, "every relay of the phone's paths is on the desktop's too"
        [victim] = [r for r in network.relays if r.public_key == min(phone_only)]
        await network.stop_relay(victim)
        await wait_until(
            lambda: joined in (phone.sync_status().entry_listing or ()),
            limit_s=10 * RELAY_REREAD_AFTER_FAILURE_S,
        )
        read_at = trio.current_time()
        await wait_until(
            lambda: desktop.sync_status().entry_listing == phone.sync_status().entry_listing
        )
        assert trio.current_time() - read_at < 5  # over the session, not a re-read hours on
        desktop_endpoint = sync_endpoints[desktop.whoami().overlay_key]
        assert joined in desktop_endpoint.relays  # its contact came with the listing
        await trio.sleep(30)  # a path check on each side: entries follow the listing
        phone_entries = {p.hops[0].pubkey for p in sync_endpoints[phone.whoami().overlay_key].paths}
        assert phone_entries.isdisjoint(p.hops[0].pubkey for p in desktop_endpoint.paths)


@pytest.mark.parametrize("route", ["direct", "onion"])
async def test_a_listing_too_long_to_pass_on_has_the_sibling_read_the_registry_at_once(
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sync_endpoints: SyncEndpoints,
    route: str,
) -> None:
    """As above, on a network whose listing grows past what one record takes (8 relays
    here, 512 for real): the phone's read goes to the desktop as its read time alone,
    both deal by hash alone, and the desktop reads the registry at once, so that it
    deals on the relays the phone does, not on the 8 it knew. On the onion route each
    device's onion pool, which deals its entries the same way, takes each read too."""
    monkeypatch.setattr("p2psync.sync.records.MAX_RELAYS_PER_RECORD", 8)
    pools: list[Endpoint] = []

    @asynccontextmanager
    async def recording(*args: Any, **kwargs: Any) -> AsyncIterator[Endpoint]:
        async with open_endpoint(*args, **kwargs) as endpoint:
            pools.append(endpoint)
            yield endpoint

    monkeypatch.setattr("p2psync.device.access.open_endpoint", recording)

    # The pools read no listing of their own: what they learn, the sibling endpoint's
    # reads gave them.
    async def no_reads(*_: object, **__: object) -> None:
        await trio.sleep_forever()

    monkeypatch.setattr("p2psync.device.access.keep_relays_current", no_reads)
    async with (
        open_world(relays=8) as network,
        device(network, tmp_path, "phone", "linked", route=route) as phone,
        device(network, tmp_path, "desktop", "linked", route=route) as desktop,
    ):
        await pair(phone, desktop)
        await wait_until(
            lambda: desktop.sync_status().connected_siblings == {phone.whoami().device_id}
        )
        assert len(desktop.sync_status().entry_listing or ()) == 8
        await network.add_relays(1)
        [joined] = {r.public_key for r in network.relays} - set(
            desktop.sync_status().entry_listing or ()
        )
        phone_endpoint = sync_endpoints[phone.whoami().overlay_key]
        desktop_endpoint = sync_endpoints[desktop.whoami().overlay_key]
        # A path of the phone's dies through a relay none of the desktop's paths use, so
        # the desktop has no reason of its own to read the registry again.
        phone_only = {h.pubkey for p in phone_endpoint.paths for h in p.hops} - {
            h.pubkey for p in desktop_endpoint.paths for h in p.hops
        }
        assert phone_only, "every relay of the phone's paths is on the desktop's too"
        [victim] = [r for r in network.relays if r.public_key == min(phone_only)]
        await network.stop_relay(victim)
        await wait_until(
            lambda: joined in phone_endpoint.relays, limit_s=10 * RELAY_REREAD_AFTER_FAILURE_S
        )
        read_at = trio.current_time()
        await wait_until(lambda: desktop.sync_status().entry_listing == frozenset())
        await wait_until(
            lambda: joined in desktop_endpoint.relays, limit_s=10 * RELAY_REREAD_AFTER_FAILURE_S
        )
        # Its own read, asked for (at most one a minute), not one hours on.
        assert trio.current_time() - read_at <= RELAY_REREAD_AFTER_FAILURE_S + 5
        assert len(pools) == (2 if route == "onion" else 0)
        assert all(joined in pool.relays for pool in pools)
        await trio.sleep(30)  # a path check on each side: entries follow, by hash alone
        phone_entries = {p.hops[0].pubkey for p in phone_endpoint.paths}
        assert phone_entries.isdisjoint(p.hops[0].pubkey for p in desktop_endpoint.paths)
