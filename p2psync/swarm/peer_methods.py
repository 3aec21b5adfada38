"""The node-to-node methods a service node answers: rows pushed by members or handed over
by an owner's old swarm (``replicate``), and what repair and hand-over read (``lookup``,
``repair_digest``, ``repair_list``, ``repair_fetch``, ``held``).

Every one is signed by a node the ledger admitted and the registry lists
(:func:`~.auth.check_node_auth`), and every method that reads answers only members of
this node's swarm, about owners this node serves: no node, admitted or not, can read or
enumerate a swarm it does not belong to. The rest of a request is decoded only after
that check.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from ..clock import Clock
from ..errors import RpcError
from ..rpc import Connection, Handler
from ..wire import Fields
from . import repair
from .auth import ReplayGuard, check_node_auth
from .listing import Snapshot
from .messages import (
    HeldReply,
    KeysRequest,
    LookupReply,
    LookupRequest,
    RepairDigestReply,
    RepairDigestRequest,
    RepairListRequest,
    ReplicateReply,
    RowBatch,
)
from .node_core import NodeCore, RepairListings, first_batch
from .node_shared import NodeStats
from .rows import RowSummary, StoredMessage
from .store import MessageStore


class PeerMethods:
    """The handlers (:meth:`handlers`) and the repair listings they page through."""

    def __init__(
        self,
        core: NodeCore[Connection],
        store: MessageStore,
        clock: Clock,
        guard: ReplayGuard,
        *,
        listed: Callable[[], Snapshot],
        relist: Callable[[], None],
        summaries: Callable[[int | None], list[RowSummary]],
        ingest: Callable[[Iterable[StoredMessage]], int],
        refused: Callable[[Sequence[str], str], None],
        stats: NodeStats,
    ) -> None:
        """``listed``: the registry listing the node acts on; ``relist``: read it again
        soon; ``summaries``: of the rows the node serves, one repair bucket or all;
        ``ingest``: keep a peer's rows, returning how many were new; ``refused``: count
        and log the rows of a peer's batch that did not check out."""
        self._core = core
        self._store = store
        self._clock = clock
        self._guard = guard
        self._listed = listed
        self._relist = relist
        self._summaries = summaries
        self._ingest = ingest
        self._refused = refused
        self._stats = stats
        self._listings = RepairListings(summaries)

    def handlers(self) -> dict[str, Handler]:
        return {
            "replicate": self._replicate,
            "lookup": self._lookup,
            "repair_digest": self._repair_digest,
            "repair_list": self._repair_list,
            "repair_fetch": self._repair_fetch,
            "held": self._held,
        }

    def membership_changed(self, peers: Collection[str]) -> None:
        """Drop the repair listings kept for nodes that are no longer ``peers``."""
        self._listings.forget(peers)

    def _check_node(self, params: Fields, method: str, *, swarm_only: bool = True) -> str:
        """The registered node that signed this request; with ``swarm_only`` (every method
        that reads) it must be a member of this node's swarm. The rest of the request is
        decoded after this check (``params.rest("node_auth")``)."""
        node = check_node_auth(
            params, params.rest(), self._guard, method=method, now_ms=self._clock.now_ms()
        )
        listed = self._listed().nodes
        if not listed:  # just started: this node has not read the registry yet
            raise RpcError("unavailable", "node has not read the registry yet")
        if node not in {n.pubkey for n in listed}:
            self._relist()  # it may have joined since we last looked
            raise RpcError("unauthorized", "not a registered node")
        if swarm_only and node not in {n.pubkey for n in self._core.peers()}:
            raise RpcError("unauthorized", "not a member of this swarm")
        return node

    def _replicate(self, params: Fields, conn: Connection) -> Any:
        """Rows pushed by a member, or handed over by a node of the owner's old swarm (so
        any registered node may push); only rows of owners this node serves are kept."""
        node = self._check_node(params, "replicate", swarm_only=False)
        request = RowBatch.from_wire(params.rest("node_auth"), self._clock.now_ms())
        self._refused(request.refused, node)
        refused = self._core.refused_owners(request.rows)
        self._stats.replicated_in += self._ingest(request.rows)
        return ReplicateReply(refused).to_wire()

    def _lookup(self, params: Fields, conn: Connection) -> Any:
        self._check_node(params, "lookup")
        request = LookupRequest.from_wire(params.rest("node_auth"))
        if not self._core.owns(request.pubkey):
            raise RpcError("unauthorized", "that owner belongs to another swarm")
        row = self._store.get(request.pubkey, request.namespace, request.hash)
        if row is not None and row.expiry_ms <= self._clock.now_ms():
            row = None
        return LookupReply(row).to_wire()

    def _repair_digest(self, params: Fields, conn: Connection) -> Any:
        self._check_node(params, "repair_digest")
        RepairDigestRequest.from_wire(params.rest("node_auth"))
        return RepairDigestReply(tuple(repair.digests(self._summaries(None)))).to_wire()

    def _repair_list(self, params: Fields, conn: Connection) -> Any:
        node = self._check_node(params, "repair_list")
        request = RepairListRequest.from_wire(params.rest("node_auth"))
        return self._listings.page(node, request.bucket, request.offset).to_wire()

    def _repair_fetch(self, params: Fields, conn: Connection) -> Any:
        self._check_node(params, "repair_fetch")
        request = KeysRequest.from_wire(params.rest("node_auth"))
        found = first_batch(
            self._store.get(*key) if self._core.owns(key[0]) else None for key in request.keys
        )
        return RowBatch(tuple(found)).to_wire()

    def _held(self, params: Fields, conn: Connection) -> Any:
        """How many of the given rows this node holds, for a node of the owners' old swarm
        reading back what it handed over (it names only rows it holds itself, so it
        learns nothing it did not know)."""
        self._check_node(params, "held", swarm_only=False)
        request = KeysRequest.from_wire(params.rest("node_auth"))
        now = self._clock.now_ms()
        held = 0
        for key in request.keys:
            row = self._store.get(*key) if self._core.owns(key[0]) else None
            held += row is not None and row.expiry_ms > now
        return HeldReply(held).to_wire()
