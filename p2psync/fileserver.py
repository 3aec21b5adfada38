"""The file server (DESIGN.md §5): where v1.5.0 devices publish their device mappings and
where senders and open groups look up which devices make up a user.

RPC methods (CBOR framing of :mod:`p2psync.rpc`):

* ``put_mapping`` ``{"mapping": bytes}`` → ``{}``
* ``get_mappings`` ``{"session_id": text}`` → ``{"primary": text, "secondaries": [text],
  "mappings": [bytes], "revocations": [bytes]}`` for any device of a user; a device without
  a mapping is its own primary with no secondaries. ``revocations`` are the primary's
  newest revocation per revoked secondary, which readers keep (see :mod:`.mapping`).
* ``revoke_mapping`` ``{"revocation": bytes}`` → ``{}``

Refusals: ``bad_request`` (malformed), ``unauthorized`` (a signature or key does not verify,
or the mapping was revoked at or after its timestamp), ``clock_skew`` (a revocation
timestamp more than ±60 s from the server clock; a mapping signed more than
:data:`~p2psync.mapping.PAIRING_WINDOW_MS` (10 min) ago or more than 60 s ahead: its
timestamp is the secondary's request, and the user may take minutes to compare codes and
accept; re-putting the mapping already stored and active is always accepted),
``conflict`` (the secondary belongs to another primary, a device would be primary and
secondary at once, the primary is at its secondary limit, or a newer record exists),
``not_found`` (revoking an unknown pairing).

Revocations are kept: a pair's row remembers the newest revocation timestamp, and a
mapping signed at or before it is refused forever, so a captured mapping cannot be
replayed to re-pair a device the user removed. A genuinely new pairing (signed later)
works again.

The store is SQLite (WAL), queried inline in the Trio thread: queries are short, and a
single thread gives each request's checks and write one atomic view without locks.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from overlay.link import Transport

from .clock import Clock
from .database import open_database, transaction
from .errors import DecodeError, RpcError
from .identity import session_id_key
from .mapping import (
    MAX_RECORD_BYTES,
    PAIRING_WINDOW_MS,
    AuthorisationError,
    DeviceMapping,
    DeviceSet,
    Revocation,
    device_set,
)
from .rpc import Connection, RpcCaller, RpcServer, ServerLimits, open_rpc
from .swarm.constants import CLOCK_SKEW_MS
from .wire import Fields

logger = logging.getLogger(__name__)

#: v1.5.0 allowed one secondary per primary; we allow a few, configurable per server.
DEFAULT_MAX_SECONDARIES = 4
#: The most secondaries any answer may list (bounds what a client accepts).
MAX_LISTED_SECONDARIES = 64
MAX_LISTED_REVOCATIONS = 256
_SESSION_ID_CHARS = 66

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


@dataclass(frozen=True, slots=True)
class PairingRow:
    """What the server knows of one (primary, secondary) pair."""

    primary: str
    secondary: str
    timestamp_ms: int
    record: bytes
    active: bool
    revoked_at_ms: int | None


def _check_skew(timestamp_ms: int, now_ms: int, what: str, *, past_ms: int = CLOCK_SKEW_MS) -> None:
    if not now_ms - past_ms <= timestamp_ms <= now_ms + CLOCK_SKEW_MS:
        raise RpcError(
            "clock_skew", f"{what} timestamp is {timestamp_ms - now_ms:+d} ms from the server clock"
        )


def _check_max_secondaries(max_secondaries: int) -> None:
    if not 1 <= max_secondaries <= MAX_LISTED_SECONDARIES:
        raise ValueError(f"max_secondaries must be in [1, {MAX_LISTED_SECONDARIES}]")


class MappingStore:
    """Durable mappings and revocations with the server's rules; no Trio, ``now_ms`` in.

    Records reaching it must already be verified (:meth:`DeviceMapping.verify`); it
    enforces what signatures cannot: freshness, revocation, one primary per secondary, no
    chains, and the per-primary limit. Refusals are :class:`RpcError` with stable codes.
    """

    def __init__(self, path: str | Path, *, max_secondaries: int = DEFAULT_MAX_SECONDARIES) -> None:
        _check_max_secondaries(max_secondaries)
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

    def put(self, mapping: DeviceMapping, now_ms: int) -> None:
        """Store a verified mapping, or refuse it with the code that says why.

        Putting the mapping that is stored and active again succeeds whatever its age, so
        a device can re-publish its pairing (after a restart, say) without re-pairing."""
        primary, secondary = mapping.primary, mapping.secondary
        with self._transaction():
            existing = self.row(primary, secondary)
            if existing is not None and existing.active and existing.record == mapping.to_bytes():
                return
            _check_skew(mapping.timestamp_ms, now_ms, "mapping", past_ms=PAIRING_WINDOW_MS)
            if existing is not None:
                if (
                    existing.revoked_at_ms is not None
                    and mapping.timestamp_ms <= existing.revoked_at_ms
                ):
                    raise RpcError("unauthorized", "this pairing was revoked after it was signed")
                if mapping.timestamp_ms <= existing.timestamp_ms:
                    raise RpcError("conflict", "a newer mapping of this pair is stored")
            owner = self._primary_of(secondary)
            if owner is not None and owner != primary:
                raise RpcError("conflict", "the secondary already belongs to another primary")
            if self._active_secondaries(secondary):
                raise RpcError("conflict", "the secondary is itself a primary of other devices")
            if self._primary_of(primary) is not None:
                raise RpcError("conflict", "the primary is itself a secondary of another device")
            others = [s for s, _ in self._active_secondaries(primary) if s != secondary]
            if len(others) >= self.max_secondaries:
                raise RpcError(
                    "conflict", f"the primary already has {len(others)} secondaries (the limit)"
                )
            self._db.execute(
                "INSERT INTO mappings (primary_id, secondary, timestamp, record, active)"
                " VALUES (?, ?, ?, ?, 1) ON CONFLICT (primary_id, secondary) DO UPDATE SET"
                " timestamp = excluded.timestamp, record = excluded.record, active = 1",
                (primary, secondary, mapping.timestamp_ms, mapping.to_bytes()),
            )

    def revoke(self, revocation: Revocation, now_ms: int) -> None:
        """Apply a verified revocation; idempotent for the same or an older one."""
        _check_skew(revocation.timestamp_ms, now_ms, "revocation")
        with self._transaction():
            existing = self.row(revocation.primary, revocation.secondary)
            if existing is None:
                raise RpcError("not_found", "no such pairing")
            if (
                existing.revoked_at_ms is not None
                and revocation.timestamp_ms <= existing.revoked_at_ms
            ):
                return
            if existing.timestamp_ms > revocation.timestamp_ms:
                raise RpcError("conflict", "the pairing was renewed after this revocation")
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
        and the primary's revocation records (the newest per revoked secondary)."""
        primary = self._primary_of(session_id) or session_id
        listed = self._active_secondaries(primary)
        revocations = self._db.execute(
            "SELECT revocation FROM mappings WHERE primary_id = ? AND revocation IS NOT NULL"
            " ORDER BY revoked_at, secondary LIMIT ?",
            (primary, MAX_LISTED_REVOCATIONS),
        ).fetchall()
        return (
            primary,
            [s for s, _ in listed],
            [r for _, r in listed],
            [bytes(r[0]) for r in revocations],
        )


