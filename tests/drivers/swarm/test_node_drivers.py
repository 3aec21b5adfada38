"""A node's background drivers survive any single peer: a peer that answers garbage, or
is not there, ends that peer's round or batch, never the loop (nor the other peers')."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing

from overlay.link import MemoryNetwork
from p2psync.clock import TEST_EPOCH_MS, Clock
from p2psync.errors import RpcError
from p2psync.identity import Identity, message_hash
from p2psync.rpc import Connection, Handler, RpcServer, open_rpc_pool
from p2psync.swarm import repair
from p2psync.swarm.messages import RepairDigestReply
from p2psync.swarm.node_shared import Dial, NodeStats
from p2psync.swarm.peer_calls import PeerCalls
from p2psync.swarm.repairer import Repairer
from p2psync.swarm.replicator import Replicator
from p2psync.swarm.ring import NodeInfo
from p2psync.swarm.rows import StoredMessage
from p2psync.swarm.store import MessageStore
from p2psync.wire import Fields

from .helpers import wait_until

ME = Identity.from_label("the node under test")
OWNER = Identity.from_label("alice").session_id
BAD = NodeInfo("bb" * 32, "mem:bad")
GOOD = NodeInfo("aa" * 32, "mem:good")
ABSENT = NodeInfo("cc" * 32, "mem:nowhere")


def row(n: int) -> StoredMessage:
    data = b"message %d" % n
    return StoredMessage(OWNER, 0, message_hash(data), TEST_EPOCH_MS, TEST_EPOCH_MS + 60_000, data)


@asynccontextmanager
async def serving(
    network: MemoryNetwork, clock: Clock, peers: dict[NodeInfo, dict[str, Handler]]
) -> AsyncIterator[Dial]:
    """Fake peers answering ``peers``' methods, and a dial to reach them."""
    async with open_rpc_pool(network) as pool, trio.open_nursery() as nursery:
        for peer, methods in peers.items():
            await nursery.start(RpcServer(methods).serve, network, peer.url)

        async def dial(peer: NodeInfo) -> PeerCalls:
            return PeerCalls(await pool.get(peer.url), ME, clock)

        yield dial
        nursery.cancel_scope.cancel()


def holding_nothing(
    store: MessageStore, clock: Clock, dial: Dial, peers: list[NodeInfo]
) -> Repairer:
    """A repairer of a node that holds no row, with ``peers``, every 60 s."""
    return Repairer(
        store,
        clock,
        peers=lambda: peers,
        dial=dial,
        summaries=list,
        ingest=lambda rows: 0,
        refused=lambda reasons, peer: None,
        stats=NodeStats(),
        interval_s=60,
        rng=random.Random(1),
    )


def answering(asked: Counter[str], method: str, reply: Any) -> dict[str, Handler]:
    def answer(params: Fields, conn: Connection) -> Any:
        asked[method] += 1
        return reply

    return {method: answer}


async def test_a_peer_answering_garbage_does_not_end_repair(
    autojump_clock: trio.testing.MockClock, tmp_path: Any
) -> None:
    clock, network, asked = Clock(TEST_EPOCH_MS), MemoryNetwork(), Counter[str]()
    garbage = answering(asked, "repair_digest", {"digests": "not a list"})
    store = MessageStore(tmp_path / "node.sqlite3")
    async with serving(network, clock, {BAD: garbage}) as dial, trio.open_nursery() as nursery:
        repairer = holding_nothing(store, clock, dial, [BAD, ABSENT])
        nursery.start_soon(repairer.run)
        for rounds in range(1, 4):
            await wait_until(lambda rounds=rounds: asked["repair_digest"] == rounds)  # type: ignore[misc]
            repairer.soon()  # the next round asks every peer again
        nursery.cancel_scope.cancel()
    store.close()


async def test_a_repair_that_failed_is_tried_again_within_seconds_not_an_interval(
    autojump_clock: trio.testing.MockClock, tmp_path: Any
) -> None:
    """A peer that was down: the rounds with it failed while it was, and the one after
    its return must come with the back-off (2 s, 4 s, …), not at the next gossip pick of
    a 60 s interval (a member restarted after a crash waited that long to be caught up)."""
    clock, network, asked = Clock(TEST_EPOCH_MS), MemoryNetwork(), Counter[str]()
    store = MessageStore(tmp_path / "node.sqlite3")
    down_until = trio.current_time() + 5

    def digest(params: Fields, conn: Connection) -> Any:
        asked["repair_digest"] += 1
        if trio.current_time() < down_until:
            raise RpcError("unavailable", "restarting")
        return RepairDigestReply(tuple(repair.bucket_digests({}))).to_wire()  # nothing held

    async with (
        serving(network, clock, {GOOD: {"repair_digest": digest}}) as dial,
        trio.open_nursery() as nursery,
    ):
        repairer = holding_nothing(store, clock, dial, [GOOD])
        nursery.start_soon(repairer.run)
        await trio.sleep(20)
        asks = asked["repair_digest"]
        assert asks >= 3  # at 0, 2 and 6 s: the last one after the peer came back
        await trio.sleep(30)
        assert asked["repair_digest"] == asks  # once through, the interval again
        nursery.cancel_scope.cancel()
    store.close()


async def test_a_peer_answering_garbage_does_not_end_replication(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock, network, asked = Clock(TEST_EPOCH_MS), MemoryNetwork(), Counter[str]()
    peers = {
        BAD: answering(asked, "replicate", {"refused": "not a list"}),
        GOOD: answering(Counter(), "replicate", {"refused": []}),
    }
    committed: list[tuple[str, list[bytes]]] = []
    lost: list[None] = []

    def took(peer: str, rows: Iterable[StoredMessage]) -> None:
        committed.append((peer, [r.hash for r in rows]))

    async with serving(network, clock, peers) as _, trio.open_nursery() as nursery:
        replicator = Replicator(
            network,
            ME,
            clock,
            peers=lambda: [BAD, GOOD, ABSENT],
            pending=list,
            committed=took,
            lost=lambda: lost.append(None),
            hand_over=trio.sleep_forever,
            queue_bytes=1 << 20,
            stats=NodeStats(),
        )
        nursery.start_soon(replicator.run)
        await wait_until(lambda: len(replicator.queues) == 3)
        for n in range(3):
            replicator.offer([row(n)])
            await wait_until(lambda n=n: asked["replicate"] == n + 1)  # type: ignore[misc]
            await wait_until(lambda n=n: (GOOD.pubkey, [row(n).hash]) in committed)  # type: ignore[misc]
        assert all(peer == GOOD.pubkey for peer, _ in committed)
        assert lost  # what the bad peer dropped is left to repair
        nursery.cancel_scope.cancel()
