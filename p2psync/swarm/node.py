"""A service node: the storage RPC of DESIGN.md §4 and the work that keeps its swarm whole.

Besides answering clients, a node runs four loops in its own nursery:

* directory — announce itself, re-read the registry, and on a membership change restart
  replication and hand over the owners that now belong to another swarm;
* replication — one worker per swarm peer draining a queue of new rows bounded in rows and
  bytes (:mod:`.outbound`; a full queue or a failed send is not an error: repair catches
  up);
* repair — periodic anti-entropy with every peer (:mod:`.repair`), so a node that was
  down or partitioned converges without anyone re-sending;
* sweep — deletes expired rows (reads never return them anyway).

What a node acknowledges to a client is committed to its own SQLite file (stores that
arrive together share one transaction: :mod:`.commit`) and to ``quorum`` members of its
swarm in all, itself included (:mod:`.quorum`), so no single member's loss for good loses
an acknowledged store.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from overlay.link import Transport

from ..clock import Clock
from ..errors import ConnectionLost, DecodeError, RpcError
from ..identity import Identity, message_hash, session_id_key
from ..rpc import (
    Connection,
    RpcClient,
    RpcPool,
    RpcServer,
    ServerLimits,
    TokenBucket,
    open_rpc,
    open_rpc_pool,
)
from ..wire import MAX_FRAME_BYTES, Fields
from . import repair
from .allowance import OWNER_QUOTA_BYTES, STORE_BYTES_PER_S, OwnerQuota, connection_budget
from .auth import ReplayGuard, check_client_auth, check_node_auth, sign_node_request
from .commit import CommitFailed, GroupCommit
from .constants import (
    ANNOUNCE_INTERVAL_S,
    CLOCK_SKEW_MS,
    MAX_DATA_BYTES,
    MAX_HASHES_PER_REQUEST,
    MAX_NAMESPACE,
    MAX_TTL_MS,
    MIN_TTL_MS,
    PROTOCOL_VERSION,
    REGISTRY_REFRESH_S,
    REPAIR_INTERVAL_S,
    REPLICATION_RETRY_S,
    RETRIEVE_LIMIT,
    RETRIEVE_MAX_BYTES,
    STORE_QUORUM,
    SWEEP_INTERVAL_S,
)
from .outbound import REPLICATION_QUEUE_BYTES, ReplicationQueue
from .proof import proof_from_request
from .quorum import QuorumBook, RowKey, row_key
from .records import (
    message_to_wire,
    row_from_wire,
    row_to_wire,
    summary_from_wire,
    summary_to_wire,
)
from .registry import ANNOUNCEMENT_TTL_MS, Directory, Snapshot, listing_page
from .ring import NodeInfo, SwarmMap
from .store import MessageStore, RowSummary, StoredMessage

logger = logging.getLogger(__name__)

#: Row data per node-to-node batch, leaving room for the frame's envelope.
BATCH_BYTES = MAX_FRAME_BYTES - 16 * 1024
LISTING_PAGE = 400
PEER_CALL_TIMEOUT_S = 10.0
#: A cursor this node did not issue (the client switched nodes) is rewound this far, so
#: a message that reached this node earlier than the client's previous node is not
#: skipped; the client drops the few duplicates by hash.
SWITCH_REWIND_MS = 30_000
ISSUED_CURSORS = 100_000
#: Delay (and so the rate limit) of a registry re-read asked for by an unknown node.
REFRESH_SOON_S = 5.0
HAND_OVER_MAX_BACKOFF_S = 300.0
#: How long a node must have been listed before its read-back lets another node forget
#: rows handed over to it (see ``StorageNode._hand_over_once``).
HAND_OVER_ELDER_MS = 10 * 60_000
#: What a peer that is down, slow or confused causes in the normal run of things.
PEER_ERRORS = (OSError, ConnectionLost, RpcError, DecodeError, trio.TooSlowError)
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


@dataclass
class NodeStats:
    stored: int = 0
    duplicates: int = 0
    replicated_in: int = 0
    replication_dropped: int = 0
    repaired_in: int = 0
    repaired_out: int = 0
    handed_over: int = 0
    swept: int = 0
    rows_refused: int = 0
    #: Stores answered ``unavailable`` because too few members committed them in time.
    quorum_missed: int = 0


def _row_keys(params: Fields) -> list[tuple[str, int, bytes]]:
    """``params.keys``: at most ``LISTING_PAGE`` row keys ``[pubkey, namespace, hash]``."""
    keys = []
    for key in params.items("keys", max_len=LISTING_PAGE):
        if not (isinstance(key, list) and len(key) == 3):
            raise DecodeError("a key is [pubkey, namespace, hash]")
        owner, namespace, digest = key
        if not (
            isinstance(owner, str)
            and isinstance(namespace, int)
            and not isinstance(namespace, bool)
            and 0 <= namespace <= MAX_NAMESPACE
            and isinstance(digest, bytes)
            and len(digest) == 32
        ):
            raise DecodeError("a key is [pubkey, namespace, hash]")
        keys.append((owner, namespace, digest))
    return keys


def _batches(rows: Iterable[StoredMessage]) -> Iterable[list[StoredMessage]]:
    batch: list[StoredMessage] = []
    size = 0
    for row in rows:
        row_size = len(row.data or b"") + 160
        if batch and size + row_size > BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(row)
        size += row_size
    if batch:
        yield batch


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
        self.snapshot = Snapshot()
        self.swarms = SwarmMap({})
        self._guard = ReplayGuard()
        self._subscribers: dict[tuple[str, int], set[Connection]] = {}
        self._subscriptions_held: dict[Connection, int] = {}
        self._store_budgets: dict[Connection, TokenBucket] = {}
        self._owner_quota = OwnerQuota(
            lambda owner: self.store.owner_bytes(owner, self.clock.now_ms()),
            self.config.owner_quota_bytes,
        )
        # Per stream, the highest read position served; a replica keyed at or below it
        # gets a new key so that readers of this node still see it. Before the first
        # read after a start, anything up to the start may have been served.
        self._served: dict[tuple[str, int], int] = {}
        self._started_ms = 0
        self._issued: OrderedDict[tuple[str, int, bytes], None] = OrderedDict()
        self._outbound: dict[str, ReplicationQueue] = {}
        self._commits = GroupCommit(store)
        self._quorum = QuorumBook()
        self._quorum_reached: dict[RowKey, trio.Event] = {}
        self._membership_changed = trio.Event()
        self._repair_soon = trio.Event()
        self._refresh_soon = trio.Event()
        self._random = random.Random(identity.ed25519_public)
        #: When this node first saw each node listed (epoch ms).
        self._first_listed: dict[str, int] = {}
        self._pool: RpcPool | None = None
        self._announced_at = -float("inf")
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
        )

    # --- lifecycle ------------------------------------------------------------------------

    async def serve(
        self, address: str, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self._started_ms = self.clock.now_ms()
        async with open_rpc_pool(self.transport) as pool, trio.open_nursery() as nursery:
            self._pool = pool
            self.url = await nursery.start(self.rpc.serve, self.transport, address)
            await self.refresh()
            nursery.start_soon(self._commits.run)
            nursery.start_soon(self._directory_loop)
            nursery.start_soon(self._replication_loop)
            nursery.start_soon(self._repair_loop)
            nursery.start_soon(self._sweep_loop)
            task_status.started(self.url)

    async def refresh(self) -> None:
        """Announce, re-read the registry, and act on a membership change. Failures are
        logged: a node keeps serving with the last registry it saw. A failed announce
        does not stop the read, which may still succeed from other nodes' copies."""
        errors = PEER_ERRORS
        if trio.current_time() - self._announced_at >= self.config.announce_interval_s:
            try:
                await self.directory.announce(
                    self.identity, "node", self.url, registration=self.registration
                )
                self._announced_at = trio.current_time()
            except errors as exc:
                logger.warning("node %s: cannot announce: %s", self.pubkey[:8], exc)
        try:
            snapshot = await self.directory.fetch()
        except errors as exc:
            logger.warning("node %s: registry unavailable: %s", self.pubkey[:8], exc)
            return
        if self.pubkey not in {n.pubkey for n in snapshot.nodes}:
            # A listing without us is stale about us: acting on it would hand everything
            # over. Announce again at the next refresh and keep the map we have.
            logger.warning("node %s: not listed by the registry yet", self.pubkey[:8])
            self._announced_at = -float("inf")
            return
        seen_at = self.clock.now_ms()
        for listed in snapshot.nodes:
            self._first_listed.setdefault(listed.pubkey, seen_at)
        if snapshot.nodes != self.snapshot.nodes:
            self.snapshot = snapshot
            self.swarms = SwarmMap.build(snapshot.nodes)
            self._membership_changed.set()
            self._repair_soon.set()  # new members may lack what we hold, and vice versa
        else:
            self.snapshot = snapshot

    @property
    def swarm_id(self) -> int | None:
        return self.swarms.swarm_of_node(self.pubkey)

    def peers(self) -> Sequence[NodeInfo]:
        swarm = self.swarm_id
        if swarm is None:
            return ()
        return [n for n in self.swarms.swarms[swarm] if n.pubkey != self.pubkey]

    def owns(self, owner: str) -> bool:
        swarm = self.swarm_id
        return swarm is not None and self.swarms.swarm_for_key(session_id_key(owner)) == swarm

    # --- client methods -------------------------------------------------------------------
    # A method that never waits is a plain function, so the RPC server answers it inline
    # in the connection's read loop, without a task per request; ``store`` waits for its
    # group commit and quorum, and ``retrieve`` may have to ask a peer (an unknown
    # cursor), so those two are coroutines.

    def _require_swarm(self, owner: str) -> bytes:
        key = session_id_key(owner)
        if not self.swarms.swarms:
            raise RpcError("unavailable", "node has not read the registry yet")
        right = self.swarms.swarm_for_key(key)
        if right != self.swarm_id:
            raise RpcError(
                "wrong_swarm",
                "this pubkey belongs to another swarm",
                {"swarm": right, "nodes": [n.to_wire() for n in self.swarms.swarms[right]]},
            )
        return key

    @staticmethod
    def _namespace(params: Fields) -> int:
        return params.integer("namespace", minimum=0, maximum=MAX_NAMESPACE)

    def _info(self, params: Fields, conn: Connection) -> Any:
        return {
            "version": PROTOCOL_VERSION,
            "node": self.pubkey,
            "swarm": self.swarm_id or 0,
            "stored": self.store.stats()[0],
        }

    def _list(self, params: Fields, conn: Connection) -> Any:
        """The signed announcements of the last registry listing this node read, so
        readers can list the network from any node while the registry is down (they
        check every signature themselves)."""
        return listing_page(self.snapshot.announcements, params)

    def _get_swarm(self, params: Fields, conn: Connection) -> Any:
        key = session_id_key(params.only("pubkey").text("pubkey", max_len=66))
        if not self.swarms.swarms:
            raise RpcError("unavailable", "node has not read the registry yet")
        swarm = self.swarms.swarm_for_key(key)
        return {"swarm": swarm, "nodes": [n.to_wire() for n in self.swarms.swarms[swarm]]}

    async def _store(self, params: Fields, conn: Connection) -> Any:
        row = self._store_row(params)
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
                self._notify([row])
            else:
                self.stats.duplicates += 1
            # A duplicate waits for its quorum too: the first store of it may have been
            # answered ``unavailable``, and this node keeps no record of which rows made
            # it. Peers that hold it already answer at once.
            awaiting = key not in self._quorum_reached and self._quorum.expect(
                row, self._peers_needed()
            )
            if awaiting:
                self._quorum_reached[key] = trio.Event()
            if new or awaiting:  # every new row goes to every peer, whatever the quorum
                self._queue_for_peers([row])
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
        return {"hash": row.hash, "expiry": row.expiry_ms}

    def _charge(self, conn: Connection, row: StoredMessage) -> None:
        """Refuse a store past its connection's byte rate (``rate_limited``) or its
        owner's quota (``too_large``): :mod:`.allowance`."""
        size = len(row.data or b"")
        now = trio.current_time()
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

    def _peers_needed(self) -> int:
        return min(self.config.store_quorum, 1 + len(self.peers())) - 1

    def _peer_committed(self, peer: str, rows: Iterable[StoredMessage]) -> None:
        for key in self._quorum.committed(peer, rows):
            reached = self._quorum_reached.pop(key, None)
            if reached is not None:
                reached.set()

    def _store_row(self, params: Fields) -> StoredMessage:
        """The row a ``store`` asks for, every field checked."""
        params.only("pubkey", "namespace", "ttl", "timestamp", "data")
        owner = params.text("pubkey", max_len=66)
        namespace = self._namespace(params)
        ttl = params.uint("ttl")
        timestamp = params.uint("timestamp")
        data = params.blob("data")
        self._require_swarm(owner)
        if len(data) > MAX_DATA_BYTES:
            raise RpcError("too_large", f"data is {len(data)} bytes; the limit is {MAX_DATA_BYTES}")
        if not MIN_TTL_MS <= ttl <= MAX_TTL_MS:
            raise RpcError("bad_ttl", f"ttl must be in [{MIN_TTL_MS}, {MAX_TTL_MS}] ms")
        now = self.clock.now_ms()
        if abs(timestamp - now) > CLOCK_SKEW_MS:
            raise RpcError("clock_skew", f"timestamp is {timestamp - now:+d} ms from the node")
        return StoredMessage(
            owner,
            namespace,
            message_hash(data),
            timestamp,
            timestamp + ttl,
            data,
            self._next_order((owner, namespace), now),
        )

    async def _retrieve(self, params: Fields, conn: Connection) -> Any:
        params.only("pubkey", "namespace", "last_hash", "limit", "auth")
        owner = params.text("pubkey", max_len=66)
        namespace = self._namespace(params)
        last_hash = params.optional_blob("last_hash", size=32)
        limit = params.uint("limit", maximum=RETRIEVE_LIMIT) if params.has("limit") else None
        now = self.clock.now_ms()
        check_client_auth(
            params, self._guard, method="retrieve", pubkey=owner, namespace=namespace, now_ms=now
        )
        self._require_swarm(owner)
        after = (0, b"")
        if last_hash is not None:
            after = await self._resolve_cursor(owner, namespace, last_hash)
        messages, more = self.store.retrieve(
            owner,
            namespace,
            after,
            now,
            limit=limit or RETRIEVE_LIMIT,
            max_bytes=RETRIEVE_MAX_BYTES,
        )
        self._served_up_to(messages)
        return {"messages": [message_to_wire(m) for m in messages], "more": more}

    def _next_order(self, stream: tuple[str, int], now_ms: int) -> int:
        return max(now_ms, self._served.get(stream, self._started_ms) + 1)

    def _served_up_to(self, rows: Sequence[StoredMessage]) -> None:
        """Remember what readers have seen: the stream's high mark and the cursor the
        reader will come back with."""
        if not rows:
            return
        last = rows[-1]
        stream = (last.pubkey, last.namespace)
        self._served[stream] = max(self._served.get(stream, self._started_ms), last.order_ms)
        self._issued[(last.pubkey, last.namespace, last.hash)] = None
        if len(self._issued) > ISSUED_CURSORS:
            self._issued.popitem(last=False)

    async def _resolve_cursor(
        self, owner: str, namespace: int, last_hash: bytes
    ) -> tuple[int, bytes]:
        """The read position after ``last_hash``, which may come from another member.

        A cursor this node issued is exact. One it did not is rewound by
        ``SWITCH_REWIND_MS``. A hash this node lacks (its replica has not arrived yet) is
        fetched from a peer, which both repairs this node and places the cursor; a hash no
        member knows any more (expired) restarts from the beginning."""
        position = self.store.position_of(owner, namespace, last_hash)
        if position is None:
            await self._fetch_from_peers(owner, namespace, last_hash)
            position = self.store.position_of(owner, namespace, last_hash)
        if position is None:
            return (0, b"")
        if (owner, namespace, last_hash) in self._issued:
            return position
        return (max(0, position[0] - SWITCH_REWIND_MS), b"")

    async def _fetch_from_peers(self, owner: str, namespace: int, digest: bytes) -> None:
        for peer in self.peers():
            with trio.move_on_after(PEER_CALL_TIMEOUT_S):
                try:
                    result = await self._call_peer(
                        peer, "lookup", {"pubkey": owner, "namespace": namespace, "hash": digest}
                    )
                    row = Fields(result, "result").raw("row")
                    if row is not None:
                        row = row_from_wire(row, self.clock.now_ms())
                        self.stats.repaired_in += self._ingest([row])
                        return
                except Exception as exc:  # one peer's failure, whatever it is, is that peer's
                    logger.debug("lookup at %s failed: %r", peer.pubkey[:8], exc)

    def _hashes(self, params: Fields) -> list[bytes]:
        return params.blob_list("hashes", size=32, max_len=MAX_HASHES_PER_REQUEST)

    def _delete(self, params: Fields, conn: Connection) -> Any:
        params.only("pubkey", "namespace", "hashes", "auth")
        owner = params.text("pubkey", max_len=66)
        namespace = self._namespace(params) if params.has("namespace") else 0
        hashes = self._hashes(params)
        check_client_auth(
            params,
            self._guard,
            method="delete",
            pubkey=owner,
            namespace=namespace,
            now_ms=self.clock.now_ms(),
            hashes=hashes,
        )
        self._require_swarm(owner)
        proof = proof_from_request("delete", namespace, hashes, params.map("auth"))
        deleted = self.store.delete(owner, namespace, hashes, proof.encode())
        self._accepted(self._rows(owner, namespace, deleted))
        return {"deleted": deleted}

    def _expire(self, params: Fields, conn: Connection) -> Any:
        params.only("pubkey", "namespace", "hashes", "expiry", "auth")
        owner = params.text("pubkey", max_len=66)
        namespace = self._namespace(params) if params.has("namespace") else 0
        hashes = self._hashes(params)
        expiry = params.uint("expiry")
        check_client_auth(
            params,
            self._guard,
            method="expire",
            pubkey=owner,
            namespace=namespace,
            now_ms=self.clock.now_ms(),
            hashes=hashes,
            expiry_ms=expiry,
        )
        self._require_swarm(owner)
        proof = proof_from_request("expire", namespace, hashes, params.map("auth"), expiry)
        updated = self.store.expire(owner, namespace, hashes, expiry, proof.encode())
        self._accepted(self._rows(owner, namespace, updated))
        return {"updated": updated}

    def _subscribe(self, params: Fields, conn: Connection) -> Any:
        params.only("pubkey", "namespace", "auth")
        owner = params.text("pubkey", max_len=66)
        namespace = self._namespace(params)
        check_client_auth(
            params,
            self._guard,
            method="subscribe",
            pubkey=owner,
            namespace=namespace,
            now_ms=self.clock.now_ms(),
        )
        self._require_swarm(owner)
        key = (owner, namespace)
        subscribers = self._subscribers.setdefault(key, set())
        if conn not in subscribers:
            held = self._subscriptions_held.get(conn, 0)
            if held >= self.config.max_subscriptions_per_connection:
                if not subscribers:
                    del self._subscribers[key]
                raise RpcError(
                    "rate_limited",
                    f"at most {self.config.max_subscriptions_per_connection}"
                    " subscriptions per connection",
                )
            self._subscriptions_held[conn] = held + 1
            subscribers.add(conn)
            conn.on_close(lambda: self._unsubscribe(key, conn))
        return {}

    def _unsubscribe(self, key: tuple[str, int], conn: Connection) -> None:
        held = self._subscriptions_held.pop(conn, 0) - 1
        if held > 0:
            self._subscriptions_held[conn] = held
        subscribers = self._subscribers.get(key)
        if subscribers is not None:
            subscribers.discard(conn)
            if not subscribers:
                del self._subscribers[key]

    def _rows(self, owner: str, namespace: int, hashes: Iterable[bytes]) -> list[StoredMessage]:
        rows = (self.store.get(owner, namespace, h) for h in hashes)
        return [row for row in rows if row is not None]

    def _notify(self, rows: Iterable[StoredMessage]) -> None:
        for row in rows:
            if row.data is None:
                continue
            subscribers = self._subscribers.get((row.pubkey, row.namespace), ())
            if subscribers:
                self._served_up_to([row])
            for conn in subscribers:
                conn.notify(
                    "notify",
                    {
                        "pubkey": row.pubkey,
                        "namespace": row.namespace,
                        "messages": [message_to_wire(row)],
                    },
                )

    def _accepted(self, rows: Sequence[StoredMessage]) -> None:
        """New or changed rows from a client: push to subscribers, queue for every peer."""
        self._notify(rows)
        self._queue_for_peers(rows)

    def _queue_for_peers(self, rows: Sequence[StoredMessage]) -> None:
        for row in rows:
            for queue in self._outbound.values():
                if not queue.offer(row):
                    self.stats.replication_dropped += 1
                    self._repair_soon.set()

    def _ingest(self, rows: Sequence[StoredMessage]) -> int:
        """Rows from a peer: keep those of owners this node serves, notify subscribers;
        returns how many were new here.

        Each row gets this node's own read position: a peer's ``order_ms`` is never taken,
        since one that names the end of time would leave no room after it for the owner's
        next store. Readers that switch members are covered by the cursor rewind of
        :meth:`_resolve_cursor`."""
        now = self.clock.now_ms()
        mine = []
        for row in rows:
            if row.expiry_ms <= now or not self.owns(row.pubkey):
                continue
            stream = (row.pubkey, row.namespace)
            mine.append(dataclasses.replace(row, order_ms=self._next_order(stream, now)))
        added = self.store.put_many(mine)
        fresh = [row for row, new in zip(mine, added, strict=True) if new]
        for row in fresh:
            self._owner_quota.stored(row.pubkey, len(row.data or b""))
        self._notify(fresh)
        return len(fresh)

    # --- node-to-node methods -------------------------------------------------------------

    def _check_node(self, params: Fields, method: str, *, swarm_only: bool = True) -> str:
        """The registered node that signed this request; with ``swarm_only`` (every method
        that reads) it must be a member of this node's swarm, so no node, admitted or not,
        can read or enumerate a swarm it does not belong to."""
        node = check_node_auth(
            params, params.rest(), self._guard, method=method, now_ms=self.clock.now_ms()
        )
        if node not in {n.pubkey for n in self.snapshot.nodes}:
            self._refresh_soon.set()  # it may have joined since we last looked
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
        node = self._check_node(params.only("rows", "node_auth"), "replicate", swarm_only=False)
        rows = self._valid_rows(params.items("rows", max_len=10_000), node)
        refused = sorted({r.pubkey for r in rows if not self.owns(r.pubkey)})
        self.stats.replicated_in += self._ingest(rows)
        return {"refused": refused}

    def _valid_rows(self, items: Iterable[object], peer: str) -> list[StoredMessage]:
        """The rows of a peer's batch that pass :func:`row_from_wire`; the others (say a
        tombstone without the owner's signed delete) are dropped and counted, so one bad
        row neither lands nor costs the batch's good rows."""
        rows = []
        now = self.clock.now_ms()
        for item in items:
            try:
                rows.append(row_from_wire(item, now))
            except DecodeError as exc:
                self.stats.rows_refused += 1
                logger.warning("refused a row from node %s: %s", peer[:8], exc)
        return rows

    def _lookup(self, params: Fields, conn: Connection) -> Any:
        self._check_node(params.only("pubkey", "namespace", "hash", "node_auth"), "lookup")
        owner = params.text("pubkey", max_len=66)
        self._require_owner(owner)
        row = self.store.get(owner, self._namespace(params), params.blob("hash", size=32))
        if row is None or row.expiry_ms <= self.clock.now_ms():
            return {"row": None}
        return {"row": row_to_wire(row)}

    def _owned_summaries(self, bucket: int | None = None) -> list[RowSummary]:
        """Summaries of the rows this node serves, of one repair bucket or all."""
        owners = sorted(
            owner
            for owner in self.store.owners()
            if self.owns(owner) and (bucket is None or repair.bucket_of(owner) == bucket)
        )
        return list(self.store.summaries(self.clock.now_ms(), owners))

    def _repair_digest(self, params: Fields, conn: Connection) -> Any:
        self._check_node(params.only("node_auth"), "repair_digest")
        return {"digests": repair.digests(self._owned_summaries())}

    def _repair_list(self, params: Fields, conn: Connection) -> Any:
        self._check_node(params.only("bucket", "offset", "node_auth"), "repair_list")
        bucket = params.uint("bucket", maximum=repair.BUCKETS - 1)
        offset = params.uint("offset", maximum=2**32)
        rows = self._owned_summaries(bucket)
        return {
            "items": [summary_to_wire(r) for r in rows[offset : offset + LISTING_PAGE]],
            "more": offset + LISTING_PAGE < len(rows),
        }

    def _repair_fetch(self, params: Fields, conn: Connection) -> Any:
        self._check_node(params.only("keys", "node_auth"), "repair_fetch")
        found: list[StoredMessage] = []
        size = 0
        for owner, namespace, digest in _row_keys(params):
            row = self.store.get(owner, namespace, digest) if self.owns(owner) else None
            if row is None:
                continue
            size += len(row.data or b"") + 160
            if found and size > BATCH_BYTES:
                break
            found.append(row)
        return {"rows": [row_to_wire(r) for r in found]}

    def _held(self, params: Fields, conn: Connection) -> Any:
        """How many of the given rows this node holds, for a node of the owners' old swarm
        reading back what it handed over (it names only rows it holds itself, so it
        learns nothing it did not know)."""
        self._check_node(params.only("keys", "node_auth"), "held", swarm_only=False)
        now = self.clock.now_ms()
        held = 0
        for owner, namespace, digest in _row_keys(params):
            row = self.store.get(owner, namespace, digest) if self.owns(owner) else None
            held += row is not None and row.expiry_ms > now
        return {"held": held}

    # --- background loops -----------------------------------------------------------------

    async def _call_peer(self, peer: NodeInfo, method: str, params: dict[str, Any]) -> Any:
        return await self._signed_call(await self._peer_client(peer), method, params)

    async def _peer_client(self, peer: NodeInfo) -> RpcClient:
        assert self._pool is not None, "the node is not serving"
        return await self._pool.get(peer.url)

    async def _signed_call(self, client: RpcClient, method: str, params: dict[str, Any]) -> Any:
        signed = sign_node_request(self.identity, method, params, self.clock.now_ms())
        return await client.call(method, signed)

    async def _directory_loop(self) -> None:
        while True:
            interval = self.config.registry_refresh_s * (0.9 + 0.2 * self._random.random())
            with trio.move_on_after(interval):
                await self._refresh_soon.wait()
                await trio.sleep(REFRESH_SOON_S)
            self._refresh_soon = trio.Event()
            try:
                await self.refresh()
            except Exception as exc:  # a bad listing must not stop later refreshes
                logger.warning("node %s: registry refresh failed: %r", self.pubkey[:8], exc)

    async def _sweep_loop(self) -> None:
        while True:
            await trio.sleep(self.config.sweep_interval_s)
            try:
                self.stats.swept += self.store.sweep(self.clock.now_ms())
            except Exception as exc:  # say a full disk: the next sweep tries again
                logger.warning("node %s: sweep failed: %r", self.pubkey[:8], exc)

    async def _replication_loop(self) -> None:
        """One epoch per membership: a worker per peer, restarted when the swarm changes."""
        while True:
            changed = self._membership_changed
            async with trio.open_nursery() as nursery:
                self._outbound = {}
                for peer in self.peers():
                    queue = ReplicationQueue(max_bytes=self.config.replication_queue_bytes)
                    self._outbound[peer.pubkey] = queue
                    nursery.start_soon(self._replicate_to, peer, queue)
                for row in self._quorum.rows():  # stores still waiting: the new peers count
                    for queue in self._outbound.values():
                        queue.offer(row)
                nursery.start_soon(self._hand_over)
                await changed.wait()
                self._membership_changed = trio.Event()
                nursery.cancel_scope.cancel()

    async def _replicate_to(self, peer: NodeInfo, queue: ReplicationQueue) -> None:
        while True:
            try:
                async with open_rpc(self.transport, peer.url) as client:
                    while True:
                        batch = await queue.take(256)
                        for part in _batches(batch):
                            with trio.fail_after(PEER_CALL_TIMEOUT_S):
                                result = await self._signed_call(
                                    client, "replicate", {"rows": [row_to_wire(r) for r in part]}
                                )
                            refused = set(Fields(result, "result").items("refused", max_len=10_000))
                            self._peer_committed(
                                peer.pubkey, (r for r in part if r.pubkey not in refused)
                            )
            except Exception as exc:  # one peer's failure, whatever it is, is that peer's
                logger.info("replication to %s interrupted: %r", peer.pubkey[:8], exc)
                self._repair_soon.set()
                await trio.sleep(REPLICATION_RETRY_S)

    async def _repair_loop(self) -> None:
        """Repair with every peer at start-up and after replication lost something;
        otherwise gossip with one random peer per interval, which is enough for a swarm
        to converge in a few intervals at a fraction of the traffic."""
        everyone = True
        while True:
            peers = list(self.peers())
            if not everyone and peers:
                peers = [self._random.choice(peers)]
            for peer in peers:
                try:
                    with trio.fail_after(PEER_CALL_TIMEOUT_S * 6):
                        await self.repair_with(peer)
                except PEER_ERRORS as exc:
                    logger.info("repair with %s failed: %r", peer.pubkey[:8], exc)
                except Exception as exc:  # one peer's failure, whatever it is, is that peer's
                    logger.warning("repair with %s failed: %r", peer.pubkey[:8], exc)
            interval = self.config.repair_interval_s * (0.8 + 0.4 * self._random.random())
            with trio.move_on_after(interval):
                await self._repair_soon.wait()
                await trio.sleep(REPLICATION_RETRY_S)
            everyone = self._repair_soon.is_set()
            self._repair_soon = trio.Event()

    async def repair_with(self, peer: NodeInfo) -> None:
        """One anti-entropy round with one peer: both end up with the union."""
        client = await self._peer_client(peer)
        theirs = Fields(await self._signed_call(client, "repair_digest", {}), "result")
        their_digests = theirs.blob_list(
            "digests", size=repair.ITEM_ID_BYTES, max_len=repair.BUCKETS
        )
        if len(their_digests) != repair.BUCKETS:
            raise DecodeError("repair digest must list every bucket")
        ours = self._owned_summaries()
        for bucket in repair.differing_buckets(repair.digests(ours), their_digests):
            their_rows = await self._list_bucket(client, bucket)
            diff = repair.diff_bucket(
                [r for r in ours if repair.bucket_of(r.pubkey) == bucket], their_rows
            )
            for start in range(0, len(diff.pull), LISTING_PAGE):
                keys = [list(k) for k in diff.pull[start : start + LISTING_PAGE]]
                while keys:
                    result = await self._signed_call(client, "repair_fetch", {"keys": keys})
                    items = Fields(result, "result").items("rows", max_len=LISTING_PAGE)
                    if not items:
                        break
                    rows = self._valid_rows(items, peer.pubkey)
                    self.stats.repaired_in += self._ingest(rows)
                    got = {(r.pubkey, r.namespace, r.hash) for r in rows}
                    keys = [k for k in keys if tuple(k) not in got]
                    if len(got) < len(items):
                        break  # the peer sent rows we refuse; the next round retries
            pushed = (self.store.get(*key) for key in diff.push)
            for part in _batches(row for row in pushed if row is not None):
                await self._signed_call(
                    client, "replicate", {"rows": [row_to_wire(r) for r in part]}
                )
                self.stats.repaired_out += len(part)

    async def _list_bucket(self, client: RpcClient, bucket: int) -> list[RowSummary]:
        rows: list[RowSummary] = []
        while True:
            result = Fields(
                await self._signed_call(
                    client, "repair_list", {"bucket": bucket, "offset": len(rows)}
                ),
                "result",
            )
            rows.extend(map(summary_from_wire, result.items("items", max_len=LISTING_PAGE)))
            if not result.boolean("more"):
                return rows

    async def _hand_over(self) -> None:
        """Give every owner that no longer maps to this node's swarm to its new swarm,
        and forget it once every new member has taken it; retried with back-off (a new
        member may not have read the registry yet) until nothing foreign is left. Runs
        inside the replication epoch, so a newer membership restarts it."""
        backoff = REPLICATION_RETRY_S
        while not await self._hand_over_once():
            await trio.sleep(backoff)
            backoff = min(HAND_OVER_MAX_BACKOFF_S, backoff * 2)

    async def _hand_over_once(self) -> bool:
        """One pass; True when this node holds no foreign owner any more.

        An owner's rows are forgotten here only once every member of its new swarm has
        them, as read back from each (a member's word that it took them is not enough),
        and at least one of those members is established: listed here for
        ``HAND_OVER_ELDER_MS`` already. A wave of fresh nodes that takes over a swarm and
        vanishes cannot make the old members drop what they held; it must stay, listed
        and admitted, for that long first."""
        if not self.swarms.swarms:
            return True
        now = self.clock.now_ms()
        complete = True
        for owner in self.store.owners():
            if self.owns(owner):
                continue
            rows = list(self.store.records(now, [owner]))
            targets = self.swarms.nodes_for_key(session_id_key(owner))
            takers = []
            for target in targets:
                try:
                    if await self._hand_to(target, rows):
                        takers.append(target)
                except Exception as exc:  # one peer's failure, whatever it is, is that peer's
                    logger.info(
                        "hand-over of %s to %s failed: %r", owner[:10], target.pubkey[:8], exc
                    )
            if len(takers) == len(targets) and any(
                now - self._first_listed.get(t.pubkey, now) >= HAND_OVER_ELDER_MS for t in takers
            ):
                self.store.remove_owner(owner)
                self.stats.handed_over += len(rows)
            else:
                complete = False
        return complete

    async def _hand_to(self, target: NodeInfo, rows: Sequence[StoredMessage]) -> bool:
        """Push ``rows`` to ``target`` and read back that it holds every one."""
        client = await self._peer_client(target)
        for part in _batches(rows):
            result = await self._signed_call(
                client, "replicate", {"rows": [row_to_wire(r) for r in part]}
            )
            if Fields(result, "result").items("refused", max_len=10_000):
                return False
        for start in range(0, len(rows), LISTING_PAGE):
            keys = [[r.pubkey, r.namespace, r.hash] for r in rows[start : start + LISTING_PAGE]]
            result = Fields(await self._signed_call(client, "held", {"keys": keys}), "result")
            if result.uint("held", maximum=len(keys)) < len(keys):
                return False
        return True
