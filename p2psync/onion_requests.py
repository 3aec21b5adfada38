"""Onion requests: a device reaches a server through one of its own overlay paths, so no
server sees the device's address (DESIGN.md §6, issue 17).

The path's exit relay hands the request to the server and carries the answer back; it
sees the server's address but not the request, which is sealed end-to-end to the server's
X25519 key (converted from the Ed25519 key the server announces) with a fresh ephemeral
key per request (libsodium's sealed box). Inside: the time it was sealed, a fresh reply
key, and the RPC request frame as it would travel on a direct connection; the server
answers with the reply frame under the reply key (secretbox). Relays on the path see only
cells, as for any payload.

* Server side: :class:`OnionService` adds the ``onion`` method to any :class:`RpcServer`
  (storage node, file server, open group server). The inner request goes through the
  server's own dispatch (:meth:`RpcServer.answer`), so it keeps its own signatures and
  authorisation is unchanged. Sealed bodies that do not open, are stale or were seen
  before are refused and counted (:class:`OnionStats`). Onion requests are not charged
  to the connection's rate bucket but to the exit's share (:class:`OnionShare`): one
  exit carries many clients, whom the server cannot tell apart (that is the point), so
  the server is fair between exits and each exit between the paths and links its
  requests come by (:class:`overlay.exits.ExitCaps`).
* Relay side: :class:`RpcExit` is the :class:`overlay.relay.Exit` an overlay relay is
  given: it calls ``onion`` from the relay's own host, only on the servers of
  :class:`ExitServers` (the listing's service nodes, the file server and the open group
  server, each however its address is spelled: :func:`server_address`), over at most
  ``EXIT_MAX_CONNECTIONS`` connections (:class:`ExitConnections`). An exit that reached
  any address a request named would be a port scanner of its own host's network.
* Client side: :class:`OnionRpcPool` has the call interface of :class:`RpcPool` (``call``,
  ``get``, ``transport``), on an overlay :class:`~overlay.endpoint.Endpoint`: each request
  goes on the endpoint's next path in turn, and one that gets no answer in time, or a
  failure from its exit, is sealed afresh and sent on another path.

Pushes (``subscribe``) need a connection of their own and do not travel on paths, so an
onion pool offers none (its ``transport`` is ``None``): a device on onion requests polls
through its paths, and one configured to subscribe is refused at open rather than given
a direct connection that would show the node its address and account.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import random
import struct
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple, cast

import nacl.exceptions
import nacl.public
import nacl.secret
import trio

from overlay.constants import EXIT_TIMEOUT_MS
from overlay.endpoint import Endpoint
from overlay.exits import ExitFailed, peer_host
from overlay.link import LinkClosed, Transport
from overlay.path import Path
from overlay.tasks import open_task_nursery

from .backoff import Backoff
from .clock import Clock
from .errors import ConnectionLost, DecodeError, RpcError
from .identity import Identity, ed25519_to_x25519, seal
from .rpc import (
    Connection,
    KeyedRateLimit,
    Params,
    RpcClient,
    RpcRouter,
    RpcServer,
    made,
    open_rpc,
    result_of,
)
from .swarm.directory import LISTING_ERRORS, Listing, read_listing_pages
from .swarm.listing import ANNOUNCEMENT_TTL_MS, CACHED_LISTING_MAX_AGE_MS, Snapshot, merge_listings
from .wire import Fields, Request, decode_frame, encode_frame

logger = logging.getLogger(__name__)

ONION_METHOD = "onion"
#: version (1) ‖ sealed at, ms (8) ‖ reply key (32), then the request frame.
_HEADER = struct.Struct(">BQ32s")
ONION_VERSION = 1
#: A server refuses an onion request sealed further than this from its own clock (either
#: way): a replay, or a clock off by more than signed requests already tolerate.
ONION_FRESHNESS_MS = 2 * 60 * 1000
#: Sealed requests a server remembers to refuse their replays (they are refused as stale
#: after ONION_FRESHNESS_MS anyway). Past it the oldest are forgotten first: it takes over
#: 500 onion requests a second for one to be forgotten while still fresh.
ONION_REPLAY_ENTRIES = 64 * 1024
#: How long a client waits for one attempt's answer before trying another path: past the
#: exit's own timeout, so a slow server gets a request once per attempt that failed, not
#: a copy on every path while the first is still being answered.
ONION_ATTEMPT_TIMEOUT_S = EXIT_TIMEOUT_MS / 1000 + 2.0
#: The id every inner request carries: a per-device counter would let a server tell a
#: device's requests apart from its siblings' (and count them) through any exit.
ONION_REQUEST_ID = 1
#: Attempts per request (each on a path not tried yet for it, when there is one).
ONION_ATTEMPTS = 3
#: Connections an exit keeps to servers at once; past it, the one used least recently
#: (and not in use) is closed to make room.
EXIT_MAX_CONNECTIONS = 128


@dataclass
class OnionStats:
    """What a server's ``onion`` method answered and what it refused, by reason."""

    answered: int = 0
    refused_malformed: int = 0
    refused_stale: int = 0
    refused_replayed: int = 0
    #: Over the share of the exit they came from, or over all exits' together.
    refused_rate: int = 0
    #: Requests (admitted or not) from callers on no listed relay's host.
    unlisted: int = 0


