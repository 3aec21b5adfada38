"""The server side of onion requests: the ``onion`` method (:class:`OnionService`), how
many requests each exit may bring (:class:`OnionShare`), and the hosts of the listed
relays that draw on the exits' share (:class:`ListedExits`). What is inside a sealed
request and when it is refused is :mod:`.sealing`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import assert_never

import nacl.secret

from overlay.exits import peer_host

from ..backoff import Backoff
from ..clock import Clock
from ..errors import RpcError
from ..identity import Identity
from ..rpc import Connection, KeyedRateLimit, RpcServer
from ..swarm.directory import Listing
from ..swarm.listing import Snapshot
from ..wire import INT64_MAX, Fields, Reply, Request, encode_frame
from .addresses import exit_host
from .sealing import ONION_METHOD, OnionRefused, Refusal, SealedRequests

logger = logging.getLogger(__name__)


def room_for_inner_reply(max_frame_bytes: int) -> int:
    """The largest inner reply whose sealed outer reply still fits a frame: the reply
    box adds its nonce and MAC, and the outer frame its id (at the longest a request id
    may be) and the ``body`` around them. Past it the outer reply could not be sent, and
    the client would try every path in turn for an answer none can carry."""
    box = nacl.secret.SecretBox.NONCE_SIZE + nacl.secret.SecretBox.MACBYTES
    outer = encode_frame(Reply(INT64_MAX, {"body": bytes(max_frame_bytes)}))
    return max_frame_bytes - box - (len(outer) - max_frame_bytes)


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
        self._clock = clock
        self.stats = OnionStats()
        self._sealed = SealedRequests(identity, server.limits.max_frame_bytes)
        self._room = room_for_inner_reply(server.limits.max_frame_bytes)
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
        request, reply_box = self._open(params.only("body").blob("body"))
        # A request doing the work of several (a ``store_batch``) takes its share of the
        # exit's rate as they would: one taken above, the rest now that it can be read.
        extra = self._server.cost_of(request) - 1
        if extra and not share.allow(host.encode(), self._clock.now_s(), extra):
            self.stats.refused_rate += 1
            raise RpcError("rate_limited", "this exit's share of onion requests is used up")
        reply = await self._server.answer(request, connection.peer, max_bytes=self._room)
        self.stats.answered += 1
        return {"body": reply_box.encrypt(reply)}

    def _open(self, body: bytes) -> tuple[Request, nacl.secret.SecretBox]:
        """:meth:`SealedRequests.open`, counting each refusal by its reason."""
        try:
            return self._sealed.open(body, self._clock.now_ms())
        except OnionRefused as refused:
            match refused.reason:
                case Refusal.MALFORMED:
                    self.stats.refused_malformed += 1
                case Refusal.STALE:
                    self.stats.refused_stale += 1
                case Refusal.REPLAYED:
                    self.stats.refused_replayed += 1
                case _:
                    assert_never(refused.reason)
            raise
