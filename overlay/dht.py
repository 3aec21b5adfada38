"""Introset storage on relays (sans-I/O) and the ring that places introsets.

Every party ranks relays by ring distance between a relay's position (BLAKE2b of its key)
and a location, and the :data:`INTROSET_REPLICAS` closest store the introset. The store
checks signatures and expiry, keeps the latest introset per location within its bounds and
forgets expired ones; it never learns who published or who asks, only the path's terminal
hop does, and that hop only sees a DHT request, not its content's meaning.
"""

from __future__ import annotations

import enum
import hashlib
import heapq
from collections import Counter

from .constants import INTROSET_REPLICAS, INTROSET_STORE_MAX, INTROSET_STORE_PER_LINK_MAX
from .introset import IntrosetError, verify_introset

_RING = 1 << 64


class DhtOp(enum.IntEnum):
    PUT = 1
    GET = 2


class DhtStatus(enum.IntEnum):
    STORED = 0
    FOUND = 1
    NOT_FOUND = 2
    REJECTED = 3
    #: The relay holds as many introsets as it will, from this link or in all.
    FULL = 4


def ring_position(key: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


def ring_distance(a: int, b: int) -> int:
    return min((a - b) % _RING, (b - a) % _RING)


def closest_relays(
    location: bytes, relays: list[bytes], count: int = INTROSET_REPLICAS
) -> list[bytes]:
    """The ``count`` relay keys closest to ``location`` on the ring, nearest first."""
    target = ring_position(location)
    return sorted(relays, key=lambda r: (ring_distance(ring_position(r), target), r))[:count]


def put_request(introset: bytes) -> bytes:
    return bytes((DhtOp.PUT,)) + introset


def get_request(location: bytes) -> bytes:
    return bytes((DhtOp.GET,)) + location


class IntrosetStore:
    """The introsets one relay holds; ``handle`` is the whole protocol.

    Bounded two ways (the constants say why): at most ``max_per_link`` introsets stored
    by one link, at most ``max_items`` in all; a PUT past either bound is answered FULL.
    Every operation costs O(log n) at most: a lookup is a dictionary read, and expiry pops
    a heap ordered by expiry instead of scanning the store on every request.
    """

    def __init__(
        self,
        max_items: int = INTROSET_STORE_MAX,
        max_per_link: int = INTROSET_STORE_PER_LINK_MAX,
    ) -> None:
        self.max_items = max_items
        self.max_per_link = max_per_link
        self.stored = 0
        self.rejected = 0
        self.refused_full = 0
        self._items: dict[bytes, tuple[int, bytes]] = {}
        #: location → the link that stored it, and how many each link holds
        self._stored_by: dict[bytes, str] = {}
        self._per_link: Counter[str] = Counter()
        #: (expiry, location) of every stored record; entries of records since replaced
        #: stay until popped, and are skipped then.
        self._expiries: list[tuple[int, bytes]] = []

    def handle(self, link: str, request: bytes, now_ms: int) -> bytes:
        """Answer one DHT request that came in over ``link``."""
        self.expire(now_ms)
        if request[:1] == bytes((DhtOp.PUT,)):
            try:
                location, expiry_ms = verify_introset(request[1:], now_ms)
            except IntrosetError:
                self.rejected += 1
                return bytes((DhtStatus.REJECTED,))
            return self._put(link, location, expiry_ms, request[1:])
        if request[:1] == bytes((DhtOp.GET,)) and len(request) == 33:
            item = self._items.get(request[1:])
            if item is None:
                return bytes((DhtStatus.NOT_FOUND,))
            return bytes((DhtStatus.FOUND,)) + item[1]
        self.rejected += 1
        return bytes((DhtStatus.REJECTED,))

    def _put(self, link: str, location: bytes, expiry_ms: int, record: bytes) -> bytes:
        current = self._items.get(location)
        if current is not None and current[0] > expiry_ms:
            return bytes((DhtStatus.STORED,))  # an older copy: the newer one stays
        previous_link = self._stored_by.get(location)
        if previous_link != link and (
            self._per_link[link] >= self.max_per_link
            or (current is None and len(self._items) >= self.max_items)
        ):
            self.refused_full += 1
            return bytes((DhtStatus.FULL,))
        if previous_link is not None:
            self._uncount(previous_link)
        self._items[location] = (expiry_ms, record)
        self._stored_by[location] = link
        self._per_link[link] += 1
        heapq.heappush(self._expiries, (expiry_ms, location))
        if len(self._expiries) > 2 * len(self._items) + 64:
            # Republished introsets leave stale entries behind: rebuild before they
            # outnumber the live ones, so the heap stays O(store) (amortised O(1) a PUT).
            self._expiries = [(item[0], loc) for loc, item in self._items.items()]
            heapq.heapify(self._expiries)
        self.stored += 1
        return bytes((DhtStatus.STORED,))

    def _uncount(self, link: str) -> None:
        self._per_link[link] -= 1
        if not self._per_link[link]:
            del self._per_link[link]

    def expire(self, now_ms: int) -> None:
        """Forget every introset that has expired by ``now_ms``."""
        while self._expiries and self._expiries[0][0] <= now_ms:
            expiry_ms, location = heapq.heappop(self._expiries)
            item = self._items.get(location)
            if item is not None and item[0] == expiry_ms:
                del self._items[location]
                self._uncount(self._stored_by.pop(location))

    def __len__(self) -> int:
        return len(self._items)

    def records(self) -> list[bytes]:
        """Every record held, location first: all this relay could read or hand out."""
        return [location + item[1] for location, item in self._items.items()]
