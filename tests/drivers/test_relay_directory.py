"""Relays announced to the registry learn of each other as the listing grows."""

from __future__ import annotations

import trio
import trio.testing

from p2psync.identity import Identity
from p2psync.network import open_local_network, wait_until
from p2psync.services import RELAY_REFRESH_S, AnnouncedRelay
from p2psync.swarm.constants import ANNOUNCE_INTERVAL_S


async def test_relays_started_one_after_another_learn_of_each_other_within_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The first relay of a batch read a listing holding only itself; it does not wait for
    its minute-long refresh to hear of the ones started after it."""
    async with open_local_network(1, relays=0) as network, trio.open_nursery() as nursery:
        keys = [Identity.from_label(f"relay/{n}") for n in range(4)]
        relays = [
            AnnouncedRelay(
                network.transport,
                identity,
                network.clock,
                registration=network.ledger.register(identity.ed25519_public.hex()).encode(),
            )
            for identity in keys
        ]
        for index, relay in enumerate(relays):
            await nursery.start(relay.serve, f"mem:relay{index}", network.directory())
            await trio.sleep(0.5)
        assert len(relays[0].known_relays) < len(relays)
        everyone = {relay.identity.ed25519_public for relay in relays}
        with trio.fail_after(5):
            await wait_until(lambda: all(r.known_relays == everyone for r in relays))
        nursery.cancel_scope.cancel()


async def test_a_relay_refresh_is_one_registry_connection_and_announces_every_two_minutes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A settled relay re-reads the listing every minute but announces only every
    ``ANNOUNCE_INTERVAL_S`` (its entry is listed for five), and a refresh that does both,
    a relay's or a node's, does them over one connection: hundreds of announcers cost the
    registry half the handshakes, and relays half the announcements."""
    requests: list[tuple[str, str, str]] = []
    async with open_local_network(1, relays=0) as network, trio.open_nursery() as nursery:
        identity = Identity.from_label("relay/0")
        relay = AnnouncedRelay(
            network.transport,
            identity,
            network.clock,
            registration=network.ledger.register(identity.ed25519_public.hex()).encode(),
        )
        await nursery.start(relay.serve, "mem:relay0", network.directory())
        await trio.sleep(10 * 60)  # settled: one read a minute
        assert network.registry_rpc is not None
        network.registry_rpc.observe(
            lambda method, peer, params: requests.append(
                (method, peer, params["record"]["kind"] if method == "announce" else "")
            )
        )
        await trio.sleep(10 * 60)
        nursery.cancel_scope.cancel()
    relay_peers = {peer for method, peer, kind in requests if kind == "relay"}
    assert len(relay_peers) == 10 * 60 / ANNOUNCE_INTERVAL_S
    announcing = {peer for method, peer, kind in requests if kind}  # the node's too
    assert len(announcing) > len(relay_peers)
    for peer in announcing:
        assert [method for method, p, _ in requests if p == peer] == ["announce", "list"]
    reads = [peer for method, peer, _ in requests if method == "list"]
    assert len(reads) >= 10 * 60 / RELAY_REFRESH_S  # the relay's, and the node's
