"""The registry: "a record of active service nodes" (and overlay relays), and the
readers' ways to it.

Nodes and relays announce themselves with a record signed by their own Ed25519 key; the
registry (:class:`RegistryServer`) keeps each record until it expires (announcers repeat
well before that), so a node that dies drops out on its own. Where the network has a
ledger it takes a node's or relay's announcement only with a registration that ledger
signed, and before it lists an address it has not reached yet it connects to it
(:class:`DialBack`). On a network whose links are TLS the url must be an IP address and
pin the announcer's own key (and a relay's contact must be that key at that url), so the
dial proves the announcer serves there: a staked node or relay cannot list an address
that is not its own, where devices would waste their paths' attempts, or another host's,
whose exit share it would claim. What an announcement must be, and what a reader makes
of a listing, is decided in :mod:`.listing`.

Readers go through the small :class:`Directory` interface, so a node or client works the
same with a live registry or a file (a static network's, :class:`FileDirectory`; its
operator is the one who admits). Because the listing proves itself, any node can serve
the copy it holds (its ``list`` method), and a :class:`RegistryDirectory` asks known
nodes, then its saved copy, when the registry is down: the registry is no longer a single
point of failure for reading the network. The listing is read in pages
(:func:`read_listing_pages`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import trio

from overlay.link import Transport

from ..clock import Clock
from ..errors import ConnectionLost, DecodeError, RpcError
from ..identity import Identity
from ..rpc import Connection, RpcServer, open_rpc
from ..whole_file import remove_leftovers, replace_file
from ..wire import Fields, decode_cbor, encode_cbor
from .dial_back import DIAL_BACK_TIMEOUT_S, DialBack, DialBusy, DialFailed
from .listing import (
    ANNOUNCEMENT_TTL_MS,
    CACHED_LISTING_MAX_AGE_MS,
    LIST_PAGE,
    MAX_LISTED,
    Entry,
    IpRange,
    RefusedRange,
    RelayInfo,
    Snapshot,
    admitted_position,
    check_announcement,
    check_dial_address,
    check_fresh,
    check_pinned_url,
    listing_page,
    needs_dial_back,
    sign_announcement,
)
from .ring import NodeInfo

logger = logging.getLogger(__name__)

#: How long an announcer waits for the registry's answer: its dial back and a margin.
ANNOUNCE_TIMEOUT_S = DIAL_BACK_TIMEOUT_S + 5.0


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
        #: Its own worker thread, so other work's threads (a slow name lookup) cannot
        #: hold the saves up.
        self._thread = trio.CapacityLimiter(1)
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
            await trio.to_thread.run_sync(replace_file, self.path, contents(), limiter=self._thread)
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
        """Announce; :class:`ConnectionLost` if the registry has not answered within
        :data:`ANNOUNCE_TIMEOUT_S` (it dials new addresses back first)."""
        params = sign_announcement(identity, kind, url, self.clock.now_ms(), contact, registration)
        with trio.move_on_after(ANNOUNCE_TIMEOUT_S):
            async with open_rpc(self.transport, self.url) as client:
                await client.call("announce", params)
                return
        raise ConnectionLost(f"the registry at {self.url} did not answer the announcement")

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
    takes a node's announcement only with a registration that ledger signed. It lists
    ``capacity`` entries at most. With a ``dial_back`` transport it lists an address only
    once it has connected to it (:class:`DialBack`), and never one in the ``refused``
    ranges, nor (given such ranges) a host name, on TLS or plaintext links
    (:func:`~.listing.check_dial_address`); None skips the dial, for tests that announce
    addresses nothing serves."""

    def __init__(
        self,
        clock: Clock,
        state_path: Path | None = None,
        *,
        ledger: bytes | None,
        dial_back: Transport | None,
        capacity: int = MAX_LISTED,
        refused: Sequence[IpRange] = (),
    ) -> None:
        self.clock = clock
        self._refused = tuple(refused)
        self.ledger = ledger
        self._capacity = capacity
        self._dial = None if dial_back is None else DialBack(dial_back, clock)
        #: Entries read back from the state file: listed, but dialled again on their
        #: next announcement (the registry that reached them is gone).
        self._unreached: set[tuple[str, str]] = set()
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
            self._check_admissible(raw)
        except RefusedRange:
            assert self._dial is not None  # ranges are checked only where it dials
            await self._dial.refuse(raw["pubkey"])
        key = (raw["kind"], raw["pubkey"])
        signature = params.blob("signature", size=64)
        previous = self._place_for(key, raw["timestamp"], now)
        if previous is not None and previous[2] == signature:
            # The listed announcement again, signature and all (anyone can copy it from
            # the listing): it renews nothing and dials nothing.
            return {"ttl_ms": max(0, previous[0] - now)}
        url = raw["url"]
        saved = key in self._unreached and not needs_dial_back(previous, url, now)
        if self._dial is not None and needs_dial_back(previous, url, now, reached=not saved):
            try:
                await self._dial.reach(raw["kind"], raw["pubkey"], url)
            except DialBusy:
                if not saved:
                    raise
                # Listed before the restart at this url: renewed, and dialled on a later
                # announcement that finds a free slot (holding the slots drains nothing).
            except DialFailed:
                if saved:  # its url no longer answers as its key: no longer listed
                    self._forget(key)
                    await self._save()
                raise
            else:
                self._unreached.discard(key)
            # Checked again: the same key may have announced meanwhile, the registry
            # filled, and the announcement aged (a dial takes up to its timeout).
            now = self.clock.now_ms()
            self._place_for(key, raw["timestamp"], now)
            check_fresh(raw["timestamp"], now)
        self._entries[key] = (now + ANNOUNCEMENT_TTL_MS, raw, signature)
        await self._save()
        return {"ttl_ms": ANNOUNCEMENT_TTL_MS}

    def _check_admissible(self, raw: dict[str, Any]) -> None:
        """Admission first, then the url: what the registry refuses to dial is no
        stranger's business (on a registry with a ledger)."""
        try:
            admitted_position(raw, self.ledger)
        except DecodeError as exc:
            raise RpcError("unauthorized", f"not admitted: {exc}") from None
        if self._dial is not None and self._dial.transport.pins_keys:
            check_pinned_url(raw["kind"], raw["url"], self._refused)
        elif self._dial is not None and self._refused:
            check_dial_address(raw["url"], self._refused)

    def _forget(self, key: tuple[str, str]) -> None:
        self._entries.pop(key, None)
        self._unreached.discard(key)

    def _place_for(self, key: tuple[str, str], timestamp: int, now_ms: int) -> Entry | None:
        """The entry an announcement made at ``timestamp`` replaces, or refuse it: an
        older one than listed, or a new entry in a full registry (once the expired
        entries are gone)."""
        previous = self._entries.get(key)
        if previous is not None and previous[1]["timestamp"] > timestamp:
            raise RpcError("unauthorized", "announcement is older than the one listed")
        if previous is None and len(self._entries) >= self._capacity:
            for gone in [k for k, (expiry, _, _) in self._entries.items() if expiry <= now_ms]:
                self._forget(gone)
            if len(self._entries) >= self._capacity:
                raise RpcError("unavailable", "registry is full")
        return previous

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
                try:  # the ledger and the refused ranges may have changed since
                    self._check_admissible(rec)
                except (DecodeError, RpcError) as exc:
                    logger.info("registry state: left out %s: %s", rec["pubkey"][:8], exc)
                    continue
                key = (rec["kind"], rec["pubkey"])
                self._entries[key] = (int(entry["expiry"]), rec, signature)
                self._unreached.add(key)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring unreadable registry state %s: %s", path, exc)
            self._entries.clear()
            self._unreached.clear()
