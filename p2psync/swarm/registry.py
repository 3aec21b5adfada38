"""The registry: "a record of active service nodes" (and overlay relays).

Nodes and relays announce themselves with a record signed by their own Ed25519 key; the
registry keeps each record until it expires (announcers repeat well before that), so a
node that dies drops out on its own. A node's record carries its :mod:`.admission`
registration, and where the network has a ledger, the registry and every reader list a
node only with a registration the ledger signed: anyone may run a node, but nobody joins
a swarm by saying so, and the ring position comes from the registration, not the key.
Everybody reads the same list and computes swarms from it (:mod:`p2psync.swarm.ring`). A
static network needs no registry: a JSON file with the same shape does
(:class:`FileDirectory`; its operator is the one who admits).

Readers go through the small :class:`Directory` interface, so a node or client works the
same with a live registry or a file.

The registry lists the announcements themselves, and readers check every signature
(:meth:`Snapshot.from_announcements`): a registry, or anyone on its path, can leave a node
out or list it late, but cannot make up a node or move one to another address. Because
the list proves itself, any node can serve the copy it holds (its ``list`` method), and a
:class:`RegistryDirectory` asks known nodes, then its saved copy, when the registry is
down: the registry is no longer a single point of failure for reading the network.

Before it lists an address it has not reached yet, the registry connects to it
(:meth:`RegistryServer._dial_back`): over TLS the ``wss://`` url pins the announcer's own
key, so the dial proves the announcer serves there, and a staked node or relay cannot
list an address that is not its own (where devices would waste their paths' attempts, or
an exit's share would go to someone else's host).

The listing is read in pages (:func:`listing_page`) of at most ``LIST_PAGE`` entries and
``LIST_PAGE_BYTES`` bytes, so it holds ``MAX_LISTED`` entries however large each is (up to
``MAX_CONTACT_BYTES`` of contact). A reader skips an entry that does not check out and
keeps the rest: one junk announcement cannot make the network unreadable.
"""

from __future__ import annotations

import bisect
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import trio

from overlay import tls
from overlay.link import LinkClosed, Transport

