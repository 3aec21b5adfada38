"""The storage RPC's requests and replies (DESIGN.md §4), each a frozen dataclass with
``to_wire`` and a strict ``from_wire``: the schema is written here once, for the client
that builds requests and reads replies and for the node that reads requests and builds
replies.

``from_wire`` checks the shape, every type and every range the wire allows, and raises
:class:`~p2psync.errors.DecodeError` (``bad_request``) for anything else. What a value
means for the protocol (a TTL outside the allowed span, data over the size limit, a
timestamp too far from the node's clock) is the node's decision (:mod:`.node_core`), with
its own error codes, so it is not refused here.

Node-to-node requests are signed (``node_auth``, :mod:`.auth`) over the params built by
``to_wire``; the node checks that signature on the raw params and decodes the rest.
Rows from a peer are decoded one by one (:func:`.records.row_from_wire`, against the
receiver's clock): a row that does not check out is left out and reported in
``refused`` (:class:`RowBatch`), so one bad row does not cost its batch the good ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import DecodeError, RpcError
from ..identity import message_hash
from ..wire import Fields, error_body, read_error
from . import repair
from .access import MailboxAccess
from .auth import ClientAuth
from .constants import (
    MAX_DATA_BYTES,
    MAX_HASHES_PER_REQUEST,
    MAX_NAMESPACE,
    MAX_STORE_BATCH,
    MAX_STORE_BATCH_BYTES,
    RETRIEVE_LIMIT,
    SWARM_MAX_SIZE,
)
from .quorum import RowKey
from .records import (
    ProofChecks,
    row_from_wire,
    row_to_wire,
    summary_from_wire,
    summary_to_wire,
)
from .ring import RING_SIZE, NodeInfo
from .rows import RowSummary, StoredMessage

#: A session id as text: ``05`` and 32 bytes of X25519 key in hex.
SESSION_ID_CHARS = 66
#: Row keys (``[pubkey, namespace, hash]``) and repair listing entries per page.
LISTING_PAGE = 400
#: Rows in one node-to-node batch at most (their bytes are bounded by the frame).
MAX_BATCH_ROWS = 10_000
MAX_NODE_URL_CHARS = 256


def _fields(value: object, where: str) -> Fields:
    return value if isinstance(value, Fields) else Fields(value, where)


def _owner(fields: Fields) -> str:
    return fields.text("pubkey", max_len=SESSION_ID_CHARS)


def _namespace(fields: Fields, *, default: int | None = None) -> int:
    if default is not None and not fields.has("namespace"):
        return default
    return fields.integer("namespace", minimum=0, maximum=MAX_NAMESPACE)


def _hashes(
    fields: Fields, name: str = "hashes", max_len: int = MAX_HASHES_PER_REQUEST
) -> tuple[bytes, ...]:
    return tuple(fields.blob_list(name, size=32, max_len=max_len))


def _row_key(value: object) -> RowKey:
    if isinstance(value, list) and len(value) == 3:
        owner, namespace, digest = value
        if (
            isinstance(owner, str)
            and len(owner) <= SESSION_ID_CHARS
            and isinstance(namespace, int)
            and not isinstance(namespace, bool)
            and 0 <= namespace <= MAX_NAMESPACE
            and isinstance(digest, bytes)
            and len(digest) == 32
        ):
            return (owner, namespace, digest)
    raise DecodeError("a key is [pubkey, namespace, hash]")


def _rows(
    items: Sequence[object], now_ms: int, proofs: Sequence[object] = ()
) -> tuple[tuple[StoredMessage, ...], tuple[str, ...]]:
    """The rows of a peer's batch that check out, and why each other one did not."""
    rows = []
    refused = []
    checks = ProofChecks(proofs)
    for item in items:
        try:
            rows.append(row_from_wire(item, now_ms, checks))
        except DecodeError as exc:
            refused.append(str(exc))
    return tuple(rows), tuple(refused)


# --- what a client sees -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """A stored message as a client reads it (``retrieve`` and ``notify``)."""

    hash: bytes
    timestamp_ms: int
    expiry_ms: int
    data: bytes

    @classmethod
    def of_row(cls, row: StoredMessage) -> Message:
        if row.data is None:
            raise ValueError("a deleted message is never shown to a client")
        return cls(row.hash, row.timestamp_ms, row.expiry_ms, row.data)

    def to_wire(self) -> dict[str, Any]:
        return {
            "hash": self.hash,
            "timestamp": self.timestamp_ms,
            "expiry": self.expiry_ms,
            "data": self.data,
        }

    @classmethod
    def from_wire(cls, value: object) -> Message:
        """Checked as a client must: the hash is recomputed from the data."""
        m = _fields(value, "message").only("hash", "timestamp", "expiry", "data")
        data = m.blob("data", max_len=MAX_DATA_BYTES)
        digest = m.blob("hash", size=32)
        if message_hash(data) != digest:
            raise DecodeError("a node returned a message whose hash does not match its data")
        return cls(digest, m.uint("timestamp"), m.uint("expiry"), data)


