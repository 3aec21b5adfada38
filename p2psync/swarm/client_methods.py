"""The client methods of a service node besides ``store`` (:mod:`.acceptance`): reading
a stream from a cursor (``retrieve``), deleting and shortening messages with the owner's
signed word (``delete``, ``expire``), and ``subscribe``.

Each checks the owner's signature (:func:`~.auth.check_client_auth`: the method, the
stream and the time, each accepted once) before it touches the store, and refuses an
owner of another swarm (``wrong_swarm``, naming the right one). Deletes and expiries
replace the row with a tombstone or shorter expiry carrying the owner's proof, which is
what lets them replicate: a peer checks the proof, not the sender.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import trio

from ..clock import Clock
from ..rpc import Connection, Handler
from ..wire import Fields
from .acceptance import Execute
from .auth import ReplayGuard, check_client_auth
from .constants import RETRIEVE_LIMIT, RETRIEVE_MAX_BYTES
from .messages import (
    DeleteReply,
    DeleteRequest,
    ExpireReply,
    ExpireRequest,
    LookupRequest,
    Message,
    RetrieveReply,
    RetrieveRequest,
    SubscribeRequest,
)
from .node_core import START, NodeCore, Position
from .node_shared import PEER_CALL_TIMEOUT_S, Dial, Ingest, NodeStats
from .proof import proof_from_request
from .ring import NodeInfo
from .rows import StoredMessage
from .store import MessageStore

logger = logging.getLogger(__name__)


class ClientMethods:
    """The handlers (:meth:`handlers`)."""

    def __init__(
        self,
        core: NodeCore[Connection],
        store: MessageStore,
        clock: Clock,
        guard: ReplayGuard,
        *,
        peers: Callable[[], Sequence[NodeInfo]],
        dial: Dial,
        ingest: Ingest,
        execute: Execute,
        stats: NodeStats,
    ) -> None:
        """``peers`` and ``dial``: the swarm's other members and calls to one, for a cursor
        this node lacks; ``ingest``: keep a peer's rows;
        ``execute``: the node core's effects of a delete or expiry."""
        self._core = core
        self._store = store
        self._clock = clock
        self._guard = guard
        self._peers = peers
        self._dial = dial
        self._ingest = ingest
        self._execute = execute
        self._stats = stats

    def handlers(self) -> dict[str, Handler]:
        return {
            "retrieve": self._retrieve,
            "delete": self._delete,
            "expire": self._expire,
            "subscribe": self._subscribe,
        }

    # ``retrieve`` may have to ask a peer (an unknown cursor), so it is a coroutine; the
    # others never wait, and the RPC server answers them inline in the read loop.

    async def _retrieve(self, params: Fields, conn: Connection) -> Any:
        request = RetrieveRequest.from_wire(params)
        owner, namespace = request.pubkey, request.namespace
        now = self._clock.now_ms()
        check_client_auth(
            request.auth,
            self._guard,
            method="retrieve",
            pubkey=owner,
            namespace=namespace,
            now_ms=now,
        )
        self._core.require_swarm(owner)
        after = START
        if request.last_hash is not None:
            after = await self._resolve_cursor(owner, namespace, request.last_hash)
        rows, more = self._store.retrieve(
            owner,
            namespace,
            after,
            now,
            limit=request.limit or RETRIEVE_LIMIT,
            max_bytes=RETRIEVE_MAX_BYTES,
        )
        self._core.read_order.served(rows)
        return RetrieveReply(tuple(map(Message.of_row, rows)), more).to_wire()

    async def _resolve_cursor(self, owner: str, namespace: int, last_hash: bytes) -> Position:
        """The read position after ``last_hash``, which may come from another member
        (:class:`~.node_core.ReadOrder`). A hash this node lacks (its replica has not
        arrived yet) is fetched from a peer first, which both repairs this node and
        places the cursor; one no peer could place lately is not asked about again
        (:meth:`~.node_core.ReadOrder.worth_asking`)."""
        order = self._core.read_order
        position = self._store.position_of(owner, namespace, last_hash)
        now = self._clock.now_ms()
        if position is None and order.worth_asking(owner, namespace, last_hash, now):
            await self._fetch_from_peers(LookupRequest(owner, namespace, last_hash))
            position = self._store.position_of(owner, namespace, last_hash)
            if position is None:
                order.not_found(owner, namespace, last_hash, self._clock.now_ms())
        return order.after(owner, namespace, last_hash, position)

    async def _fetch_from_peers(self, request: LookupRequest) -> None:
        for peer in self._peers():
            with trio.move_on_after(PEER_CALL_TIMEOUT_S):
                try:
                    row = await (await self._dial(peer)).lookup(request)
                    if row is not None:
                        self._stats.repaired_in += self._ingest([row]).new
                        return
                except Exception as exc:  # one peer's failure, whatever it is, is that peer's
                    logger.debug("lookup at %s failed: %r", peer.pubkey[:8], exc)

    def _delete(self, params: Fields, conn: Connection) -> Any:
        request = DeleteRequest.from_wire(params)
        owner, namespace, hashes = request.pubkey, request.namespace, request.hashes
        check_client_auth(
            request.auth,
            self._guard,
            method="delete",
            pubkey=owner,
            namespace=namespace,
            now_ms=self._clock.now_ms(),
            hashes=hashes,
        )
        self._core.require_swarm(owner)
        proof = proof_from_request("delete", namespace, hashes, request.auth)
        deleted = self._store.delete(owner, namespace, hashes, proof.encode())
        self._execute(self._core.accepted(self._rows(owner, namespace, deleted)))
        return DeleteReply(tuple(deleted)).to_wire()

    def _expire(self, params: Fields, conn: Connection) -> Any:
        request = ExpireRequest.from_wire(params)
        owner, namespace, hashes = request.pubkey, request.namespace, request.hashes
        check_client_auth(
            request.auth,
            self._guard,
            method="expire",
            pubkey=owner,
            namespace=namespace,
            now_ms=self._clock.now_ms(),
            hashes=hashes,
            expiry_ms=request.expiry_ms,
        )
        self._core.require_swarm(owner)
        proof = proof_from_request("expire", namespace, hashes, request.auth, request.expiry_ms)
        updated = self._store.expire(owner, namespace, hashes, request.expiry_ms, proof.encode())
        self._execute(self._core.accepted(self._rows(owner, namespace, updated)))
        return ExpireReply(tuple(updated)).to_wire()

    def _subscribe(self, params: Fields, conn: Connection) -> Any:
        request = SubscribeRequest.from_wire(params)
        check_client_auth(
            request.auth,
            self._guard,
            method="subscribe",
            pubkey=request.pubkey,
            namespace=request.namespace,
            now_ms=self._clock.now_ms(),
        )
        stream = (request.pubkey, request.namespace)
        if self._core.subscribe(stream, conn):
            conn.on_close(lambda: self._core.subscriptions.remove(stream, conn))
        return {}

    def _rows(self, owner: str, namespace: int, hashes: Iterable[bytes]) -> list[StoredMessage]:
        rows = (self._store.get(owner, namespace, h) for h in hashes)
        return [row for row in rows if row is not None]
