"""The outbox's deletion schedule, sans-I/O: a random delay after a deletion is first
seen, at once for one an earlier process queued, and requests grouped and bounded."""

from __future__ import annotations

import random

from p2psync.device.deletions import DeletionSchedule, delete_batches
from p2psync.swarm.constants import MAX_HASHES_PER_REQUEST

NOW = 1_000_000
OLD, NEW = ("alice", 1, b"o" * 32), ("alice", 0, b"n" * 32)


def test_a_deletion_waits_a_delay_drawn_once_and_an_inherited_one_none() -> None:
    schedule = DeletionSchedule([OLD], NOW, (30.0, 300.0), random.Random(1))
    assert schedule.due([OLD, NEW], NOW) == [OLD]
    at = schedule.next_ms()
    assert at is not None and at >= NOW  # OLD, until it is sent
    schedule.sent(OLD)
    at = schedule.next_ms()
    assert at is not None and NOW + 30_000 <= at <= NOW + 300_000
    assert schedule.due([NEW], at - 1) == [] and schedule.next_ms() == at  # not redrawn
    assert not schedule.overdue(at - 1) and schedule.overdue(at)
    assert schedule.due([NEW], at) == [NEW]
    assert schedule.due([], at) == [] and schedule.next_ms() is None  # forgotten


def test_batches_are_one_request_per_owner_and_namespace_and_bounded() -> None:
    many = [
        ("alice", 0, bytes([i % 256, i // 256]) * 16) for i in range(MAX_HASHES_PER_REQUEST + 1)
    ]
    batches = delete_batches([*many, ("alice", 1, b"s" * 32), ("bob", 0, b"b" * 32)])
    assert [(o, n, len(d)) for o, n, d in batches] == [
        ("alice", 0, MAX_HASHES_PER_REQUEST),
        ("alice", 0, 1),
        ("alice", 1, 1),
        ("bob", 0, 1),
    ]
