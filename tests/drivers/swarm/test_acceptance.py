"""``store`` as :class:`~p2psync.swarm.acceptance.StoreAcceptance` answers it: after the
commit that holds the row, once a quorum holds it, or ``unavailable`` when the quorum
does not come in time; never left unanswered, and nothing counted for nobody."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from p2psync.clock import TEST_EPOCH_MS, Clock
from p2psync.errors import RpcError
from p2psync.identity import Identity, message_hash
from p2psync.rpc import Connection, Later, Outbox
from p2psync.swarm.acceptance import StoreAcceptance
from p2psync.swarm.allowance import OwnerQuota
from p2psync.swarm.messages import StoreBatchReply, StoreBatchRequest, StoreReply, StoreRequest
from p2psync.swarm.node_config import NodeConfig
from p2psync.swarm.node_core import NodeCore, Push, Replicate
from p2psync.swarm.node_shared import NodeStats
from p2psync.swarm.ring import NodeInfo
from p2psync.swarm.store import MessageStore
from p2psync.wire import Fields

OWNER = Identity.from_label("owner").session_id
ME, PEER = "aa" * 32, "bb" * 32


@asynccontextmanager
async def acceptance(
    tmp_path: Path, *, failing_effects: bool = False
) -> AsyncIterator[tuple[StoreAcceptance, NodeStats, Clock]]:
    """A node of a two-member swarm (quorum 2: the peer must commit too), its commit and
    timeout loops running; ``failing_effects``: running a store's effects raises."""
    clock = Clock(TEST_EPOCH_MS)
    core: NodeCore[Connection] = NodeCore(ME, started_ms=0, store_quorum=2, max_subscriptions=4)
    core.listed([NodeInfo(ME, "mem:me"), NodeInfo(PEER, "mem:peer")])
    store = MessageStore(tmp_path / "node.sqlite3")
    stats = NodeStats()

    def execute(effects: Iterable[Push[Connection] | Replicate]) -> None:
        if failing_effects:
            raise RuntimeError("the replication queue broke")

    accepting = StoreAcceptance(
        core,
        store,
        clock,
        NodeConfig(quorum_timeout_s=10.0),
        OwnerQuota(lambda owner: 0),
        stats,
        execute,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(accepting.run)
        yield accepting, stats, clock
        nursery.cancel_scope.cancel()
    store.close()


def _store(accepting: StoreAcceptance, clock: Clock, data: bytes) -> Later:
    request = StoreRequest(OWNER, 0, 3_600_000, clock.now_ms(), data)
    return accepting.store(
        Fields(request.to_wire(), "params"), Connection("client", Outbox(8, 4096))
    )


async def _outcome(later: Later) -> Any:
    try:
        return await later.wait()
    except RpcError as exc:
        return exc.code
    except Exception as exc:
        return type(exc).__name__


async def test_copies_of_one_row_all_time_out_and_nothing_is_left_waiting(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Many copies of one row whose quorum never comes are each answered ``unavailable``
    at their own deadline, and the row's quorum is no longer counted once none waits."""
    async with acceptance(tmp_path) as (accepting, stats, clock):
        laters = []
        for _ in range(200):
            laters.append(_store(accepting, clock, b"the same row"))
            await trio.sleep(0.01)
        assert [row.data for row in accepting.pending()] == [b"the same row"]
        outcomes = [await _outcome(later) for later in laters]
        assert outcomes == ["unavailable"] * 200
        assert stats.quorum_missed == 200 and stats.duplicates == 199
        assert accepting.pending() == []


async def test_a_quorum_answers_every_copy_waiting_for_it(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with acceptance(tmp_path) as (accepting, stats, clock):
        first, second = (_store(accepting, clock, b"row") for _ in range(2))
        await trio.sleep(1)
        assert not first.done and not second.done
        accepting.peer_committed(PEER, accepting.pending())
        assert await first.wait() == await second.wait()
        assert stats.quorum_missed == 0 and accepting.pending() == []


async def test_a_store_whose_follow_up_fails_is_answered_and_leaves_no_quorum_behind(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """What fails after the commit (queueing the row for the peers) fails that store, as
    a handler's exception would (``internal``), instead of leaving it unanswered and its
    quorum counted for ever."""
    async with acceptance(tmp_path, failing_effects=True) as (accepting, _, clock):
        later = _store(accepting, clock, b"row")
        with trio.fail_after(1):
            with pytest.raises(RuntimeError, match="replication queue"):
                await later.wait()
        assert accepting.pending() == []


async def test_a_batch_is_answered_in_order_once_its_last_store_is_settled(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """``store_batch``: each store refused as ``store`` would refuse it (here a TTL out of
    range) or acknowledged at its quorum, all in one reply that waits for the last."""
    async with acceptance(tmp_path) as (accepting, stats, clock):
        stores = [
            StoreRequest(OWNER, 0, 3_600_000, clock.now_ms(), b"first"),
            StoreRequest(OWNER, 0, 1, clock.now_ms(), b"bad ttl"),
            StoreRequest(OWNER, 1, 3_600_000, clock.now_ms(), b"third"),
        ]
        params = Fields(StoreBatchRequest(tuple(stores)).to_wire(), "params")
        batch = accepting.store_batch(params, Connection("client", Outbox(8, 4096)))
        await trio.sleep(1)
        assert not batch.done, "two stores still wait for their quorum"
        assert [row.data for row in accepting.pending()] == [b"first", b"third"]
        accepting.peer_committed(PEER, accepting.pending())
        first, refused, third = StoreBatchReply.from_wire(await batch.wait(), stores=3).results
        assert isinstance(first, StoreReply) and isinstance(third, StoreReply)
        assert (first.hash, third.hash) == (message_hash(b"first"), message_hash(b"third"))
        assert isinstance(refused, RpcError) and refused.code == "bad_ttl"
        assert stats.stored == 2


async def test_a_batch_whose_quorum_never_comes_answers_each_store_unavailable(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with acceptance(tmp_path) as (accepting, stats, clock):
        stores = tuple(
            StoreRequest(OWNER, 0, 3_600_000, clock.now_ms(), bytes([i])) for i in range(3)
        )
        params = Fields(StoreBatchRequest(stores).to_wire(), "params")
        batch = accepting.store_batch(params, Connection("client", Outbox(8, 4096)))
        results = StoreBatchReply.from_wire(await batch.wait(), stores=3).results
        assert [getattr(r, "code", None) for r in results] == ["unavailable"] * 3
        assert stats.quorum_missed == 3 and accepting.pending() == []
