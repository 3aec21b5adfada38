"""A device that stays up builds its paths through the relays the listing names now."""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import trio
import trio.testing

from overlay.contact import make_contact
from overlay.endpoint import Endpoint
from overlay.endpoint_core import EndpointStats
from overlay.keys import KeyPair
from overlay.link import Link
from p2psync.clock import TEST_EPOCH_MS, Clock
from p2psync.device import open_device
from p2psync.device.access import NetworkAccess
from p2psync.device.relay_listing import (
    RELAY_REREAD_AFTER_FAILURE_S,
    RELAY_REREAD_S,
    ReadAgain,
    keep_relays_current,
)
from p2psync.device.values import TRANSIENT
from p2psync.errors import ConnectionLost
from p2psync.identity import Identity
from p2psync.network import LocalNetwork
from p2psync.onion.directory import LISTING_READ_S
from p2psync.onion.pool import ONION_ATTEMPT_TIMEOUT_S, OnionRpcPool
from p2psync.rpc import RpcRouter
from p2psync.swarm.client import SwarmClient
from p2psync.swarm.listing import ANNOUNCEMENT_TTL_MS, CACHED_LISTING_MAX_AGE_MS, Snapshot

from .helpers import open_world

DAVE = Identity.from_label("dave")


async def test_an_onion_pool_that_stays_up_takes_the_relays_listed_now(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A relay crashes for good and two join: the pool's endpoint comes to build through
    the two and no longer through the one gone (read soon after a path through it died,
    and again at the next re-read, once the registry has dropped it). Without re-reads a
    device up for days would also keep contacts past their day of life.

    The registry sees the device's address once (the read that finds the relays to
    build paths through); the re-reads go to service nodes by onion requests, which see
    exit relays (before, each re-read was a request to the registry from the device)."""
    registry_reads: list[str] = []
    node_reads: list[str] = []

    def reads_into(reads: list[str]) -> Callable[[str, str, object], None]:
        return lambda method, peer, params: reads.append(peer) if method == "list" else None

    async with open_world(relays=6) as network:
        assert network.registry_rpc is not None
        network.registry_rpc.observe(reads_into(registry_reads))
        for rpc in network.servers().values():
            rpc.observe(reads_into(node_reads))
        relay_hosts = {relay.address.removeprefix("mem:") for relay in network.relays}
        async with network.access(rpc_route="onion", host="dave").open_routes() as (pool, _):
            assert isinstance(pool, OnionRpcPool)
            listed = {relay.identity.ed25519_public for relay in network.relays}
            assert pool.endpoint.relays == listed
            gone = network.relays[0]
            await network.stop_relay(gone)
            await network.add_relays(2)
            relay_hosts |= {relay.address.removeprefix("mem:") for relay in network.relays}
            await trio.sleep(2 * RELAY_REREAD_S)
            now_listed = {relay.identity.ed25519_public for relay in network.relays}
            assert gone.identity.ed25519_public not in now_listed
            assert pool.endpoint.relays == now_listed
        assert registry_reads.count("dave") == 1
        assert node_reads and set(node_reads) <= relay_hosts  # exits, never the device


async def test_relays_whose_contacts_do_not_verify_are_not_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An admitted relay may still announce a contact that expired (or is not signed by
    its key). It must not count towards a path's hops or a sibling's entries: an endpoint
    started on such counts could not build a path, and its device stopped."""
    async with open_world(relays=3) as network, trio.open_nursery() as nursery:
        stale = KeyPair.from_seed(bytes([7]) * 32)
        now = network.clock.now_ms()
        contact = make_contact(stale, "mem:stale", now - 10, lifetime_ms=1)
        identity = Identity(stale.seed)
        # It serves at its address (the registry dials it back); only its contact is stale.
        await nursery.start(network.overlay_transport.serve, _hang_up, "mem:stale")
        await network.directory().announce(
            identity,
            "relay",
            "mem:stale",
            contact.encode(),
            network.ledger.register(identity.ed25519_public.hex()).encode(),
        )
        listed = {relay.identity.ed25519_public for relay in network.relays}
        contacts = await network.access().relay_contacts()
        assert {c.pubkey for c in contacts} == listed
        nursery.cancel_scope.cancel()


async def _hang_up(link: Link) -> None:
    """Serves an address and nothing more."""