def message_to_wire(row: StoredMessage) -> dict[str, Any]:
    """How a client sees a stored row."""
    return Message.of_row(row).to_wire()


def _messages(fields: Fields) -> tuple[Message, ...]:
    return tuple(map(Message.from_wire, fields.items("messages", max_len=RETRIEVE_LIMIT)))


# --- client methods -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InfoReply:
    version: str
    node: str
    swarm: int
    stored: int

    def to_wire(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "node": self.node,
            "swarm": self.swarm,
            "stored": self.stored,
        }

    @classmethod
    def from_wire(cls, value: object) -> InfoReply:
        f = _fields(value, "result").only("version", "node", "swarm", "stored")
        return cls(
            f.text("version", max_len=64),
            f.text("node", max_len=64),
            f.uint("swarm", maximum=RING_SIZE - 1),
            f.uint("stored"),
        )


@dataclass(frozen=True, slots=True)
class GetSwarmRequest:
    pubkey: str

    def to_wire(self) -> dict[str, Any]:
        return {"pubkey": self.pubkey}

    @classmethod
    def from_wire(cls, value: object) -> GetSwarmRequest:
        return cls(_owner(_fields(value, "params").only("pubkey")))


@dataclass(frozen=True, slots=True)
class SwarmReply:
    """A swarm and its members: the reply of ``get_swarm``, and the data of a
    ``wrong_swarm`` error."""

    swarm: int
    nodes: tuple[NodeInfo, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"swarm": self.swarm, "nodes": [n.to_wire() for n in self.nodes]}

    @classmethod
    def from_wire(cls, value: object) -> SwarmReply:
        f = _fields(value, "result").only("swarm", "nodes")
        nodes = []
        for item in f.items("nodes", max_len=SWARM_MAX_SIZE):
            node = Fields(item, "node").only("pubkey", "url")
            nodes.append(
                NodeInfo(
                    node.text("pubkey", max_len=64), node.text("url", max_len=MAX_NODE_URL_CHARS)
                )
            )
        return cls(f.uint("swarm", maximum=RING_SIZE - 1), tuple(nodes))


@dataclass(frozen=True, slots=True)
class StoreRequest:
    """A store; ``access``, the owner's, lets it use the owner's reserve (:mod:`.access`)."""

    pubkey: str
    namespace: int
    ttl_ms: int
    timestamp_ms: int
    data: bytes
    access: MailboxAccess | None = None

    def to_wire(self) -> dict[str, Any]:
        wire = {
            "pubkey": self.pubkey,
            "namespace": self.namespace,
            "ttl": self.ttl_ms,
            "timestamp": self.timestamp_ms,
            "data": self.data,
        }
        if self.access is not None:
            wire["access"] = self.access.to_wire()
        return wire

    @classmethod
    def from_wire(cls, value: object) -> StoreRequest:
        f = _fields(value, "params")
        f.only("pubkey", "namespace", "ttl", "timestamp", "data", "access")
        access = MailboxAccess.from_wire(f.map("access")) if f.has("access") else None
        return cls(
            _owner(f), _namespace(f), f.uint("ttl"), f.uint("timestamp"), f.blob("data"), access
        )


@dataclass(frozen=True, slots=True)
class StoreReply:
    hash: bytes
    expiry_ms: int

    def to_wire(self) -> dict[str, Any]:
        return {"hash": self.hash, "expiry": self.expiry_ms}

    @classmethod
    def from_wire(cls, value: object) -> StoreReply:
        f = _fields(value, "result").only("hash", "expiry")
        return cls(f.blob("hash", size=32), f.uint("expiry"))


