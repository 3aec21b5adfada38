"""The file server's pairs in SQLite (WAL), queried inline in the Trio thread: queries are
short, and a single thread gives each request's checks and write one atomic view without
locks. What it refuses is :mod:`.rules`'s to say; no Trio, ``now_ms`` in.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from ..database import open_database, transaction
from ..mapping import DeviceMapping, Revocation
from .rules import (
    DEFAULT_MAX_SECONDARIES,
    MAX_LISTED_REVOCATIONS,
    PairFacts,
    PairingRow,
    applies_revocation,
    check_max_secondaries,
    stores_mapping,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS mappings (
    primary_id TEXT NOT NULL,
    secondary TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    record BLOB NOT NULL,
    active INTEGER NOT NULL,
    revoked_at INTEGER,
    revocation BLOB,
    PRIMARY KEY (primary_id, secondary)
);
CREATE UNIQUE INDEX IF NOT EXISTS one_primary_per_secondary
    ON mappings (secondary) WHERE active = 1;
CREATE INDEX IF NOT EXISTS active_by_primary ON mappings (primary_id) WHERE active = 1;
"""


class MappingStore:
    """Durable mappings and revocations under the server's rules (:mod:`.rules`).
    Records reaching it must already be verified (:meth:`DeviceMapping.verify`)."""

    def __init__(self, path: str | Path, *, max_secondaries: int = DEFAULT_MAX_SECONDARIES) -> None:
        check_max_secondaries(max_secondaries)
        self.max_secondaries = max_secondaries
        self._db = open_database(path, _SCHEMA)

    def close(self) -> None:
        self._db.close()

    def _transaction(self) -> AbstractContextManager[None]:
        return transaction(self._db)

    def row(self, primary: str, secondary: str) -> PairingRow | None:
        found = self._db.execute(
            "SELECT primary_id, secondary, timestamp, record, active, revoked_at FROM mappings"
            " WHERE primary_id = ? AND secondary = ?",
            (primary, secondary),
        ).fetchone()
        if found is None:
            return None
        return PairingRow(found[0], found[1], found[2], found[3], bool(found[4]), found[5])

    def _primary_of(self, secondary: str) -> str | None:
        found = self._db.execute(
            "SELECT primary_id FROM mappings WHERE secondary = ? AND active = 1", (secondary,)
        ).fetchone()
        return None if found is None else str(found[0])

    def _active_secondaries(self, primary: str) -> list[tuple[str, bytes]]:
        rows = self._db.execute(
            "SELECT secondary, record FROM mappings WHERE primary_id = ? AND active = 1"
            " ORDER BY timestamp, secondary",
            (primary,),
        ).fetchall()
        return [(str(r[0]), bytes(r[1])) for r in rows]

    def put(
        self,
        mapping: DeviceMapping,
        now_ms: int,
        *,
        before_storing: Callable[[], None] = lambda: None,
    ) -> None:
        """Store a verified mapping, or refuse it (:func:`~.rules.stores_mapping`).
        ``before_storing`` runs once the rules would store it, and may refuse it by
        raising: what it charges is then spent on a change, never on a mapping stored
        already (anyone can put that again) or one the rules refuse."""
        primary, secondary = mapping.primary, mapping.secondary
        with self._transaction():
            facts = PairFacts(
                existing=self.row(primary, secondary),
                secondary_owner=self._primary_of(secondary),
                secondary_is_primary=bool(self._active_secondaries(secondary)),
                primary_is_secondary=self._primary_of(primary) is not None,
                other_secondaries=sum(
                    1 for s, _ in self._active_secondaries(primary) if s != secondary
                ),
            )
            record = mapping.to_bytes()
            if not stores_mapping(
                record,
                primary,
                mapping.timestamp_ms,
                facts,
                max_secondaries=self.max_secondaries,
                now_ms=now_ms,
            ):
                return
            before_storing()
            self._db.execute(
                "INSERT INTO mappings (primary_id, secondary, timestamp, record, active)"
                " VALUES (?, ?, ?, ?, 1) ON CONFLICT (primary_id, secondary) DO UPDATE SET"
                " timestamp = excluded.timestamp, record = excluded.record, active = 1",
                (primary, secondary, mapping.timestamp_ms, record),
            )

    def revoke(self, revocation: Revocation, now_ms: int) -> None:
        """Apply a verified revocation, or refuse it (:func:`~.rules.applies_revocation`)."""
        with self._transaction():
            existing = self.row(revocation.primary, revocation.secondary)
            if not applies_revocation(revocation.timestamp_ms, existing, now_ms):
                return
            self._db.execute(
                "UPDATE mappings SET active = 0, revoked_at = ?, revocation = ?"
                " WHERE primary_id = ? AND secondary = ?",
                (
                    revocation.timestamp_ms,
                    revocation.to_bytes(),
                    revocation.primary,
                    revocation.secondary,
                ),
            )

    def lookup(self, session_id: str) -> tuple[str, list[str], list[bytes], list[bytes]]:
        """The primary of ``session_id``'s user, its secondaries, their mapping records
        and the primary's revocation records (the newest per revoked secondary; of a
        primary that revoked more than a reply lists, its newest revocations, which are
        the ones a reader may not have seen yet)."""
        primary = self._primary_of(session_id) or session_id
        listed = self._active_secondaries(primary)
        revocations = self._db.execute(
            "SELECT revocation FROM (SELECT revocation, revoked_at, secondary FROM mappings"
            " WHERE primary_id = ? AND revocation IS NOT NULL"
            " ORDER BY revoked_at DESC, secondary DESC LIMIT ?) ORDER BY revoked_at, secondary",
            (primary, MAX_LISTED_REVOCATIONS),
        ).fetchall()
        return (
            primary,
            [s for s, _ in listed],
            [r for _, r in listed],
            [bytes(r[0]) for r in revocations],
        )