class KeptListing:
    """A device's keeper of the listing (:class:`~p2psync.device.access.ListingKeeper`)."""

    def __init__(self) -> None:
        self.kept: object | None = None

    def kept_listing(self) -> object | None:
        return self.kept

    def keep_listing(self, listing: Snapshot) -> None:
        self.kept = listing.announcements_to_wire()


def registry_reads_by(network: LocalNetwork, host: str) -> list[None]:
    """Each read of the listing the registry answers to ``host`` from now on."""
    reads: list[None] = []
    assert network.registry_rpc is not None
    network.registry_rpc.observe(
        lambda method, peer, params: (
            reads.append(None) if (method, peer) == ("list", host) else None
        )
    )
    return reads


async def store_and_read(pool: RpcRouter, reading: NetworkAccess, text: bytes) -> None:
    """Store a message for Dave and read it back, through ``pool``, until that works."""
    swarm = SwarmClient(pool, reading.directory, reading.clock, random.Random(3))
    while True:
        try:
            digest, _ = await swarm.store(DAVE.session_id, 0, text)
            messages, _, _ = await swarm.retrieve(DAVE, 0, None)
        except TRANSIENT:
            await trio.sleep(1)
            continue
        assert digest in [m.hash for m in messages]
        return


async def first_start(network: LocalNetwork) -> tuple[list[None], KeptListing, NetworkAccess]:
    """Dave's first start on the onion route: one direct read, and the listing kept."""
    reads = registry_reads_by(network, "dave")
    keeper = KeptListing()
    access = network.access(rpc_route="onion", host="dave")
    async with access.open_routes(keeper=keeper) as (pool, reading):
        await store_and_read(pool, reading, b"first start")
    assert len(reads) == 1 and keeper.kept is not None
    return reads, keeper, access


async def test_a_start_with_a_kept_listing_does_not_show_the_registry_the_device(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The first start reads the registry from the device's address (it knows no relay to
    build paths through); a start an hour later builds them from the listing kept, and
    the registry sees the device no more."""
    async with open_world(relays=6) as network:
        reads, keeper, access = await first_start(network)
        await trio.sleep(3600)
        async with access.open_routes(keeper=keeper) as (pool, reading):
            with trio.fail_after(60):
                await store_and_read(pool, reading, b"second start")
            await trio.sleep(2 * RELAY_REREAD_S)  # the listing read again, through paths
        assert len(reads) == 1


async def test_a_kept_listing_whose_relays_are_gone_costs_one_direct_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Every relay the kept listing names crashed while the device was off, and others
    joined: no path can be built from it, so the device reads the registry directly,
    once, and goes on through the relays listed now. A kept listing past a day old is
    not used at all."""
    async with open_world(relays=3) as network:
        reads, keeper, access = await first_start(network)
        for relay in list(network.relays):
            await network.stop_relay(relay)
        await network.add_relays(3)
        await network.pass_idle(2 * ANNOUNCEMENT_TTL_MS)  # the crashed ones are unlisted
        async with access.open_routes(keeper=keeper) as (pool, reading):
            began = trio.current_time()
            with trio.fail_after(120):
                await store_and_read(pool, reading, b"past the relays' crash")
            # One node tried through the kept relays (a node's time) before the direct read.
            assert trio.current_time() - began < LISTING_READ_S + ONION_ATTEMPT_TIMEOUT_S
            assert isinstance(pool, OnionRpcPool)
            joined = {relay.identity.ed25519_public for relay in network.relays}
            assert pool.endpoint.relays == joined
        assert len(reads) == 2
        await network.pass_idle(CACHED_LISTING_MAX_AGE_MS + 60_000)
        async with access.open_routes(keeper=keeper) as (pool, reading):
            await store_and_read(pool, reading, b"a day later")
        assert len(reads) == 3


