"""A swarm on the embedded network: replication, TTL, restarts, repair, hand-over."""

from __future__ import annotations

import copy
import dataclasses
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from overlay.link import MemoryNetwork
from p2psync.clock import TEST_EPOCH_MS, Clock
from p2psync.errors import DecodeError, RpcError
from p2psync.identity import Identity, message_hash
from p2psync.network import NodeHandle
from p2psync.rpc import open_rpc, open_rpc_pool
from p2psync.swarm.allowance import ROW_CHARGE_BYTES
from p2psync.swarm.auth import sign_node_request
from p2psync.swarm.client import Message, SwarmClient, open_swarm_client
from p2psync.swarm.constants import (
    MAX_DATA_BYTES,
    MAX_STORE_BATCH,
    RETRIEVE_LIMIT,
    RETRIEVE_MAX_BYTES,
)
from p2psync.swarm.cursor import DEAD_CURSOR_MS, MAX_SERVED_CHARGE, PAGES_PER_DRAIN, Cursor
from p2psync.swarm.directory import FileDirectory, Listing
from p2psync.swarm.listing import Snapshot
from p2psync.swarm.messages import StoreRequest, store_batches
from p2psync.swarm.node_config import NodeConfig
from p2psync.swarm.node_core import HAND_OVER_ELDER_MS, UNKNOWN_CURSOR_MS
from p2psync.swarm.records import row_to_wire
from p2psync.swarm.ring import NodeInfo
from p2psync.swarm.rows import StoredMessage

from .helpers import holders, open_test_swarm, swarm_of, wait_until

ALICE = Identity.from_label("alice")