@dataclass(frozen=True)
class OnionShare:
    """How many onion requests a server answers: each exit host as many as one direct
    connection may send (its own bucket), all exits together ``total_per_s``.

    Keyed by the exit's host (:func:`~overlay.exits.peer_host`: an IPv6 address by its
    /64), not its connection, so an exit (or anyone calling ``onion`` directly) does not
    get more by opening more connections or taking more addresses of one /64; and apart
    from the connection's own bucket, which an exit's connection would otherwise exhaust
    for every client behind it at once.

    Anyone may call ``onion``, but on a server that reads the registry's listing only the
    hosts of listed relays draw on those shares: four hosts of an attacker's own would
    otherwise spend the total that the real exits' clients depend on. Other callers (a
    relay not listed yet, or one that calls from another address than it announced)
    draw on the ``unlisted_…`` shares, small and apart."""

    per_exit_per_s: float = 2000.0
    per_exit_burst: int = 4000
    total_per_s: float = 8000.0
    total_burst: int = 16000
    unlisted_per_s: float = 50.0
    unlisted_burst: int = 100
    unlisted_total_per_s: float = 200.0
    unlisted_total_burst: int = 400

    def limiters(self, now_s: float) -> tuple[KeyedRateLimit, KeyedRateLimit]:
        """The listed exits' limiter and everyone else's."""
        return (
            KeyedRateLimit(
                self.per_exit_burst,
                1 / self.per_exit_per_s,
                self.total_burst,
                1 / self.total_per_s,
                now_s,
            ),
            KeyedRateLimit(
                self.unlisted_burst,
                1 / self.unlisted_per_s,
                self.unlisted_total_burst,
                1 / self.unlisted_total_per_s,
                now_s,
            ),
        )


def exit_host(relay_url: str) -> str:
    """The host a relay announced at ``relay_url`` calls servers from, as a server's
    :func:`~overlay.exits.peer_host` spells a caller (the emulated network's ``mem:NAME``
    is host ``NAME``)."""
    return peer_host(relay_url.removeprefix("mem:"))


def seal_request(
    server_ed25519: bytes, request: Request, now_ms: int
) -> tuple[bytes, nacl.secret.SecretBox]:
    """``request`` sealed to the server with announced key ``server_ed25519``, and the box
    its reply will come in (a fresh key each time)."""
    x25519 = ed25519_to_x25519(server_ed25519)
    if x25519 is None:
        raise RpcError("unavailable", "the server's announced key is not a curve point")
    reply_key = os.urandom(nacl.secret.SecretBox.KEY_SIZE)
    header = _HEADER.pack(ONION_VERSION, now_ms, reply_key)
    return seal(x25519, header + encode_frame(request)), nacl.secret.SecretBox(reply_key)


