"""The registry: "a record of active service nodes" (and overlay relays).

Nodes and relays announce themselves with a record signed by their own Ed25519 key; the
registry keeps each record until it expires (announcers repeat well before that), so a
node that dies drops out on its own. Everybody reads the same list and computes swarms
from it (:mod:`p2psync.swarm.ring`). A static network needs no registry: a JSON file with
the same shape does (:class:`FileDirectory`).

Readers go through the small :class:`Directory` interface, so a node or client works the
same with a live registry, a file, or a fixed in-process list.

The registry lists the announcements themselves, and readers check every signature
(:meth:`Snapshot.from_announcements`): a registry, or anyone on its path, can leave a node
out or list it late, but cannot make up a node or move one to another address. Because
the list proves itself, any node can serve the copy it holds (its ``list`` method), and a
:class:`RegistryDirectory` asks known nodes, then its saved copy, when the registry is
down: the registry is no longer a single point of failure for reading the network.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

from overlay.link import Transport

from ..clock import Clock
from ..errors import ConnectionLost, DecodeError, RpcError
from ..identity import Identity, verify
from ..rpc import Connection, RpcServer, open_rpc
from ..wire import Fields, decode_cbor, encode_cbor
from .constants import CLOCK_SKEW_MS
from .ring import NodeInfo

logger = logging.getLogger(__name__)

ANNOUNCE_DOMAIN = b"p2psync-announce/1:"
#: An announcement stays listed this long; announcers repeat every REGISTRY_REFRESH_S.
ANNOUNCEMENT_TTL_MS = 5 * 60_000
#: How old an announcement may be in a copy served by a node or read back from disk while
#: the registry is down (the registry itself must list only fresh ones). Old entries may
#: name dead nodes; every signature still proves the node announced that address.
CACHED_LISTING_MAX_AGE_MS = 24 * 3_600_000
MAX_LISTED = 10_000
KINDS = ("node", "relay")


@dataclass(frozen=True, slots=True)
class RelayInfo:
    pubkey: str
    url: str
    contact: bytes = b""

    def to_wire(self) -> dict[str, Any]:
        return {"pubkey": self.pubkey, "url": self.url, "contact": self.contact}


@dataclass(frozen=True)
class Snapshot:
    """What the registry lists at one moment."""

    nodes: tuple[NodeInfo, ...] = ()
    relays: tuple[RelayInfo, ...] = ()
    #: The signed announcements this listing was built from, for serving it on.
    announcements: tuple[dict[str, Any], ...] = field(default=(), compare=False)

    def announcements_to_wire(self) -> dict[str, Any]:
        return {"announcements": list(self.announcements)}

    @classmethod
    def from_announcements(
        cls,
        value: object,
        now_ms: int,
        *,
        max_age_ms: int = ANNOUNCEMENT_TTL_MS,
        verified: set[bytes] | None = None,
    ) -> Snapshot:
        """A listing of signed announcements, each checked: shape, own-key signature, and
        age at most ``max_age_ms`` (so an old announcement of a dead node cannot be
        replayed forever). For one key the newest announcement counts. ``verified``
        caches signatures already checked, so a reader re-checks only what changed."""
        fields = Fields(value, "listing").only("announcements")
        newest: dict[tuple[str, str], dict[str, Any]] = {}
        for item in fields.items("announcements", max_len=MAX_LISTED):
            announcement = Fields(item, "announcement")
            raw = _checked_record(announcement, verified)
            age = now_ms - raw["timestamp"]
            if not -CLOCK_SKEW_MS <= age <= max_age_ms + CLOCK_SKEW_MS:
                raise DecodeError(f"the announcement of {raw['pubkey'][:8]} is stale or early")
            key = (raw["kind"], raw["pubkey"])
            if key not in newest or newest[key]["record"]["timestamp"] < raw["timestamp"]:
                newest[key] = {"record": raw, "signature": announcement.blob("signature", size=64)}
        records = [newest[key]["record"] for key in sorted(newest)]
        return cls(
            tuple(NodeInfo(r["pubkey"], r["url"]) for r in records if r["kind"] == "node"),
            tuple(
                RelayInfo(r["pubkey"], r["url"], r["contact"])
                for r in records
                if r["kind"] == "relay"
            ),
            tuple(newest[key] for key in sorted(newest)),
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "nodes": [n.to_wire() for n in self.nodes],
            "relays": [r.to_wire() for r in self.relays],
        }

    @classmethod
    def from_wire(cls, value: object) -> Snapshot:
        fields = Fields(value, "registry")
        nodes = []
        for item in fields.items("nodes", max_len=MAX_LISTED):
            node = Fields(item, "node")
            nodes.append(NodeInfo(_hex_key(node.text("pubkey", max_len=64)), node.text("url")))
        relays = []
        for item in fields.items("relays", max_len=MAX_LISTED) if fields.has("relays") else []:
            relay = Fields(item, "relay")
            contact = relay.blob("contact", max_len=4096) if relay.has("contact") else b""
            relays.append(
                RelayInfo(_hex_key(relay.text("pubkey", max_len=64)), relay.text("url"), contact)
            )
        return cls(tuple(sorted(nodes)), tuple(sorted(relays, key=lambda r: r.pubkey)))


def _hex_key(text: str) -> str:
    try:
        if len(bytes.fromhex(text)) == 32 and text == text.lower():
            return text
    except ValueError:
        pass
    raise DecodeError(f"not a 32-byte lowercase hex key: {text!r}")


def _announcement_text(record: dict[str, Any]) -> bytes:
    return ANNOUNCE_DOMAIN + encode_cbor(record)


def sign_announcement(
    identity: Identity, kind: str, url: str, now_ms: int, contact: bytes = b""
) -> dict[str, Any]:
    record = {
        "kind": kind,
        "pubkey": identity.ed25519_public.hex(),
        "url": url,
        "timestamp": now_ms,
        "contact": contact,
    }
    return {"record": record, "signature": identity.sign(_announcement_text(record))}


def check_announcement(params: Fields, now_ms: int) -> dict[str, Any]:
    """The record of a signed announcement (``announce`` params), checked in full:
    :class:`DecodeError` for a malformed one, ``clock_skew`` for a stale one and
    ``unauthorized`` unless its own key signed exactly this record."""
    raw = _checked_record(params)
    if abs(raw["timestamp"] - now_ms) > CLOCK_SKEW_MS:
        raise RpcError("clock_skew", "announcement timestamp is too far from the registry's")
    return raw


def _checked_record(params: Fields, verified: set[bytes] | None = None) -> dict[str, Any]:
    """Shape and signature of one announcement; its age is the caller's business."""
    params.only("record", "signature")
    record = params.map("record").only("kind", "pubkey", "url", "timestamp", "contact")
    kind = record.text("kind", max_len=8)
    if kind not in KINDS:
        raise DecodeError(f"record.kind must be one of {KINDS}")
    pubkey = _hex_key(record.text("pubkey", max_len=64))
    url = record.text("url")
    timestamp = record.uint("timestamp")
    contact = record.blob("contact", max_len=4096)
    raw = {"kind": kind, "pubkey": pubkey, "url": url, "timestamp": timestamp, "contact": contact}
    signature = params.blob("signature", size=64)
    text = _announcement_text(raw)
    seen = hashlib.blake2b(signature + text, digest_size=16).digest()
    if verified is not None and seen in verified:
        return raw
    if not verify(bytes.fromhex(pubkey), text, signature):
        raise RpcError("unauthorized", "announcement signature does not verify")
    if verified is not None:
        if len(verified) >= 2 * MAX_LISTED:
            verified.clear()
        verified.add(seen)
    return raw


