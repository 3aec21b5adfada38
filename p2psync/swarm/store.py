"""A service node's message store: SQLite in WAL mode, one file per node.

Rows are keyed by ``(pubkey, namespace, hash)``, never by hash alone: otherwise anyone who
saw a ciphertext could store it first under another key and turn the real store into a
silent duplicate. A deleted message leaves a *tombstone* (the row without its data, but
with the ``size`` it had, so what a node held stays accountable after a deletion) until
its original expiry, so that anti-entropy repair cannot bring it back and its hash still
works as a ``last_hash`` cursor. A tombstone or a shortened expiry keeps the owner's
signed request that caused it (*proof*, opaque here, checked by the node:
:mod:`.proof`), so it can travel to the other members, which take nothing destructive
on a peer's word. Reads go in ``(order_ms, hash)`` order: ``order_ms`` is this
node's own read position for the row, assigned when the row arrived here (the node decides
it; a peer's value is never taken).

Queries are short and run inline in the Trio thread (WAL makes commits cheap); the store
is synchronous and knows nothing of Trio. WAL with ``synchronous=NORMAL`` keeps every
committed write across a process crash (kill -9), which is what a node acknowledges.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..database import add_column_if_missing
from .rows import RowSummary, StoredMessage

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    pubkey TEXT NOT NULL,
    namespace INTEGER NOT NULL,
    hash BLOB NOT NULL,
    timestamp INTEGER NOT NULL,
    expiry INTEGER NOT NULL,
    data BLOB,
    order_ms INTEGER NOT NULL,
    proof BLOB,
    size INTEGER,
    vouched INTEGER NOT NULL DEFAULT 0,
    UNIQUE (pubkey, namespace, hash)
);
CREATE TABLE IF NOT EXISTS proofs (key BLOB PRIMARY KEY, body BLOB NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_by_order ON messages (pubkey, namespace, order_ms, hash);
-- Every lookup names the namespace, which the UNIQUE key covers: an index on (pubkey, hash)
-- only cost each insert a second B-tree write. Files from before still have it.
DROP INDEX IF EXISTS messages_by_hash;
CREATE INDEX IF NOT EXISTS messages_by_expiry ON messages (expiry);
CREATE INDEX IF NOT EXISTS messages_by_proof ON messages (proof) WHERE proof IS NOT NULL;
"""


_COLUMNS = "pubkey, namespace, hash, timestamp, expiry, data, order_ms"
#: Whole rows with their proofs, for replication and repair (reads by clients skip proofs).
_SELECT_WITH_PROOF = (
    "SELECT m.pubkey, m.namespace, m.hash, m.timestamp, m.expiry, m.data, m.order_ms, p.body,"
    " m.vouched != 0 FROM messages m LEFT JOIN proofs p ON p.key = m.proof"
)


def _row(row: tuple[Any, ...]) -> StoredMessage:
    return StoredMessage(*row[:8], *(bool(vouched) for vouched in row[8:]))


def _proof_key(proof: bytes) -> bytes:
    return hashlib.blake2b(proof, digest_size=16, person=b"p2psync-proof").digest()


@dataclass(frozen=True, slots=True)
class _Version:
    """What can differ between replicas of one message."""

    deleted: bool
    expiry_ms: int
    proven: bool


def _merged(old: _Version, new: StoredMessage) -> _Version | None:
    """The join of two replicas, or None when ``old`` already wins. A total order over
    versions, so replicas converge whatever order copies arrive in: a tombstone beats
    live data (the longest-kept tombstone wins, so repair cannot resurrect it early); for
    live data an owner-proven expiry beats an unproven one, the shortest proven expiry
    wins, and among unproven ones the longest (a peer cannot shorten a message's life on
    its own word; it can lengthen it only up to the maximum TTL, which any storer can)."""
    if new.deleted:
        if old.deleted and new.expiry_ms <= old.expiry_ms:
            return None
        return _Version(True, new.expiry_ms, True)
    if old.deleted:
        return None
    proven = new.proof is not None
    if proven and (not old.proven or new.expiry_ms < old.expiry_ms):
        return _Version(False, new.expiry_ms, True)
    if not proven and not old.proven and new.expiry_ms > old.expiry_ms:
        return _Version(False, new.expiry_ms, False)
    return None