class ListedExits:
    """The hosts of the relays the registry lists (:func:`exit_host`), which an
    :class:`OnionService` asks about every request: recomputed only when the listing
    changes. The listing comes from ``listing`` (a node's own view of the registry) or,
    for a server that does not announce itself, from :meth:`read`."""

    def __init__(self, listing: Callable[[], Snapshot] | None = None) -> None:
        self.snapshot = Snapshot()
        self._listing = listing or (lambda: self.snapshot)
        self._hosts_of: tuple[Snapshot, frozenset[str]] = (self.snapshot, frozenset())

    def __call__(self) -> frozenset[str]:
        snapshot = self._listing()
        if snapshot is not self._hosts_of[0]:
            self._hosts_of = (snapshot, frozenset(exit_host(r.url) for r in snapshot.relays))
        return self._hosts_of[1]

    async def read(self, listing: Listing, clock: Clock, refresh_s: float) -> None:
        """Read the listing now and every ``refresh_s`` until cancelled. A read that
        fails is logged, the last listing stands, and the next read comes after 1 s,
        doubling up to ``refresh_s`` (a registry that starts after this server is read
        within seconds of it)."""
        retry = Backoff(1.0, refresh_s)
        while True:
            try:
                self.snapshot = await listing.fetch()
            except Exception as exc:  # one bad read (or reply) never stops the server
                logger.warning("registry listing not read (the last one stands): %r", exc)
                await clock.sleep(retry.failed())
            else:
                retry.succeeded()
                await clock.sleep(refresh_s)


class OnionService:
    """The ``onion`` method of one RPC server, which it adds to ``server``.

    ``exits``: the hosts of the relays the registry lists now (:func:`exit_host`), for a
    server that reads the listing; None for one that does not, where every caller draws
    on the exits' share (see :class:`OnionShare`)."""

    def __init__(
        self,
        server: RpcServer,
        identity: Identity,
        clock: Clock,
        share: OnionShare | None = None,
        exits: Callable[[], AbstractSet[str]] | None = None,
    ) -> None:
        self._server = server
        self._identity = identity
        self._clock = clock
        self.stats = OnionStats()
        #: The ephemeral keys of the sealed requests answered lately → when sealed.
        self._seen: OrderedDict[bytes, int] = OrderedDict()
        self._share, self._unlisted_share = (share or OnionShare()).limiters(clock.now_s())
        self._exits = exits
        server.add_method(ONION_METHOD, self.handle, own_rate_limit=True)

    async def handle(self, params: Fields, connection: Connection) -> dict[str, bytes]:
        host = peer_host(connection.peer)
        share = self._share
        if self._exits is not None and host not in self._exits():
            self.stats.unlisted += 1
            share = self._unlisted_share
        if not share.allow(host.encode(), self._clock.now_s()):
            self.stats.refused_rate += 1
            raise RpcError("rate_limited", "this exit's share of onion requests is used up")
        request, reply_box = self.open(params.only("body").blob("body"))
        # A request doing the work of several (a ``store_batch``) takes its share of the
        # exit's rate as they would: one taken above, the rest now that it can be read.
        extra = self._server.cost_of(request) - 1
        if extra and not share.allow(host.encode(), self._clock.now_s(), extra):
            self.stats.refused_rate += 1
            raise RpcError("rate_limited", "this exit's share of onion requests is used up")
        reply = await self._server.answer(request, connection.peer)
        self.stats.answered += 1
        return {"body": reply_box.encrypt(reply)}

    def open(self, body: bytes) -> tuple[Request, nacl.secret.SecretBox]:
        """The request inside a sealed ``body`` and the box to answer in, or
        :class:`RpcError` ``bad_request`` (counted) if it does not open, is stale, was
        seen before or holds anything but one request for another method."""
        try:
            plain = self._identity.unseal(body)
            version, sealed_ms, reply_key = _HEADER.unpack_from(plain)
            if version != ONION_VERSION:
                raise DecodeError(f"onion version {version}")
            frame = decode_frame(
                plain[_HEADER.size :], max_bytes=self._server.limits.max_frame_bytes
            )
            if not isinstance(frame, Request) or frame.method == ONION_METHOD:
                raise DecodeError("an onion request holds one request for another method")
        except (DecodeError, struct.error) as exc:
            self.stats.refused_malformed += 1
            raise RpcError("bad_request", f"onion request: {exc}") from None
        now_ms = self._clock.now_ms()
        if abs(now_ms - sealed_ms) > ONION_FRESHNESS_MS:
            self.stats.refused_stale += 1
            raise RpcError("bad_request", "onion request is stale (is the clock right?)")
        self._forget_stale(now_ms)
        ephemeral = body[: nacl.public.PublicKey.SIZE]
        if ephemeral in self._seen:
            self.stats.refused_replayed += 1
            raise RpcError("bad_request", "onion request replayed")
        self._seen[ephemeral] = sealed_ms
        if len(self._seen) > ONION_REPLAY_ENTRIES:
            self._seen.popitem(last=False)
        return frame, nacl.secret.SecretBox(reply_key)

    def _forget_stale(self, now_ms: int) -> None:
        """Drop the entries that are refused as stale anyway (oldest arrivals first)."""
        while self._seen:
            ephemeral, sealed_ms = next(iter(self._seen.items()))
            if now_ms - sealed_ms <= ONION_FRESHNESS_MS:
                return
            del self._seen[ephemeral]