@dataclass(frozen=True, slots=True)
class StoreBatchRequest:
    """Several stores in one request (``store_batch``), as oxen-storage-server's
    ``batch`` carries several subrequests: a client with many messages for one swarm
    (a device sending its backlog, or leaving with its sync copies) pays one request's
    framing and one round trip for them, over an onion path too. Every store is for an
    owner of the one swarm the request goes to."""

    stores: tuple[StoreRequest, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"stores": [store.to_wire() for store in self.stores]}

    @classmethod
    def from_wire(cls, value: object) -> StoreBatchRequest:
        f = _fields(value, "params").only("stores")
        items = f.items("stores", max_len=MAX_STORE_BATCH)
        if not items:
            raise DecodeError("params.stores is empty")
        stores = tuple(
            StoreRequest.from_wire(Fields(item, f"params.stores[{i}]"))
            for i, item in enumerate(items)
        )
        size = sum(len(store.data) for store in stores)
        if len(stores) > 1 and size > MAX_STORE_BATCH_BYTES:
            raise DecodeError(f"params.stores carry {size} bytes; at most {MAX_STORE_BATCH_BYTES}")
        return cls(stores)


def store_batches(stores: Sequence[StoreRequest]) -> list[StoreBatchRequest]:
    """``stores`` cut, in order, into as few ``store_batch`` requests as the limits allow
    (:data:`MAX_STORE_BATCH` stores, :data:`MAX_STORE_BATCH_BYTES` of data; a store larger
    than that goes alone, to be answered as ``store`` would answer it)."""
    batches: list[StoreBatchRequest] = []
    batch: list[StoreRequest] = []
    size = 0
    for store in stores:
        full = len(batch) == MAX_STORE_BATCH or size + len(store.data) > MAX_STORE_BATCH_BYTES
        if batch and full:
            batches.append(StoreBatchRequest(tuple(batch)))
            batch, size = [], 0
        batch.append(store)
        size += len(store.data)
    if batch:
        batches.append(StoreBatchRequest(tuple(batch)))
    return batches


@dataclass(frozen=True, slots=True)
class StoreBatchReply:
    """Each store's own answer, in the request's order: what ``store`` would have
    replied, or its refusal."""

    results: tuple[StoreReply | RpcError, ...]

    def to_wire(self) -> dict[str, Any]:
        return self.wire([r.to_wire() if isinstance(r, StoreReply) else r for r in self.results])

    @staticmethod
    def wire(results: Sequence[dict[str, Any] | RpcError]) -> dict[str, Any]:
        """The wire form from each store's reply already in its own (as ``store``
        answers it) or its refusal."""
        return {"results": [_refusal_to_wire(r) if isinstance(r, RpcError) else r for r in results]}

    @classmethod
    def from_wire(cls, value: object, *, stores: int) -> StoreBatchReply:
        """``stores``: how many the request carried; a reply with a different count
        is refused."""
        items = _fields(value, "result").only("results").items("results", max_len=stores)
        if len(items) != stores:
            raise DecodeError(f"result.results must hold {stores} items")
        return cls(tuple(_store_result_from_wire(item) for item in items))


def store_batch_cost(params: Mapping[str, Any]) -> int:
    """What a ``store_batch`` takes from its connection's request rate: a token per store,
    as the stores one by one would (read before the request is checked, so a list over
    the limit, refused at decode, costs the limit)."""
    stores = params.get("stores")
    return min(len(stores), MAX_STORE_BATCH) if isinstance(stores, list) and stores else 1


def _refusal_to_wire(error: RpcError) -> dict[str, Any]:
    return {"error": error_body(error.code, error.message, error.data)}


def _store_result_from_wire(value: object) -> StoreReply | RpcError:
    f = _fields(value, "result.results[]")
    if not f.has("error"):
        return StoreReply.from_wire(f)
    return RpcError.received(*read_error(f.only("error")))


@dataclass(frozen=True, slots=True)
class RetrieveRequest:
    pubkey: str
    namespace: int
    last_hash: bytes | None
    auth: ClientAuth
    limit: int | None = None

    def to_wire(self) -> dict[str, Any]:
        wire = {
            "pubkey": self.pubkey,
            "namespace": self.namespace,
            "last_hash": self.last_hash,
            "auth": self.auth.to_wire(),
        }
        if self.limit is not None:
            wire["limit"] = self.limit
        return wire

    @classmethod
    def from_wire(cls, value: object) -> RetrieveRequest:
        f = _fields(value, "params").only("pubkey", "namespace", "last_hash", "limit", "auth")
        return cls(
            _owner(f),
            _namespace(f),
            f.optional_blob("last_hash", size=32),
            ClientAuth.from_wire(f.map("auth")),
            f.uint("limit", maximum=RETRIEVE_LIMIT) if f.has("limit") else None,
        )


@dataclass(frozen=True, slots=True)
class RetrieveReply:
    messages: tuple[Message, ...]
    more: bool

    def to_wire(self) -> dict[str, Any]:
        return {"messages": [m.to_wire() for m in self.messages], "more": self.more}

    @classmethod
    def from_wire(cls, value: object) -> RetrieveReply:
        f = _fields(value, "result").only("messages", "more")
        return cls(_messages(f), f.boolean("more") if f.has("more") else False)