class FileServer:
    """The file server's RPC front. :meth:`serve` owns the database: it opens the file when
    it starts and closes it when cancelled, so a restart on the same file is a new
    ``FileServer(db_path, clock).serve(...)``."""

    def __init__(
        self,
        db_path: str | Path,
        clock: Clock,
        *,
        max_secondaries: int = DEFAULT_MAX_SECONDARIES,
        limits: ServerLimits | None = None,
    ) -> None:
        _check_max_secondaries(max_secondaries)
        self.db_path = Path(db_path)
        self.clock = clock
        self.max_secondaries = max_secondaries
        self._store: MappingStore | None = None
        self.rpc = RpcServer(
            {
                "put_mapping": self._put_mapping,
                "get_mappings": self._get_mappings,
                "revoke_mapping": self._revoke_mapping,
            },
            limits,
        )

    @property
    def store(self) -> MappingStore:
        if self._store is None:
            raise RuntimeError("the file server is not serving")
        return self._store

    async def serve(
        self,
        transport: Transport,
        address: str,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``address`` until cancelled; ``task_status.started(bound_url)``."""
        if self._store is not None:
            raise RuntimeError("this file server is already serving")
        self._store = MappingStore(self.db_path, max_secondaries=self.max_secondaries)
        try:
            await self.rpc.serve(transport, address, task_status=task_status)
        finally:
            self._store.close()
            self._store = None

    async def _put_mapping(self, params: Fields, conn: Connection) -> Any:
        params.only("mapping")
        mapping = DeviceMapping.from_bytes(params.blob("mapping", max_len=MAX_RECORD_BYTES))
        try:
            mapping.verify()
        except AuthorisationError as exc:
            raise RpcError("unauthorized", str(exc)) from None
        self.store.put(mapping, self.clock.now_ms())
        logger.debug("mapped %s → %s", mapping.secondary[:12], mapping.primary[:12])
        return {}

    async def _get_mappings(self, params: Fields, conn: Connection) -> Any:
        params.only("session_id")
        session_id = params.text("session_id", max_len=_SESSION_ID_CHARS)
        session_id_key(session_id)
        primary, secondaries, records, revocations = self.store.lookup(session_id)
        return {
            "primary": primary,
            "secondaries": secondaries,
            "mappings": records,
            "revocations": revocations,
        }

    async def _revoke_mapping(self, params: Fields, conn: Connection) -> Any:
        params.only("revocation")
        revocation = Revocation.from_bytes(params.blob("revocation", max_len=MAX_RECORD_BYTES))
        try:
            revocation.verify()
        except AuthorisationError as exc:
            raise RpcError("unauthorized", str(exc)) from None
        self.store.revoke(revocation, self.clock.now_ms())
        logger.debug("revoked %s from %s", revocation.secondary[:12], revocation.primary[:12])
        return {}


class FileServerClient:
    """Typed calls to a file server over one RPC connection.

    Answers are checked, not trusted: :meth:`get_mappings` verifies every mapping and that
    they agree with the listed devices, raising :class:`DecodeError` if the server lies.
    Refusals arrive as :class:`RpcError`; wrap calls in a cancel scope for a deadline.
    """

    def __init__(self, rpc: RpcCaller) -> None:
        self.rpc = rpc

    async def put_mapping(self, mapping: DeviceMapping) -> None:
        await self.rpc.call("put_mapping", {"mapping": mapping.to_bytes()})

    async def revoke_mapping(self, revocation: Revocation) -> None:
        await self.rpc.call("revoke_mapping", {"revocation": revocation.to_bytes()})

    async def get_mappings(
        self, session_id: str, known_revocations: Iterable[Revocation] = ()
    ) -> DeviceSet:
        """The devices of ``session_id``'s user, checked; ``known_revocations`` (kept from
        earlier answers) apply too, so a server cannot un-revoke a device for us."""
        session_id_key(session_id)
        result = Fields(
            await self.rpc.call("get_mappings", {"session_id": session_id}), "get_mappings"
        )
        result.only("primary", "secondaries", "mappings", "revocations")
        primary = result.text("primary", max_len=_SESSION_ID_CHARS)
        secondaries = result.items("secondaries", max_len=MAX_LISTED_SECONDARIES)
        if not all(isinstance(s, str) for s in secondaries):
            raise DecodeError("get_mappings.secondaries must hold text")
        records = result.items("mappings", max_len=MAX_LISTED_SECONDARIES)
        mappings = []
        for record in records:
            if not isinstance(record, bytes):
                raise DecodeError("get_mappings.mappings must hold bytes")
            mappings.append(DeviceMapping.from_bytes(record))
        revocations = list(known_revocations)
        if result.has("revocations"):
            for record in result.items("revocations", max_len=MAX_LISTED_REVOCATIONS):
                if not isinstance(record, bytes):
                    raise DecodeError("get_mappings.revocations must hold bytes")
                revocations.append(Revocation.from_bytes(record))
        return device_set(session_id, primary, [str(s) for s in secondaries], mappings, revocations)


@asynccontextmanager
async def open_fileserver_client(transport: Transport, url: str) -> AsyncIterator[FileServerClient]:
    """Connect to the file server at ``url``. ``OSError`` if it cannot be reached."""
    async with open_rpc(transport, url) as rpc:
        yield FileServerClient(rpc)


__all__ = [
    "DEFAULT_MAX_SECONDARIES",
    "FileServer",
    "FileServerClient",
    "MappingStore",
    "PairingRow",
    "open_fileserver_client",
]