class ServerAddress(NamedTuple):
    """What tells servers apart in an address: two spellings of one server are equal."""

    scheme: str
    host: str
    port: int
    #: The Ed25519 key a ``wss://`` address pins (None for the other schemes).
    key: bytes | None


def server_address(address: str) -> ServerAddress | None:
    """The server ``address`` names, or None if it is not a server address an exit would
    reach: ``ws://host:port`` (a path after it names the same server, as the WebSocket
    transport ignores it), ``wss://host:port/<64 hex digits>`` (the pinned key is part of
    the server), or the emulated network's ``mem:NAME``. Hosts compare case-blind and
    IP literals by value; a port is 1-65535 in ASCII digits; user info, a query, a
    fragment, an empty host or a ``wss://`` path that is not one key make it None."""
    if address.startswith("mem:"):
        name = address.removeprefix("mem:")
        return ServerAddress("mem", name, 0, None) if name else None
    scheme, sep, rest = address.partition("://")
    if not sep or scheme not in ("ws", "wss"):
        return None
    authority, _, path = rest.partition("/")
    key = None
    if scheme == "wss":
        try:
            key = bytes.fromhex(path) if len(path) == 64 and path.isascii() else None
        except ValueError:
            key = None
        if key is None:
            return None
    host, sep, port = authority.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) <= 65535:
        return None
    canonical = _canonical_host(host)
    return None if canonical is None else ServerAddress(scheme, canonical, int(port), key)


def _canonical_host(host: str) -> str | None:
    """An IP literal as :mod:`ipaddress` writes it (IPv6 in brackets), a name in lower
    case; None for anything else (an empty host, user info, a stray character)."""
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        ip = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        ip = None
    if ip is not None:
        if bracketed != (ip.version == 6):
            return None  # an IPv6 literal needs its brackets, and only it has them
        return f"[{ip}]" if bracketed else str(ip)
    name = host.lower()
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789.-")
    return name if name and set(name) <= allowed else None


