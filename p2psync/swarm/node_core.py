"""What a service node decides, without I/O: the time, the request and what the node
knows go in; a reply, a refusal (:class:`~p2psync.errors.RpcError`) or effects for the
driver (:class:`Push`, :class:`Replicate`) come out. :class:`~.node.StorageNode` runs
these decisions against its store, its connections and its peers.

Read order. Each member reads a stream (owner, namespace) out in its own arrival order
(``order_ms``, :mod:`.store`), so a ``last_hash`` cursor means "after that message here".
:class:`ReadOrder` keeps that sound:

* a row arriving after a reader has already been served up to some position gets a
  position after it (else that reader would never see it);
* a cursor this node issued is exact; one it did not (the client switched members) is
  rewound by ``SWITCH_REWIND_MS``, so a message that reached this node earlier than the
  client's previous node is not skipped; the client drops the duplicates by hash;
* a hash this node does not hold at all restarts the stream.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict, deque
from collections.abc import (
    Callable,
    Collection,
    Hashable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..errors import RpcError
from ..identity import message_hash
from ..wire import MAX_FRAME_BYTES
from . import repair
from .constants import CLOCK_SKEW_MS, MAX_DATA_BYTES, MAX_TTL_MS, MIN_TTL_MS
from .messages import (
    LISTING_PAGE,
    Message,
    Notification,
    RepairListReply,
    StoreRequest,
    SwarmReply,
)
from .quorum import RowKey
from .ring import NodeInfo, SwarmMap
from .rows import RowSummary, StoredMessage

#: A cursor this node did not issue is rewound this far (see the module's docstring).
SWITCH_REWIND_MS = 30_000
ISSUED_CURSORS = 100_000
#: A cursor that no member could place (its message expired and was swept, or never
#: existed) is not asked of the peers again for this long: a device whose last message
#: expired polls with it every few seconds, and each poll sent every member's peers a
#: lookup (and a node a burst of them in step with its reader).
UNKNOWN_CURSOR_MS = 10 * 60 * 1000
UNKNOWN_CURSORS = 10_000
#: Registry maps a node remembers from before the current one, to know which nodes of
#: other swarms once served an owner and may hand its rows over (:meth:`NodeCore.trusts`).
FORMER_MAPS = 8
#: Rows of strangers' hand-overs a node remembers, to tell each what it pushed
#: (:class:`StrangerPushes`).
STRANGER_PUSHES = 100_000
#: Row data per node-to-node batch, leaving room for the frame's envelope.
BATCH_BYTES = MAX_FRAME_BYTES - 16 * 1024
#: What a row costs in a batch besides its data.
BATCH_ROW_OVERHEAD = 160
#: How long a node must have been listed before its read-back lets another node forget
#: rows handed over to it (see :func:`may_forget`).
HAND_OVER_ELDER_MS = 10 * 60_000

Stream = tuple[str, int]
Position = tuple[int, bytes]
START: Position = (0, b"")
#: Whatever identifies a client connection to the driver.
Conn = TypeVar("Conn", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Push(Generic[Conn]):
    """Send ``notification`` to the subscriber on ``conn``."""

    conn: Conn
    notification: Notification


@dataclass(frozen=True, slots=True)
class Replicate:
    """Queue ``rows`` for every peer of the swarm."""

    rows: tuple[StoredMessage, ...]


class ReadOrder:
    """Per stream, the highest read position served, and the cursors issued lately."""

    def __init__(
        self,
        started_ms: int,
        issued_cursors: int = ISSUED_CURSORS,
        unknown_cursors: int = UNKNOWN_CURSORS,
    ) -> None:
        """Before the first read after ``started_ms``, anything up to it may have been
        served (by this node before a restart)."""
        self.started_ms = started_ms
        self._served: dict[Stream, int] = {}
        self._issued: OrderedDict[tuple[str, int, bytes], None] = OrderedDict()
        self._issued_cursors = issued_cursors
        #: Cursors no peer could place, until when they are not asked about again.
        self._unknown: OrderedDict[tuple[str, int, bytes], int] = OrderedDict()
        self._unknown_cursors = unknown_cursors

    def served_up_to(self, stream: Stream) -> int:
        return self._served.get(stream, self.started_ms)

    def next_order(self, stream: Stream, now_ms: int) -> int:
        """The read position of a row arriving now: after everything served."""
        return max(now_ms, self.served_up_to(stream) + 1)

    def served(self, rows: Sequence[StoredMessage]) -> None:
        """``rows`` (of one stream, in read order) went to a reader: raise the stream's
        mark and remember the cursor the reader will come back with."""
        if not rows:
            return
        last = rows[-1]
        stream = (last.pubkey, last.namespace)
        self._served[stream] = max(self.served_up_to(stream), last.order_ms)
        self._issued[(last.pubkey, last.namespace, last.hash)] = None
        if len(self._issued) > self._issued_cursors:
            self._issued.popitem(last=False)

    def issued(self, owner: str, namespace: int, digest: bytes) -> bool:
        return (owner, namespace, digest) in self._issued

    def worth_asking(self, owner: str, namespace: int, digest: bytes, now_ms: int) -> bool:
        """Whether to ask the peers for a cursor this node lacks: not if they could not
        place it lately (:meth:`not_found`)."""
        key = (owner, namespace, digest)
        until = self._unknown.get(key)
        if until is None:
            return True
        if now_ms < until:
            return False
        del self._unknown[key]
        return True

    def not_found(self, owner: str, namespace: int, digest: bytes, now_ms: int) -> None:
        """No peer could place this cursor: do not ask again for
        :data:`UNKNOWN_CURSOR_MS` (the oldest such cursor is forgotten past the cap)."""
        key = (owner, namespace, digest)
        self._unknown.pop(key, None)
        self._unknown[key] = now_ms + UNKNOWN_CURSOR_MS
        if len(self._unknown) > self._unknown_cursors:
            self._unknown.popitem(last=False)

    def after(
        self, owner: str, namespace: int, digest: bytes, position: Position | None
    ) -> Position:
        """Where to read from for the cursor ``digest``, whose position here is
        ``position`` (``None``: this node holds no such row)."""
        if position is None:
            return START
        if self.issued(owner, namespace, digest):
            return position
        return (max(0, position[0] - SWITCH_REWIND_MS), b"")


class Subscriptions(Generic[Conn]):
    """Which connections want pushes for which stream, at most ``limit`` per connection."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._by_stream: dict[Stream, set[Conn]] = {}
        self._held: dict[Conn, int] = {}

    def add(self, stream: Stream, conn: Conn) -> bool:
        """Subscribe; False if ``conn`` already was (so the driver arranges the
        unsubscription once). A connection past ``limit`` is refused ``rate_limited``:
        a device holds a few, and thousands make the node fan out pushes for someone."""
        subscribers = self._by_stream.get(stream, set())
        if conn in subscribers:
            return False
        held = self._held.get(conn, 0)
        if held >= self.limit:
            raise RpcError("rate_limited", f"at most {self.limit} subscriptions per connection")
        self._held[conn] = held + 1
        subscribers.add(conn)
        self._by_stream[stream] = subscribers
        return True

    def remove(self, stream: Stream, conn: Conn) -> None:
        subscribers = self._by_stream.get(stream)
        if subscribers is None or conn not in subscribers:
            return
        subscribers.discard(conn)
        if not subscribers:
            del self._by_stream[stream]
        held = self._held.pop(conn) - 1
        if held > 0:
            self._held[conn] = held

    def of(self, stream: Stream) -> Collection[Conn]:
        return self._by_stream.get(stream, ())


