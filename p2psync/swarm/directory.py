"""How readers learn the network, and how nodes and relays announce themselves to it.

Readers go through the small :class:`Directory` interface, so a node or client works the
same with a live registry (:class:`RegistryDirectory`; the server is
:class:`~.registry.RegistryServer`) or a file (a static network's, :class:`FileDirectory`;
its operator is the one who admits). Because the listing proves itself, any node can serve
the copy it holds (its ``list`` method), and a :class:`RegistryDirectory` asks known
nodes, then its saved copy, when the registry is down: the registry is no longer a single
point of failure for reading the network. The listing is read in pages
(:func:`read_listing_pages`); what a reader makes of it is decided in :mod:`.listing`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import trio

from overlay.link import LinkClosed, Transport

from ..clock import Clock
from ..errors import ConnectionLost, DecodeError, RpcError
from ..identity import Identity
from ..rpc import RpcClient, open_rpc
from ..saved_file import SavedFile
from ..wire import Fields, decode_cbor, encode_cbor
from .dial_back import DIAL_BACK_TIMEOUT_S
from .listing import (
    ANNOUNCEMENT_TTL_MS,
    CACHED_LISTING_MAX_AGE_MS,
    LIST_PAGE,
    MAX_LISTED,
    Snapshot,
    sign_announcement,
)

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

    def one_connection(self) -> AbstractAsyncContextManager[Directory]:
        """This directory with its calls on one connection (a refresh announces and
        reads: one handshake for the registry, not two)."""
        ...


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

    @asynccontextmanager
    async def one_connection(self) -> AsyncIterator[Directory]:
        yield self


LISTING_ERRORS = (OSError, ConnectionLost, RpcError, DecodeError)


@dataclass
class RegistryDirectory:
    """A live registry server, one short connection per call (or per
    :meth:`one_connection` block). When the registry cannot
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

    async def fetch(self, *, via: RpcClient | None = None) -> Snapshot:
        """The registry's listing (read over ``via``, a connection to it, if given), or
        a copy of it as above."""
        try:
            snapshot = await self._read(self.url, ANNOUNCEMENT_TTL_MS, via)
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
        *,
        via: RpcClient | None = None,
    ) -> None:
        """Announce (over ``via``, a connection to the registry, if given);
        :class:`ConnectionLost` if the registry has not answered within
        :data:`ANNOUNCE_TIMEOUT_S` (it dials new addresses back first)."""
        params = sign_announcement(identity, kind, url, self.clock.now_ms(), contact, registration)
        with trio.move_on_after(ANNOUNCE_TIMEOUT_S):
            async with self._connection(self.url, via) as client:
                await client.call("announce", params)
                return
        raise ConnectionLost(f"the registry at {self.url} did not answer the announcement")

    @asynccontextmanager
    async def one_connection(self) -> AsyncIterator[Directory]:
        """This directory, announcing and reading over one connection to the registry
        inside the block (:class:`_OnOneConnection`): hundreds of nodes and relays each
        refresh every minute or two, and each refresh both announces and reads. A
        registry that cannot be reached is no error here: inside the block the calls
        then fail, or fall back, as they would without it."""
        on_one: _OnOneConnection | None = None
        done = False
        try:
            with trio.move_on_after(ANNOUNCE_TIMEOUT_S) as connecting:
                async with open_rpc(self.transport, self.url) as client:
                    connecting.deadline = math.inf  # the calls inside keep their own
                    if not connecting.cancel_called:  # else connected past the deadline
                        on_one = _OnOneConnection(self, client)
                        yield on_one
                        done = True
        except (OSError, LinkClosed) as exc:
            if on_one is not None and not done:
                raise  # the block's own
            logger.debug("registry %s: %s", self.url, exc)  # connecting, or closing after
        if on_one is None:
            yield self

    @asynccontextmanager
    async def _connection(self, url: str, held: RpcClient | None) -> AsyncIterator[RpcClient]:
        if held is not None and not held.closed.is_set():
            yield held
            return
        async with open_rpc(self.transport, url) as client:
            yield client

    async def _read(self, url: str, max_age_ms: int, held: RpcClient | None = None) -> Snapshot:
        async with self._connection(url, held) as client:
            announcements = await read_listing_pages(partial(client.call, "list"))
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


class _OnOneConnection:
    """A :class:`RegistryDirectory` whose calls go over ``client`` while it is open, and
    over a connection of their own once it is not or once a call on it failed (it may be
    wedged: a read after an announcement that timed out would wait on it for ever)."""

    def __init__(self, directory: RegistryDirectory, client: RpcClient) -> None:
        self._directory = directory
        self._client: RpcClient | None = client

    async def fetch(self) -> Snapshot:
        return await self._directory.fetch(via=self._client)

    async def announce(
        self,
        identity: Identity,
        kind: str,
        url: str,
        contact: bytes = b"",
        registration: bytes = b"",
    ) -> None:
        try:
            await self._directory.announce(
                identity, kind, url, contact, registration, via=self._client
            )
        except BaseException:
            self._client = None
            raise

    @asynccontextmanager
    async def one_connection(self) -> AsyncIterator[Directory]:
        yield self


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