from ..clock import Clock
from ..errors import ConnectionLost, DecodeError, RpcError
from ..identity import Identity, verify
from ..rpc import Connection, RpcServer, open_rpc
from ..websocket import split_url
from ..whole_file import remove_leftovers, replace_file
from ..wire import Fields, decode_cbor, encode_cbor
from .admission import MAX_REGISTRATION_BYTES, Registration
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
#: A relay's contact is about 130 bytes (key, address, expiry, signature).
MAX_CONTACT_BYTES = 512
#: Entries and bytes of announcements in one page of ``list`` (well inside a frame).
LIST_PAGE = 200
LIST_PAGE_BYTES = 96 * 1024
#: How long the registry gives an announced address to complete a connection (TLS
#: included), and how many such dials it makes at once.
DIAL_BACK_TIMEOUT_S = 5.0
MAX_DIALS = 8


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
        ledger: bytes | None,
        max_age_ms: int = ANNOUNCEMENT_TTL_MS,
    ) -> Snapshot:
        """A listing of signed announcements, each checked: shape, own-key signature, age
        at most ``max_age_ms`` (so an old announcement of a dead node cannot be replayed
        forever) and, for a node, its registration under ``ledger`` (``None``: a network
        without admission, where positions come from the keys). An entry that fails is
        left out, and the rest stand. For one key the newest announcement counts.
        Re-reading is cheap: a signature checked before is remembered
        (:func:`overlay.keys.verify`)."""
        fields = Fields(value, "listing").only("announcements")
        newest: dict[tuple[str, str], dict[str, Any]] = {}
        positions: dict[tuple[str, str], int | None] = {}
        refused = 0
        for item in fields.items("announcements", max_len=MAX_LISTED):
            try:
                announcement = Fields(item, "announcement")
                raw = _checked_record(announcement)
                age = now_ms - raw["timestamp"]
                if not -CLOCK_SKEW_MS <= age <= max_age_ms + CLOCK_SKEW_MS:
                    raise DecodeError(f"the announcement of {raw['pubkey'][:8]} is stale or early")
                position = _node_position(raw, ledger)
            except (DecodeError, RpcError) as exc:
                refused += 1
                logger.debug("left out of the listing: %s", exc)
                continue
            key = (raw["kind"], raw["pubkey"])
            if key not in newest or newest[key]["record"]["timestamp"] < raw["timestamp"]:
                newest[key] = {"record": raw, "signature": announcement.blob("signature", size=64)}
                positions[key] = position
        if refused:
            logger.info("left %d announcements that do not check out out of the listing", refused)
        records = [newest[key]["record"] for key in sorted(newest)]
        return cls(
            tuple(
                NodeInfo(r["pubkey"], r["url"], positions[("node", r["pubkey"])])
                for r in records
                if r["kind"] == "node"
            ),
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
            contact = (
                relay.blob("contact", max_len=MAX_CONTACT_BYTES) if relay.has("contact") else b""
            )
            relays.append(
                RelayInfo(_hex_key(relay.text("pubkey", max_len=64)), relay.text("url"), contact)
            )
        return cls(tuple(sorted(nodes)), tuple(sorted(relays, key=lambda r: r.pubkey)))


def merge_listings(
    known: Snapshot,
    answers: Sequence[Snapshot],
    now_ms: int,
    *,
    ledger: bytes | None,
    agree: int,
) -> Snapshot:
    """What a device takes the listing to be after reading it from service nodes: each
    node's copy of the registry's announcements (``answers``, each checked on its own)
    merged with the listing it knew, newest announcement per key.

    * A node that withholds an entry does not remove it: what was known stands until it
      is too old.
    * A relay not known before is taken only when ``agree`` answers name it: relays are
      not admitted, so one node could otherwise fill the listing with relays of its own
      and draw the device's paths through them. A node's entry carries its registration
      under ``ledger``, so one answer will do.
    * "Too old" is measured from the listing's newest entry, not from now: while the
      registry is down the nodes serve their last copy (for up to
      :data:`CACHED_LISTING_MAX_AGE_MS`), and its entries then age together instead of
      all dropping out :data:`ANNOUNCEMENT_TTL_MS` after the outage began.
    * What was known comes first when the merge is cut at :data:`MAX_LISTED`."""
    newest: dict[tuple[str, str], dict[str, Any]] = {}

    def key_of(announcement: dict[str, Any]) -> tuple[str, str]:
        return (announcement["record"]["kind"], announcement["record"]["pubkey"])

    def offer(announcement: dict[str, Any]) -> None:
        key = key_of(announcement)
        if (
            key not in newest
            or newest[key]["record"]["timestamp"] < (announcement["record"]["timestamp"])
        ):
            newest[key] = announcement

    for announcement in known.announcements:
        offer(announcement)
    named: dict[tuple[str, str], int] = {}
    for answer in answers:
        for announcement in answer.announcements:
            named[key_of(announcement)] = named.get(key_of(announcement), 0) + 1
    for answer in answers:
        for announcement in answer.announcements:
            key = key_of(announcement)
            if key in newest or key[0] == "node" or named[key] >= agree:
                offer(announcement)
    entries = list(newest.values())[:MAX_LISTED]
    listing_ms = max((entry["record"]["timestamp"] for entry in entries), default=now_ms)
    return Snapshot.from_announcements(
        {"announcements": entries}, min(now_ms, listing_ms), ledger=ledger
    )


def _hex_key(text: str) -> str:
    try:
        if len(bytes.fromhex(text)) == 32 and text == text.lower():
            return text
    except ValueError:
        pass
    raise DecodeError(f"not a 32-byte lowercase hex key: {text!r}")


def _node_position(raw: dict[str, Any], ledger: bytes | None) -> int | None:
    """Where a node's announcement puts it on the ring: its registration's position
    under ``ledger``; ``None`` (the key's own) without a ledger, or for a relay. Relays
    are admitted as nodes are (an exit draws on servers' onion shares, and paths are
    drawn among relays, so anyone who could list relays at will could take both):
    :class:`DecodeError` for either kind without a valid registration."""
    if ledger is None:
        return None
    registration = Registration.decode(raw["registration"])
    registration.check(ledger, raw["pubkey"])
    return registration.position if raw["kind"] == "node" else None


def _announcement_text(record: dict[str, Any]) -> bytes:
    return ANNOUNCE_DOMAIN + encode_cbor(record)


def sign_announcement(
    identity: Identity,
    kind: str,
    url: str,
    now_ms: int,
    contact: bytes = b"",
    registration: bytes = b"",
) -> dict[str, Any]:
    record = {
        "kind": kind,
        "pubkey": identity.ed25519_public.hex(),
        "url": url,
        "timestamp": now_ms,
        "contact": contact,
        "registration": registration,
    }
    return {"record": record, "signature": identity.sign(_announcement_text(record))}


#: A registry entry: (listed until, record, its signature).
Entry = tuple[int, dict[str, Any], bytes]


def needs_dial_back(previous: Entry | None, url: str, now_ms: int) -> bool:
    """Whether an announcement of ``url`` must be reached first: its announcer is new, was
    listed at another url, or its entry expired."""
    return previous is None or previous[0] <= now_ms or previous[1]["url"] != url


def listing_page(announcements: Sequence[dict[str, Any]], params: Fields) -> dict[str, Any]:
    """One page of a listing sorted by (kind, pubkey), for ``list`` ``{"after"?: [kind,
    pubkey]}``: the entries after that key, at most ``LIST_PAGE`` of them and about
    ``LIST_PAGE_BYTES``, and ``next``, the key to ask after for the next page (``None``
    at the end)."""
    params.only("after")
    start = 0
    if params.has("after"):
        after = params.items("after", max_len=2)
        if len(after) != 2 or not all(isinstance(part, str) for part in after):
            raise DecodeError("params.after is [kind, pubkey]")
        keys = [(a["record"]["kind"], a["record"]["pubkey"]) for a in announcements]
        start = bisect.bisect_right(keys, (after[0], after[1]))
    page: list[dict[str, Any]] = []
    size = 0
    for announcement in announcements[start : start + LIST_PAGE]:
        size += len(encode_cbor(announcement))
        if page and size > LIST_PAGE_BYTES:
            break
        page.append(announcement)
    more = start + len(page) < len(announcements)
    last = page[-1]["record"] if page else None
    return {
        "announcements": page,
        "next": [last["kind"], last["pubkey"]] if more and last is not None else None,
    }


def check_announcement(params: Fields, now_ms: int) -> dict[str, Any]:
    """The record of a signed announcement (``announce`` params), checked in full:
    :class:`DecodeError` for a malformed one, ``clock_skew`` for a stale one and
    ``unauthorized`` unless its own key signed exactly this record."""
    raw = _checked_record(params)
    if abs(raw["timestamp"] - now_ms) > CLOCK_SKEW_MS:
        raise RpcError("clock_skew", "announcement timestamp is too far from the registry's")
    return raw


def _checked_record(params: Fields) -> dict[str, Any]:
    """Shape and signature of one announcement; its age is the caller's business."""
    params.only("record", "signature")
    record = params.map("record").only(
        "kind", "pubkey", "url", "timestamp", "contact", "registration"
    )
    kind = record.text("kind", max_len=8)
    if kind not in KINDS:
        raise DecodeError(f"record.kind must be one of {KINDS}")
    pubkey = _hex_key(record.text("pubkey", max_len=64))
    raw: dict[str, Any] = {
        "kind": kind,
        "pubkey": pubkey,
        "url": record.text("url"),
        "timestamp": record.uint("timestamp"),
        "contact": record.blob("contact", max_len=MAX_CONTACT_BYTES),
        "registration": record.blob("registration", max_len=MAX_REGISTRATION_BYTES),
    }
    signature = params.blob("signature", size=64)
    if not verify(bytes.fromhex(pubkey), _announcement_text(raw), signature):
        raise RpcError("unauthorized", "announcement signature does not verify")
    _check_own_pin(raw["url"], pubkey)
    return raw


def _check_own_pin(url: str, pubkey: str) -> None:
    """A node or relay serves TLS as its own key, so the url it announces, if pinned
    (a node's ``wss://…/<key>``, a relay's ``host:port#<key>``), pins that key. One pinning
    another key is someone else's url: announced by an admitted node it made the real
    owner's url name two nodes (so devices sealed onion requests to neither)."""
    try:
        _, pin = split_url(url) if url.startswith("wss://") else tls.split_pin(url)
    except ValueError as exc:
        raise DecodeError(f"url of {pubkey[:8]}: {exc}") from None
    if pin is not None and pin.hex() != pubkey:
        raise DecodeError(f"the url of {pubkey[:8]} pins another key")


class Listing(Protocol):
    """Where a reader learns the network (a device, a server that reads the relays)."""

    async def fetch(self) -> Snapshot: ...


class Directory(Listing, Protocol):
    """Where a node or relay learns the network and announces itself."""

    async def announce(
        self,
        identity: Identity,
        kind: str,
        url: str,
        contact: bytes = b"",
        registration: bytes = b"",
    ) -> None: ...


@dataclass
class FileDirectory:
    """A static network described by a JSON file ``{"nodes": [...], "relays": [...]}``,
    re-read on every fetch so an operator's edit takes effect at the next refresh."""

    path: Path

    def __post_init__(self) -> None:
        """Read it once now: a missing or malformed file is an error before anything is
        served, not a node that says ready and knows no network."""
        self._parse(self.path.read_text())

    async def fetch(self) -> Snapshot:
        return self._parse(await trio.Path(self.path).read_text())

    def _parse(self, text: str) -> Snapshot:
        try:
            return Snapshot.from_wire(json.loads(text))
        except (json.JSONDecodeError, DecodeError) as exc:
            raise DecodeError(f"{self.path}: {exc}") from None

    async def announce(
        self,
        identity: Identity,
        kind: str,
        url: str,
        contact: bytes = b"",
        registration: bytes = b"",
    ) -> None:
        await trio.lowlevel.checkpoint()


LISTING_ERRORS = (OSError, ConnectionLost, RpcError, DecodeError)


class SavedFile:
    """One file's saves, made in turn, each in a worker thread. Handlers save while others
    are under way; a write takes the state as it is when its turn comes, so the file ends
    with the latest whatever order the threads finish in, and saves asked for while one
    write was under way are all covered by the next (one write, not one each: a burst of
    announcements costs two writes of the listing, not as many as there were)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._turn = trio.Lock()
        self._asked = 0  # saves asked for so far
        self._written = 0  # of those, the ones the file holds
        remove_leftovers(path)

    async def save(self, contents: Callable[[], bytes]) -> None:
        """Return once the file holds what ``contents()`` would return now."""
        self._asked += 1
        mine = self._asked
        async with self._turn:
            if self._written >= mine:
                return  # a write that began after this save was asked for covered it
            covering = self._asked
            await trio.to_thread.run_sync(replace_file, self.path, contents())
            self._written = covering


@dataclass
class RegistryDirectory:
    """A live registry server, one short connection per call. When the registry cannot
    be read, it asks the nodes it knows (``seeds``, then those of the last listing) for the
    copy they hold, and failing that reads back the last listing it saved at
    ``cache_path``; every copy is checked signature by signature like the registry's, and
    every node's registration under ``ledger`` (``None`` only for a network without
    admission)."""

    transport: Transport
    url: str
    clock: Clock
    ledger: bytes | None
    seeds: tuple[str, ...] = ()
    cache_path: Path | None = None
    _known: list[str] = field(default_factory=list)
    _saved: SavedFile | None = field(default=None, init=False, repr=False)
    _to_save: Snapshot = field(default_factory=Snapshot, init=False, repr=False)

    async def fetch(self) -> Snapshot:
        try:
            snapshot = await self._read(self.url, ANNOUNCEMENT_TTL_MS)
        except LISTING_ERRORS as exc:
            snapshot = await self._fallback(exc)
        else:
            await self._save(snapshot)
        self._known = [n.url for n in snapshot.nodes]
        return snapshot

    async def announce(
        self,
        identity: Identity,
        kind: str,
        url: str,
        contact: bytes = b"",
        registration: bytes = b"",
    ) -> None:
        params = sign_announcement(identity, kind, url, self.clock.now_ms(), contact, registration)
        async with open_rpc(self.transport, self.url) as client:
            await client.call("announce", params)

    async def _read(self, url: str, max_age_ms: int) -> Snapshot:
        announcements = await read_listing(self.transport, url)
        return Snapshot.from_announcements(
            {"announcements": announcements},
            self.clock.now_ms(),
            ledger=self.ledger,
            max_age_ms=max_age_ms,
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
        if self._saved is None:
            self._saved = SavedFile(self.cache_path)
        self._to_save = snapshot  # what a write that covers several saves writes: the latest
        await self._saved.save(lambda: encode_cbor(self._to_save.announcements_to_wire()))

    async def _load(self) -> Snapshot | None:
        if self.cache_path is None:
            return None
        try:
            data = await trio.Path(self.cache_path).read_bytes()
            return Snapshot.from_announcements(
                decode_cbor(data),
                self.clock.now_ms(),
                ledger=self.ledger,
                max_age_ms=CACHED_LISTING_MAX_AGE_MS,
            )
        except FileNotFoundError:
            return None
        except LISTING_ERRORS as exc:
            logger.warning("ignoring the saved listing %s: %s", self.cache_path, exc)
            return None


async def read_listing(transport: Transport, url: str) -> list[object]:
    """Every announcement ``url`` (the registry, or a node serving its copy) lists, page
    by page over one connection; at most ``MAX_LISTED``."""
    async with open_rpc(transport, url) as client:
        return await read_listing_pages(partial(client.call, "list"))


async def read_listing_pages(list_page: Callable[[dict[str, Any]], Awaitable[Any]]) -> list[object]:
    """Every announcement of a listing, page by page, ``list_page`` calling ``list`` with
    its params however it reaches the server (one connection, or onion requests to a node);
    at most ``MAX_LISTED``."""
    announcements: list[object] = []
    after: tuple[str, str] | None = None
    while True:
        params: dict[str, Any] = {} if after is None else {"after": list(after)}
        page = Fields(await list_page(params), "listing").only("announcements", "next")
        entries = page.items("announcements", max_len=LIST_PAGE)
        announcements += entries
        if page.raw("next") is None:
            return announcements
        following = page.items("next", max_len=2)
        if len(following) != 2 or not all(isinstance(part, str) for part in following):
            raise DecodeError("a listing page's next is not a [kind, pubkey] key")
        key = (str(following[0]), str(following[1]))
        # Pages come sorted by key: a server that sends an empty page or does not move
        # on would keep a reader asking for ever.
        if not entries or (after is not None and key <= after):
            raise DecodeError("a listing page that does not move on")
        after = key
        if len(announcements) >= MAX_LISTED:
            raise DecodeError(f"the listing goes on past {MAX_LISTED} entries")


class RegistryServer:
    """Keeps signed announcements until they expire; optionally persisted to a JSON file
    so a restarted registry answers with the last list at once. With a ``ledger`` key it
    takes a node's announcement only with a registration that ledger signed. With a
    ``dial_back`` transport it lists an address only once it has connected to it (see
    the module's docstring); None skips that, for tests that announce addresses nothing
    serves."""

    def __init__(
        self,
        clock: Clock,
        state_path: Path | None = None,
        *,
        ledger: bytes | None,
        dial_back: Transport | None,
    ) -> None:
        self.clock = clock
        self.ledger = ledger
        #: What to reach an announced address with, by kind (None: no dial-back).
        self._dial = (
            None
            if dial_back is None
            else {
                "node": dial_back,
                "relay": dial_back.for_overlay(),
            }
        )
        self._dials = trio.CapacityLimiter(MAX_DIALS)
        self._state = None if state_path is None else SavedFile(state_path)
        self._entries: dict[tuple[str, str], Entry] = {}  # by (kind, pubkey)
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
        try:
            _node_position(raw, self.ledger)
        except DecodeError as exc:
            raise RpcError("unauthorized", f"not admitted: {exc}") from None
        key = (raw["kind"], raw["pubkey"])
        signature = params.blob("signature", size=64)
        previous = self._place_for(key, raw["timestamp"])
        if self._dial is not None and needs_dial_back(previous, raw["url"], now):
            await self._dial_back(self._dial[raw["kind"]], raw["url"])
            self._place_for(key, raw["timestamp"])  # the same key may have announced meanwhile
        self._entries[key] = (self.clock.now_ms() + ANNOUNCEMENT_TTL_MS, raw, signature)
        await self._save()
        return {"ttl_ms": ANNOUNCEMENT_TTL_MS}

    def _place_for(self, key: tuple[str, str], timestamp: int) -> Entry | None:
        """The entry an announcement made at ``timestamp`` replaces, or refuse it: an
        older one than listed, or a new entry in a full registry."""
        previous = self._entries.get(key)
        if previous is not None and previous[1]["timestamp"] > timestamp:
            raise RpcError("unauthorized", "announcement is older than the one listed")
        if previous is None and len(self._entries) >= MAX_LISTED:
            raise RpcError("unavailable", "registry is full")
        return previous

    async def _dial_back(self, transport: Transport, url: str) -> None:
        """Connect to ``url`` (TLS pinned to the key it names), or refuse the announcement."""
        try:
            async with self._dials:
                with trio.fail_after(DIAL_BACK_TIMEOUT_S):
                    async with transport.connect(url):
                        pass
        except (OSError, LinkClosed, trio.TooSlowError) as exc:
            raise RpcError("unavailable", f"the registry could not reach {url}: {exc}") from None

    def _list(self, params: Fields, conn: Connection) -> Any:
        return listing_page(self.snapshot().announcements, params)

    async def _save(self) -> None:
        if self._state is not None:
            await self._state.save(self._state_json)

    def _state_json(self) -> bytes:
        entries = [
            {
                "expiry": expiry,
                "signature": signature.hex(),
                **{k: v.hex() if isinstance(v, bytes) else v for k, v in rec.items()},
            }
            for expiry, rec, signature in self._entries.values()
        ]
        return json.dumps(entries).encode()

    def _load(self, path: Path) -> None:
        try:
            for entry in json.loads(path.read_text()):
                rec = {k: entry[k] for k in ("kind", "pubkey", "url", "timestamp")}
                rec["contact"] = bytes.fromhex(entry["contact"])
                rec["registration"] = bytes.fromhex(entry.get("registration", ""))
                signature = bytes.fromhex(entry["signature"])
                self._entries[(rec["kind"], rec["pubkey"])] = (int(entry["expiry"]), rec, signature)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring unreadable registry state %s: %s", path, exc)
            self._entries.clear()
