"""The registry: "a record of active service nodes" (and overlay relays).

Nodes and relays announce themselves with a record signed by their own Ed25519 key; the
registry keeps each record until it expires (announcers repeat well before that), so a
node that dies drops out on its own. Everybody reads the same list and computes swarms
from it (:mod:`p2psync.swarm.ring`). A static network needs no registry: a JSON file with
the same shape does (:class:`FileDirectory`).

Readers go through the small :class:`Directory` interface, so a node or client works the
same with a live registry, a file, or a fixed in-process list.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

from overlay.link import Transport

from ..clock import Clock
from ..errors import DecodeError, RpcError
from ..identity import Identity, verify
from ..rpc import Connection, RpcServer, open_rpc
from ..wire import Fields, encode_cbor
from .constants import CLOCK_SKEW_MS
from .ring import NodeInfo

logger = logging.getLogger(__name__)

ANNOUNCE_DOMAIN = b"p2psync-announce/1:"
#: An announcement stays listed this long; announcers repeat every REGISTRY_REFRESH_S.
ANNOUNCEMENT_TTL_MS = 5 * 60_000
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
    params.only("record", "signature")
    record = params.map("record").only("kind", "pubkey", "url", "timestamp", "contact")
    kind = record.text("kind", max_len=8)
    if kind not in KINDS:
        raise DecodeError(f"record.kind must be one of {KINDS}")
    pubkey = _hex_key(record.text("pubkey", max_len=64))
    url = record.text("url")
    timestamp = record.uint("timestamp")
    contact = record.blob("contact", max_len=4096)
    if abs(timestamp - now_ms) > CLOCK_SKEW_MS:
        raise RpcError("clock_skew", "announcement timestamp is too far from the registry's")
    raw = {"kind": kind, "pubkey": pubkey, "url": url, "timestamp": timestamp, "contact": contact}
    signature = params.blob("signature", size=64)
    if not verify(bytes.fromhex(pubkey), _announcement_text(raw), signature):
        raise RpcError("unauthorized", "announcement signature does not verify")
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


@dataclass
class RegistryDirectory:
    """A live registry server, one short connection per call."""

    transport: Transport
    url: str
    clock: Clock

    async def fetch(self) -> Snapshot:
        async with open_rpc(self.transport, self.url) as client:
            return Snapshot.from_wire(await client.call("list", {}))

    async def announce(self, identity: Identity, kind: str, url: str, contact: bytes = b"") -> None:
        params = sign_announcement(identity, kind, url, self.clock.now_ms(), contact)
        async with open_rpc(self.transport, self.url) as client:
            await client.call("announce", params)


class RegistryServer:
    """Keeps signed announcements until they expire; optionally persisted to a JSON file
    so a restarted registry answers with the last list at once."""

    def __init__(self, clock: Clock, state_path: Path | None = None) -> None:
        self.clock = clock
        self.state_path = state_path
        self._entries: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
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
        now = self.clock.now_ms()
        live = [rec for expiry, rec in self._entries.values() if expiry > now]
        return Snapshot.from_wire(
            {
                "nodes": [r for r in live if r["kind"] == "node"],
                "relays": [r for r in live if r["kind"] == "relay"],
            }
        )

    async def _announce(self, params: Fields, conn: Connection) -> Any:
        now = self.clock.now_ms()
        raw = check_announcement(params, now)
        kind, pubkey, timestamp = raw["kind"], raw["pubkey"], raw["timestamp"]
        previous = self._entries.get((kind, pubkey))
        if previous is not None and previous[1]["timestamp"] > timestamp:
            raise RpcError("unauthorized", "announcement is older than the one listed")
        if previous is None and len(self._entries) >= MAX_LISTED:
            raise RpcError("unavailable", "registry is full")
        self._entries[(kind, pubkey)] = (now + ANNOUNCEMENT_TTL_MS, raw)
        await self._save()
        return {"ttl_ms": ANNOUNCEMENT_TTL_MS}

    async def _list(self, params: Fields, conn: Connection) -> Any:
        await trio.lowlevel.checkpoint()
        return self.snapshot().to_wire()

    async def _save(self) -> None:
        if self.state_path is None:
            return
        entries = [
            {
                "expiry": expiry,
                **{k: v.hex() if isinstance(v, bytes) else v for k, v in rec.items()},
            }
            for expiry, rec in self._entries.values()
        ]
        temporary = self.state_path.with_suffix(".tmp")
        await trio.Path(temporary).write_text(json.dumps(entries))
        await trio.Path(temporary).replace(self.state_path)

    def _load(self, path: Path) -> None:
        try:
            for entry in json.loads(path.read_text()):
                rec = {k: entry[k] for k in ("kind", "pubkey", "url", "timestamp")}
                rec["contact"] = bytes.fromhex(entry["contact"])
                self._entries[(rec["kind"], rec["pubkey"])] = (int(entry["expiry"]), rec)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring unreadable registry state %s: %s", path, exc)
            self._entries.clear()
