"""Typed calls to a file server (:class:`FileServerClient`), whose answers are checked,
not trusted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import trio

from overlay.link import Transport

from ..errors import DecodeError
from ..identity import session_id_key
from ..mapping import DeviceMapping, DeviceSet, Revocation, device_set
from ..rpc import RpcCaller, open_rpc
from ..wire import Fields
from .rules import MAX_LISTED_REVOCATIONS, MAX_LISTED_SECONDARIES, SESSION_ID_CHARS

#: How long a call may wait for its answer: an onion request's path build and three
#: hops each way take seconds at most.
CALL_TIMEOUT_S = 20.0


class FileServerClient:
    """Typed calls to a file server over one RPC connection.

    Answers are checked, not trusted: :meth:`get_mappings` verifies every mapping and that
    they agree with the listed devices, raising :class:`DecodeError` if the server lies.
    Refusals arrive as :class:`RpcError`; a call not answered within ``timeout_s`` raises
    :class:`trio.TooSlowError` (a server that holds a call would otherwise hold whatever
    waits on it: a device's receive loop, checking who sent a record).
    """

    def __init__(self, rpc: RpcCaller, *, timeout_s: float = CALL_TIMEOUT_S) -> None:
        self.rpc = rpc
        self.timeout_s = timeout_s

    async def put_mapping(self, mapping: DeviceMapping) -> None:
        await self._call("put_mapping", {"mapping": mapping.to_bytes()})

    async def revoke_mapping(self, revocation: Revocation) -> None:
        await self._call("revoke_mapping", {"revocation": revocation.to_bytes()})

    async def _call(self, method: str, params: dict[str, Any]) -> object:
        with trio.fail_after(self.timeout_s):
            return await self.rpc.call(method, params)

    async def get_mappings(
        self, session_id: str, known_revocations: Iterable[Revocation] = ()
    ) -> DeviceSet:
        """The devices of ``session_id``'s user, checked; ``known_revocations`` (kept from
        earlier answers) apply too, so a server cannot un-revoke a device for us."""
        session_id_key(session_id)
        result = Fields(
            await self._call("get_mappings", {"session_id": session_id}), "get_mappings"
        )
        result.only("primary", "secondaries", "mappings", "revocations")
        primary = result.text("primary", max_len=SESSION_ID_CHARS)
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