class RepairListings:
    """The pages of ``repair_list``, one bucket listing per asking peer kept from its
    first page to its last, so a bucket of n rows costs one listing, not one per page.

    ``listing(bucket)`` builds a bucket's listing; a request for offset 0, or for an
    offset other than where the kept listing's next page starts, builds it afresh."""

    def __init__(self, listing: Callable[[int], list[RowSummary]]) -> None:
        self._listing = listing
        self._kept: dict[str, tuple[int, int, list[RowSummary]]] = {}

    def page(self, peer: str, bucket: int, offset: int) -> RepairListReply:
        kept = self._kept.pop(peer, None)
        if kept is not None and offset and kept[:2] == (bucket, offset):
            rows = kept[2]
        else:
            rows = self._listing(bucket)
        end = offset + LISTING_PAGE
        more = end < len(rows)
        if more:
            self._kept[peer] = (bucket, end, rows)
        return RepairListReply(tuple(rows[offset:end]), more)

    def forget(self, keep: Collection[str]) -> None:
        """Drop the listings kept for peers other than ``keep`` (say, after a
        membership change)."""
        for peer in [p for p in self._kept if p not in keep]:
            del self._kept[peer]


def batches(rows: Iterable[StoredMessage]) -> Iterator[list[StoredMessage]]:
    """``rows`` in node-to-node batches that fit a frame. A proof counts as data does,
    once a batch (:class:`~.messages.RowBatch` sends it once): a tombstone carries its
    owner's whole signed delete, up to 1 000 hashes, and so do its 999 siblings."""
    batch: list[StoredMessage] = []
    proofs: set[bytes] = set()
    size = 0
    for row in rows:
        proof = row.proof if row.proof is not None and row.proof not in proofs else b""
        row_size = len(row.data or b"") + len(proof) + BATCH_ROW_OVERHEAD
        if batch and size + row_size > BATCH_BYTES:
            yield batch
            batch, size, proofs = [], 0, set()
            row_size = len(row.data or b"") + len(row.proof or b"") + BATCH_ROW_OVERHEAD
        batch.append(row)
        if row.proof is not None:
            proofs.add(row.proof)
        size += row_size
    if batch:
        yield batch


