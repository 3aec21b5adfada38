"""Relays announced to the registry learn of each other as the listing grows."""

from __future__ import annotations

from itertools import pairwise

import trio
import trio.testing

from overlay.link import LinkProfile, MemoryNetwork
from p2psync.identity import Identity
from p2psync.network import LocalNetwork, open_local_network, wait_until
from p2psync.services import RELAY_REFRESH_S, AnnouncedRelay
from p2psync.swarm.constants import ANNOUNCE_INTERVAL_S
from p2psync.swarm.listing import ANNOUNCEMENT_TTL_MS
from p2psync.swarm.node_config import NodeConfig


def _relay(network: LocalNetwork, index: int) -> AnnouncedRelay:
    """A relay admitted by ``network``'s ledger, not yet serving."""
    identity = Identity.from_label(f"relay/{index}")
    registration = network.ledger.register(identity.ed25519_public.hex()).encode()
    return AnnouncedRelay(network.transport, identity, network.clock, registration=registration)


async def test_relays_started_one_after_another_learn_of_each_other_within_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The first relay of a batch read a listing holding only itself; it does not wait for
    its minute-long refresh to hear of the ones started after it."""
    async with open_local_network(1, relays=0) as network, trio.open_nursery() as nursery:
        relays = [_relay(network, n) for n in range(4)]
        for index, relay in enumerate(relays):
            await nursery.start(relay.serve, f"mem:relay{index}", network.directory())
            await trio.sleep(0.5)
        assert len(relays[0].known_relays) < len(relays)
        everyone = {relay.identity.ed25519_public for relay in relays}
        with trio.fail_after(5):
            await wait_until(lambda: all(r.known_relays == everyone for r in relays))
        nursery.cancel_scope.cancel()


async def test_a_settled_relay_reads_every_minute_and_announces_every_two(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A settled relay re-reads the listing every ``RELAY_REFRESH_S`` but announces only
    every ``ANNOUNCE_INTERVAL_S``, as nodes do (its entry is listed for five minutes):
    hundreds of relays cost the registry half the announcements."""
    announced: list[str] = []
    async with open_local_network(1, relays=0) as network, trio.open_nursery() as nursery:
        relay = _relay(network, 0)
        identity = relay.identity
        await nursery.start(relay.serve, "mem:relay0", network.directory())
        await trio.sleep(10 * 60)  # settled: one read a minute
        assert network.registry_rpc is not None
        network.registry_rpc.observe(
            lambda method, peer, params: (
                announced.append(params["record"]["kind"]) if method == "announce" else None
            )
        )
        known = relay.known_relays
        await trio.sleep(10 * 60)
        assert relay.known_relays == known == {identity.ed25519_public}
        nursery.cancel_scope.cancel()
    assert announced.count("relay") == 10 * 60 / ANNOUNCE_INTERVAL_S


async def test_a_refresh_announces_and_reads_over_one_registry_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A relay's or a node's refresh that announces reads the listing over the same
    connection: hundreds of announcers cost the registry one handshake a refresh, not
    two."""
    requests: list[tuple[str, str, str]] = []
    async with open_local_network(1, relays=0) as network, trio.open_nursery() as nursery:
        await nursery.start(_relay(network, 0).serve, "mem:relay0", network.directory())
        await trio.sleep(10 * 60)
        assert network.registry_rpc is not None
        network.registry_rpc.observe(
            lambda method, peer, params: requests.append(
                (method, peer, params["record"]["kind"] if method == "announce" else "")
            )
        )
        await trio.sleep(10 * 60)
        nursery.cancel_scope.cancel()
    announcing = {peer: kind for method, peer, kind in requests if kind}
    assert sorted(set(announcing.values())) == ["node", "relay"]
    for peer in announcing:
        assert [method for method, p, _ in requests if p == peer] == ["announce", "list"]


async def test_a_relay_that_reads_a_change_in_the_nodes_reads_again_soon(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Nodes announcing one after another (a start, or every node after a long outage)
    reach a settled relay's listing over several reads: once it sees one of them, it
    reads again within seconds, so as an exit it does not refuse the others for its
    whole refresh interval."""
    async with open_local_network(1, relays=0) as network, trio.open_nursery() as nursery:
        relay = _relay(network, 0)
        await nursery.start(relay.serve, "mem:relay0", network.directory())
        await trio.sleep(10 * 60)  # settled: one read a minute
        first = await network.add_node()
        with trio.fail_after(RELAY_REFRESH_S + 1):
            await wait_until(lambda: first.url in relay.exit_nodes)
        second = await network.add_node()
        with trio.fail_after(5):
            await wait_until(lambda: second.url in relay.exit_nodes)
        nursery.cancel_scope.cancel()


async def test_a_node_that_reads_a_change_in_the_relays_reads_again_soon(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A node takes onion requests only from the relays its listing names: once a read
    shows it a new relay, it reads again within seconds, so relays announcing one after
    another are not refused as exits for its whole refresh interval."""
    async with open_local_network(1, relays=0) as network:
        (node,) = network.running_nodes()
        await trio.sleep(10 * 60)  # settled: one read a minute

        def lists(relay: AnnouncedRelay) -> bool:
            return relay.identity.ed25519_public.hex() in {r.pubkey for r in node.snapshot.relays}

        await network.add_relays(1)
        with trio.fail_after(network.node_config.registry_refresh_s * 1.1 + 1):
            await wait_until(lambda: lists(network.relays[0]))
        await network.add_relays(1)
        with trio.fail_after(5):
            await wait_until(lambda: lists(network.relays[1]))


async def test_nodes_that_read_as_seldom_as_they_announce_stay_listed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With reads jittered 10 % either way, a read that comes a little early must still
    announce: skipped, the next announcement came nearly two intervals later, past the
    entry's five minutes when reads are as far apart as announcements (the storage
    benchmark's nodes lapsed 298 times a simulated day, each a change of membership)."""
    config = NodeConfig(registry_refresh_s=150, announce_interval_s=150)
    announced: dict[str, list[int]] = {}
    async with open_local_network(3, relays=0, node_config=config) as network:
        assert network.registry_rpc is not None
        network.registry_rpc.observe(
            lambda method, peer, params: (
                announced.setdefault(params["record"]["pubkey"], []).append(
                    params["record"]["timestamp"]
                )
                if method == "announce"
                else None
            )
        )
        await trio.sleep(6 * 3600)
    gaps = [later - earlier for times in announced.values() for earlier, later in pairwise(times)]
    assert len(announced) == 3 and len(gaps) > 3 * 60
    assert max(gaps) < ANNOUNCEMENT_TTL_MS


async def test_after_a_jump_every_relay_and_node_has_read_everyone_announced_since(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``pass_idle`` returns once every relay and every node has read a listing that
    names every node and relay by an announcement made since the jump: a relay that
    read before the nodes announced again would refuse them as an exit until its next
    read, and a node the same for a relay's onion requests."""
    links = MemoryNetwork(default_profile=LinkProfile(latency_ms=30, jitter_ms=20))
    async with open_local_network(4, relays=3, transport=links) as network:
        jump_ms = 25 * 3600 * 1000
        since = network.clock.now_ms() + jump_ms
        await network.pass_idle(jump_ms)
        everyone = {node.identity.ed25519_public.hex() for node in network.running_nodes()}
        everyone |= {relay.identity.ed25519_public.hex() for relay in network.relays}
        for relay in network.relays:
            assert relay.listing.announced_since(since) == everyone
        for node in network.running_nodes():
            assert node.snapshot.announced_since(since) == everyone
