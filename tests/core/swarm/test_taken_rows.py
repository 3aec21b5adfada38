"""What a replication worker resends to its peer after a failure."""

from __future__ import annotations

import pytest

from p2psync.swarm.node_core import BATCH_BYTES
from p2psync.swarm.rows import StoredMessage
from p2psync.swarm.taken_rows import RESEND_ATTEMPTS, TakenRows


def row(n: int, owner: str = "05" + "aa" * 32, size: int = 100) -> StoredMessage:
    return StoredMessage(owner, 0, n.to_bytes(32, "big"), n, n + 10**9, bytes(size), n)


def test_what_the_peer_committed_is_done_and_the_rest_goes_first_next_time() -> None:
    big = BATCH_BYTES // 3  # three rows a batch at most
    taken = TakenRows()
    taken.took([row(n, size=big) for n in range(5)])
    parts = taken.parts()
    first = next(parts)
    assert taken.committed(first, refused=()) == first
    taken.done(first)
    taken.failed()  # the second batch never came back
    assert len(taken) == 5 - len(first)
    assert [r.hash for part in taken.parts() for r in part] == [
        row(n).hash for n in range(len(first), 5)
    ]


def test_rows_the_peer_refused_are_not_its_commit() -> None:
    other = "05" + "bb" * 32
    taken = TakenRows()
    taken.took([row(1), row(2, owner=other), row(3)])
    (part,) = taken.parts()
    assert [r.hash for r in taken.committed(part, refused=[other])] == [row(1).hash, row(3).hash]
    assert len(taken) == 3  # until the answer is taken in
    taken.done(part)
    assert len(taken) == 0


def test_after_its_last_send_what_is_left_is_repairs() -> None:
    taken = TakenRows()
    taken.took([row(1), row(2)])
    for _ in range(RESEND_ATTEMPTS - 1):
        list(taken.parts())
        taken.failed()
        assert len(taken) == 2
    list(taken.parts())
    taken.failed()
    assert len(taken) == 0


def test_fresh_rows_start_their_own_count() -> None:
    taken = TakenRows()
    taken.took([row(1)])
    for _ in range(RESEND_ATTEMPTS - 1):
        list(taken.parts())
        taken.failed()
    (part,) = taken.parts()
    taken.done(part)
    taken.took([row(2)])
    list(taken.parts())
    taken.failed()
    assert len(taken) == 1


def test_rows_are_not_taken_over_rows_still_to_send() -> None:
    taken = TakenRows()
    taken.took([row(1)])
    with pytest.raises(RuntimeError):
        taken.took([row(2)])