class ExitServers:
    """The servers an exit hands onion requests to: the service nodes of the latest
    listing it read (:meth:`update`) and the servers it was started with (the file
    server, the open group server, as ``network.json`` names them). Pure."""

    def __init__(self, fixed: Iterable[str] = ()) -> None:
        self._fixed = tuple(fixed)
        self._by_server: dict[ServerAddress, str] = {}
        self.update(())

    def update(self, node_urls: Iterable[str]) -> None:
        """The listing's service nodes now (those of an earlier listing are forgotten).
        Urls already known are not parsed again: a relay re-reads a listing of thousands
        on its event loop."""
        known = {url: server for server, url in self._by_server.items()}
        by_server: dict[ServerAddress, str] = {}
        for url in (*self._fixed, *node_urls):
            server = known.get(url) or server_address(url)
            if server is not None:
                by_server.setdefault(server, url)
        self._by_server = by_server

    def route(self, address: str) -> str | None:
        """The listed address of the server ``address`` names (one connection per
        server, however requests spell it), or None: no server this exit serves."""
        server = server_address(address)
        return None if server is None else self._by_server.get(server)

    def __len__(self) -> int:
        return len(self._by_server)


class _Held(NamedTuple):
    client: RpcClient
    scope: trio.CancelScope


class ExitConnections:
    """An exit's connections to servers, one per server and at most ``limit``: a new
    one closes the least recently used one that no call is using; with every one in use,
    the call fails at once (the exit reports a failure and the client tries another
    path) rather than cutting another client's call short."""

    def __init__(self, transport: Transport, nursery: trio.Nursery, limit: int) -> None:
        if limit < 1:
            raise ValueError("an exit needs room for at least one connection")
        self._transport = transport
        self._nursery = nursery
        self._limit = limit
        #: Least recently used first.
        self._held: OrderedDict[str, _Held] = OrderedDict()
        self._connecting = 0
        #: Calls under way per address (an address with none may be closed).
        self._calls: dict[str, int] = {}
        #: One connection attempt per address at a time (dropped once nobody holds it).
        self._locks: dict[str, trio.Lock] = {}

    @property
    def held(self) -> list[str]:
        """The addresses connected to now, least recently used first."""
        return list(self._held)

    async def call(self, address: str, method: str, params: Mapping[str, Any]) -> Any:
        client = await self._client(address)
        self._calls[address] = self._calls.get(address, 0) + 1
        try:
            return await client.call(method, params)
        finally:
            self._calls[address] -= 1
            if not self._calls[address]:
                del self._calls[address]

    async def _client(self, address: str) -> RpcClient:
        lock = self._locks.setdefault(address, trio.Lock())
        try:
            async with lock:
                held = self._held.get(address)
                if held is not None and not held.client.closed.is_set():
                    self._held.move_to_end(address)
                    return held.client
                self._held.pop(address, None)
                self._make_room()
                self._connecting += 1
                try:
                    held = cast(_Held, await self._nursery.start(self._hold, address))
                finally:
                    self._connecting -= 1
                self._held[address] = held
                return held.client
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._locks.pop(address, None)

    def _make_room(self) -> None:
        """Close idle connections, least recently used first, until one more fits."""
        while len(self._held) + self._connecting >= self._limit:
            idle = next((a for a in self._held if a not in self._calls), None)
            if idle is None:
                raise ConnectionLost(f"all {self._limit} connections to servers are in use")
            self._held.pop(idle).scope.cancel()

    async def _hold(
        self, address: str, *, task_status: trio.TaskStatus[_Held] = trio.TASK_STATUS_IGNORED
    ) -> None:
        started = False
        with trio.CancelScope() as scope:
            try:
                async with open_rpc(self._transport, address) as client:
                    task_status.started(_Held(client, scope))
                    started = True
                    await client.closed.wait()
            except (OSError, LinkClosed):
                if not started:
                    raise
        held = self._held.get(address)
        if held is not None and held.scope is scope:  # it closed on its own
            del self._held[address]


class RpcExit:
    """The :class:`overlay.relay.Exit` of a relay that reaches RPC servers: it routes a
    request only to a server of ``servers`` and calls ``onion`` there."""

    def __init__(self, servers: ExitServers, connections: ExitConnections) -> None:
        self.servers = servers
        self.connections = connections

    def route(self, address: str) -> str | None:
        return self.servers.route(address)

    async def call(self, address: str, body: bytes) -> bytes:
        result = await self.connections.call(address, ONION_METHOD, {"body": body})
        return Fields(result, "onion").only("body").blob("body")


