"""What a node lets one party put into it (:mod:`p2psync.swarm.allowance`): an owner's
quota over a batch of a peer's rows, and a connection's byte rate."""

from __future__ import annotations

from collections.abc import Callable

from p2psync.identity import Identity, message_hash
from p2psync.swarm.allowance import ConnectionBudgets, OwnerQuota
from p2psync.swarm.rows import StoredMessage

ALICE = Identity.from_label("alice").session_id
BOB = Identity.from_label("bob").session_id


def _row(owner: str, size: int, tag: int) -> StoredMessage:
    data = bytes(size - 1) + bytes([tag])
    return StoredMessage(owner, 0, message_hash(data), 0, 1, data)


def _tombstone(owner: str) -> StoredMessage:
    return StoredMessage(owner, 0, message_hash(b"gone"), 0, 1, None)


def test_a_batch_keeps_an_owners_rows_until_the_first_that_does_not_fit() -> None:
    """The batch's own earlier rows count against the quota; after an owner's first row
    that does not fit none of its rows is kept (even a smaller one), tombstones take no
    room, and another owner's rows are judged on their own."""
    held = {ALICE: 500, BOB: 0}
    quota = OwnerQuota(held.__getitem__, quota=1_000)
    rows = [
        _row(ALICE, 300, 1),
        _row(BOB, 900, 2),
        _row(ALICE, 300, 3),  # 500 + 300 + 300 > 1 000
        _row(ALICE, 100, 4),
        _tombstone(BOB),
    ]
    kept, full = quota.fitting(rows)
    assert kept == [rows[0], rows[1], rows[4]]
    assert full == {ALICE}


class _Conn:
    def __init__(self) -> None:
        self.closing: list[Callable[[], None]] = []

    def on_close(self, callback: Callable[[], None]) -> None:
        self.closing.append(callback)


def test_each_connection_has_its_own_byte_bucket_refilled_at_the_rate() -> None:
    budgets = ConnectionBudgets(bytes_per_s=100)  # bursts of 800 bytes
    one, two = _Conn(), _Conn()
    assert budgets.charge(one, 0.0, 800)
    assert not budgets.charge(one, 0.0, 1)
    assert budgets.charge(two, 0.0, 800)  # its own
    assert budgets.charge(one, 1.0, 100)  # refilled at the rate
    assert not budgets.charge(one, 1.0, 1)
    assert len(one.closing) == 1  # told to forget the bucket when the connection closes