class Directory(Protocol):
    """Where a node or client learns the network."""

    async def fetch(self) -> Snapshot: ...

    async def announce(
        self, identity: Identity, kind: str, url: str, contact: bytes = b""
    ) -> None: ...


@dataclass
class FixedDirectory:
    """An in-process list (tests, embedded networks); announcing adds to it."""

    snapshot: Snapshot = field(default_factory=Snapshot)

    async def fetch(self) -> Snapshot:
        await trio.lowlevel.checkpoint()
        return self.snapshot

    async def announce(self, identity: Identity, kind: str, url: str, contact: bytes = b"") -> None:
        await trio.lowlevel.checkpoint()
        key = identity.ed25519_public.hex()
        if kind == "node":
            nodes = {n.pubkey: n for n in self.snapshot.nodes} | {key: NodeInfo(key, url)}
            self.snapshot = Snapshot(tuple(sorted(nodes.values())), self.snapshot.relays)
        else:
            relays = {r.pubkey: r for r in self.snapshot.relays}
            relays[key] = RelayInfo(key, url, contact)
            self.snapshot = Snapshot(
                self.snapshot.nodes, tuple(sorted(relays.values(), key=lambda r: r.pubkey))
            )


@dataclass
class FileDirectory:
    """A static network described by a JSON file ``{"nodes": [...], "relays": [...]}``,
    re-read on every fetch so an operator's edit takes effect at the next refresh."""

    path: Path

    async def fetch(self) -> Snapshot:
        text = await trio.Path(self.path).read_text()
        try:
            return Snapshot.from_wire(json.loads(text))
        except (json.JSONDecodeError, DecodeError) as exc:
            raise DecodeError(f"{self.path}: {exc}") from None

    async def announce(self, identity: Identity, kind: str, url: str, contact: bytes = b"") -> None:
        await trio.lowlevel.checkpoint()