@asynccontextmanager
async def open_rpc_exit(
    transport: Transport, servers: ExitServers, *, max_connections: int = EXIT_MAX_CONNECTIONS
) -> AsyncIterator[RpcExit]:
    """An exit to ``servers`` over ``transport``; its connections close on the way out."""
    async with open_task_nursery() as nursery:
        yield RpcExit(servers, ExitConnections(transport, nursery, max_connections))


ServerKey = Callable[[str], Awaitable[bytes]]


#: Service nodes a device asks for the listing each time it reads it through its paths,
#: and the most it tries (a node that does not answer, or answers what does not check out,
#: is passed over for another).
LISTING_SOURCES = 2
LISTING_ATTEMPTS = 2 * LISTING_SOURCES
#: How long one node's whole listing may take through a path before the next is tried.
LISTING_READ_S = 2 * ONION_ATTEMPT_TIMEOUT_S
#: A listing read this recently is the answer to another read (the swarm client, the
#: relay readers and the key lookups all ask; one read through paths serves them).
LISTING_FRESH_S = 30.0


class OnionDirectory:
    """The registry's listing as a device reads it once it has onion paths: from
    :data:`LISTING_SOURCES` service nodes of the last listing it knows (each node serves
    its copy of the registry's signed announcements, ``list``), by onion requests, so
    that the registry sees the device's address once a start (the read that finds the
    relays to build paths through, ``known``) and not at every later read.

    Each node's answer is checked on its own as the registry's is (signatures, a node's
    registration under ``ledger``, the page and entry limits) and merged with what was
    known (:func:`~p2psync.swarm.listing.merge_listings`: a withheld entry stays, a relay
    no one knew needs two nodes to name it). One read runs at a time and serves every
    reader for :data:`LISTING_FRESH_S`. A read that no node answers fails
    (:class:`RpcError`), and a merge that lists no service node is not taken: readers
    keep the listing they have rather than ask the registry from the device's address.

    ``known`` may instead be the listing a device kept from an earlier start (then the
    registry need not see the device at all): it is read through paths at the first
    fetch, and if that finds no node to answer (the kept relays or nodes gone since), the
    ``registry`` is read directly, once. ``keep`` is handed every listing taken, to keep
    for the next start."""

    def __init__(
        self,
        known: Snapshot,
        ledger: bytes | None,
        clock: Clock,
        rng: random.Random,
        *,
        registry: Listing | None = None,
        keep: Callable[[Snapshot], None] = lambda listing: None,
    ) -> None:
        self._known = known
        self._ledger = ledger
        self._clock = clock
        self._random = rng
        self._pool: RpcRouter | None = None
        self._reading = trio.Lock()
        self._registry = registry
        self._keep = keep
        self._relisted: Callable[[Snapshot], object] = lambda listing: None
        #: When ``known`` was last read (on the network's clock, which a simulation's
        #: jumps move too): now if the caller just read it directly, never if it was kept.
        self._read_at_ms: int | None = None if registry is not None else clock.now_ms()

    def read_through(
        self, pool: RpcRouter, relisted: Callable[[Snapshot], object] = lambda listing: None
    ) -> None:
        """From now on read through ``pool`` (the device's onion requests); ``relisted``
        takes what the registry lists if a kept listing's paths fail and it is read
        directly (the pool's paths can then be built through the relays listed now)."""
        self._pool = pool
        self._relisted = relisted

    @property
    def known(self) -> Snapshot:
        """The listing as last read, without reading: what the device's onion requests
        take service nodes' keys from (:class:`KnownListing`). Reading it through those
        requests would need the keys first; and the swarms the device reaches are built
        from the same listing, so a node it calls is one it has the key of."""
        return self._known

    async def fetch(self) -> Snapshot:
        async with self._reading:
            now_ms = self._clock.now_ms()
            if self._read_at_ms is not None and now_ms - self._read_at_ms < LISTING_FRESH_S * 1000:
                return self._known
            if self._pool is None or not self._known.nodes:
                raise RpcError("unavailable", "no paths or no service nodes to read from")
            if self._registry is None:
                answers = await self._answers(self._pool, LISTING_ATTEMPTS, LISTING_READ_S)
            else:
                # A kept listing: one node's answer through its paths, within one node's
                # time, then the registry (its relays may be gone, and every read through
                # them would wait out its deadline before the direct one). Within that time
                # another node is tried if the first fails at once: the exits may not list
                # a node that joined late yet, and a single node tried sent 1 start in 16
                # to the registry.
                try:
                    answers = await self._answers(
                        self._pool,
                        LISTING_ATTEMPTS,
                        LISTING_READ_S,
                        total_s=LISTING_READ_S,
                        wanted=1,
                    )
                except RpcError as exc:
                    return await self._read_registry(self._registry, exc)
            self._registry = None  # the kept listing served: no direct read this start
            merged = merge_listings(
                self._known,
                answers,
                now_ms,
                ledger=self._ledger,
                agree=LISTING_SOURCES,
            )
            self._read_at_ms = now_ms
            if merged.nodes:
                self._known = merged
                self._keep(merged)
            return self._known

    async def _read_registry(self, registry: Listing, why: RpcError) -> Snapshot:
        """No node of the kept listing answered through paths (``why``): read the
        registry from the device's address, the once a start that a device without a
        kept listing reads it (a failure leaves the way open for the next fetch)."""
        logger.info("reading the registry directly: %s", why.message)
        snapshot = await registry.fetch()
        self._registry = None
        self._read_at_ms = self._clock.now_ms()
        if snapshot.nodes:
            self._known = snapshot
            self._keep(snapshot)
        self._relisted(snapshot)
        return self._known

    async def _answers(
        self,
        pool: RpcRouter,
        attempts: int,
        within_s: float,
        *,
        total_s: float = math.inf,
        wanted: int = LISTING_SOURCES,
    ) -> list[Snapshot]:
        """Up to ``wanted`` nodes' listings, each checked on its own, from at most
        ``attempts`` nodes given ``within_s`` each and ``total_s`` in all (what came by
        then, if anything did), in the network's time."""
        nodes = list(self._known.nodes)
        self._random.shuffle(nodes)
        answers: list[Snapshot] = []
        errors: list[str] = []
        with self._clock.move_on_after(total_s) as budget:
            for node in nodes[:attempts]:
                if len(answers) == wanted:
                    break
                with self._clock.move_on_after(within_s) as deadline:
                    try:
                        announcements = await read_listing_pages(
                            partial(pool.call, node.url, "list")
                        )
                        answers.append(
                            Snapshot.from_announcements(
                                {"announcements": announcements},
                                self._clock.now_ms(),
                                ledger=self._ledger,
                                max_age_ms=CACHED_LISTING_MAX_AGE_MS,
                            )
                        )
                    except LISTING_ERRORS as exc:
                        errors.append(f"{node.url}: {exc}")
                if deadline.cancelled_caught:
                    errors.append(f"{node.url}: no answer in {within_s:g} s")
        if budget.cancelled_caught:
            errors.append(f"no answer in {total_s:g} s in all")
        if not answers:
            raise RpcError("unavailable", f"no node answered for the listing: {errors}")
        return answers