async def test_store_on_one_node_is_retrievable_from_every_member(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_swarm(6) as (network, swarm):
        digest, expiry = await swarm.store(ALICE.session_id, 0, b"hello")
        assert expiry == TEST_EPOCH_MS + 86_400_000
        await wait_until(lambda: holders(network, ALICE, digest) == 6)
        members = swarm_of(network, ALICE)
        assert len(members) == 6
        for node in members:
            from p2psync.swarm.ring import NodeInfo

            messages, more, _ = await swarm.retrieve(
                ALICE, 0, None, NodeInfo(node.pubkey, node.url)
            )
            assert [m.data for m in messages] == [b"hello"] and not more


async def test_batches_of_stores_are_answered_in_order_and_kept_by_every_member(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A list of stores cut into ``store_batch`` requests by count and by bytes (eight
    17 000-byte stores do not fit one frame) is answered store by store, in order: a
    refusal (over the size limit, alone in its batch) among the acknowledged, counted with
    the refusals of the member asked and of the second one that confirmed it (a refusal
    for good is not one member's word); every member keeps the rest."""
    async with open_test_swarm(6) as (network, swarm):
        datas = [f"message {i}".encode() for i in range(MAX_STORE_BATCH + 6)]
        datas += [bytes([i]) * 17_000 for i in range(8)]
        datas.insert(3, b"x" * (MAX_DATA_BYTES + 1))
        stores = [StoreRequest(ALICE.session_id, 0, 3_600_000, TEST_EPOCH_MS, d) for d in datas]
        batches = store_batches(stores)
        assert [len(b.stores) for b in batches] == [3, 1, MAX_STORE_BATCH, 3 + 4, 4]
        results = [result for batch in batches for result in await swarm.store_batch(batch)]
        refused = results.pop(3)
        assert isinstance(refused, RpcError) and refused.code == "too_large"
        assert sum(n.rpc.stats.errors.get("too_large", 0) for n in network.running_nodes()) == 2
        kept = datas[:3] + datas[4:]
        assert results == [(message_hash(d), TEST_EPOCH_MS + 3_600_000) for d in kept]
        for node in swarm_of(network, ALICE):
            await wait_until(lambda node=node: node.store.stats()[0] == len(kept))
        messages, _, _ = await swarm.drain(ALICE, 0, Cursor())
        # Rows stored in one millisecond read back in hash order, however they came.
        assert sorted(m.data for m in messages) == sorted(kept)


async def test_messages_expire_after_their_ttl_and_are_swept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Days of virtual time: maintenance other than the sweep runs rarely, to stay fast.
    quiet = NodeConfig(
        sweep_interval_s=60, registry_refresh_s=150, repair_interval_s=3600, announce_interval_s=150
    )
    async with open_test_swarm(6, quiet) as (network, swarm):
        short, _ = await swarm.store(ALICE.session_id, 0, b"short", ttl_ms=60_000)
        long, _ = await swarm.store(ALICE.session_id, 0, b"long", ttl_ms=3 * 86_400_000)
        await wait_until(lambda: holders(network, ALICE, long) == 6)
        await trio.sleep(61)
        messages, _, _ = await swarm.retrieve(ALICE, 0, None)
        assert [m.data for m in messages] == [b"long"]
        await trio.sleep(quiet.sweep_interval_s + 1)
        assert all(n.store.get(ALICE.session_id, 0, short) is None for n in network.running_nodes())
        await trio.sleep(3 * 86_400)
        messages, _, _ = await swarm.retrieve(ALICE, 0, None)
        assert messages == []
        assert all(n.store.stats() == (0, 0) for n in network.running_nodes())


async def test_restart_keeps_everything(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_swarm(6) as (network, swarm):
        stored = [(await swarm.store(ALICE.session_id, 0, b"m%d" % i))[0] for i in range(20)]
        await wait_until(lambda: all(holders(network, ALICE, d) == 6 for d in stored))
        for handle in network.nodes:
            await network.stop_node(handle)
        for handle in network.nodes:
            await network.start_node(handle)
        messages, _, _ = await swarm.retrieve(ALICE, 0, None)
        assert sorted(m.hash for m in messages) == sorted(stored)


async def test_a_node_that_was_down_converges_by_repair(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = NodeConfig(repair_interval_s=30.0)
    async with open_test_swarm(6, config) as (network, swarm):
        victim = network.nodes[2]
        await network.stop_node(victim)
        acknowledged = [(await swarm.store(ALICE.session_id, 0, b"x%d" % i))[0] for i in range(50)]
        deleted = acknowledged[:5]
        assert await swarm.delete(ALICE, 0, deleted) == deleted
        await network.start_node(victim)
        node = victim.node
        assert node is not None
        await wait_until(
            lambda: all(node.store.get(ALICE.session_id, 0, d) is not None for d in acknowledged)
        )
        assert all(node.store.get(ALICE.session_id, 0, d).deleted for d in deleted)  # type: ignore[union-attr]
        assert node.stats.repaired_in >= 50


async def test_a_delete_of_hundreds_of_hashes_reaches_every_member(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Each tombstone carries its owner's whole signed delete (32 bytes a hash), and a
    device deletes up to 1 000 at once. Counted as 160 bytes a row,
    300 tombstones made a 3.1 MB ``replicate`` past the frame: the delete stayed on the
    member that took it, and the others served the messages for the rest of their TTL."""
    async with open_test_swarm(6, NodeConfig(repair_interval_s=30.0)) as (network, swarm):
        stored = [(await swarm.store(ALICE.session_id, 0, b"m%d" % i))[0] for i in range(300)]
        await wait_until(lambda: all(holders(network, ALICE, d) == 6 for d in stored))
        assert await swarm.delete(ALICE, 0, stored) == stored
        members = swarm_of(network, ALICE)

        def deleted_everywhere() -> bool:
            return all(
                getattr(node.store.get(ALICE.session_id, 0, d), "deleted", False)
                for node in members
                for d in stored
            )

        await wait_until(deleted_everywhere, limit_s=60)
        messages, _, _ = await swarm.retrieve(ALICE, 0, None)
        assert messages == []


async def test_a_partitioned_member_and_the_rest_converge_once_the_links_heal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A member cut off from its peers (clients still reach it) keeps committing stores
    that replicate nowhere (it cannot acknowledge them, so the client retries elsewhere),
    and misses the others'; once the links are back, repair makes every member whole
    without anyone storing again."""
    config = NodeConfig(repair_interval_s=30.0)
    async with open_test_swarm(6, config) as (network, swarm):
        assert isinstance(network.transport, MemoryNetwork)
        victim = network.nodes[2]
        peers = [h for h in network.nodes if h is not victim]
        for peer in peers:
            network.transport.partition(victim.address, peer.address)
        acknowledged = [(await swarm.store(ALICE.session_id, 0, b"p%d" % i))[0] for i in range(60)]
        node = victim.node
        assert node is not None
        on_victim = sum(node.store.get(ALICE.session_id, 0, d) is not None for d in acknowledged)
        assert 0 < on_victim < len(acknowledged)  # both sides took stores the other missed
        for peer in peers:
            network.transport.partition(victim.address, peer.address, cut=False)
        await wait_until(
            lambda: all(holders(network, ALICE, d) == len(network.nodes) for d in acknowledged)
        )


async def test_every_store_replicates_at_once_whatever_the_quorum(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A node that acknowledges on its own commit (quorum 1) still pushes the row to every
    member right away, not at the next repair an hour later."""
    config = NodeConfig(store_quorum=1, repair_interval_s=3600.0)
    async with open_test_swarm(6, config) as (network, swarm):
        await trio.sleep(60)  # past the start-up repair
        digest, _ = await swarm.store(ALICE.session_id, 0, b"quorum of one")
        await wait_until(lambda: holders(network, ALICE, digest) == 6, limit_s=30)


async def test_a_member_cut_off_from_its_swarm_acknowledges_nothing_it_alone_holds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A member whose peers cannot be reached commits a store but answers ``unavailable``
    instead of acknowledging it, so when that member then dies for good nothing it
    acknowledged dies with it; the client retries and the rest of the swarm keeps it."""
    async with open_test_swarm(6) as (network, swarm):
        assert isinstance(network.transport, MemoryNetwork)
        victim = network.nodes[2]
        node = victim.node
        assert node is not None
        for peer in network.nodes:
            if peer is not victim:
                network.transport.partition(victim.address, peer.address)
        with pytest.raises(RpcError) as refused:
            await swarm.store(ALICE.session_id, 0, b"lonely", node=NodeInfo(node.pubkey, node.url))
        assert refused.value.code == "unavailable"
        assert node.stats.quorum_missed == 1
        digest, _ = await swarm.store(ALICE.session_id, 0, b"lonely")
        await network.stop_node(victim)
        messages, _, _ = await swarm.retrieve(ALICE, 0, None)
        assert digest in {m.hash for m in messages}


async def test_copies_of_a_store_waiting_for_its_quorum_are_answered_when_it_comes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A copy of a message that arrives while the first copy waits for its quorum (a
    client retrying) waits for the same quorum, and both are acknowledged once the swarm
    is reachable again within the timeout, since the member sends the rows still short of
    their quorum again as soon as it reaches a peer (not at the next repair, a minute
    later); neither counts as a missed quorum."""
    async with open_test_swarm(6) as (network, swarm):
        assert isinstance(network.transport, MemoryNetwork)
        victim = network.nodes[2]
        node = victim.node
        assert node is not None
        peers = [peer for peer in network.nodes if peer is not victim]
        for peer in peers:
            network.transport.partition(victim.address, peer.address)
        member = NodeInfo(node.pubkey, node.url)
        acknowledged: list[bytes] = []

        async def store() -> None:
            digest, _ = await swarm.store(ALICE.session_id, 0, b"twice", node=member)
            acknowledged.append(digest)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(store)
            await trio.sleep(1)
            nursery.start_soon(store)
            await trio.sleep(1)
            assert acknowledged == [] and node.stats.duplicates == 1
            for peer in peers:
                network.transport.partition(victim.address, peer.address, cut=False)
        assert acknowledged == [message_hash(b"twice")] * 2
        assert node.stats.quorum_missed == 0


async def test_cursor_from_one_node_works_on_another(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_swarm(6) as (network, swarm):
        first = [(await swarm.store(ALICE.session_id, 0, b"a%d" % i))[0] for i in range(5)]
        await wait_until(lambda: all(holders(network, ALICE, d) == 6 for d in first))
        from p2psync.swarm.ring import NodeInfo

        members = [NodeInfo(n.pubkey, n.url) for n in swarm_of(network, ALICE)]
        got, _, _ = await swarm.retrieve(ALICE, 0, None, members[0])
        assert sorted(m.hash for m in got) == sorted(first)
        cursor = Cursor()
        cursor.fresh(got, trio.current_time())
        second = [(await swarm.store(ALICE.session_id, 0, b"b%d" % i))[0] for i in range(3)]
        await wait_until(lambda: all(holders(network, ALICE, d) == 6 for d in second))
        # The node that issued the cursor continues exactly where the reader was.
        got, _, _ = await swarm.retrieve(ALICE, 0, cursor.last_hash, members[0])
        assert sorted(m.hash for m in got) == sorted(second)
        # Another member rewinds a short window: nothing missed, and the duplicates
        # are all from that window and dropped by the reader's cursor.
        for member in members[1:]:
            got, _, _ = await swarm.retrieve(ALICE, 0, first[-1], member)
            assert set(second) <= {m.hash for m in got} <= set(first) | set(second)
            assert sorted(
                m.hash for m in copy.deepcopy(cursor).fresh(got, trio.current_time())
            ) == sorted(second)


async def test_a_cursor_no_member_holds_is_asked_of_the_peers_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A device whose last message expired polls with its hash every few seconds: the
    first poll asks the peers for it, later ones read from the start without asking
    again (each poll asked every peer before), until the answer is stale."""
    async with open_test_swarm(6) as (network, swarm):
        members = swarm_of(network, ALICE)
        asked: list[str] = []
        for node in network.running_nodes():
            node.rpc.observe(lambda method, peer, params: asked.append(method))
        stored, _ = await swarm.store(ALICE.session_id, 0, b"still here")
        gone = message_hash(b"expired long ago")
        target = NodeInfo(members[0].pubkey, members[0].url)
        for _ in range(3):
            got, _, _ = await swarm.retrieve(ALICE, 0, gone, target)
            assert [m.hash for m in got] == [stored]  # from the start
        assert asked.count("lookup") == len(members) - 1
        await trio.sleep(UNKNOWN_CURSOR_MS / 1000)
        await swarm.retrieve(ALICE, 0, gone, target)
        assert asked.count("lookup") == 2 * (len(members) - 1)


async def test_membership_change_moves_messages(autojump_clock: trio.testing.MockClock) -> None:
    owners = [Identity.from_label(f"user{i}") for i in range(30)]
    async with open_test_swarm(6) as (network, swarm):
        stored = {
            o.session_id: (await swarm.store(o.session_id, 0, o.session_id.encode()))[0]
            for o in owners
        }
        await wait_until(lambda: all(n.store.stats()[0] == 30 for n in network.running_nodes()))
        for _ in range(6):
            await network.add_node()
        await network.refresh_all()
        nodes = network.running_nodes()
        assert len({n.swarm_id for n in nodes}) == 2

        def held_where_served() -> bool:
            return all(
                node.store.get(owner.session_id, 0, stored[owner.session_id]) is not None
                for owner in owners
                for node in nodes
                if node.owns(owner.session_id)
            )

        def settled() -> bool:
            for owner in owners:
                for node in nodes:
                    row = node.store.get(owner.session_id, 0, stored[owner.session_id])
                    if node.owns(owner.session_id) != (row is not None):
                        return False
            return True

        # The new members get every owner that moved to them at once, but the old ones
        # let go only once those newcomers have been listed for HAND_OVER_ELDER_MS.
        await wait_until(held_where_served)
        await trio.sleep(HAND_OVER_ELDER_MS / 2000)
        assert sum(n.stats.handed_over for n in nodes) == 0
        await wait_until(settled, limit_s=HAND_OVER_ELDER_MS / 1000 + 900)
        await swarm.refresh()
        for owner in owners:
            messages, _, _ = await swarm.retrieve(owner, 0, None)
            assert [m.data for m in messages] == [owner.session_id.encode()]


async def test_subscription_pushes_and_poll_loop_deliver(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_swarm(6) as (_network, swarm):
        pushed: list[Message] = []
        polled: list[Message] = []
        got_all = trio.Event()

        async def on_push(batch: list[Message]) -> None:
            pushed.extend(batch)

        async def on_poll(batch: list[Message]) -> None:
            polled.extend(batch)
            if len(polled) == 10:
                got_all.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: swarm.subscribe(ALICE, 0, on_push, cursor=Cursor()))
            nursery.start_soon(lambda: swarm.poll(ALICE, 0, on_poll))
            await trio.sleep(1)
            start = trio.current_time()
            for i in range(10):
                await swarm.store(ALICE.session_id, 0, b"p%d" % i)
            await got_all.wait()
            assert trio.current_time() - start < 4  # within one poll interval
            await wait_until(lambda: len(pushed) == 10)
            nursery.cancel_scope.cancel()
        assert sorted(m.data for m in pushed) == sorted(m.data for m in polled)
        assert len({m.hash for m in pushed}) == 10


async def test_a_subscription_moves_to_another_member_at_once_when_its_node_dies(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_swarm(6) as (network, swarm):
        pushed: list[Message] = []

        async def on_push(batch: list[Message]) -> None:
            pushed.extend(batch)

        def serving() -> list[NodeHandle]:
            return [
                handle
                for handle in network.nodes
                if handle.node is not None
                and handle.node.core.subscriptions.of((ALICE.session_id, 0))
            ]

        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: swarm.subscribe(ALICE, 0, on_push, cursor=Cursor()))
            await wait_until(lambda: len(serving()) == 1)
            for move in range(3):  # each member lost, not only the first
                [serving_now] = serving()
                await network.stop_node(serving_now)
                started = trio.current_time()
                await wait_until(lambda: bool(serving()))
                assert trio.current_time() - started < 1, move  # not after a back-off
            await swarm.store(ALICE.session_id, 0, b"after the moves")
            await wait_until(lambda: [m.data for m in pushed] == [b"after the moves"])
            nursery.cancel_scope.cancel()


class _LoggedListing:
    """The network's registry, noting each read in ``log``; the reads numbered in
    ``failing`` (from 1) fail."""

    def __init__(self, inner: Listing, log: list[str], failing: tuple[int, ...] = ()) -> None:
        self.inner = inner
        self.log = log
        self.failing = failing
        self.reads = 0

    async def fetch(self) -> Snapshot:
        self.reads += 1
        if self.reads in self.failing:
            self.log.append("registry unreachable")
            raise OSError("the registry is unreachable")
        self.log.append("registry read")
        return await self.inner.fetch()


async def _subscribe_while_members_refuse(
    code: str, failing_reads: tuple[int, ...] = ()
) -> tuple[list[str], list[float]]:
    """A subscriber whose first member asked refuses with ``code`` (every other member
    takes it): what happened, in order, until the subscription was taken (registry
    reads, the refusal, the subscription) and when (virtual seconds)."""
    async with open_test_swarm(6) as (network, _), open_rpc_pool(network.transport) as pool:
        log: list[str] = []
        times: list[float] = []
        listing = _LoggedListing(network.directory(), log, failing_reads)
        swarm = SwarmClient(pool, listing, network.clock, random.Random(1))
        await swarm.refresh()
        for node in network.running_nodes():
            honest = node.rpc.methods["subscribe"]

            def subscribe(params: Any, connection: Any, honest: Any = honest) -> Any:
                times.append(trio.current_time())
                if "refused" not in log:
                    log.append("refused")
                    raise RpcError(code, "so it says")
                log.append("subscribed")
                return honest(params, connection)

            node.rpc.methods["subscribe"] = subscribe
        pushed: list[Message] = []

        async def on_push(batch: list[Message]) -> None:
            pushed.extend(batch)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: swarm.subscribe(ALICE, 0, on_push, cursor=Cursor()))
            await wait_until(lambda: "subscribed" in log)
            await swarm.store(ALICE.session_id, 0, b"after the move")
            await wait_until(lambda: [m.data for m in pushed] == [b"after the move"])
            nursery.cancel_scope.cancel()
        return log[: log.index("subscribed") + 1], times


async def test_a_subscriber_told_its_swarm_moved_reads_the_registry_again_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A member answering ``wrong_swarm`` to a subscription says the subscriber's listing
    is old: it reads the registry again before asking anyone else, as every other call
    does, rather than going round the members it knew; and at once."""
    log, times = await _subscribe_while_members_refuse("wrong_swarm")
    assert log == ["registry read", "refused", "registry read", "subscribed"]
    assert times[1] - times[0] < 1


async def test_a_member_that_is_only_busy_is_followed_by_the_next_without_a_registry_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log, times = await _subscribe_while_members_refuse("unavailable")
    assert log == ["registry read", "refused", "subscribed"]
    assert times[1] - times[0] < 1


async def test_a_registry_read_that_fails_after_wrong_swarm_is_tried_again_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The listing is still old when the read after ``wrong_swarm`` fails: the next try
    reads again before asking a member of it."""
    log, _ = await _subscribe_while_members_refuse("wrong_swarm", failing_reads=(2,))
    assert log == [
        "registry read",
        "refused",
        "registry unreachable",
        "registry read",
        "subscribed",
    ]


async def test_a_node_killed_during_a_burst_loses_nothing_acknowledged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_swarm(6) as (network, swarm):
        victim = network.nodes[1]
        acknowledged: list[bytes] = []

        async def writer(index: int) -> None:
            for i in range(20):
                try:
                    digest, _ = await swarm.store(ALICE.session_id, 0, b"w%d-%d" % (index, i))
                except Exception:  # an unacknowledged store may fail; that is allowed
                    continue
                acknowledged.append(digest)
                await trio.sleep(0.01)

        async with trio.open_nursery() as nursery:
            for index in range(5):
                nursery.start_soon(writer, index)
            await trio.sleep(0.05)
            await network.stop_node(victim)
        assert len(acknowledged) == 100
        await network.start_node(victim)
        await wait_until(lambda: all(holders(network, ALICE, d) == 6 for d in acknowledged))
        messages, _, _ = await swarm.drain(ALICE, 0, Cursor())
        assert {m.hash for m in messages} == set(acknowledged)


async def test_static_file_directory(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A static network needs no registry: nodes and clients read a JSON file."""
    async with open_test_swarm(3) as (network, _):
        listing = {"nodes": [{"pubkey": n.pubkey, "url": n.url} for n in network.running_nodes()]}
        path = tmp_path / "network.json"
        path.write_text(json.dumps(listing))
        swarm_directory = FileDirectory(path)
        async with open_swarm_client(network.transport, swarm_directory, network.clock) as swarm:
            digest, _ = await swarm.store(ALICE.session_id, 0, b"static")
            messages, _, _ = await swarm.retrieve(ALICE, 0, None)
            assert [m.hash for m in messages] == [digest]
        path.write_text("{not json")
        with pytest.raises(DecodeError, match=r"network\.json"):
            await swarm_directory.fetch()
        with pytest.raises(DecodeError, match=r"network\.json"):
            FileDirectory(path)  # refused when it is opened, before anything is served


async def test_a_member_cannot_delete_or_shorten_on_its_own_word(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A malicious swarm member replicates tombstones and shortened expiries without the
    owner's signed request, or with a real one that names other messages: every honest
    member refuses them and keeps the data. The owner's own delete, shipped with its
    signature, still reaches every member, and repair carries it to one that was down."""
    config = NodeConfig(repair_interval_s=30.0)
    async with open_test_swarm(6, config) as (network, swarm):
        members = swarm_of(network, ALICE)
        mallory, honest = members[0], members[1:]
        stored = [(await swarm.store(ALICE.session_id, 0, b"keep%d" % i))[0] for i in range(4)]
        bait = (await swarm.store(ALICE.session_id, 0, b"bait"))[0]
        await wait_until(lambda: all(holders(network, ALICE, d) == 6 for d in [*stored, bait]))
        assert await swarm.delete(ALICE, 0, [bait]) == [bait]
        await wait_until(lambda: holders(network, ALICE, bait) == 0)
        bait_proof = honest[0].store.get(ALICE.session_id, 0, bait).proof  # type: ignore[union-attr]
        assert bait_proof is not None

        victim = stored[0]
        row = honest[0].store.get(ALICE.session_id, 0, victim)
        assert row is not None
        forged = [
            dataclasses.replace(row, data=None, proof=None),  # tombstone, no proof
            dataclasses.replace(row, data=None, proof=bait_proof),  # proof of another delete
            dataclasses.replace(row, expiry_ms=row.expiry_ms - 1, proof=bait_proof),
        ]
        shortened = dataclasses.replace(row, expiry_ms=TEST_EPOCH_MS + 20_000)  # no proof
        async with open_rpc(network.transport, honest[0].url) as client:
            for attack in [*forged, shortened]:
                params = {"rows": [row_to_wire(attack)]}
                now = network.clock.now_ms()
                await client.call(
                    "replicate", sign_node_request(mallory.identity, "replicate", params, now)
                )
        assert honest[0].stats.rows_refused == len(forged)
        kept = honest[0].store.get(ALICE.session_id, 0, victim)
        assert kept is not None and kept.data == row.data and kept.expiry_ms == row.expiry_ms

        down = next(h for h in network.nodes if h.node is honest[-1])
        await network.stop_node(down)
        assert await swarm.delete(ALICE, 0, stored[1:2]) == stored[1:2]
        await network.start_node(down)
        node = down.node
        assert node is not None
        row_on = node.store.get
        await wait_until(lambda: getattr(row_on(ALICE.session_id, 0, stored[1]), "deleted", False))
        messages, _, _ = await swarm.retrieve(ALICE, 0, None)
        assert sorted(m.hash for m in messages) == sorted([stored[0], *stored[2:]])
        assert all(n.stats.rows_refused == 0 for n in network.running_nodes() if n is not honest[0])


async def test_rows_with_times_at_the_end_of_the_int64_range_neither_land_nor_stop_a_node(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A member replicates a row whose read position is 2**63-1 (once taken as it came,
    the owner's next store had no position left and repair crashed every node it reached)
    and rows whose timestamp or expiry lie at the end of time (never swept). The first is
    re-positioned by the receiver, the others are refused; every node keeps running, the
    owner's later stores land and read back, and repair spreads nothing poisonous."""
    config = NodeConfig(repair_interval_s=30.0)
    async with open_test_swarm(6, config) as (network, swarm):
        members = swarm_of(network, ALICE)
        mallory, honest = members[0], members[1:]
        first = (await swarm.store(ALICE.session_id, 0, b"before"))[0]
        await wait_until(lambda: holders(network, ALICE, first) == 6)
        row = honest[0].store.get(ALICE.session_id, 0, first)
        assert row is not None
        end = 2**63 - 1
        now = network.clock.now_ms()
        poison = StoredMessage(
            ALICE.session_id, 0, message_hash(b"poison"), now, now + 3_600_000, b"poison", end
        )
        ageless = [
            dataclasses.replace(
                poison, data=b"late", hash=message_hash(b"late"), timestamp_ms=end, expiry_ms=end
            ),
            dataclasses.replace(
                poison, data=b"old", hash=message_hash(b"old"), expiry_ms=now + 100 * 86_400_000
            ),
        ]
        async with open_rpc(network.transport, honest[0].url) as client:
            for attack in [poison, *ageless]:
                params = {"rows": [row_to_wire(attack)]}
                await client.call(
                    "replicate",
                    sign_node_request(
                        mallory.identity, "replicate", params, network.clock.now_ms()
                    ),
                )
        assert honest[0].stats.rows_refused == len(ageless)
        kept = honest[0].store.get(ALICE.session_id, 0, poison.hash)
        assert kept is not None and kept.order_ms < end

        later = [(await swarm.store(ALICE.session_id, 0, b"after%d" % i))[0] for i in range(3)]
        await trio.sleep(2 * config.repair_interval_s)  # repair rounds run with the poison held
        assert len(network.running_nodes()) == 6
        await wait_until(lambda: all(holders(network, ALICE, d) == 6 for d in later))
        messages, _, _ = await swarm.retrieve(ALICE, 0, None)
        assert {first, poison.hash, *later} == {m.hash for m in messages}
        for node in network.running_nodes():
            for attack in ageless:
                assert node.store.get(ALICE.session_id, 0, attack.hash) is None


async def test_rows_queued_for_a_dead_peer_are_bounded_in_bytes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Large messages stored while a member is down pile up in the queue for that member
    only up to ``replication_queue_bytes``; the rest is left to repair, which makes the
    member whole once it is back."""
    budget = 256 * 1024
    config = NodeConfig(repair_interval_s=30.0, replication_queue_bytes=budget)
    async with open_test_swarm(6, config) as (network, swarm):
        victim = network.nodes[2]
        await network.stop_node(victim)
        data = [bytes([i]) * 60_000 for i in range(20)]
        # All through one member, so its queue for the dead one gets every row.
        entry = next(h.node for h in network.nodes if h.node is not None)
        to = NodeInfo(entry.pubkey, entry.url)
        acknowledged = [(await swarm.store(ALICE.session_id, 0, d, node=to))[0] for d in data]
        running = [h.node for h in network.nodes if h.node is not None]
        fullest = max(q.queued_bytes for n in running for q in n.replication_queues.values())
        assert budget - 61_000 < fullest <= budget  # the dead member's queue, filled
        assert sum(n.stats.replication_dropped for n in running) > 0
        await network.start_node(victim)
        await wait_until(
            lambda: all(holders(network, ALICE, d) == len(network.nodes) for d in acknowledged)
        )


#: What a fake node serves for the n-th read (from 1) after ``last_hash``: a page, and
#: whether it says there is more.
Serve = Callable[[int, bytes | None], tuple[list[Message], bool]]


class _Served(SwarmClient):
    """A swarm client whose node answers each read as ``serve`` says, noting each
    ``last_hash`` it is asked after."""

    def __init__(self, clock: Clock, serve: Serve) -> None:
        super().__init__(None, None, clock, random.Random(1))  # type: ignore[arg-type]
        self.serve = serve
        self.asked: list[bytes | None] = []

    async def retrieve(  # type: ignore[override]
        self,
        identity: Identity,
        namespace: int,
        last_hash: bytes | None,
        node: NodeInfo | None = None,
    ) -> tuple[list[Message], bool, NodeInfo]:
        self.asked.append(last_hash)
        page, more = self.serve(len(self.asked), last_hash)
        return page, more, node or NodeInfo("aa" * 32, "mem:node")


def _pages(clock: Clock, pages: list[list[Message]]) -> _Served:
    """A node serving ``pages`` in turn."""
    return _Served(clock, lambda n, after: (pages[n - 1], n < len(pages)))


def _endless(page: Callable[[int, bytes | None], list[Message]]) -> _Served:
    """A node answering every read with ``page(n, after)`` and "more"."""
    return _Served(Clock(TEST_EPOCH_MS), lambda n, after: (page(n, after), True))


async def test_a_node_that_always_has_more_is_read_a_drain_at_a_time_then_left() -> None:
    """A node answering every page with new messages and "more" neither holds the read
    (each drain's pages are delivered before the next is read, so a reader keeps one
    drain in memory and files what came) nor keeps it for good: past what any member may
    hold of one stream, the node is failing (:class:`DecodeError`), and a poll goes to
    another member. A page that says "more" but is not full, or does not move the
    cursor, is failing at once: short pages of two hashes in turn, or one page asked
    again, would be served for ever."""
    data = bytes(100_000)
    reader = _endless(
        lambda n, after: [Message(n.to_bytes(32, "big"), 0, TEST_EPOCH_MS + 60_000, data)]
    )
    delivered: list[int] = []

    async def deliver(batch: list[Message]) -> None:
        delivered.append(len(batch))

    with pytest.raises(DecodeError, match="more than any member holds"):
        await reader.catch_up(ALICE, 0, Cursor(), deliver)
    charge = len(data) + ROW_CHARGE_BYTES
    assert len(reader.asked) == MAX_SERVED_CHARGE // charge + 1
    assert delivered and set(delivered[:-1]) == {PAGES_PER_DRAIN}

    def small(n: int) -> Message:
        return Message(bytes([n % 2 + 1]) * 32, 0, TEST_EPOCH_MS + 60_000, b"x")

    full = [small(n) for n in range(2, RETRIEVE_LIMIT + 1)]
    for page, refusal, asked in (
        (lambda n, after: [], "did not fill", 1),
        (lambda n, after: [small(n)], "did not fill", 1),  # two hashes in turn, for ever
        (lambda n, after: [*full, small(1)], "nothing past the cursor", 2),
    ):
        stuck = _endless(page)
        with pytest.raises(DecodeError, match=refusal):
            await stuck.catch_up(ALICE, 0, Cursor(), deliver)
        assert len(stuck.asked) == asked, refusal


async def test_a_drain_asks_for_each_later_page_after_the_last_message_it_read() -> None:
    """Only a read's first page may begin from the start for a dead cursor: a page that
    ends on a message the reader takes for long expired (a node serving it late) is
    followed by the page after that message, never by the start again, which the node
    would answer with the same page for ever."""
    now = TEST_EPOCH_MS
    full = bytes(RETRIEVE_MAX_BYTES)  # a page a node says "more" after is full
    dead = Message(b"\1" * 32, 0, now - DEAD_CURSOR_MS, full)
    live = Message(b"\2" * 32, 0, now + 60_000, b"live")
    reader = _pages(Clock(now), [[dead], [live]])
    messages, _, _ = await reader.drain(
        ALICE, 0, Cursor(last_hash=dead.hash, last_expiry_ms=dead.expiry_ms)
    )
    assert reader.asked == [None, dead.hash]
    assert messages == [dead, live]
