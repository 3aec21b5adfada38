"""A device that stays up builds its paths through the relays the listing names now."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from overlay.contact import make_contact
from overlay.keys import KeyPair
from p2psync.device import open_device
from p2psync.device.relay_listing import RELAY_REREAD_AFTER_FAILURE_S, RELAY_REREAD_S
from p2psync.identity import Identity
from p2psync.onion_requests import OnionRpcPool

from .helpers import open_world


async def test_an_onion_pool_that_stays_up_takes_the_relays_listed_now(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A relay crashes for good and two join: the pool's endpoint comes to build through
    the two and no longer through the one gone (read soon after a path through it died,
    and again at the next re-read, once the registry has dropped it). Without re-reads a
    device up for days would also keep contacts past their day of life."""
    async with (
        open_world(relays=6) as network,
        network.access(rpc_route="onion").open_routes() as (pool, _),
    ):
        assert isinstance(pool, OnionRpcPool)
        listed = {relay.identity.ed25519_public for relay in network.relays}
        assert pool.endpoint.relays == listed
        gone = network.relays[0]
        await network.stop_relay(gone)
        await network.add_relays(2)
        await trio.sleep(2 * RELAY_REREAD_S)
        now_listed = {relay.identity.ed25519_public for relay in network.relays}
        assert gone.identity.ed25519_public not in now_listed
        assert pool.endpoint.relays == now_listed


async def test_relays_whose_contacts_do_not_verify_are_not_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Anyone may announce a relay. One whose contact expired (or is not signed by its
    key) must not count towards a path's hops or a sibling's entries: an endpoint started
    on such counts could not build a path, and its device stopped."""
    async with open_world(relays=3) as network:
        stale = KeyPair.from_seed(bytes([7]) * 32)
        now = network.clock.now_ms()
        contact = make_contact(stale, "mem:stale", now - 10, lifetime_ms=1)
        await network.directory().announce(
            Identity(stale.seed), "relay", "mem:stale", contact.encode()
        )
        listed = {relay.identity.ed25519_public for relay in network.relays}
        contacts = await network.access().relay_contacts()
        assert {c.pubkey for c in contacts} == listed


async def test_after_its_first_read_an_onion_device_reads_the_listing_through_its_paths(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """The registry sees the device's address once per start (the read that finds the
    relays to build paths through); every later read of the listing (the relays again
    once paths die) goes to service nodes by onion requests, which see an exit
    relay. Without that, each re-read was a request to the registry from the device."""
    registry_reads: list[str] = []
    node_reads: list[str] = []
    async with open_world(nodes=3, relays=6) as network:
        assert network.registry_rpc is not None
        network.registry_rpc.observe(
            lambda method, peer, params: registry_reads.append(peer) if method == "list" else None
        )
        for rpc in network.servers().values():
            rpc.observe(
                lambda method, peer, params: node_reads.append(peer) if method == "list" else None
            )
        access = network.access(rpc_route="onion", host="dave")
        async with open_device(tmp_path / "dave", access, mode="linked", name="dave") as dave:
            await dave.sync_now()
            relays = {relay.address.removeprefix("mem:") for relay in network.relays}
            for relay in network.relays[:3]:  # paths die: the relays are read again soon
                await network.stop_relay(relay)
            await trio.sleep(RELAY_REREAD_AFTER_FAILURE_S + 60)
            assert registry_reads.count("dave") == 1
            assert node_reads and set(node_reads) <= relays  # exits, never the device
