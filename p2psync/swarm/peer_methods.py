"""The node-to-node methods a service node answers: rows pushed by members or handed over
by an owner's old swarm (``replicate``), and what repair and hand-over read (``lookup``,
``repair_digest``, ``repair_list``, ``repair_fetch``, ``held``).

Every one is signed by a node the ledger admitted and the registry lists
(:func:`~.auth.check_node_auth`), and every method that reads answers only members of
this node's swarm, about owners this node serves: no node, admitted or not, can read or
enumerate a swarm it does not belong to. The two that hand-over needs from nodes of
other swarms (``replicate``, ``held``) give a node that is a stranger to an owner
(:meth:`~.node_core.NodeCore.trusts`: it never served the owner under a map this node
remembers) no more than an anonymous client has: its rows are held to a client's byte
rate and the owner's quota, and ``held`` tells it only about the rows it pushed itself.
The rest of a request is decoded only after the node's check.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import replace
from typing import Any

from ..clock import Clock
from ..errors import RpcError
from ..rpc import Connection, Handler
from ..wire import Fields
from . import repair
from .allowance import ConnectionBudgets, charge_of
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
from .node_core import NodeCore, RepairListings, StrangerPushes, first_batch
from .node_shared import Ingest, NodeStats
from .quorum import RowKey, row_key
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
        ingest: Ingest,
        refused: Callable[[Sequence[str], str], None],
        stats: NodeStats,
        store_bytes_per_s: float,
    ) -> None:
        """``listed``: the registry listing the node acts on; ``relist``: read it again
        soon; ``summaries``: of the rows the node serves, one repair bucket or all;
        ``ingest``: keep a peer's rows; ``refused``: count and log the rows of a peer's
        batch that did not check out; ``store_bytes_per_s``: a client connection's byte
        rate, which strangers' rows are held to too."""
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
        self._budgets = ConnectionBudgets(store_bytes_per_s)
        self._stranger_pushes = StrangerPushes()

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
        any registered node may push). Only rows of owners this node serves are kept,
        within their owners' quotas, and those of a stranger (see the module) only within
        a client connection's byte rate. The reply names the owners whose rows were not
        kept."""
        node = self._check_node(params, "replicate", swarm_only=False)
        request = RowBatch.from_wire(params.rest("node_auth"), self._clock.now_ms())
        self._refused(request.refused, node)
        now_ms = self._clock.now_ms()
        strangers = self._core.from_stranger(node, request.rows)
        dropped, over_rate = self._over_rate(conn, strangers, now_ms)
        # A stranger's word that a row was vouched for is not taken (:mod:`.access`).
        unvouched = {row_key(row) for row in strangers}
        ingested = self._ingest(
            replace(r, vouched=False) if row_key(r) in unvouched else r
            for r in request.rows
            if row_key(r) not in dropped
        )
        self._stats.replicated_in += ingested.new
        refused = {*self._core.refused_owners(request.rows), *over_rate, *ingested.over_quota}
        self._stranger_pushes.pushed(
            node, (key for key in map(row_key, strangers) if self._store.holds(*key, now_ms))
        )
        return ReplicateReply(tuple(sorted(refused))).to_wire()

    def _over_rate(
        self, conn: Connection, rows: Iterable[StoredMessage], now_ms: int
    ) -> tuple[set[RowKey], set[str]]:
        """Of ``rows`` (a stranger's), those past the connection's byte rate, and their
        owners: from an owner's first row that does not fit, none of its rows is kept,
        but those before it are. A row this node holds already costs nothing, so a
        hand-over that sends everything again on its next pass gets further each time."""
        now = self._clock.now_s()
        dropped: set[RowKey] = set()
        over: set[str] = set()
        for row in rows:
            key = row_key(row)
            if row.pubkey in over:
                dropped.add(key)
            elif not self._store.holds(*key, now_ms) and not self._budgets.charge(
                conn, now, charge_of(row)
            ):
                over.add(row.pubkey)
                dropped.add(key)
        return dropped, over

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
        reading back what it handed over. A stranger's rows count only if it pushed them
        itself: to any node, this would say whether a message it names still exists."""
        node = self._check_node(params, "held", swarm_only=False)
        request = KeysRequest.from_wire(params.rest("node_auth"))
        now = self._clock.now_ms()
        held = 0
        for key in request.keys:
            owner = key[0]
            known = self._core.owns(owner) and (
                self._core.trusts(node, owner) or self._stranger_pushes.pushed_by(node, key)
            )
            row = self._store.get(*key) if known else None
            held += row is not None and row.expiry_ms > now
        return HeldReply(held).to_wire()
