"""The per-peer replication queue: bounded in rows and bytes, taken in batches."""

from __future__ import annotations

import trio
import trio.testing

from p2psync.swarm.outbound import ROW_OVERHEAD_BYTES, ReplicationQueue, row_cost
from p2psync.swarm.rows import StoredMessage


def row(index: int, size: int) -> StoredMessage:
    return StoredMessage("05" + "ab" * 32, 0, bytes([index]) * 32, index, index + 1, bytes(size))


def test_a_row_that_would_pass_either_bound_is_dropped_and_taking_frees_room() -> None:
    queue = ReplicationQueue(max_rows=3, max_bytes=3 * (ROW_OVERHEAD_BYTES + 100))
    assert [queue.offer(row(i, 100)) for i in range(4)] == [True, True, True, False]
    assert len(queue) == 3 and queue.queued_bytes == 3 * row_cost(row(0, 100))
    tombstone = StoredMessage("05" + "ab" * 32, 0, bytes(32), 0, 1, None, proof=bytes(90))
    assert row_cost(tombstone) == ROW_OVERHEAD_BYTES + 90

    big = ReplicationQueue(max_rows=100, max_bytes=2 * (ROW_OVERHEAD_BYTES + 1000))
    assert [big.offer(row(i, 1000)) for i in range(3)] == [True, True, False]
    assert big.offer(row(9, 10)) is False  # a small row after a full one still needs room


async def test_take_waits_for_rows_and_returns_them_oldest_first_in_batches(
    autojump_clock: trio.testing.MockClock,
) -> None:
    queue = ReplicationQueue()
    taken: list[list[int]] = []

    async def consume() -> None:
        for _ in range(2):
            taken.append([r.timestamp_ms for r in await queue.take(3)])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await trio.sleep(1)
        assert taken == []
        for i in range(5):
            queue.offer(row(i, 10))
    assert taken == [[0, 1, 2], [3, 4]]
    assert len(queue) == 0 and queue.queued_bytes == 0


async def test_tombstones_of_one_delete_are_charged_their_proof_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A delete of many hashes is as many tombstones with one proof: charged once a row,
    about 490 of a 1 000-hash delete filled a 16 MiB queue and the rest were dropped."""
    proof = bytes(10_000)
    tombstones = [
        StoredMessage("05" + "ab" * 32, 0, bytes([i]) * 32, i, i + 1, None, proof=bytes(proof))
        for i in range(10)
    ]
    queue = ReplicationQueue(max_bytes=len(proof) + 10 * ROW_OVERHEAD_BYTES)
    assert all(queue.offer(t) for t in tombstones)
    assert queue.queued_bytes == len(proof) + 10 * ROW_OVERHEAD_BYTES
    other = StoredMessage("05" + "ab" * 32, 0, bytes(32), 0, 1, None, proof=bytes(90))
    assert queue.offer(other) is False  # a proof not queued yet costs its bytes
    taken = await queue.take(5)
    assert [t.hash for t in taken] == [t.hash for t in tombstones[:5]]
    assert len({id(t.proof) for t in taken}) == 1  # one copy held, however many carry it
    assert queue.queued_bytes == len(proof) + 5 * ROW_OVERHEAD_BYTES
    await queue.take(5)
    assert queue.queued_bytes == 0 and queue.offer(other)
