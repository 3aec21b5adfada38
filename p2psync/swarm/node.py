"""A service node: the driver of :mod:`.node_core`, with its store, connections and peers.

Requests are decoded by :mod:`.messages` and decided by :class:`~.node_core.NodeCore`.
The RPC methods are in three groups: ``store`` and ``store_batch`` (:mod:`.acceptance`),
the other client methods (:mod:`.client_methods`) and the node-to-node ones
(:mod:`.peer_methods`). What is left here is their wiring, rows from peers and effects to
execute, and the small drivers a node's nursery runs beside them, each of which survives
any single peer or record:

* :mod:`.directory_refresh` — announce the node, re-read the registry, and on a
  membership change restart replication and repair;
* :mod:`.replicator` — one worker per swarm peer draining a queue of new rows bounded in
  rows and bytes (:mod:`.outbound`; a full queue is not an error: repair catches up; a
  failed send goes again on the next connection), and :mod:`.hand_over` of the owners
  that now belong to another swarm;
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
from typing import Any

import trio

from overlay.link import Transport

from ..clock import Clock
from ..identity import Identity
from ..onion.service import ListedExits, OnionService
from ..rpc import Connection, RpcPool, RpcServer, open_rpc_pool
from ..wire import Fields
from .acceptance import StoreAcceptance
from .access import vouched_reserve
from .allowance import ROW_CHARGE_BYTES, OwnerQuota, charge_of
from .auth import ReplayGuard
from .client_methods import ClientMethods
from .constants import PROTOCOL_VERSION
from .directory import Directory
from .directory_refresh import DirectoryRefresh
from .hand_over import HandOver
from .listing import Snapshot, listing_page
from .messages import GetSwarmRequest, InfoReply, store_batch_cost
from .node_config import NodeConfig
from .node_core import NodeCore, Push, Replicate
from .node_shared import Ingested, NodeStats
from .outbound import ReplicationQueue
from .peer_calls import PeerCalls
from .peer_methods import PeerMethods
from .quorum import row_key
from .repairer import Repairer
from .replicator import Replicator
from .ring import NodeInfo, SwarmMap
from .rows import RowSummary, StoredMessage
from .store import MessageStore
from .sweeper import sweep_expired

logger = logging.getLogger(__name__)


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
        guard = ReplayGuard()
        self._quota = OwnerQuota(
            lambda owner: self.store.owner_charge(owner, self.clock.now_ms(), ROW_CHARGE_BYTES),
            self.config.owner_quota_bytes,
            self.clock.now_s,
            reserve=vouched_reserve(self.config.owner_quota_bytes),
        )
        self._pool: RpcPool | None = None
        self._acceptance = StoreAcceptance(
            self.core,
            store,
            clock,
            self.config,
            self._quota,
            self.stats,
            self._execute,
            count_refusal=lambda code: self.rpc.stats.count_error(code),
        )
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
            pending=self._acceptance.pending,
            committed=self._acceptance.peer_committed,
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
        self._peer_methods = PeerMethods(
            self.core,
            store,
            clock,
            guard,
            listed=lambda: self.snapshot,
            relist=self._listing.soon,
            summaries=self._owned_summaries,
            ingest=self._ingest,
            refused=self._count_refused,
            stats=self.stats,
            store_bytes_per_s=self.config.store_bytes_per_s,
        )
        client_methods = ClientMethods(
            self.core,
            store,
            clock,
            guard,
            peers=self.peers,
            dial=self._peer,
            ingest=self._ingest,
            execute=self._execute,
            stats=self.stats,
        )
        self.rpc = RpcServer(
            {
                "info": self._info,
                "get_swarm": self._get_swarm,
                "list": self._list,
                "store": self._acceptance.store,
                "store_batch": self._acceptance.store_batch,
                **client_methods.handlers(),
                **self._peer_methods.handlers(),
            },
            self.config.limits,
            clock,
            costs={"store_batch": store_batch_cost},
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
            nursery.start_soon(self._acceptance.run)
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
        self.core.listed(snapshot.nodes)
        self._peer_methods.membership_changed({n.pubkey for n in self.peers()})
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

    # --- what the node says of itself -------------------------------------------------------

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

    # --- what the method groups and drivers share -------------------------------------------

    def _execute(self, effects: Iterable[Push[Connection] | Replicate]) -> None:
        for effect in effects:
            if isinstance(effect, Push):
                effect.conn.notify("notify", effect.notification.to_wire())
            else:
                self._replicator.offer(effect.rows)

    def _ingest(self, rows: Iterable[StoredMessage]) -> Ingested:
        """Rows from a peer: keep those of owners this node serves whose mailboxes have
        room (the quota a client's stores have, :meth:`.allowance.OwnerQuota.fitting`),
        at its own read positions (:meth:`~.node_core.NodeCore.placed`), and notify
        subscribers."""
        now_ms = self.clock.now_ms()
        room, full = self._quota.fitting(
            self.core.placed(rows, now_ms),
            lambda row: self.store.holds(*row_key(row), now_ms),
        )
        added = self.store.put_many(room)
        fresh = [row for row, new in zip(room, added, strict=True) if new]
        for row in fresh:
            self._quota.stored(row.pubkey, charge_of(row))
        self._execute(self.core.pushes(fresh))
        return Ingested(len(fresh), tuple(sorted(full)))

    def _count_refused(self, reasons: Sequence[str], peer: str) -> None:
        """Rows of a peer's batch that did not check out (say a tombstone without the
        owner's signed delete) were dropped: one bad row neither lands nor costs the
        batch's good rows."""
        self.stats.rows_refused += len(reasons)
        for reason in reasons:
            logger.warning("refused a row from node %s: %s", peer[:8], reason)

    def _owned_summaries(self, bucket: int | None = None) -> list[RowSummary]:
        """Summaries of the rows this node serves, of one repair bucket or all."""
        owners = self.core.owners_served(self.store.owners(), bucket)
        return list(self.store.summaries(self.clock.now_ms(), owners))

    async def _peer(self, peer: NodeInfo) -> PeerCalls:
        assert self._pool is not None, "the node is not serving"
        return PeerCalls(await self._pool.get(peer.url), self.identity, self.clock)
