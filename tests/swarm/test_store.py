"""The store's guarantees that replication and repair rely on."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from p2psync.identity import Identity, message_hash
from p2psync.swarm.store import MessageStore, StoredMessage

OWNER = Identity.from_label("owner").session_id


def row(
    data: bytes, *, expiry: int = 1_000, order: int = 1, deleted: bool = False
) -> StoredMessage:
    return StoredMessage(OWNER, 0, message_hash(data), 1, expiry, None if deleted else data, order)


@given(
    updates=st.lists(st.tuples(st.integers(500, 2_000), st.booleans()), min_size=1, max_size=8),
    order=st.permutations(range(8)),
)
def test_replicas_converge_whatever_the_order(
    updates: list[tuple[int, bool]], order: list[int]
) -> None:
    """Applying the same set of copies in any order ends in the same row: the shortest
    expiry, and deleted if any copy was a tombstone."""
    copies = [row(b"m", expiry=e, deleted=d) for e, d in updates]
    one, other = MessageStore(":memory:"), MessageStore(":memory:")
    for copy in copies:
        one.put(copy)
    for index in (i for i in order if i < len(copies)):
        other.put(copies[index])
    expected_expiry = min(e for e, _ in updates)
    expected_deleted = any(d for _, d in updates)
    for store in (one, other):
        stored = store.get(OWNER, 0, message_hash(b"m"))
        assert stored is not None
        assert (stored.expiry_ms, stored.deleted) == (expected_expiry, expected_deleted)


def test_retrieve_pages_by_count_and_bytes(tmp_path: Path) -> None:
    store = MessageStore(tmp_path / "s.sqlite3")
    rows = [row(bytes([i]) * 1000, order=i) for i in range(10)]
    store.put_many(rows)
    page, more = store.retrieve(OWNER, 0, (0, b""), 0, limit=4, max_bytes=10**6)
    assert [r.hash for r in page] == [r.hash for r in rows[:4]] and more
    page, more = store.retrieve(OWNER, 0, (3, rows[3].hash), 0, limit=100, max_bytes=2500)
    assert [r.hash for r in page] == [r.hash for r in rows[4:6]] and more
    page, more = store.retrieve(OWNER, 0, (0, b""), 0, limit=100, max_bytes=1)
    assert len(page) == 1 and more  # always at least one message
    assert store.retrieve(OWNER, 0, (0, b""), 2_000, limit=100, max_bytes=10**6) == ([], False)


def test_deleted_messages_stay_as_tombstones_until_expiry(tmp_path: Path) -> None:
    store = MessageStore(tmp_path / "s.sqlite3")
    kept = row(b"kept", expiry=5_000)
    gone = row(b"gone", expiry=5_000, order=2)
    store.put_many([kept, gone])
    assert store.delete(OWNER, 0, [gone.hash, b"\0" * 32]) == [gone.hash]
    assert store.position_of(OWNER, 0, gone.hash) == (2, gone.hash)  # still a cursor
    assert not store.put(gone)  # a late replica does not bring it back
    page, _ = store.retrieve(OWNER, 0, (0, b""), 0, limit=10, max_bytes=10**6)
    assert [r.hash for r in page] == [kept.hash]
    assert store.sweep(5_000) == 2
    assert store.stats() == (0, 0)
