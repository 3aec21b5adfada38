"""A service node: the driver of :mod:`.node_core`, with its store, connections and peers.

Requests are decoded by :mod:`.messages` and decided by :class:`~.node_core.NodeCore`;
what is left here is the RPC dispatch and its I/O (the store, the group commit, waiting
for the quorum, pushes to subscribers) and the wiring of the small drivers a node's
nursery runs beside it, each of which survives any single peer or record:

* :mod:`.directory_refresh` — announce the node, re-read the registry, and on a
  membership change restart replication and repair;
* :mod:`.replicator` — one worker per swarm peer draining a queue of new rows bounded in
  rows and bytes (:mod:`.outbound`; a full queue or a failed send is not an error: repair
  catches up), and :mod:`.hand_over` of the owners that now belong to another swarm;
* :mod:`.repairer` — periodic anti-entropy with every peer (:mod:`.repair`), so a node
  that was down or partitioned converges without anyone re-sending;
* :mod:`.sweeper` — deletes expired rows (reads never return them anyway).

What a node acknowledges to a client is committed to its own SQLite file (stores that
arrive together share one transaction: :mod:`.commit`) and to ``quorum`` members of its
swarm in all, itself included (:mod:`.quorum`), so no single member's loss for good loses
an acknowledged store.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from overlay.link import Transport

from ..clock import Clock
from ..errors import RpcError
from ..identity import Identity
from ..onion_requests import ListedExits, OnionService
from ..rpc import (
    Connection,
    RpcPool,
    RpcServer,
    ServerLimits,
    TokenBucket,
    open_rpc_pool,
)
from ..wire import Fields
from . import repair
from .allowance import OWNER_QUOTA_BYTES, STORE_BYTES_PER_S, OwnerQuota, connection_budget
from .auth import ReplayGuard, check_client_auth, check_node_auth
from .commit import CommitFailed, GroupCommit
from .constants import (
    ANNOUNCE_INTERVAL_S,
    PROTOCOL_VERSION,
    REGISTRY_REFRESH_S,
    REPAIR_INTERVAL_S,
    RETRIEVE_LIMIT,
    RETRIEVE_MAX_BYTES,
    STORE_QUORUM,
    SWEEP_INTERVAL_S,
)
from .directory_refresh import DirectoryRefresh
from .hand_over import HandOver
from .messages import (
    DeleteReply,
    DeleteRequest,
    ExpireReply,
    ExpireRequest,
    GetSwarmRequest,
    HeldReply,
    InfoReply,
    KeysRequest,
    LookupReply,
    LookupRequest,
    Message,
    RepairDigestReply,
    RepairDigestRequest,
    RepairListRequest,
    ReplicateReply,
    RetrieveReply,
    RetrieveRequest,
    RowBatch,
    StoreReply,
    StoreRequest,
    SubscribeRequest,
)
from .node_core import (
    START,
    NodeCore,
    Position,
    Push,
    RepairListings,
    Replicate,
    first_batch,
)
from .node_shared import PEER_CALL_TIMEOUT_S, NodeStats
from .outbound import REPLICATION_QUEUE_BYTES, ReplicationQueue
from .peer_calls import PeerCalls
from .proof import proof_from_request
from .quorum import QuorumBook, RowKey, row_key
from .registry import ANNOUNCEMENT_TTL_MS, Directory, Snapshot, listing_page
from .repairer import Repairer
from .replicator import Replicator
from .ring import NodeInfo, SwarmMap
from .rows import RowSummary, StoredMessage
from .store import MessageStore
from .sweeper import sweep_expired

logger = logging.getLogger(__name__)

MAX_SUBSCRIPTIONS_PER_CONNECTION = 64
#: How long a store waits for its quorum before the client is told ``unavailable`` (the
#: row stays here and keeps replicating; a retry, to any member, is the same message).
QUORUM_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class NodeConfig:
    sweep_interval_s: float = SWEEP_INTERVAL_S
    repair_interval_s: float = REPAIR_INTERVAL_S
    registry_refresh_s: float = REGISTRY_REFRESH_S
    announce_interval_s: float = ANNOUNCE_INTERVAL_S
    #: Bytes queued for one peer's replication before new rows are left to repair.
    replication_queue_bytes: int = REPLICATION_QUEUE_BYTES
    #: Members that must hold a store before it is acknowledged, this one included; a
    #: smaller swarm needs all its members.
    store_quorum: int = STORE_QUORUM
    quorum_timeout_s: float = QUORUM_TIMEOUT_S
    #: A device subscribes to a few namespaces of one or two identities; a connection
    #: holding thousands is someone making the node fan out pushes for it.
    max_subscriptions_per_connection: int = MAX_SUBSCRIPTIONS_PER_CONNECTION
    #: What an anonymous store may cost (:mod:`.allowance`).
    store_bytes_per_s: float = STORE_BYTES_PER_S
    owner_quota_bytes: int = OWNER_QUOTA_BYTES
    limits: ServerLimits = field(default_factory=ServerLimits)

    def __post_init__(self) -> None:
        # Announcements are repeated from the refresh loop; both must come round well
        # within the registry's listing lifetime or the node drops out of the network.
        lifetime_s = ANNOUNCEMENT_TTL_MS / 1000
        if max(self.announce_interval_s, self.registry_refresh_s) > lifetime_s / 2:
            raise ValueError(
                f"announce and registry refresh intervals must be at most {lifetime_s / 2:.0f} s"
            )
        if self.store_quorum < 1:
            raise ValueError("the store quorum counts this node, so it is at least 1")


class StorageNode:
    """One service node. ``serve`` runs it until cancelled and reports its url."""

    def __init__(
        self,
        identity: Identity,
        store: MessageStore,
        clock: Clock,
        transport: Transport,
        directory: Directory,
        config: NodeConfig | None = None,
        registration: bytes = b"",
    ) -> None:
        """``registration`` is the ledger's signed word that this node is admitted
        (:mod:`.admission`), announced with the node; without it a network with a ledger
        does not list the node."""
        self.identity = identity
        self.registration = registration
        self.pubkey = identity.ed25519_public.hex()
        self.store = store
        self.clock = clock
        self.transport = transport
        self.directory = directory
        self.config = config or NodeConfig()
        self.url = ""
        self.stats = NodeStats()
        self.core: NodeCore[Connection] = NodeCore(
            self.pubkey,
            started_ms=0,
            store_quorum=self.config.store_quorum,
            max_subscriptions=self.config.max_subscriptions_per_connection,
        )
        self._guard = ReplayGuard()
        self._store_budgets: dict[Connection, TokenBucket] = {}
        self._owner_quota = OwnerQuota(
            lambda owner: self.store.owner_bytes(owner, self.clock.now_ms()),
            self.config.owner_quota_bytes,
        )
        self._listings = RepairListings(self._owned_summaries)
        self._commits = GroupCommit(store)
        self._quorum = QuorumBook()
        self._quorum_reached: dict[RowKey, trio.Event] = {}
        self._pool: RpcPool | None = None
        # The background drivers; one seeded generator keeps their jitter reproducible.
        rng = random.Random(identity.ed25519_public)
        self._listing = DirectoryRefresh(
            identity,
            registration,
            directory,
            clock,
            url=lambda: self.url,
            on_membership=self._membership,
            announce_interval_s=self.config.announce_interval_s,
            refresh_s=self.config.registry_refresh_s,
            rng=rng,
        )
        self._repairer = Repairer(
            store,
            clock,
            peers=self.peers,
            dial=self._peer,
            summaries=self._owned_summaries,
            ingest=self._ingest,
            refused=self._count_refused,
            stats=self.stats,
            interval_s=self.config.repair_interval_s,
            rng=rng,
        )
        self._replicator = Replicator(
            transport,
            identity,
            clock,
            peers=self.peers,
            pending=self._quorum.rows,
            committed=self._peer_committed,
            lost=self._repairer.soon,
            hand_over=HandOver(
                store,
                clock,
                swarms=lambda: self.core.swarms,
                owns=self.owns,
                first_listed=self._listing.first_listed,
                dial=self._peer,
                stats=self.stats,
            ).run,
            queue_bytes=self.config.replication_queue_bytes,
            stats=self.stats,
        )
        self.rpc = RpcServer(
            {
                "info": self._info,
                "get_swarm": self._get_swarm,
                "store": self._store,
                "retrieve": self._retrieve,
                "delete": self._delete,
                "expire": self._expire,
                "subscribe": self._subscribe,
                "replicate": self._replicate,
                "lookup": self._lookup,
                "repair_digest": self._repair_digest,
                "repair_list": self._repair_list,
                "repair_fetch": self._repair_fetch,
                "held": self._held,
                "list": self._list,
            },
            self.config.limits,
            clock,
        )
        #: Requests that reach this node through a device's onion path (the exit relay
        #: is the caller it sees), answered as if they had come directly.
        self.onion = OnionService(
            self.rpc, identity, clock, exits=ListedExits(lambda: self.snapshot)
        )

    # --- lifecycle ------------------------------------------------------------------------

    async def serve(
        self, address: str, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self.core.read_order.started_ms = self.clock.now_ms()
        async with open_rpc_pool(self.transport) as pool, trio.open_nursery() as nursery:
            self._pool = pool
            # As its announced key: on a real network TLS pinned to it, the url says so.
            serving = self.transport.as_server(self.identity.seed)
            self.url = await nursery.start(self.rpc.serve, serving, address)
            await self.refresh()
            nursery.start_soon(self._commits.run)
            nursery.start_soon(self._listing.run)
            nursery.start_soon(self._replicator.run)
            nursery.start_soon(self._repairer.run)
            nursery.start_soon(
                sweep_expired,
                self.store,
                self.clock,
                self.config.sweep_interval_s,
                self.stats,
                self.pubkey[:8],
            )
            task_status.started(self.url)

    async def refresh(self) -> None:
        """Announce, re-read the registry, and act on a membership change now
        (:meth:`.DirectoryRefresh.refresh`)."""
        await self._listing.refresh()

    def _membership(self, snapshot: Snapshot) -> None:
        self.core.swarms = SwarmMap.build(snapshot.nodes)
        self._listings.forget({n.pubkey for n in self.peers()})
        self._replicator.membership_changed()
        self._repairer.soon()  # new members may lack what we hold, and vice versa

    @property
    def snapshot(self) -> Snapshot:
        """The last registry listing this node acted on."""
        return self._listing.snapshot

    @property
    def swarms(self) -> SwarmMap:
        return self.core.swarms

    @property
    def swarm_id(self) -> int | None:
        return self.core.swarm_id

    def peers(self) -> Sequence[NodeInfo]:
        return self.core.peers()

    def owns(self, owner: str) -> bool:
        return self.core.owns(owner)

    @property
    def replication_queues(self) -> Mapping[str, ReplicationQueue]:
        """Per peer of the current membership, the rows waiting to be replicated to it."""
        return self._replicator.queues

    # --- client methods -------------------------------------------------------------------
    # A method that never waits is a plain function, so the RPC server answers it inline
    # in the connection's read loop, without a task per request; ``store`` waits for its
    # group commit and quorum, and ``retrieve`` may have to ask a peer (an unknown
    # cursor), so those two are coroutines.

    def _info(self, params: Fields, conn: Connection) -> Any:
        stored = self.store.stats()[0]
        return InfoReply(PROTOCOL_VERSION, self.pubkey, self.swarm_id or 0, stored).to_wire()

    def _list(self, params: Fields, conn: Connection) -> Any:
        """The signed announcements of the last registry listing this node read, so
        readers can list the network from any node while the registry is down (they
        check every signature themselves)."""
        return listing_page(self.snapshot.announcements, params)

    def _get_swarm(self, params: Fields, conn: Connection) -> Any:
        return self.core.swarm_of(GetSwarmRequest.from_wire(params).pubkey).to_wire()

    async def _store(self, params: Fields, conn: Connection) -> Any:
        row = self.core.new_row(StoreRequest.from_wire(params), self.clock.now_ms())
        self._charge(conn, row)
        key = row_key(row)

        def committed(new: bool) -> trio.Event | None:
            """The quorum to wait for. Runs in the commit loop, so a transaction's rows are
            queued for the peers together (see :mod:`.commit`), and the event is taken
            there too: looked up once this store resumed, it could be gone because
            another store of the same row gave up on it, and this one would be answered
            without its quorum."""
            if new:
                self.stats.stored += 1
                self._owner_quota.stored(row.pubkey, len(row.data or b""))
                self._execute(self.core.pushes([row]))
            else:
                self.stats.duplicates += 1
            # A duplicate waits for its quorum too: the first store of it may have been
            # answered ``unavailable``, and this node keeps no record of which rows made
            # it. Peers that hold it already answer at once.
            awaiting = key not in self._quorum_reached and self._quorum.expect(
                row, self.core.peers_needed()
            )
            if awaiting:
                self._quorum_reached[key] = trio.Event()
            if new or awaiting:  # every new row goes to every peer, whatever the quorum
                self._replicator.offer([row])
            return self._quorum_reached.get(key)

        try:
            reached = await self._commits.put(row, committed)
        except CommitFailed as exc:
            raise RpcError("unavailable", f"the node could not store: {exc}") from exc
        if reached is not None:
            with trio.move_on_after(self.config.quorum_timeout_s):
                await reached.wait()
            if not reached.is_set():
                self._quorum.give_up(key)
                self._quorum_reached.pop(key, None)
                self.stats.quorum_missed += 1
                raise RpcError(
                    "unavailable",
                    "stored here but not yet on enough members of the swarm; retrying is safe",
                )
        return StoreReply(row.hash, row.expiry_ms).to_wire()

    def _charge(self, conn: Connection, row: StoredMessage) -> None:
        """Refuse a store past its connection's byte rate (``rate_limited``) or its
        owner's quota (``too_large``): :mod:`.allowance`."""
        size = len(row.data or b"")
        now = self.clock.now_s()
        budget = self._store_budgets.get(conn)
        if budget is None:
            budget = connection_budget(now, self.config.store_bytes_per_s)
            self._store_budgets[conn] = budget
            conn.on_close(lambda: self._forget_budget(conn))
        if not budget.take(now, size):
            raise RpcError("rate_limited", "this connection stores too fast: slow down")
        if not self._owner_quota.admits(row.pubkey, size):
            raise RpcError(
                "too_large", f"this owner's mailbox is full ({self._owner_quota.quota} bytes)"
            )

    def _forget_budget(self, conn: Connection) -> None:
        self._store_budgets.pop(conn, None)

    def _peer_committed(self, peer: str, rows: Iterable[StoredMessage]) -> None:
        for key in self._quorum.committed(peer, rows):
            reached = self._quorum_reached.pop(key, None)
            if reached is not None:
                reached.set()

    async def _retrieve(self, params: Fields, conn: Connection) -> Any:
        request = RetrieveRequest.from_wire(params)
        owner, namespace = request.pubkey, request.namespace
        now = self.clock.now_ms()
        check_client_auth(
            request.auth,
            self._guard,
            method="retrieve",
            pubkey=owner,
            namespace=namespace,
            now_ms=now,
        )
        self.core.require_swarm(owner)
        after = START
        if request.last_hash is not None:
            after = await self._resolve_cursor(owner, namespace, request.last_hash)
        rows, more = self.store.retrieve(
            owner,
            namespace,
            after,
            now,
            limit=request.limit or RETRIEVE_LIMIT,
            max_bytes=RETRIEVE_MAX_BYTES,
        )
        self.core.read_order.served(rows)
        return RetrieveReply(tuple(map(Message.of_row, rows)), more).to_wire()

    async def _resolve_cursor(self, owner: str, namespace: int, last_hash: bytes) -> Position:
        """The read position after ``last_hash``, which may come from another member
        (:class:`~.node_core.ReadOrder`). A hash this node lacks (its replica has not
        arrived yet) is fetched from a peer first, which both repairs this node and
        places the cursor; one no peer could place lately is not asked about again
        (:meth:`~.node_core.ReadOrder.worth_asking`)."""
        order = self.core.read_order
        position = self.store.position_of(owner, namespace, last_hash)
        now = self.clock.now_ms()
        if position is None and order.worth_asking(owner, namespace, last_hash, now):
            await self._fetch_from_peers(LookupRequest(owner, namespace, last_hash))
            position = self.store.position_of(owner, namespace, last_hash)
            if position is None:
                order.not_found(owner, namespace, last_hash, self.clock.now_ms())
        return order.after(owner, namespace, last_hash, position)

    async def _fetch_from_peers(self, request: LookupRequest) -> None:
        for peer in self.peers():
            with trio.move_on_after(PEER_CALL_TIMEOUT_S):
                try:
                    row = await (await self._peer(peer)).lookup(request)
                    if row is not None:
                        self.stats.repaired_in += self._ingest([row])
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
            now_ms=self.clock.now_ms(),
            hashes=hashes,
        )
        self.core.require_swarm(owner)
        proof = proof_from_request("delete", namespace, hashes, request.auth)
        deleted = self.store.delete(owner, namespace, hashes, proof.encode())
        self._execute(self.core.accepted(self._rows(owner, namespace, deleted)))
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
            now_ms=self.clock.now_ms(),
            hashes=hashes,
            expiry_ms=request.expiry_ms,
        )
        self.core.require_swarm(owner)
        proof = proof_from_request("expire", namespace, hashes, request.auth, request.expiry_ms)
        updated = self.store.expire(owner, namespace, hashes, request.expiry_ms, proof.encode())
        self._execute(self.core.accepted(self._rows(owner, namespace, updated)))
        return ExpireReply(tuple(updated)).to_wire()

    def _subscribe(self, params: Fields, conn: Connection) -> Any:
        request = SubscribeRequest.from_wire(params)
        check_client_auth(
            request.auth,
            self._guard,
            method="subscribe",
            pubkey=request.pubkey,
            namespace=request.namespace,
            now_ms=self.clock.now_ms(),
        )
        stream = (request.pubkey, request.namespace)
        if self.core.subscribe(stream, conn):
            conn.on_close(lambda: self.core.subscriptions.remove(stream, conn))
        return {}

    def _rows(self, owner: str, namespace: int, hashes: Iterable[bytes]) -> list[StoredMessage]:
        rows = (self.store.get(owner, namespace, h) for h in hashes)
        return [row for row in rows if row is not None]

    def _execute(self, effects: Iterable[Push[Connection] | Replicate]) -> None:
        for effect in effects:
            if isinstance(effect, Push):
                effect.conn.notify("notify", effect.notification.to_wire())
            else:
                self._replicator.offer(effect.rows)

    def _ingest(self, rows: Iterable[StoredMessage]) -> int:
        """Rows from a peer: keep those of owners this node serves, at its own read
        positions (:meth:`~.node_core.NodeCore.placed`), notify subscribers; returns how
        many were new here."""
        mine = self.core.placed(rows, self.clock.now_ms())
        added = self.store.put_many(mine)
        fresh = [row for row, new in zip(mine, added, strict=True) if new]
        for row in fresh:
            self._owner_quota.stored(row.pubkey, len(row.data or b""))
        self._execute(self.core.pushes(fresh))
        return len(fresh)

    def _count_refused(self, reasons: Sequence[str], peer: str) -> None:
        """Rows of a peer's batch that did not check out (say a tombstone without the
        owner's signed delete) were dropped: one bad row neither lands nor costs the
        batch's good rows."""
        self.stats.rows_refused += len(reasons)
        for reason in reasons:
            logger.warning("refused a row from node %s: %s", peer[:8], reason)

    # --- node-to-node methods -------------------------------------------------------------

    def _check_node(self, params: Fields, method: str, *, swarm_only: bool = True) -> str:
        """The registered node that signed this request; with ``swarm_only`` (every method
        that reads) it must be a member of this node's swarm, so no node, admitted or not,
        can read or enumerate a swarm it does not belong to. The rest of the request is
        decoded after this check (``params.rest("node_auth")``)."""
        node = check_node_auth(
            params, params.rest(), self._guard, method=method, now_ms=self.clock.now_ms()
        )
        if node not in {n.pubkey for n in self.snapshot.nodes}:
            self._listing.soon()  # it may have joined since we last looked
            raise RpcError("unauthorized", "not a registered node")
        if swarm_only and node not in {n.pubkey for n in self.peers()}:
            raise RpcError("unauthorized", "not a member of this swarm")
        return node

    def _require_owner(self, owner: str) -> None:
        if not self.owns(owner):
            raise RpcError("unauthorized", "that owner belongs to another swarm")

    def _replicate(self, params: Fields, conn: Connection) -> Any:
        """Rows pushed by a member, or handed over by a node of the owner's old swarm (so
        any registered node may push); only rows of owners this node serves are kept."""
        node = self._check_node(params, "replicate", swarm_only=False)
        request = RowBatch.from_wire(params.rest("node_auth"), self.clock.now_ms())
        self._count_refused(request.refused, node)
        refused = self.core.refused_owners(request.rows)
        self.stats.replicated_in += self._ingest(request.rows)
        return ReplicateReply(refused).to_wire()

    def _lookup(self, params: Fields, conn: Connection) -> Any:
        self._check_node(params, "lookup")
        request = LookupRequest.from_wire(params.rest("node_auth"))
        self._require_owner(request.pubkey)
        row = self.store.get(request.pubkey, request.namespace, request.hash)
        if row is not None and row.expiry_ms <= self.clock.now_ms():
            row = None
        return LookupReply(row).to_wire()

    def _owned_summaries(self, bucket: int | None = None) -> list[RowSummary]:
        """Summaries of the rows this node serves, of one repair bucket or all."""
        owners = self.core.owners_served(self.store.owners(), bucket)
        return list(self.store.summaries(self.clock.now_ms(), owners))

    def _repair_digest(self, params: Fields, conn: Connection) -> Any:
        self._check_node(params, "repair_digest")
        RepairDigestRequest.from_wire(params.rest("node_auth"))
        return RepairDigestReply(tuple(repair.digests(self._owned_summaries()))).to_wire()

    def _repair_list(self, params: Fields, conn: Connection) -> Any:
        node = self._check_node(params, "repair_list")
        request = RepairListRequest.from_wire(params.rest("node_auth"))
        return self._listings.page(node, request.bucket, request.offset).to_wire()

    def _repair_fetch(self, params: Fields, conn: Connection) -> Any:
        self._check_node(params, "repair_fetch")
        request = KeysRequest.from_wire(params.rest("node_auth"))
        found = first_batch(
            self.store.get(*key) if self.owns(key[0]) else None for key in request.keys
        )
        return RowBatch(tuple(found)).to_wire()

    def _held(self, params: Fields, conn: Connection) -> Any:
        """How many of the given rows this node holds, for a node of the owners' old swarm
        reading back what it handed over (it names only rows it holds itself, so it
        learns nothing it did not know)."""
        self._check_node(params, "held", swarm_only=False)
        request = KeysRequest.from_wire(params.rest("node_auth"))
        now = self.clock.now_ms()
        held = 0
        for key in request.keys:
            row = self.store.get(*key) if self.owns(key[0]) else None
            held += row is not None and row.expiry_ms > now
        return HeldReply(held).to_wire()

    # --- the drivers' peers -----------------------------------------------------------------

    async def _peer(self, peer: NodeInfo) -> PeerCalls:
        assert self._pool is not None, "the node is not serving"
        return PeerCalls(await self._pool.get(peer.url), self.identity, self.clock)
