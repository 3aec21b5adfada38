"""The store's guarantees that replication and repair rely on."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from p2psync.identity import Identity, message_hash
from p2psync.swarm.rows import StoredMessage
from p2psync.swarm.store import MessageStore

OWNER = Identity.from_label("owner").session_id


def row(
    data: bytes,
    *,
    expiry: int = 1_000,
    order: int = 1,
    deleted: bool = False,
    proof: bytes | None = None,
) -> StoredMessage:
    return StoredMessage(
        OWNER, 0, message_hash(data), 1, expiry, None if deleted else data, order, proof
    )


KINDS = ("live", "proven", "tombstone")


@given(
    updates=st.lists(
        st.tuples(st.integers(500, 2_000), st.sampled_from(KINDS)), min_size=1, max_size=8
    ),
    order=st.permutations(range(8)),
)
def test_replicas_converge_whatever_the_order(
    updates: list[tuple[int, str]], order: list[int]
) -> None:
    """Applying the same set of copies in any order ends in the same row: a tombstone if
    any copy was one (kept longest), else the shortest owner-proven expiry if any, else
    the longest unproven one (a peer cannot shorten a message's life on its own word)."""
    copies = [
        row(b"m", expiry=e, deleted=k == "tombstone", proof=None if k == "live" else b"p%d" % e)
        for e, k in updates
    ]
    one, other = MessageStore(":memory:"), MessageStore(":memory:")
    for copy in copies:
        one.put(copy)
    for index in (i for i in order if i < len(copies)):
        other.put(copies[index])
    by_kind = {k: [e for e, kind in updates if kind == k] for k in KINDS}
    if by_kind["tombstone"]:
        expected = (max(by_kind["tombstone"]), True)
    elif by_kind["proven"]:
        expected = (min(by_kind["proven"]), False)
    else:
        expected = (max(by_kind["live"]), False)
    for store in (one, other):
        stored = store.get(OWNER, 0, message_hash(b"m"))
        assert stored is not None
        assert (stored.expiry_ms, stored.deleted) == expected
        assert (stored.proof is not None) == (expected[1] or bool(by_kind["proven"]))


def test_a_proof_is_kept_once_and_forgotten_with_its_rows(tmp_path: Path) -> None:
    store = MessageStore(tmp_path / "s.sqlite3")
    rows = [row(bytes([i]), expiry=5_000 + i) for i in range(3)]
    store.put_many(rows)
    assert store.delete(OWNER, 0, [r.hash for r in rows], proof=b"signed delete") == [
        r.hash for r in rows
    ]
    assert {r.proof for r in store.records(0)} == {b"signed delete"}
    assert store.proofs_kept() == 1
    store.sweep(5_002)
    assert store.proofs_kept() == 0


def test_a_store_written_before_proofs_existed_opens(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, pubkey TEXT NOT NULL,"
        " namespace INTEGER NOT NULL, hash BLOB NOT NULL, timestamp INTEGER NOT NULL,"
        " expiry INTEGER NOT NULL, data BLOB, order_ms INTEGER NOT NULL,"
        " UNIQUE (pubkey, namespace, hash));"
    )
    kept = row(b"kept")
    old.execute(
        "INSERT INTO messages (pubkey, namespace, hash, timestamp, expiry, data, order_ms)"
        " VALUES (?, 0, ?, 1, 1000, ?, 1)",
        (OWNER, kept.hash, kept.data),
    )
    old.commit()
    old.close()
    store = MessageStore(path)
    assert store.get(OWNER, 0, kept.hash) == kept
    assert store.delete(OWNER, 0, [kept.hash], proof=b"p") == [kept.hash]


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


def test_a_row_is_held_until_its_expiry_and_counts_with_its_charge(tmp_path: Path) -> None:
    """A row past its expiry but not swept yet is not held (a peer sending it again
    sends it anew, and pays for it), and an owner's charge counts each live row's data
    and the charge of a row; tombstones count for nothing."""
    store = MessageStore(tmp_path / "s.sqlite3")
    live, dead = row(b"live", expiry=5_000), row(b"dead", expiry=2_000, order=2)
    store.put_many([live, dead])
    assert store.holds(OWNER, 0, live.hash, 1_999) and store.holds(OWNER, 0, dead.hash, 1_999)
    assert not store.holds(OWNER, 0, dead.hash, 2_000)
    assert store.owner_charge(OWNER, 1_999, per_row=100) == 8 + 2 * 100
    store.delete(OWNER, 0, [live.hash])
    assert store.holds(OWNER, 0, live.hash, 1_999)  # its tombstone
    assert store.owner_charge(OWNER, 1_999, per_row=100) == 4 + 100


def test_a_copy_that_showed_the_owners_access_vouches_for_a_row_held_without(
    tmp_path: Path,
) -> None:
    """A row a stranger's store put first is vouched for once a copy that showed the
    owner's access arrives (a review's stayed not vouched for, and other members, full
    to strangers, refused it when it was replicated and repaired)."""
    store = MessageStore(tmp_path / "node.sqlite3")
    plain = row(b"hello")
    assert store.put_many([plain]) == [True]
    assert [r.vouched for r in store.records(0, [OWNER])] == [False]
    assert store.put_many([replace(plain, vouched=True)]) == [False]
    assert [r.vouched for r in store.records(0, [OWNER])] == [True]
    store.close()
    reopened = MessageStore(tmp_path / "node.sqlite3")
    assert [r.vouched for r in reopened.records(0, [OWNER])] == [True]
