"""Introset storage on relays (sans-I/O) and the ring that places introsets.

Every party ranks relays by ring distance between a relay's position (BLAKE2b of its key)
and a location, and the :data:`INTROSET_REPLICAS` closest store the introset. The store
checks signatures and expiry, keeps the latest introset per location and forgets expired
ones; it never learns who published or who asks, only the path's terminal hop does, and
that hop only sees a DHT request, not its content's meaning.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field

from .constants import INTROSET_REPLICAS
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


@dataclass
class IntrosetStore:
    """The introsets one relay holds; ``handle`` is the whole protocol."""

    _items: dict[bytes, tuple[int, bytes]] = field(default_factory=dict)
    stored: int = 0
    rejected: int = 0

    def handle(self, request: bytes, now_ms: int) -> bytes:
        self.expire(now_ms)
        if request[:1] == bytes((DhtOp.PUT,)):
            try:
                location, expiry_ms = verify_introset(request[1:], now_ms)
            except IntrosetError:
                self.rejected += 1
                return bytes((DhtStatus.REJECTED,))
            current = self._items.get(location)
            if current is None or current[0] <= expiry_ms:
                self._items[location] = (expiry_ms, request[1:])
                self.stored += 1
            return bytes((DhtStatus.STORED,))
        if request[:1] == bytes((DhtOp.GET,)) and len(request) == 33:
            item = self._items.get(request[1:])
            if item is None:
                return bytes((DhtStatus.NOT_FOUND,))
            return bytes((DhtStatus.FOUND,)) + item[1]
        self.rejected += 1
        return bytes((DhtStatus.REJECTED,))

    def expire(self, now_ms: int) -> None:
        for location in [k for k, (expiry, _) in self._items.items() if expiry <= now_ms]:
            del self._items[location]

    def __len__(self) -> int:
        return len(self._items)

    def records(self) -> list[bytes]:
        """Every record held, location first: all this relay could read or hand out."""
        return [location + record for location, (_, record) in self._items.items()]