class MessageStore:
    """Durable per-node storage. ``path=":memory:"`` for tests that need no file."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA.split(";", 1)[0] + ";")
        add_column_if_missing(self._db, "messages", "proof", "BLOB")  # from before proofs
        add_column_if_missing(self._db, "messages", "size", "INTEGER")  # from before sizes
        add_column_if_missing(self._db, "messages", "vouched", "INTEGER NOT NULL DEFAULT 0")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    # --- writes ---------------------------------------------------------------------------

    def put_many(self, messages: Sequence[StoredMessage]) -> list[bool]:
        """Insert in one transaction; True for each message that was new here.

        Copies of one message merge by :func:`_merged`, so that replicas converge whatever
        order updates arrive in (which is what lets repair work). Stores are therefore
        idempotent, and a late replica never resurrects a deleted message. A row with a
        proof must have been checked by the caller.
        """
        added: list[bool] = []
        with self._transaction():
            for m in messages:
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO messages"
                    f" ({_COLUMNS}, proof, size, vouched) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        m.pubkey,
                        m.namespace,
                        m.hash,
                        m.timestamp_ms,
                        m.expiry_ms,
                        m.data,
                        m.order_ms,
                        self._keep_proof(m.proof),
                        None if m.data is None else len(m.data),
                        m.vouched,
                    ),
                )
                added.append(cursor.rowcount == 1)
                if cursor.rowcount == 0:
                    self._merge(m)
                    if m.vouched:  # a copy that showed the access vouches for the row
                        self._db.execute(
                            "UPDATE messages SET vouched = 1"
                            " WHERE pubkey = ? AND namespace = ? AND hash = ? AND vouched = 0",
                            (m.pubkey, m.namespace, m.hash),
                        )
        return added

    def _merge(self, new: StoredMessage) -> None:
        old = self._db.execute(
            "SELECT data IS NULL, expiry, proof IS NOT NULL FROM messages"
            " WHERE pubkey = ? AND namespace = ? AND hash = ?",
            (new.pubkey, new.namespace, new.hash),
        ).fetchone()
        version = _merged(_Version(bool(old[0]), old[1], bool(old[2])), new)
        if version is None:
            return
        self._db.execute(
            "UPDATE messages SET expiry = ?, proof = ?,"
            " data = CASE WHEN ? THEN NULL ELSE data END"
            " WHERE pubkey = ? AND namespace = ? AND hash = ?",
            (
                version.expiry_ms,
                self._keep_proof(new.proof),
                version.deleted,
                new.pubkey,
                new.namespace,
                new.hash,
            ),
        )

    def _keep_proof(self, proof: bytes | None) -> bytes | None:
        """Store a proof once however many rows it covers (a delete may name 1 000
        hashes); returns the key rows refer to it by."""
        if proof is None:
            return None
        key = _proof_key(proof)
        self._db.execute("INSERT OR IGNORE INTO proofs (key, body) VALUES (?, ?)", (key, proof))
        return key

    def put(self, message: StoredMessage) -> bool:
        return self.put_many([message])[0]

    def delete(
        self, pubkey: str, namespace: int, hashes: Iterable[bytes], proof: bytes | None = None
    ) -> list[bytes]:
        """Turn live messages into tombstones carrying ``proof``; returns the hashes that
        were deleted."""
        deleted = []
        with self._transaction():
            key = self._keep_proof(proof)
            for h in hashes:
                cursor = self._db.execute(
                    "UPDATE messages SET data = NULL, proof = ? WHERE pubkey = ?"
                    " AND namespace = ? AND hash = ? AND data IS NOT NULL",
                    (key, pubkey, namespace, h),
                )
                if cursor.rowcount:
                    deleted.append(h)
        return deleted

    def expire(
        self,
        pubkey: str,
        namespace: int,
        hashes: Iterable[bytes],
        expiry_ms: int,
        proof: bytes | None = None,
    ) -> list[bytes]:
        """Shorten (never extend) the expiry of live messages, keeping ``proof``; returns
        the hashes updated."""
        updated = []
        with self._transaction():
            key = self._keep_proof(proof)
            for h in hashes:
                cursor = self._db.execute(
                    "UPDATE messages SET expiry = ?, proof = ? WHERE pubkey = ? AND namespace = ?"
                    " AND hash = ? AND data IS NOT NULL AND expiry > ?",
                    (expiry_ms, key, pubkey, namespace, h, expiry_ms),
                )
                if cursor.rowcount:
                    updated.append(h)
        return updated

    def sweep(self, now_ms: int) -> int:
        """Remove every message and tombstone past its expiry; returns how many."""
        with self._transaction():
            swept = self._db.execute("DELETE FROM messages WHERE expiry <= ?", (now_ms,)).rowcount
            self._forget_unused_proofs()
            return swept

    def remove_owner(self, pubkey: str) -> int:
        """Forget everything of one owner (after handing it to its new swarm)."""
        with self._transaction():
            removed = self._db.execute("DELETE FROM messages WHERE pubkey = ?", (pubkey,)).rowcount
            self._forget_unused_proofs()
            return removed

    def _forget_unused_proofs(self) -> None:
        self._db.execute(
            "DELETE FROM proofs WHERE NOT EXISTS"
            " (SELECT 1 FROM messages WHERE messages.proof = proofs.key)"
        )

    # --- reads ----------------------------------------------------------------------------

    def position_of(
        self, pubkey: str, namespace: int, message_hash: bytes
    ) -> tuple[int, bytes] | None:
        """The read position ``(order_ms, hash)`` of a hash, live or tombstoned."""
        row = self._db.execute(
            "SELECT order_ms FROM messages WHERE pubkey = ? AND namespace = ? AND hash = ?",
            (pubkey, namespace, message_hash),
        ).fetchone()
        return None if row is None else (int(row[0]), message_hash)

    def retrieve(
        self,
        pubkey: str,
        namespace: int,
        after: tuple[int, bytes],
        now_ms: int,
        *,
        limit: int,
        max_bytes: int,
    ) -> tuple[list[StoredMessage], bool]:
        """Live, unexpired messages after the position ``after``, in read order, at most
        ``limit`` of them and ``max_bytes`` of data (but always at least one); the flag
        says whether more remain."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE pubkey = ? AND namespace = ?"
            " AND (order_ms, hash) > (?, ?) AND expiry > ? AND data IS NOT NULL"
            " ORDER BY order_ms, hash LIMIT ?",
            (pubkey, namespace, after[0], after[1], now_ms, limit + 1),
        ).fetchall()
        messages: list[StoredMessage] = []
        total = 0
        for row in rows[:limit]:
            size = len(row[5])
            if messages and total + size > max_bytes:
                return messages, True
            messages.append(_row(row))
            total += size
        return messages, len(rows) > limit

    def get(self, pubkey: str, namespace: int, message_hash: bytes) -> StoredMessage | None:
        """One row, with its proof."""
        row = self._db.execute(
            f"{_SELECT_WITH_PROOF} WHERE m.pubkey = ? AND m.namespace = ? AND m.hash = ?",
            (pubkey, namespace, message_hash),
        ).fetchone()
        return None if row is None else _row(row)

    def owners(self) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT DISTINCT pubkey FROM messages")]

    def records(self, now_ms: int, owners: Iterable[str] | None = None) -> Iterator[StoredMessage]:
        """Every unexpired row (tombstones included, with proofs) of ``owners`` (default:
        all), for hand-over and repair."""
        if owners is None:
            query = self._db.execute(
                f"{_SELECT_WITH_PROOF} WHERE m.expiry > ? ORDER BY m.seq", (now_ms,)
            )
            yield from map(_row, query)
            return
        for owner in owners:
            query = self._db.execute(
                f"{_SELECT_WITH_PROOF} WHERE m.pubkey = ? AND m.expiry > ? ORDER BY m.seq",
                (owner, now_ms),
            )
            yield from map(_row, query.fetchall())

    def summaries(self, now_ms: int, owners: Iterable[str]) -> Iterator[RowSummary]:
        """Every unexpired row of ``owners`` without its data (repair lists and compares
        these; reading the data too made a restarted node's repair crawl under load)."""
        for owner in owners:
            query = self._db.execute(
                "SELECT pubkey, namespace, hash, timestamp, expiry, data IS NULL,"
                " proof IS NOT NULL FROM messages WHERE pubkey = ? AND expiry > ? ORDER BY seq",
                (owner, now_ms),
            )
            for row in query.fetchall():
                yield RowSummary(row[0], row[1], row[2], row[3], row[4], bool(row[5]), bool(row[6]))

    def owner_charge(self, pubkey: str, now_ms: int, per_row: int) -> int:
        """What ``pubkey``'s live, unexpired rows (all namespaces) hold here: their data's
        bytes and ``per_row`` for each row."""
        row = self._db.execute(
            "SELECT COALESCE(SUM(LENGTH(data)), 0) + ? * COUNT(*) FROM messages"
            " WHERE pubkey = ? AND expiry > ? AND data IS NOT NULL",
            (per_row, pubkey, now_ms),
        ).fetchone()
        return int(row[0])

    def holds(self, pubkey: str, namespace: int, message_hash: bytes, now_ms: int) -> bool:
        """Whether this node has the row, live or tombstone, unexpired (one past its
        expiry but not swept yet is not held: taking it again is taking it anew)."""
        row = self._db.execute(
            "SELECT 1 FROM messages WHERE pubkey = ? AND namespace = ? AND hash = ? AND expiry > ?",
            (pubkey, namespace, message_hash, now_ms),
        ).fetchone()
        return row is not None

    def stats(self) -> tuple[int, int]:
        """(live messages, bytes of live data)."""
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(data)), 0) FROM messages WHERE data IS NOT NULL"
        ).fetchone()
        return int(row[0]), int(row[1])

    def proofs_kept(self) -> int:
        """How many signed proofs the store keeps: each once, however many rows it
        covers, and none past its last row (what an operator checks the space of)."""
        return int(self._db.execute("SELECT COUNT(*) FROM proofs").fetchone()[0])

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
