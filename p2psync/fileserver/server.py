"""The file server's RPC front (:class:`FileServer`): the methods of
:mod:`p2psync.fileserver`, each record verified before the store's rules see it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import trio

from overlay.link import Transport

from ..clock import Clock
from ..errors import RpcError
from ..identity import session_id_key
from ..mapping import MAX_RECORD_BYTES, DeviceMapping, Revocation, check_authorised
from ..rpc import Connection, KeyedRateLimit, RpcServer, ServerLimits
from ..wire import Fields
from .rules import DEFAULT_MAX_SECONDARIES, SESSION_ID_CHARS, check_max_secondaries
from .store import MappingStore

logger = logging.getLogger(__name__)

#: New mappings one primary may have stored at once, and the seconds until it may have one
#: more: a user pairs a device now and then. Putting the stored mapping again is free.
MAPPINGS_PER_KEY = 8
MAPPING_KEY_REFILL_S = 600.0
#: Mappings all primaries together may put at once, and then one per
#: ``MAPPING_REFILL_S``. Keys cost nothing, so this is what bounds how fast strangers grow
#: the file (a mapping row is about 1.1 kB): 28 800 rows, about 32 MB, a day at most,
#: against 1.75 MB a second from one connection before.
MAPPINGS_BURST = 100
MAPPING_REFILL_S = 3.0


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
        check_max_secondaries(max_secondaries)
        self.db_path = Path(db_path)
        self.clock = clock
        self.max_secondaries = max_secondaries
        self._store: MappingStore | None = None
        self._mapping_limit = KeyedRateLimit(
            MAPPINGS_PER_KEY,
            MAPPING_KEY_REFILL_S,
            MAPPINGS_BURST,
            MAPPING_REFILL_S,
            clock.now_ms() / 1000,
        )
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
        check_authorised(mapping)
        now_ms = self.clock.now_ms()

        def charge() -> None:
            # Only a mapping the store is about to write costs its primary: a new one takes
            # the primary's signature, and the one stored already, which anyone can read
            # and put again, changes nothing.
            if not self._mapping_limit.allow(session_id_key(mapping.primary), now_ms / 1000):
                raise RpcError("rate_limited", "too many new mappings: try again later")

        self.store.put(mapping, now_ms, before_storing=charge)
        logger.debug("mapped %s → %s", mapping.secondary[:12], mapping.primary[:12])
        return {}

    async def _get_mappings(self, params: Fields, conn: Connection) -> Any:
        params.only("session_id")
        session_id = params.text("session_id", max_len=SESSION_ID_CHARS)
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
        check_authorised(revocation)
        self.store.revoke(revocation, self.clock.now_ms())
        logger.debug("revoked %s from %s", revocation.secondary[:12], revocation.primary[:12])
        return {}