LISTING_ERRORS = (OSError, ConnectionLost, RpcError, DecodeError)


@dataclass
class RegistryDirectory:
    """A live registry server, one short connection per call. When the registry cannot
    be read, it asks the nodes it knows (``seeds``, then those of the last listing) for the
    copy they hold, and failing that reads back the last listing it saved at
    ``cache_path``; every copy is checked signature by signature like the registry's."""

    transport: Transport
    url: str
    clock: Clock
    seeds: tuple[str, ...] = ()
    cache_path: Path | None = None
    _known: list[str] = field(default_factory=list)
    _verified: set[bytes] = field(default_factory=set)

    async def fetch(self) -> Snapshot:
        try:
            snapshot = await self._read(self.url, ANNOUNCEMENT_TTL_MS)
        except LISTING_ERRORS as exc:
            snapshot = await self._fallback(exc)
        else:
            await self._save(snapshot)
        self._known = [n.url for n in snapshot.nodes]
        return snapshot

    async def announce(self, identity: Identity, kind: str, url: str, contact: bytes = b"") -> None:
        params = sign_announcement(identity, kind, url, self.clock.now_ms(), contact)
        async with open_rpc(self.transport, self.url) as client:
            await client.call("announce", params)

    async def _read(self, url: str, max_age_ms: int) -> Snapshot:
        async with open_rpc(self.transport, url) as client:
            listing = await client.call("list", {})
        return Snapshot.from_announcements(
            listing, self.clock.now_ms(), max_age_ms=max_age_ms, verified=self._verified
        )

    async def _fallback(self, registry_error: Exception) -> Snapshot:
        saved = await self._load()
        candidates = [*self.seeds, *self._known, *(n.url for n in (saved.nodes if saved else ()))]
        for url in dict.fromkeys(candidates):
            try:
                snapshot = await self._read(url, CACHED_LISTING_MAX_AGE_MS)
            except LISTING_ERRORS as exc:
                logger.debug("listing from %s failed: %s", url, exc)
                continue
            if snapshot.nodes:
                logger.info("registry unavailable (%s); listing from node %s", registry_error, url)
                await self._save(snapshot)
                return snapshot
        if saved is not None and saved.nodes:
            logger.info("registry and nodes unavailable; using the saved listing")
            return saved
        raise registry_error

    async def _save(self, snapshot: Snapshot) -> None:
        if self.cache_path is None or not snapshot.announcements:
            return
        temporary = self.cache_path.with_suffix(".tmp")
        await trio.Path(temporary).write_bytes(encode_cbor(snapshot.announcements_to_wire()))
        await trio.Path(temporary).replace(self.cache_path)

    async def _load(self) -> Snapshot | None:
        if self.cache_path is None:
            return None
        try:
            data = await trio.Path(self.cache_path).read_bytes()
            return Snapshot.from_announcements(
                decode_cbor(data), self.clock.now_ms(), max_age_ms=CACHED_LISTING_MAX_AGE_MS
            )
        except FileNotFoundError:
            return None
        except LISTING_ERRORS as exc:
            logger.warning("ignoring the saved listing %s: %s", self.cache_path, exc)
            return None


