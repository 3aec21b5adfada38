"""What a node lets one party put into it (:mod:`p2psync.swarm.allowance`): an owner's
quota over a batch of a peer's rows, and a connection's byte rate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from p2psync.identity import Identity, message_hash
from p2psync.swarm.allowance import (
    RECOUNT_S,
    ROW_CHARGE_BYTES,
    ConnectionBudgets,
    OwnerQuota,
    charge_of,
)
from p2psync.swarm.rows import StoredMessage

ALICE = Identity.from_label("alice").session_id
BOB = Identity.from_label("bob").session_id


def _row(owner: str, size: int, tag: int) -> StoredMessage:
    data = bytes(max(size - 1, 0)) + bytes([tag])[:size]
    return StoredMessage(owner, 0, message_hash(data + bytes([tag])), 0, 1, data)


def _tombstone(owner: str) -> StoredMessage:
    return StoredMessage(owner, 0, message_hash(b"gone"), 0, 1, None)


def test_a_batch_keeps_an_owners_rows_until_the_first_that_does_not_fit() -> None:
    """A row counts for its data and ROW_CHARGE_BYTES, and the batch's earlier rows
    count too; a row the node holds already takes no room; after an owner's first row
    that does not fit none of its rows is kept (even a smaller one); tombstones take no
    room; another owner's rows are judged on their own."""
    counted = {ALICE: 500, BOB: 0}
    quota = OwnerQuota(counted.__getitem__, quota=1_200)
    rows = [
        _row(ALICE, 300, 1),  # 500 + 556
        _row(BOB, 900, 2),
        _row(ALICE, 300, 3),  # held already: no room needed
        _row(ALICE, 300, 4),  # 1 056 + 556 > 1 200
        _row(ALICE, 100, 5),
        _tombstone(BOB),
    ]
    kept, full = quota.fitting(rows, held=lambda row: row is rows[2])
    assert kept == [rows[0], rows[1], rows[2], rows[5]]
    assert full == {ALICE}
    assert charge_of(rows[0]) == ROW_CHARGE_BYTES + 300


def test_a_row_without_data_is_not_free() -> None:
    """Rows of empty data filled a mailbox at no cost to the quota or a connection's
    byte rate (a review kept 10 000 of them from a stranger with a 1 000-byte quota)."""
    quota = OwnerQuota(lambda owner: 0, quota=10 * ROW_CHARGE_BYTES)
    empty = [_row(ALICE, 0, i) for i in range(20)]
    kept, full = quota.fitting(empty, held=lambda row: False)
    assert len(kept) == 10 and full == {ALICE}


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


def test_an_owner_at_its_quota_is_counted_again_only_once_a_second() -> None:
    """A full count is a query over the owner's rows: at the quota it was asked for every
    store and every row a peer sent (85 ms each for a quarter-million rows)."""
    counts: list[str] = []
    clock = [0.0]

    def count(owner: str) -> int:
        counts.append(owner)
        return 1_000

    quota = OwnerQuota(count, quota=1_000, now=lambda: clock[0])
    assert not any(quota.admits(ALICE, 1) for _ in range(100))
    rows = [_row(ALICE, 10, i) for i in range(100)]
    assert quota.fitting(rows, held=lambda row: True) == (rows, set())
    assert counts == [ALICE]
    clock[0] += RECOUNT_S
    assert not quota.admits(ALICE, 1)
    assert counts == [ALICE, ALICE]


def test_a_peers_rows_vouched_for_are_taken_before_a_strangers_shut_them_out() -> None:
    """A batch whose first row for Alice is a stranger's that does not fit below her
    reserve still has its row vouched for kept (a review's repair pulled the stranger's
    junk first every round, and never delivered a friend's message)."""
    quota = OwnerQuota(lambda owner: 500, quota=1_000, reserve=250)  # each row is charged 356
    junk = _row(ALICE, 100, 1)
    friends = replace(_row(ALICE, 100, 2), vouched=True)
    kept, full = quota.fitting([junk, friends], lambda row: False)
    assert kept == [friends] and full == {ALICE}
