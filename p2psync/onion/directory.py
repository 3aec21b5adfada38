"""The listing a device reads once it has onion paths (:class:`OnionDirectory`), and the
keys it seals requests to (:class:`DirectoryKeys`).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Mapping
from functools import partial

import trio

from ..clock import Clock
from ..errors import RpcError
from ..rpc import RpcRouter
from ..swarm.directory import LISTING_ERRORS, Listing, read_listing_pages
from ..swarm.listing import ANNOUNCEMENT_TTL_MS, CACHED_LISTING_MAX_AGE_MS, Snapshot, merge_listings
from .pool import ONION_ATTEMPT_TIMEOUT_S

logger = logging.getLogger(__name__)

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