class KnownListing:
    """:attr:`OnionDirectory.known` as a :class:`~p2psync.swarm.directory.Listing` that
    reads nothing, for the :class:`DirectoryKeys` of the pool the listing is read
    through."""

    def __init__(self, listing: OnionDirectory) -> None:
        self._listing = listing

    async def fetch(self) -> Snapshot:
        return self._listing.known


#: How soon a url the last listing did not name may make :class:`DirectoryKeys` read the
#: listing again (a node that joined since), at most.
KEYS_MISS_REREAD_MS = 5_000


def keys_listing_due(read_at_ms: int | None, now_ms: int, listed: bool) -> bool:
    """Whether :class:`DirectoryKeys` reads the listing again before sealing to a node:
    first, once the last read is as old as an announcement may be, or for a url it did
    not name once :data:`KEYS_MISS_REREAD_MS` has passed. Reading it for every request
    cost a connection to the registry (and a TLS handshake) per onion request, and told
    the registry, from the device's own address, when the device was about to make one."""
    if read_at_ms is None:
        return True
    age = now_ms - read_at_ms
    return age >= ANNOUNCEMENT_TTL_MS or (not listed and age >= KEYS_MISS_REREAD_MS)


class DirectoryKeys:
    """The announced Ed25519 key of the server at an address: ``known`` ones (the file
    server's, the open group server's), else the service node the directory lists there
    (from a listing read again as :func:`keys_listing_due` says)."""

    def __init__(
        self, directory: Listing, clock: Clock, known: Mapping[str, bytes] | None = None
    ) -> None:
        self._directory = directory
        self._clock = clock
        self._known = dict(known or {})
        #: url → the node keys the last listing read announces there.
        self._listed: dict[str, set[str]] = {}
        self._read_at_ms: int | None = None

    async def __call__(self, address: str) -> bytes:
        key = self._known.get(address)
        if key is None:
            now = self._clock.now_ms()
            if keys_listing_due(self._read_at_ms, now, address in self._listed):
                snapshot = await self._directory.fetch()
                self._listed = {}
                for node in snapshot.nodes:
                    self._listed.setdefault(node.url, set()).add(node.pubkey)
                self._read_at_ms = now
            # A node's announcement names its own url: it never replaces a key given
            # here, and a url that two nodes announce names neither.
            announced = self._listed.get(address, set())
            if len(announced) == 1:
                key = bytes.fromhex(next(iter(announced)))
        if key is None:
            raise RpcError("unavailable", f"no announced key for {address}")
        return key