def first_batch(rows: Iterable[StoredMessage | None]) -> list[StoredMessage]:
    """The rows found, up to one batch (what ``repair_fetch`` answers)."""
    return next(batches(row for row in rows if row is not None), [])


def may_forget(
    takers: Collection[NodeInfo],
    targets: Collection[NodeInfo],
    first_listed: Mapping[str, int],
    now_ms: int,
) -> bool:
    """Whether a node may forget an owner it handed over: every member of the owner's new
    swarm read back as holding its rows, and at least one of them has been listed for
    ``HAND_OVER_ELDER_MS`` already, so a wave of fresh nodes that takes over a swarm and
    vanishes cannot make the old members drop what they held."""
    if len(takers) != len(targets):
        return False
    return any(now_ms - first_listed.get(t.pubkey, now_ms) >= HAND_OVER_ELDER_MS for t in takers)


class StrangerPushes:
    """The rows each node of another swarm pushed here as a stranger to their owners
    (:meth:`NodeCore.trusts`) and this node holds: ``held`` tells such a node about
    these rows only, so it can read back what it handed over and learn nothing about the
    rest of a mailbox. Each node's most recent ``per_node`` rows are kept, and at most
    ``limit`` in all, the node holding the most giving way first (the one pushing, if it
    holds as many): a node that floods it pushes out its own rows, not another's. A row
    is kept as a 16-byte digest."""

    def __init__(self, limit: int = STRANGER_PUSHES, per_node: int = STRANGER_PUSHES // 8) -> None:
        self._limit = limit
        self._per_node = per_node
        self._rows: dict[str, OrderedDict[bytes, None]] = {}
        self._count = 0

    @staticmethod
    def _digest(key: RowKey) -> bytes:
        owner, namespace, message_hash = key
        return hashlib.blake2b(
            f"{owner}:{namespace}:".encode() + message_hash, digest_size=16
        ).digest()

    def pushed(self, node: str, keys: Iterable[RowKey]) -> None:
        rows = self._rows.setdefault(node, OrderedDict())
        for key in keys:
            digest = self._digest(key)
            if digest in rows:
                rows.move_to_end(digest)
                continue
            rows[digest] = None
            self._count += 1
            if len(rows) > self._per_node:
                rows.popitem(last=False)
                self._count -= 1
        while self._count > self._limit:
            largest = max(self._rows.values(), key=len)
            (rows if len(rows) >= len(largest) else largest).popitem(last=False)
            self._count -= 1
        for empty in [n for n, held in self._rows.items() if not held]:
            del self._rows[empty]

    def pushed_by(self, node: str, key: RowKey) -> bool:
        return self._digest(key) in self._rows.get(node, ())


class NodeCore(Generic[Conn]):
    """One node's view of the network and the decisions that follow from it."""

    def __init__(
        self, pubkey: str, *, started_ms: int, store_quorum: int, max_subscriptions: int
    ) -> None:
        self.pubkey = pubkey
        self._swarms = SwarmMap({})
        self._former: deque[SwarmMap] = deque(maxlen=FORMER_MAPS)
        self.store_quorum = store_quorum
        self.read_order = ReadOrder(started_ms)
        self.subscriptions: Subscriptions[Conn] = Subscriptions(max_subscriptions)

    # --- membership -----------------------------------------------------------------------

    @property
    def swarms(self) -> SwarmMap:
        """The swarms of the registry listing the node acts on."""
        return self._swarms

    def listed(self, nodes: Collection[NodeInfo]) -> None:
        """The registry now lists ``nodes``. The map they replace is remembered
        (:meth:`trusts`); with the first listing, the map of the same nodes but this one,
        which is what the rest of the network knew until this node joined it."""
        swarms = SwarmMap.build(nodes)
        if swarms == self._swarms:
            return
        if self._swarms.swarms:
            self._former.append(self._swarms)
        else:
            others = [n for n in nodes if n.pubkey != self.pubkey]
            if others and len(others) < len(nodes):
                self._former.append(SwarmMap.build(others))
        self._swarms = swarms

    def trusts(self, node: str, owner: str) -> bool:
        """Whether this node takes ``node``'s word about ``owner``'s rows (keeps what it
        pushes without a client's limits, and tells it what it holds): a member of this
        node's swarm, or a node that served the owner under one of the
        :data:`FORMER_MAPS` maps before this one, handing its rows over
        (:mod:`.hand_over`). Any other node, admitted or not, is a stranger to the
        owner's mailbox."""
        if any(peer.pubkey == node for peer in self.peers()):
            return True
        return any(
            any(member.pubkey == node for member in former.members_of_owner(owner))
            for former in self._former
        )

    @property
    def swarm_id(self) -> int | None:
        return self.swarms.swarm_of_node(self.pubkey)

    def peers(self) -> Sequence[NodeInfo]:
        return self.swarms.peers_of(self.pubkey)

    def owns(self, owner: str) -> bool:
        swarm = self.swarm_id
        return swarm is not None and self.swarms.swarm_of_owner(owner) == swarm

    def peers_needed(self) -> int:
        """Other members that must commit a store before it is acknowledged; a smaller
        swarm needs all its members."""
        return min(self.store_quorum, 1 + len(self.peers())) - 1

    def swarm_of(self, owner: str) -> SwarmReply:
        """``get_swarm``: the swarm an owner belongs to and its members."""
        swarm = self._swarm_id_of(owner)
        return SwarmReply(swarm, tuple(self.swarms.swarms[swarm]))

    def require_swarm(self, owner: str) -> None:
        """Refuse a client request about an owner of another swarm (``wrong_swarm``,
        naming it), or any before the node has read the registry. Asked of every store:
        the reply naming the members is built only for a refusal."""
        if self._swarm_id_of(owner) != self.swarm_id:
            right = self.swarm_of(owner)
            raise RpcError("wrong_swarm", "this pubkey belongs to another swarm", right.to_wire())

    def _swarm_id_of(self, owner: str) -> int:
        if not self.swarms.swarms:
            raise RpcError("unavailable", "node has not read the registry yet")
        return self.swarms.swarm_of_owner(owner)

    # --- client requests ------------------------------------------------------------------

    def new_row(self, request: StoreRequest, now_ms: int) -> StoredMessage:
        """The row a ``store`` asks for, or the refusal: an owner of another swarm, data
        over the size limit, a TTL out of range, a timestamp too far from ``now_ms``."""
        self.require_swarm(request.pubkey)
        size = len(request.data)
        if size > MAX_DATA_BYTES:
            raise RpcError("too_large", f"data is {size} bytes; the limit is {MAX_DATA_BYTES}")
        if not MIN_TTL_MS <= request.ttl_ms <= MAX_TTL_MS:
            raise RpcError("bad_ttl", f"ttl must be in [{MIN_TTL_MS}, {MAX_TTL_MS}] ms")
        skew = request.timestamp_ms - now_ms
        if abs(skew) > CLOCK_SKEW_MS:
            raise RpcError("clock_skew", f"timestamp is {skew:+d} ms from the node")
        stream = (request.pubkey, request.namespace)
        return StoredMessage(
            request.pubkey,
            request.namespace,
            message_hash(request.data),
            request.timestamp_ms,
            request.timestamp_ms + request.ttl_ms,
            request.data,
            self.read_order.next_order(stream, now_ms),
        )

    def subscribe(self, stream: Stream, conn: Conn) -> bool:
        """See :meth:`Subscriptions.add`; the owner must be this swarm's."""
        self.require_swarm(stream[0])
        return self.subscriptions.add(stream, conn)

    def pushes(self, rows: Iterable[StoredMessage]) -> list[Push[Conn]]:
        """New live rows to push to their streams' subscribers; a pushed row counts as
        served (the subscriber's next cursor may be its hash)."""
        result: list[Push[Conn]] = []
        for row in rows:
            if row.data is None:
                continue
            subscribers = self.subscriptions.of((row.pubkey, row.namespace))
            if not subscribers:
                continue
            self.read_order.served([row])
            notification = Notification(row.pubkey, row.namespace, (Message.of_row(row),))
            result.extend(Push(conn, notification) for conn in subscribers)
        return result

    def accepted(self, rows: Sequence[StoredMessage]) -> list[Push[Conn] | Replicate]:
        """New or changed rows from a client: push to subscribers, queue for every peer."""
        effects: list[Push[Conn] | Replicate] = []
        effects.extend(self.pushes(rows))
        if rows:
            effects.append(Replicate(tuple(rows)))
        return effects

    # --- rows from peers ------------------------------------------------------------------

    def placed(self, rows: Iterable[StoredMessage], now_ms: int) -> list[StoredMessage]:
        """The rows of a peer's batch to keep (unexpired, of owners this node serves),
        each at this node's own read position: a peer's ``order_ms`` is never taken, since
        one that names the end of time would leave no room after it for the owner's next
        store. Readers that switch members are covered by the cursor rewind."""
        return [
            dataclasses.replace(
                row, order_ms=self.read_order.next_order((row.pubkey, row.namespace), now_ms)
            )
            for row in rows
            if row.expiry_ms > now_ms and self.owns(row.pubkey)
        ]

    def refused_owners(self, rows: Iterable[StoredMessage]) -> tuple[str, ...]:
        """The owners of a ``replicate`` batch that this node does not serve."""
        return tuple(sorted({r.pubkey for r in rows if not self.owns(r.pubkey)}))

    def from_stranger(self, node: str, rows: Iterable[StoredMessage]) -> list[StoredMessage]:
        """The rows of a batch ``node`` pushed about owners it is a stranger to
        (:meth:`trusts`): each is charged as a client's store would be."""
        return [row for row in rows if self.owns(row.pubkey) and not self.trusts(node, row.pubkey)]

    def owners_served(self, owners: Iterable[str], bucket: int | None = None) -> list[str]:
        """The owners of ``owners`` this node serves, of one repair bucket or all, in the
        order repair lists them."""
        return sorted(
            owner
            for owner in owners
            if self.owns(owner) and (bucket is None or repair.bucket_of(owner) == bucket)
        )
