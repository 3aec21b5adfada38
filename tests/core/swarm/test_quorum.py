"""When a node acknowledges a store: the quorum rule of DESIGN.md §4, without I/O."""

from __future__ import annotations

from p2psync.swarm.quorum import AfterCommit, QuorumBook, row_key
from p2psync.swarm.rows import StoredMessage

NOW = 1_000_000
TIMEOUT = 5_000


def row(data: bytes = b"hello") -> StoredMessage:
    return StoredMessage("05" + "ab" * 32, 0, data.ljust(32, b"."), NOW, NOW + 60_000, data)


def test_a_new_row_goes_to_the_peers_and_waits_for_its_quorum() -> None:
    book = QuorumBook()
    assert book.after_commit(row(), True, 1, NOW, TIMEOUT) == AfterCommit(True, NOW + TIMEOUT)
    assert row_key(row()) in book
    assert book.committed("peer-a", [row()]) == [row_key(row())]
    assert row_key(row()) not in book


def test_without_another_member_needed_a_store_is_acknowledged_at_once() -> None:
    book = QuorumBook()
    assert book.after_commit(row(), True, 0, NOW, TIMEOUT) == AfterCommit(True, None)
    assert book.after_commit(row(), False, 0, NOW, TIMEOUT) == AfterCommit(False, None)
    assert len(book) == 0


def test_a_duplicate_waits_for_its_quorum_and_is_offered_again_once() -> None:
    """The first store of a row may have been answered ``unavailable``: a retry waits for
    the quorum too, and offers the row to the peers, unless a store waiting for it has."""
    book = QuorumBook()
    assert book.after_commit(row(), False, 1, NOW, TIMEOUT) == AfterCommit(True, NOW + TIMEOUT)
    later = NOW + 100
    assert book.after_commit(row(), False, 1, later, TIMEOUT) == AfterCommit(False, later + TIMEOUT)
    assert book.committed("peer-a", [row()]) == [row_key(row())]


def test_a_quorum_counts_each_peer_once_and_only_the_rows_awaited() -> None:
    book = QuorumBook()
    book.after_commit(row(), True, 2, NOW, TIMEOUT)
    assert book.committed("peer-a", [row(), row(b"other")]) == []
    assert book.committed("peer-a", [row()]) == []
    assert book.committed("peer-b", [row()]) == [row_key(row())]
    assert book.rows() == []


def test_after_giving_up_a_retry_waits_and_offers_afresh() -> None:
    book = QuorumBook()
    book.after_commit(row(), True, 1, NOW, TIMEOUT)
    assert book.rows() == [row()]
    book.give_up(row_key(row()))
    assert book.committed("peer-a", [row()]) == []
    assert book.after_commit(row(), False, 1, NOW, TIMEOUT) == AfterCommit(True, NOW + TIMEOUT)