@dataclass(frozen=True, slots=True)
class DeleteRequest:
    pubkey: str
    namespace: int
    hashes: tuple[bytes, ...]
    auth: ClientAuth

    def to_wire(self) -> dict[str, Any]:
        return {
            "pubkey": self.pubkey,
            "namespace": self.namespace,
            "hashes": list(self.hashes),
            "auth": self.auth.to_wire(),
        }

    @classmethod
    def from_wire(cls, value: object) -> DeleteRequest:
        f = _fields(value, "params").only("pubkey", "namespace", "hashes", "auth")
        return cls(
            _owner(f), _namespace(f, default=0), _hashes(f), ClientAuth.from_wire(f.map("auth"))
        )


@dataclass(frozen=True, slots=True)
class DeleteReply:
    deleted: tuple[bytes, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"deleted": list(self.deleted)}

    @classmethod
    def from_wire(cls, value: object, *, asked: int = MAX_HASHES_PER_REQUEST) -> DeleteReply:
        """``asked``: how many hashes the request named, more than which none can come back."""
        return cls(_hashes(_fields(value, "result").only("deleted"), "deleted", asked))


@dataclass(frozen=True, slots=True)
class ExpireRequest:
    pubkey: str
    namespace: int
    hashes: tuple[bytes, ...]
    expiry_ms: int
    auth: ClientAuth

    def to_wire(self) -> dict[str, Any]:
        return {
            "pubkey": self.pubkey,
            "namespace": self.namespace,
            "hashes": list(self.hashes),
            "expiry": self.expiry_ms,
            "auth": self.auth.to_wire(),
        }

    @classmethod
    def from_wire(cls, value: object) -> ExpireRequest:
        f = _fields(value, "params").only("pubkey", "namespace", "hashes", "expiry", "auth")
        return cls(
            _owner(f),
            _namespace(f, default=0),
            _hashes(f),
            f.uint("expiry"),
            ClientAuth.from_wire(f.map("auth")),
        )


@dataclass(frozen=True, slots=True)
class ExpireReply:
    updated: tuple[bytes, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"updated": list(self.updated)}

    @classmethod
    def from_wire(cls, value: object, *, asked: int = MAX_HASHES_PER_REQUEST) -> ExpireReply:
        return cls(_hashes(_fields(value, "result").only("updated"), "updated", asked))


@dataclass(frozen=True, slots=True)
class SubscribeRequest:
    pubkey: str
    namespace: int
    auth: ClientAuth

    def to_wire(self) -> dict[str, Any]:
        return {"pubkey": self.pubkey, "namespace": self.namespace, "auth": self.auth.to_wire()}

    @classmethod
    def from_wire(cls, value: object) -> SubscribeRequest:
        f = _fields(value, "params").only("pubkey", "namespace", "auth")
        return cls(_owner(f), _namespace(f), ClientAuth.from_wire(f.map("auth")))


@dataclass(frozen=True, slots=True)
class Notification:
    """A ``notify`` push to a subscriber: new messages of one stream."""

    pubkey: str
    namespace: int
    messages: tuple[Message, ...]

    def to_wire(self) -> dict[str, Any]:
        return {
            "pubkey": self.pubkey,
            "namespace": self.namespace,
            "messages": [m.to_wire() for m in self.messages],
        }

    @classmethod
    def from_wire(cls, value: object) -> Notification:
        f = _fields(value, "params").only("pubkey", "namespace", "messages")
        return cls(_owner(f), _namespace(f), _messages(f))


