"""A service node's message store: SQLite in WAL mode, one file per node.

Rows are keyed by ``(pubkey, namespace, hash)``, never by hash alone: otherwise anyone who
saw a ciphertext could store it first under another key and turn the real store into a
silent duplicate. A deleted message leaves a *tombstone* (the row without its data) until
its original expiry, so that anti-entropy repair cannot bring it back and its hash still
works as a ``last_hash`` cursor. Reads go in ``(order_ms, hash)`` order: ``order_ms`` is
assigned by the node that accepted the store and travels with every replica, so a cursor
means the same on every member (the node decides when a late replica needs a new one).

Queries are short and run inline in the Trio thread (WAL makes commits cheap); the store
is synchronous and knows nothing of Trio. WAL with ``synchronous=NORMAL`` keeps every
committed write across a process crash (kill -9), which is what a node acknowledges.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

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
    UNIQUE (pubkey, namespace, hash)
);
CREATE INDEX IF NOT EXISTS messages_by_order ON messages (pubkey, namespace, order_ms, hash);
CREATE INDEX IF NOT EXISTS messages_by_hash ON messages (pubkey, hash);
CREATE INDEX IF NOT EXISTS messages_by_expiry ON messages (expiry);
"""


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One stored message; ``data is None`` marks a tombstone."""

    pubkey: str
    namespace: int
    hash: bytes
    timestamp_ms: int
    expiry_ms: int
    data: bytes | None
    order_ms: int = 0

    @property
    def deleted(self) -> bool:
        return self.data is None


_COLUMNS = "pubkey, namespace, hash, timestamp, expiry, data, order_ms"


def _row(row: tuple[str, int, bytes, int, int, bytes | None, int]) -> StoredMessage:
    return StoredMessage(row[0], row[1], row[2], row[3], row[4], row[5], row[6])


class MessageStore:
    """Durable per-node storage. ``path=":memory:"`` for tests that need no file."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    # --- writes ---------------------------------------------------------------------------

    def put_many(self, messages: Sequence[StoredMessage]) -> list[bool]:
        """Insert in one transaction; True for each message that was new here.

        Copies of one message merge so that replicas converge whatever order updates
        arrive in (which is what lets repair work): a tombstone beats live data, and the
        shorter expiry wins. Stores are therefore idempotent, and a late replica never
        resurrects a deleted message.
        """
        added: list[bool] = []
        with self._transaction():
            for m in messages:
                cursor = self._db.execute(
                    f"INSERT OR IGNORE INTO messages ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        m.pubkey,
                        m.namespace,
                        m.hash,
                        m.timestamp_ms,
                        m.expiry_ms,
                        m.data,
                        m.order_ms,
                    ),
                )
                if cursor.rowcount == 0:
                    self._db.execute(
                        "UPDATE messages SET expiry = MIN(expiry, ?),"
                        " data = CASE WHEN ? THEN NULL ELSE data END"
                        " WHERE pubkey = ? AND namespace = ? AND hash = ?"
                        " AND (expiry > ? OR (? AND data IS NOT NULL))",
                        (
                            m.expiry_ms,
                            m.deleted,
                            m.pubkey,
                            m.namespace,
                            m.hash,
                            m.expiry_ms,
                            m.deleted,
                        ),
                    )
                added.append(cursor.rowcount == 1)
        return added

    def put(self, message: StoredMessage) -> bool:
        return self.put_many([message])[0]

    def delete(self, pubkey: str, namespace: int, hashes: Iterable[bytes]) -> list[bytes]:
        """Turn live messages into tombstones; returns the hashes that were deleted."""
        deleted = []
        with self._transaction():
            for h in hashes:
                cursor = self._db.execute(
                    "UPDATE messages SET data = NULL WHERE pubkey = ? AND namespace = ?"
                    " AND hash = ? AND data IS NOT NULL",
                    (pubkey, namespace, h),
                )
                if cursor.rowcount:
                    deleted.append(h)
        return deleted

    def expire(
        self, pubkey: str, namespace: int, hashes: Iterable[bytes], expiry_ms: int
    ) -> list[bytes]:
        """Shorten (never extend) the expiry of live messages; returns the hashes updated."""
        updated = []
        with self._transaction():
            for h in hashes:
                cursor = self._db.execute(
                    "UPDATE messages SET expiry = ? WHERE pubkey = ? AND namespace = ?"
                    " AND hash = ? AND data IS NOT NULL AND expiry > ?",
                    (expiry_ms, pubkey, namespace, h, expiry_ms),
                )
                if cursor.rowcount:
                    updated.append(h)
        return updated

    def sweep(self, now_ms: int) -> int:
        """Remove every message and tombstone past its expiry; returns how many."""
        with self._transaction():
            return self._db.execute("DELETE FROM messages WHERE expiry <= ?", (now_ms,)).rowcount

    def remove_owner(self, pubkey: str) -> int:
        """Forget everything of one owner (after handing it to its new swarm)."""
        with self._transaction():
            return self._db.execute("DELETE FROM messages WHERE pubkey = ?", (pubkey,)).rowcount

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
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE pubkey = ? AND namespace = ? AND hash = ?",
            (pubkey, namespace, message_hash),
        ).fetchone()
        return None if row is None else _row(row)

    def owners(self) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT DISTINCT pubkey FROM messages")]

    def records(self, now_ms: int, owners: Iterable[str] | None = None) -> Iterator[StoredMessage]:
        """Every unexpired row (tombstones included) of ``owners`` (default: all), for
        hand-over and repair."""
        if owners is None:
            query = self._db.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE expiry > ? ORDER BY seq", (now_ms,)
            )
            yield from map(_row, query)
            return
        for owner in owners:
            query = self._db.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE pubkey = ? AND expiry > ? ORDER BY seq",
                (owner, now_ms),
            )
            yield from map(_row, query.fetchall())

    def stats(self) -> tuple[int, int]:
        """(live messages, bytes of live data)."""
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(data)), 0) FROM messages WHERE data IS NOT NULL"
        ).fetchone()
        return int(row[0]), int(row[1])

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