class RegistryServer:
    """Keeps signed announcements until they expire; optionally persisted to a JSON file
    so a restarted registry answers with the last list at once."""

    def __init__(self, clock: Clock, state_path: Path | None = None) -> None:
        self.clock = clock
        self.state_path = state_path
        #: (kind, pubkey) -> (listed until, record, its signature)
        self._entries: dict[tuple[str, str], tuple[int, dict[str, Any], bytes]] = {}
        if state_path is not None and state_path.exists():
            self._load(state_path)
        self.rpc = RpcServer({"announce": self._announce, "list": self._list})

    async def serve(
        self,
        transport: Transport,
        address: str,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        await self.rpc.serve(transport, address, task_status=task_status)

    def snapshot(self) -> Snapshot:
        """What is listed now (every entry was checked when it was announced)."""
        now = self.clock.now_ms()
        live = sorted(
            (key, record, signature)
            for key, (expiry, record, signature) in self._entries.items()
            if expiry > now
        )
        return Snapshot(
            tuple(NodeInfo(r["pubkey"], r["url"]) for _, r, _ in live if r["kind"] == "node"),
            tuple(
                RelayInfo(r["pubkey"], r["url"], r["contact"])
                for _, r, _ in live
                if r["kind"] == "relay"
            ),
            tuple({"record": r, "signature": sig} for _, r, sig in live),
        )

    async def _announce(self, params: Fields, conn: Connection) -> Any:
        now = self.clock.now_ms()
        raw = check_announcement(params, now)
        kind, pubkey, timestamp = raw["kind"], raw["pubkey"], raw["timestamp"]
        signature = params.blob("signature", size=64)
        previous = self._entries.get((kind, pubkey))
        if previous is not None and previous[1]["timestamp"] > timestamp:
            raise RpcError("unauthorized", "announcement is older than the one listed")
        if previous is None and len(self._entries) >= MAX_LISTED:
            raise RpcError("unavailable", "registry is full")
        self._entries[(kind, pubkey)] = (now + ANNOUNCEMENT_TTL_MS, raw, signature)
        await self._save()
        return {"ttl_ms": ANNOUNCEMENT_TTL_MS}

    async def _list(self, params: Fields, conn: Connection) -> Any:
        await trio.lowlevel.checkpoint()
        return self.snapshot().announcements_to_wire()

    async def _save(self) -> None:
        if self.state_path is None:
            return
        entries = [
            {
                "expiry": expiry,
                "signature": signature.hex(),
                **{k: v.hex() if isinstance(v, bytes) else v for k, v in rec.items()},
            }
            for expiry, rec, signature in self._entries.values()
        ]
        temporary = self.state_path.with_suffix(".tmp")
        await trio.Path(temporary).write_text(json.dumps(entries))
        await trio.Path(temporary).replace(self.state_path)

    def _load(self, path: Path) -> None:
        try:
            for entry in json.loads(path.read_text()):
                rec = {k: entry[k] for k in ("kind", "pubkey", "url", "timestamp")}
                rec["contact"] = bytes.fromhex(entry["contact"])
                signature = bytes.fromhex(entry["signature"])
                self._entries[(rec["kind"], rec["pubkey"])] = (int(entry["expiry"]), rec, signature)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring unreadable registry state %s: %s", path, exc)
            self._entries.clear()