# --- node-to-node methods -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RowBatch:
    """Rows from another node: what ``replicate`` pushes (a member's new rows, or a node
    of the owners' old swarm handing them over) and ``repair_fetch`` answers."""

    rows: tuple[StoredMessage, ...]
    #: Why each row left out was refused.
    refused: tuple[str, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        """Each proof once, in ``proofs``, and each row's proof as its index there. A batch
        without proofs has no ``proofs``, as a node from before sent it (and reads it)."""
        proofs = {p: None for r in self.rows if (p := r.proof) is not None}
        index = {proof: i for i, proof in enumerate(proofs)}
        wire: dict[str, Any] = {"rows": [row_to_wire(r, index) for r in self.rows]}
        if proofs:
            wire["proofs"] = list(proofs)
        return wire

    @classmethod
    def from_wire(cls, value: object, now_ms: int, *, max_rows: int = MAX_BATCH_ROWS) -> RowBatch:
        """``max_rows``: a ``repair_fetch`` answers at most the keys it was asked for. A
        batch without ``proofs`` (a node from before) carries each row's proof inline."""
        f = _fields(value, "rows").only("rows", "proofs")
        proofs = f.items("proofs", max_len=max_rows) if f.has("proofs") else []
        return cls(*_rows(f.items("rows", max_len=max_rows), now_ms, proofs))


@dataclass(frozen=True, slots=True)
class ReplicateReply:
    """The owners of the batch whose rows the receiver did not all keep: owners it does
    not serve (none kept), or whose rows went past their quota or a stranger's byte rate
    (those from the first that did not fit). The sender counts none of their rows as
    committed there."""

    refused: tuple[str, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"refused": list(self.refused)}

    @classmethod
    def from_wire(cls, value: object) -> ReplicateReply:
        items = _fields(value, "result").only("refused").items("refused", max_len=MAX_BATCH_ROWS)
        if not all(isinstance(o, str) and len(o) <= SESSION_ID_CHARS for o in items):
            raise DecodeError("result.refused must list session ids")
        return cls(tuple(str(o) for o in items))


@dataclass(frozen=True, slots=True)
class LookupRequest:
    pubkey: str
    namespace: int
    hash: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"pubkey": self.pubkey, "namespace": self.namespace, "hash": self.hash}

    @classmethod
    def from_wire(cls, value: object) -> LookupRequest:
        f = _fields(value, "params").only("pubkey", "namespace", "hash")
        return cls(_owner(f), _namespace(f), f.blob("hash", size=32))


@dataclass(frozen=True, slots=True)
class LookupReply:
    row: StoredMessage | None

    def to_wire(self) -> dict[str, Any]:
        return {"row": None if self.row is None else row_to_wire(self.row)}

    @classmethod
    def from_wire(cls, value: object, now_ms: int) -> LookupReply:
        row = _fields(value, "result").only("row").raw("row")
        return cls(None if row is None else row_from_wire(row, now_ms))


@dataclass(frozen=True, slots=True)
class RepairDigestRequest:
    def to_wire(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_wire(cls, value: object) -> RepairDigestRequest:
        _fields(value, "params").only()
        return cls()


@dataclass(frozen=True, slots=True)
class RepairDigestReply:
    """One digest per repair bucket, every bucket."""

    digests: tuple[bytes, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"digests": list(self.digests)}

    @classmethod
    def from_wire(cls, value: object) -> RepairDigestReply:
        f = _fields(value, "result").only("digests")
        digests = f.blob_list("digests", size=repair.ITEM_ID_BYTES, max_len=repair.BUCKETS)
        if len(digests) != repair.BUCKETS:
            raise DecodeError("repair digest must list every bucket")
        return cls(tuple(digests))


@dataclass(frozen=True, slots=True)
class RepairListRequest:
    """A page of one bucket's listing, from ``offset`` on."""

    bucket: int
    offset: int

    def to_wire(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "offset": self.offset}

    @classmethod
    def from_wire(cls, value: object) -> RepairListRequest:
        f = _fields(value, "params").only("bucket", "offset")
        return cls(f.uint("bucket", maximum=repair.BUCKETS - 1), f.uint("offset", maximum=2**32))


@dataclass(frozen=True, slots=True)
class RepairListReply:
    items: tuple[RowSummary, ...]
    more: bool

    def to_wire(self) -> dict[str, Any]:
        return {"items": [summary_to_wire(r) for r in self.items], "more": self.more}

    @classmethod
    def from_wire(cls, value: object) -> RepairListReply:
        f = _fields(value, "result").only("items", "more")
        items = f.items("items", max_len=LISTING_PAGE)
        return cls(tuple(map(summary_from_wire, items)), f.boolean("more"))


@dataclass(frozen=True, slots=True)
class KeysRequest:
    """Rows named by key: ``repair_fetch`` asks for them, ``held`` how many are held."""

    keys: tuple[RowKey, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"keys": [list(k) for k in self.keys]}

    @classmethod
    def from_wire(cls, value: object) -> KeysRequest:
        f = _fields(value, "params").only("keys")
        return cls(tuple(map(_row_key, f.items("keys", max_len=LISTING_PAGE))))


@dataclass(frozen=True, slots=True)
class HeldReply:
    held: int

    def to_wire(self) -> dict[str, Any]:
        return {"held": self.held}

    @classmethod
    def from_wire(cls, value: object, *, asked: int = LISTING_PAGE) -> HeldReply:
        return cls(_fields(value, "result").only("held").uint("held", maximum=asked))
