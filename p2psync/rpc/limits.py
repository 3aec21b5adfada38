"""What keeps an RPC server alive under abuse, as pure objects (time passed in): its
limits, rate buckets, counters and the bound on what all its connections hold for their
peers. The server (:mod:`.server`) asks them; nothing here waits or touches a socket."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from ..wire import MAX_FRAME_BYTES


@dataclass(frozen=True)
class ServerLimits:
    """What keeps a server alive under abuse; every figure is per server or connection."""

    max_connections: int = 512
    #: Of them, what one host may have (an IPv4 address or an IPv6 /64): an eighth, so one
    #: machine holding idle connections leaves room for everyone else.
    max_connections_per_host: int = 64
    max_in_flight: int = 64
    requests_per_s: float = 2000.0
    request_burst: int = 4000
    outbox_frames: int = 256
    #: Encoded replies a connection may have waiting for (or in) a write; pushes may use
    #: as much again before the client counts as too slow (see :class:`Outbox`).
    outbox_bytes: int = 1024 * 1024
    #: Replies and pushes all connections together may hold for their peers (queued, in
    #: a write, or computed and waiting for room); see :class:`ReplyMemory`.
    reply_memory_bytes: int = 32 * 1024 * 1024
    max_frame_bytes: int = MAX_FRAME_BYTES


class TokenBucket:
    """Rate limit as a pure object: ``take(now)`` says whether a request may go ahead."""

    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = now

    def available(self, now: float) -> float:
        """The tokens there are now."""
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        return self._tokens

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Whether ``cost`` tokens (one request, or a number of bytes) may be spent now."""
        if self.available(now) >= cost:
            self._tokens -= cost
            return True
        return False


class KeyedRateLimit:
    """Token buckets per key under one total bucket, as a pure object (time passed in).

    :meth:`allow` admits a request when its key's bucket and the total both have a token.
    Keys cost an attacker nothing to make, so the total is what bounds the work done; the
    per-key buckets keep one key from spending all of it. A key gets state only once a
    request of its is admitted, and a bucket idle long enough to be full again is forgotten
    (a new one would be the same), so the memory held is bounded by what the total admits;
    :meth:`allow_key` admits past the total, so ``max_keys`` bounds it too (the least
    recently used forgotten first: a key forgotten early gets its whole share back).
    """

    def __init__(
        self,
        per_key: int,
        key_refill_s: float,
        total: int,
        total_refill_s: float,
        now: float,
        *,
        max_keys: int = 4096,
    ) -> None:
        self._per_key = per_key
        self._max_keys = max_keys
        self._key_rate = 1 / key_refill_s
        #: How long an untouched bucket takes to be full again.
        self._forget_after = per_key * key_refill_s
        self._total = TokenBucket(1 / total_refill_s, total, now)
        #: Key → (its bucket, when it last took), least recently used first.
        self._keys: OrderedDict[bytes, tuple[TokenBucket, float]] = OrderedDict()

    def admits(self, key: bytes, now: float, cost: int = 1) -> bool:
        """Whether :meth:`allow` would admit ``key`` now, spending and remembering
        nothing: for a request that must pass several limits, charged to each only if
        every one admits it."""
        known = self._keys.get(key)
        own = self._per_key if known is None else known[0].available(now)
        return own >= cost and self._total.available(now) >= cost

    def allow(self, key: bytes, now: float, cost: int = 1) -> bool:
        """Whether ``key`` may spend ``cost`` requests' worth now (both buckets)."""
        bucket, known = self._bucket(key, now)
        # Both have the tokens or neither is charged: a refusal by the total must not
        # spend a key's own share (a batch's cost is up to 64 requests' worth).
        admitted = bucket.available(now) >= cost and self._total.available(now) >= cost
        if admitted:
            bucket.take(now, cost)
            self._total.take(now, cost)
        if known or admitted:
            self._keys[key] = (bucket, now)
        return admitted

    def allow_key(self, key: bytes, now: float) -> bool:
        """Whether ``key``'s own bucket has a token, whatever the total has, spending it
        if so: for a caller that handles a request past the total apart (keeps it for
        later) but still holds each key to its share."""
        bucket, known = self._bucket(key, now)
        admitted = bucket.available(now) >= 1
        if admitted:
            bucket.take(now, 1)
        if known or admitted:
            self._keys[key] = (bucket, now)
            if len(self._keys) > self._max_keys:
                self._keys.popitem(last=False)
        return admitted

    def _bucket(self, key: bytes, now: float) -> tuple[TokenBucket, bool]:
        """``key``'s bucket, taken out of the keys remembered (the caller puts it back,
        as the most recently used), and whether it was known; the idle forgotten first."""
        while self._keys:
            oldest, (_, last) = next(iter(self._keys.items()))
            if now - last < self._forget_after:
                break
            del self._keys[oldest]
        known = self._keys.pop(key, None)
        if known is None:
            return TokenBucket(self._key_rate, self._per_key, now), False
        return known[0], True


@dataclass
class ServerStats:
    connections: int = 0
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    #: Disconnected for not taking their pushes, or for holding the most reply memory
    #: when the server's was used up.
    dropped_slow_clients: int = 0

    def count_error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1


class ReplyMemory:
    """The bytes all of a server's connections hold for their peers. One outbox stays
    within its own budget, but a reply computed while its outbox is full waits for room
    (up to ``max_in_flight`` of them, each up to a frame), and every connection may be a
    client that does not read: this is the bound over all of them. ``shed`` is called
    whenever what they hold grows past ``limit`` (the server then drops the connection
    holding the most)."""

    def __init__(self, limit: int, shed: Callable[[], None]) -> None:
        self.limit = limit
        self.used = 0
        self._shed = shed

    def grow(self, size: int) -> None:
        self.used += size
        if self.used > self.limit:
            self._shed()

    def shrink(self, size: int) -> None:
        self.used -= size