async def test_a_device_keeps_its_listing_in_its_folder(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """The same, for a device: opened again, it reads the registry no more."""
    async with open_world(relays=6) as network:
        reads = registry_reads_by(network, "dave")
        access = network.access(rpc_route="onion", host="dave")
        for start in range(2):
            async with open_device(tmp_path / "dave", access, mode="linked") as dave:
                await dave.sync_now()
            assert len(reads) == 1, start
            await trio.sleep(600)


async def test_a_device_that_is_offline_reads_no_listing_until_it_is_online_again(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """The re-read of the relays that falls due while the device is offline waits for
    it to come online (a read at the moment a network back from an outage announces
    itself again may list a few relays only, and the device would build its paths
    through those). Read by onion requests, a listing reaches the nodes as ``list``:
    nothing else a device asks for is one."""
    listing_reads: list[str] = []
    async with open_world(relays=6) as network:
        for rpc in network.servers().values():
            rpc.observe(
                lambda method, peer, params: (
                    listing_reads.append(peer) if method == "list" else None
                )
            )
        access = network.access(rpc_route="onion", host="dave")
        async with open_device(tmp_path / "dave", access, mode="linked") as dave:
            await dave.sync_now()
            await dave.set_online(False)
            before = len(listing_reads)
            await trio.sleep(2 * RELAY_REREAD_S)
            assert len(listing_reads) == before


class _Paths:
    """An endpoint whose paths never die: a read comes only when asked for, or after
    hours."""

    def __init__(self) -> None:
        self.stats = EndpointStats()
        self.directories: list[list[object]] = []

    async def paths_changed(self) -> None:
        await trio.sleep_forever()

    def update_directory(self, contacts: list[object]) -> bool:
        self.directories.append(contacts)
        return True


async def test_an_asked_for_read_that_fails_is_tried_again_a_minute_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A sibling's listing too long to pass on asks for a read (ReadAgain); the registry
    does not answer the first time: the ask stands, and the read is tried again at the
    rate a failed path allows, not hours on."""
    clock = Clock(TEST_EPOCH_MS)
    tried: list[float] = []

    async def relay_contacts() -> list[object]:
        tried.append(trio.current_time())
        if len(tried) == 1:
            raise ConnectionLost("the registry did not answer")
        return []

    network = cast(NetworkAccess, SimpleNamespace(clock=clock, relay_contacts=relay_contacts))
    paths, again = _Paths(), ReadAgain()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep_relays_current, cast(Endpoint, paths), network, print, again)
        await trio.sleep(RELAY_REREAD_AFTER_FAILURE_S)  # not asked since the start
        start = trio.current_time()
        again.ask()
        await trio.sleep(3 * RELAY_REREAD_AFTER_FAILURE_S)
        nursery.cancel_scope.cancel()
    assert [round(t - start) for t in tried] == [0, RELAY_REREAD_AFTER_FAILURE_S]
    assert paths.directories == [[]]


async def test_an_ask_that_comes_during_a_read_stands_for_the_next(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A read that began before a sibling's ask may return a listing older than the
    sibling's read (an onion directory serves a copy up to 30 s old): the ask stands."""
    clock = Clock(TEST_EPOCH_MS)
    again = ReadAgain()
    tried: list[float] = []

    async def relay_contacts() -> list[object]:
        tried.append(trio.current_time())
        if len(tried) == 1:
            again.ask()  # while this read is on its way
        await trio.sleep(1)
        return []

    network = cast(NetworkAccess, SimpleNamespace(clock=clock, relay_contacts=relay_contacts))
    paths = _Paths()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep_relays_current, cast(Endpoint, paths), network, print, again)
        await trio.sleep(RELAY_REREAD_AFTER_FAILURE_S)
        start = trio.current_time()
        again.ask()
        await trio.sleep(3 * RELAY_REREAD_AFTER_FAILURE_S)
        nursery.cancel_scope.cancel()
    assert [round(t - start) for t in tried] == [0, RELAY_REREAD_AFTER_FAILURE_S]


async def test_a_read_that_fell_due_while_offline_comes_as_soon_as_the_device_is_online(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Held back while ``awake`` waits (the device is offline), the read comes the
    moment it returns, not a re-read interval later."""
    clock = Clock(TEST_EPOCH_MS)
    online = trio.Event()
    tried: list[float] = []

    async def relay_contacts() -> list[object]:
        tried.append(trio.current_time())
        return []

    network = cast(NetworkAccess, SimpleNamespace(clock=clock, relay_contacts=relay_contacts))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            partial(keep_relays_current, cast(Endpoint, _Paths()), network, awake=online.wait)
        )
        await trio.sleep(2 * RELAY_REREAD_S)
        assert tried == []
        online.set()
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert tried == [2 * RELAY_REREAD_S]