class OnionRpcPool:
    """:class:`RpcPool`'s call interface over onion requests on ``endpoint``'s paths.

    It has no ``transport``: what cannot travel on a path (pushes) is not offered.
    """

    transport = None

    def __init__(self, endpoint: Endpoint, server_key: ServerKey, clock: Clock) -> None:
        self.endpoint = endpoint
        self._server_key = server_key
        self._clock = clock
        #: Attempts that got no answer (a timeout, or a failure from the exit); all but a
        #: request's last are followed by one on another path.
        self.failed_attempts = 0

    async def get(self, address: str) -> OnionClient:
        return OnionClient(self, address)

    async def call(self, address: str, method: str, params: Params | None) -> Any:
        """Send one request by onion and return its result, or raise :class:`RpcError`
        (the server's refusal) or :class:`ConnectionLost` (no path got an answer).
        Each attempt makes its own parameters (see :data:`p2psync.rpc.Params`)."""
        key = await self._server_key(address)
        tried: list[Path] = []
        for _ in range(ONION_ATTEMPTS):
            with trio.move_on_after(ONION_ATTEMPT_TIMEOUT_S):
                path = await self.endpoint.exit_path(tried)
                tried.append(path)
                request = Request(ONION_REQUEST_ID, method, dict(made(params or {})))
                body, reply_box = seal_request(key, request, self._clock.now_ms())
                try:
                    sealed = await self.endpoint.exit_request(path, address, body)
                    reply = decode_frame(reply_box.decrypt(sealed))
                except (ExitFailed, DecodeError, nacl.exceptions.CryptoError):
                    self.failed_attempts += 1
                    continue  # that exit could not, or would not, get the answer
                return result_of(reply)
            self.failed_attempts += 1
        raise ConnectionLost(f"no onion path reached {address}")


class OnionClient:
    """One server reached by onion requests, with :class:`RpcClient`'s ``call``."""

    def __init__(self, pool: OnionRpcPool, address: str) -> None:
        self._pool = pool
        self.peer = address

    async def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        return await self._pool.call(self.peer, method, params)
