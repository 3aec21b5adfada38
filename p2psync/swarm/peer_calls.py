"""What a node asks another node, as typed calls: each request is signed with the asking
node's key (``node_auth``, :mod:`.auth`) and each reply decoded strictly
(:mod:`.messages`), so replication, repair and hand-over speak of rows and keys, not of
CBOR maps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from ..clock import Clock
from ..identity import Identity
from ..rpc import RpcClient
from .auth import sign_node_request
from .messages import (
    LISTING_PAGE,
    HeldReply,
    KeysRequest,
    LookupReply,
    LookupRequest,
    RepairDigestReply,
    RepairDigestRequest,
    RepairListReply,
    RepairListRequest,
    ReplicateReply,
    RowBatch,
)
from .quorum import RowKey
from .rows import RowSummary, StoredMessage


class _Request(Protocol):
    def to_wire(self) -> dict[str, Any]: ...


class PeerCalls:
    """The node-to-node methods of one peer, over ``client``."""

    def __init__(self, client: RpcClient, identity: Identity, clock: Clock) -> None:
        self._client = client
        self._identity = identity
        self._clock = clock

    async def _call(self, method: str, request: _Request) -> Any:
        signed = sign_node_request(self._identity, method, request.to_wire(), self._clock.now_ms())
        return await self._client.call(method, signed)

    async def replicate(self, rows: Sequence[StoredMessage]) -> ReplicateReply:
        return ReplicateReply.from_wire(await self._call("replicate", RowBatch(tuple(rows))))

    async def lookup(self, request: LookupRequest) -> StoredMessage | None:
        return LookupReply.from_wire(await self._call("lookup", request), self._clock.now_ms()).row

    async def repair_digest(self) -> RepairDigestReply:
        return RepairDigestReply.from_wire(await self._call("repair_digest", RepairDigestRequest()))

    async def repair_list(self, bucket: int) -> list[RowSummary]:
        """One bucket's whole listing, page by page."""
        rows: list[RowSummary] = []
        while True:
            result = await self._call("repair_list", RepairListRequest(bucket, len(rows)))
            reply = RepairListReply.from_wire(result)
            rows.extend(reply.items)
            if not reply.more:
                return rows

    async def repair_fetch(self, keys: Sequence[RowKey]) -> RowBatch:
        result = await self._call("repair_fetch", KeysRequest(tuple(keys)))
        return RowBatch.from_wire(result, self._clock.now_ms(), max_rows=LISTING_PAGE)

    async def held(self, keys: Sequence[RowKey]) -> int:
        """How many of the rows of ``keys`` the peer holds."""
        result = await self._call("held", KeysRequest(tuple(keys)))
        return HeldReply.from_wire(result, asked=len(keys)).held
