"""What the service nodes hold: the storage benchmark's copies, bytes and byte·hours,
read from the nodes' own SQLite files rather than from what the benchmark asked for.

A *copy* is one ``(owner, namespace, hash)`` row, however many swarm members hold a
replica of it (DESIGN.md §9). Its life is read from the rows themselves:

* stored: the earliest ``order_ms`` of its replicas (each node sets it when the row
  arrives there, from its own clock);
* ended: the timestamp of the owner's signed ``delete`` that the tombstone carries as its
  proof, or else the row's expiry (shortened by a signed ``expire`` if there was one);
* size: the length of its data, which a tombstone keeps in its ``size`` column (a node
  that only ever got the tombstone does not know it).

So each copy's tombstone (kept until the original expiry, a day at least) must be seen
once. :meth:`Holdings.new_rows` reads only rows added since the last
read (by the table's ``seq`` key, a cheap range), so the runner can call it often right
after anything that makes devices store; :meth:`Holdings.endings` re-reads the rows
still believed alive for tombstones and shortened expiries, which only has to happen well
within a TTL. A copy whose size no node knows is counted, and reported as of unknown size
(:attr:`Holdings.unsized`), so a run can refuse figures it could not read.

The reads use a read-only connection of their own to each node's database file (WAL
lets it read beside the node's writer); nothing in the nodes changes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from ..errors import DecodeError
from ..swarm.proof import OwnerProof

#: One row as the benchmark reads it: its key, whether it is a tombstone, its size, when
#: it arrived, when it expires, and the owner's signed request that ended it, if any.
_ROW = (
    "m.pubkey, m.namespace, m.hash, m.data IS NULL, m.size, m.order_ms, m.expiry, p.body"
    " FROM messages m LEFT JOIN proofs p ON p.key = m.proof"
)


@dataclass
class Copy:
    """One logical message stored in some swarm."""

    owner: str
    namespace: int
    stored_ms: int
    expiry_ms: int
    deleted_ms: int | None = None
    size: int | None = None

    @property
    def end_ms(self) -> int:
        return self.expiry_ms if self.deleted_ms is None else min(self.deleted_ms, self.expiry_ms)


def _deletion_time(proof: bytes | None) -> int | None:
    """When the owner signed the ``delete`` a tombstone carries (None for no proof or an
    ``expire``, whose effect is the row's expiry itself)."""
    if proof is None:
        return None
    try:
        decoded = OwnerProof.decode(proof)
    except DecodeError:
        return None
    return decoded.timestamp_ms if decoded.method == "delete" else None


class Holdings:
    """The copies that ``owners`` hold in ``namespaces`` on the nodes whose database files
    are ``paths``; call :meth:`close` when done."""

    def __init__(
        self, paths: list[Path], owners: Collection[str], namespaces: Collection[int]
    ) -> None:
        self._databases = [
            sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            for path in paths
        ]
        self._last_seq = [0] * len(paths)
        self._owners = set(owners)
        self._namespaces = set(namespaces)
        self.copies: dict[tuple[str, int, bytes], Copy] = {}
        #: Reads made, for the report (what sampling cost).
        self.reads = 0

    def close(self) -> None:
        for database in self._databases:
            database.close()

    def new_rows(self) -> None:
        """Take in every row added to any node since the last call."""
        self.reads += 1
        for index, database in enumerate(self._databases):
            rows = database.execute(
                f"SELECT m.seq, {_ROW} WHERE m.seq > ? ORDER BY m.seq",
                (self._last_seq[index],),
            ).fetchall()
            for seq, *row in rows:
                self._last_seq[index] = seq
                if row[0] in self._owners and row[1] in self._namespaces:
                    self._take(*row)

    def endings(self) -> None:
        """Re-read the copies not known to have ended: tombstones and shortened expiries."""
        self.new_rows()
        alive = {key for key, copy in self.copies.items() if copy.deleted_ms is None}
        for database in self._databases:
            rows = database.execute(f"SELECT {_ROW} WHERE m.proof IS NOT NULL").fetchall()
            for row in rows:
                if tuple(row[:3]) in alive:
                    self._take(*row)

    def _take(
        self,
        owner: str,
        namespace: int,
        digest: bytes,
        deleted: bool,
        size: int | None,
        order_ms: int,
        expiry_ms: int,
        proof: bytes | None,
    ) -> None:
        key = (owner, namespace, digest)
        copy = self.copies.get(key)
        if copy is None:
            copy = self.copies[key] = Copy(owner, namespace, order_ms, expiry_ms)
        copy.stored_ms = min(copy.stored_ms, order_ms)
        copy.expiry_ms = min(copy.expiry_ms, expiry_ms)
        if size is not None:
            copy.size = size
        deleted_ms = _deletion_time(proof) if deleted else None
        if deleted_ms is not None:
            copy.deleted_ms = (
                deleted_ms if copy.deleted_ms is None else min(copy.deleted_ms, deleted_ms)
            )

    # --- figures ---------------------------------------------------------------------------

    def since(self, start_ms: int) -> list[Copy]:
        """The copies first stored at or after ``start_ms``."""
        return [copy for copy in self.copies.values() if copy.stored_ms >= start_ms]

    @property
    def unsized(self) -> int:
        """Copies never seen alive, so of unknown size (read more often to avoid them)."""
        return sum(copy.size is None for copy in self.copies.values())


def byte_hours(copies: list[Copy], hour_ms: int) -> float:
    """Each copy's size times the time from its store to its deletion or expiry."""
    return sum((c.size or 0) * (c.end_ms - c.stored_ms) / hour_ms for c in copies)


def timeline(
    copies: list[Copy], start_ms: int, step_ms: int, end_ms: int
) -> tuple[list[int], list[int]]:
    """Per ``step_ms`` slot from ``start_ms`` to ``end_ms``: the copies and the bytes stored
    at some moment of that slot."""
    slots = (end_ms - start_ms) // step_ms + 1
    counts, sizes = [0] * slots, [0] * slots
    for copy in copies:
        first = (copy.stored_ms - start_ms) // step_ms
        last = (min(copy.end_ms, end_ms) - start_ms) // step_ms
        for index in range(max(0, first), min(slots - 1, last) + 1):
            counts[index] += 1
            sizes[index] += copy.size or 0
    return counts, sizes


def peak_bytes(copies: list[Copy]) -> int:
    """The most bytes stored at any one moment (a sweep over stores and ends)."""
    changes = sorted(
        [(c.stored_ms, c.size or 0) for c in copies] + [(c.end_ms, -(c.size or 0)) for c in copies]
    )
    peak = level = 0
    for _, change in changes:
        level += change
        peak = max(peak, level)
    return peak
