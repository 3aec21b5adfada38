"""A device that stays up builds its paths through the relays the listing names now."""

from __future__ import annotations

from collections.abc import Callable

import trio
import trio.testing

from overlay.contact import make_contact
from overlay.keys import KeyPair
from p2psync.device.relay_listing import RELAY_REREAD_S
from p2psync.identity import Identity
from p2psync.onion_requests import OnionRpcPool

from .helpers import open_world


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
    async with open_world(relays=3) as network:
        stale = KeyPair.from_seed(bytes([7]) * 32)
        now = network.clock.now_ms()
        contact = make_contact(stale, "mem:stale", now - 10, lifetime_ms=1)
        identity = Identity(stale.seed)
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
