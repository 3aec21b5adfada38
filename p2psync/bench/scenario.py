"""The storage benchmark's traces: who is online when, and who sends what to whom.

A :class:`Trace` is what :func:`p2psync.run_scenario` replays: ``users`` users, each with a
``"phone"`` and a ``"desktop"``, the spans of virtual time each device is online, and the
messages sent. Client code can build its own (``Trace.validate`` says what is accepted) or
have one generated from a :class:`Scenario`:

Every user has a phone and a desktop. Phones are online roughly 07:00–23:00 with a few
random gaps; desktops 09:00–18:00 on weekdays. One desktop (user 0's) is away for
``long_offline_days`` from the middle of the first day, longer than the swarm's TTL.
Messages are sent at a seeded Poisson rate by an online device of a random user to a
random other user. The same scenario and seed give the same trace for every strategy,
so their figures compare.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..envelope import MAX_BODY_BYTES

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MINUTE_MS = 60_000
KINDS = ("phone", "desktop")
#: Bounds on what a trace may ask for: the runner keeps an hourly series over the whole
#: trace and two devices per user, and a message body carries an 8-byte message number.
MAX_USERS = 1000
MAX_DURATION_MS = 366 * DAY_MS
MAX_SEND_BYTES = MAX_BODY_BYTES - 8


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Scenario:
    """The parameters of a generated trace (see the module docstring)."""

    users: int = 8
    days: float = 5.0
    messages_per_user_per_day: float = 20.0
    long_offline_days: float = 3.0
    message_bytes: tuple[int, int] = (100, 1200)
    seed: int = 1

    def __post_init__(self) -> None:
        if not (_is_int(self.users) and 1 <= self.users <= MAX_USERS):
            raise ValueError(f"Scenario.users must be an int in 1..{MAX_USERS}")
        if not 0 < self.days <= MAX_DURATION_MS / DAY_MS:
            raise ValueError(f"Scenario.days must be in (0, {MAX_DURATION_MS // DAY_MS}]")
        if not 0 <= self.messages_per_user_per_day <= 100_000:
            raise ValueError("Scenario.messages_per_user_per_day must be in 0..100000")
        if not 0 <= self.long_offline_days <= MAX_DURATION_MS / DAY_MS:
            raise ValueError(
                f"Scenario.long_offline_days must be in 0..{MAX_DURATION_MS // DAY_MS}"
            )
        low, high = self.message_bytes
        if not (_is_int(low) and _is_int(high) and 0 <= low <= high <= MAX_SEND_BYTES):
            raise ValueError(
                f"Scenario.message_bytes must be (low, high), 0 <= low <= high <= {MAX_SEND_BYTES}"
            )
        if not _is_int(self.seed):
            raise ValueError("Scenario.seed must be an int")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Send:
    """One message of a trace: at ``at_ms`` (virtual ms from the start of the trace),
    ``user``'s device ``kind`` sends ``size`` bytes to ``to_user``."""

    at_ms: int
    user: int
    kind: str
    to_user: int
    size: int


@dataclass(frozen=True)
class Trace:
    """What the storage benchmark replays.

    ``online[(user, kind)]`` lists the ``(start_ms, end_ms)`` spans in which that device is
    online, in order and not overlapping, within ``0..duration_ms`` (a device with no entry
    is offline throughout); ``sends`` are the messages, each from a device online at that
    moment (a span covers ``start_ms <= t < end_ms``). Users are ``0..users-1``, kinds
    ``"phone"`` and ``"desktop"``. After ``duration_ms`` the runner brings every device
    online for a settling period, so what was left in swarms can still arrive. ``seed``
    seeds the network's randomness.
    """

    users: int
    duration_ms: int
    online: Mapping[tuple[int, str], Sequence[tuple[int, int]]] = field(default_factory=dict)
    sends: Sequence[Send] = field(default_factory=list)
    seed: int = 1

    def is_online(self, user: int, kind: str, at_ms: int) -> bool:
        return any(start <= at_ms < end for start, end in self.online.get((user, kind), ()))

    def validate(self) -> None:
        """Raise :class:`ValueError` naming the first thing wrong with the trace."""
        if not (_is_int(self.users) and 1 <= self.users <= MAX_USERS):
            raise ValueError(f"trace users must be an int in 1..{MAX_USERS}, not {self.users!r}")
        if not (_is_int(self.duration_ms) and 0 < self.duration_ms <= MAX_DURATION_MS):
            raise ValueError(
                f"trace duration_ms must be an int in 1..{MAX_DURATION_MS} (366 days), "
                f"not {self.duration_ms!r}"
            )
        if not _is_int(self.seed):
            raise ValueError(f"trace seed must be an int, not {self.seed!r}")
        if not isinstance(self.online, Mapping):
            raise ValueError("trace online must map (user, kind) to a list of spans")
        for key, spans in self.online.items():
            where = f"trace online[{key!r}]"
            if not (isinstance(key, tuple) and len(key) == 2):
                raise ValueError(f"{where}: the key must be a (user, kind) pair")
            self._check_device(where, *key)
            if isinstance(spans, str | bytes) or not isinstance(spans, Sequence):
                raise ValueError(f"{where}: expected a list of (start_ms, end_ms) spans")
            previous_end = 0
            for index, span in enumerate(spans):
                if not (isinstance(span, Sequence) and len(span) == 2 and all(map(_is_int, span))):
                    raise ValueError(f"{where}[{index}]: a span is a pair of ints (ms)")
                start, end = span
                if start < 0 or end > self.duration_ms:
                    raise ValueError(
                        f"{where}[{index}]: span {span!r} is outside 0..{self.duration_ms} ms"
                    )
                if start >= end:
                    raise ValueError(
                        f"{where}[{index}]: span {span!r} does not end after it starts"
                    )
                if start < previous_end:
                    raise ValueError(
                        f"{where}[{index}]: span {span!r} starts before the previous one ends "
                        f"({previous_end} ms); spans must be in order and not overlap"
                    )
                previous_end = end
        if isinstance(self.sends, str | bytes) or not isinstance(self.sends, Sequence):
            raise ValueError("trace sends must be a list of Send")
        for index, send in enumerate(self.sends):
            where = f"trace sends[{index}]"
            if not isinstance(send, Send):
                raise ValueError(f"{where}: expected a Send, not {type(send).__name__}")
            if not (_is_int(send.at_ms) and 0 <= send.at_ms < self.duration_ms):
                raise ValueError(
                    f"{where}: at_ms must be an int in 0..{self.duration_ms - 1}, "
                    f"not {send.at_ms!r}"
                )
            self._check_device(where, send.user, send.kind)
            if not (_is_int(send.to_user) and 0 <= send.to_user < self.users):
                raise ValueError(
                    f"{where}: to_user must be a user in 0..{self.users - 1}, not {send.to_user!r}"
                )
            if send.to_user == send.user:
                raise ValueError(f"{where}: user {send.user} sends to itself")
            if not (_is_int(send.size) and 0 <= send.size <= MAX_SEND_BYTES):
                raise ValueError(
                    f"{where}: size must be an int in 0..{MAX_SEND_BYTES}, not {send.size!r}"
                )
            if not self.is_online(send.user, send.kind, send.at_ms):
                raise ValueError(
                    f"{where}: user {send.user}'s {send.kind} is offline at {send.at_ms} ms"
                )

    def _check_device(self, where: str, user: object, kind: object) -> None:
        if not (isinstance(user, int) and not isinstance(user, bool) and 0 <= user < self.users):
            raise ValueError(f"{where}: user must be in 0..{self.users - 1}, not {user!r}")
        if kind not in KINDS:
            raise ValueError(f"{where}: unknown device kind {kind!r} (kinds: {', '.join(KINDS)})")


def _daily(rng: random.Random, day: int, kind: str) -> list[tuple[int, int]]:
    base = day * DAY_MS
    if kind == "desktop":
        if day % 7 in (5, 6):
            return []
        start = base + 9 * HOUR_MS + rng.randint(-30, 30) * MINUTE_MS
        return [(start, base + 18 * HOUR_MS + rng.randint(-30, 60) * MINUTE_MS)]
    start = base + 7 * HOUR_MS + rng.randint(-60, 60) * MINUTE_MS
    end = base + 23 * HOUR_MS + rng.randint(-60, 30) * MINUTE_MS
    cuts = sorted(rng.randint(start, end) for _ in range(2 * rng.randint(1, 3)))
    spans, cursor = [], start
    for gap_start, gap_end in zip(cuts[::2], cuts[1::2], strict=True):
        gap_end = min(gap_end, gap_start + rng.randint(10, 60) * MINUTE_MS)
        if gap_start > cursor:
            spans.append((cursor, gap_start))
        cursor = max(cursor, gap_end)
    spans.append((cursor, end))
    return [(a, b) for a, b in spans if b > a]


def build_trace(scenario: Scenario) -> Trace:
    """The trace ``scenario`` describes; the same scenario gives the same trace."""
    rng = random.Random(scenario.seed)
    online: dict[tuple[int, str], list[tuple[int, int]]] = {}
    sends: list[Send] = []
    days = int(scenario.days + 0.999)
    end_ms = int(scenario.days * DAY_MS)
    away = (DAY_MS // 2, DAY_MS // 2 + int(scenario.long_offline_days * DAY_MS))
    for user in range(scenario.users):
        for kind in KINDS:
            spans = [s for day in range(days) for s in _daily(rng, day, kind)]
            if user == 0 and kind == "desktop" and scenario.long_offline_days > 0:
                clipped = [(a, min(b, away[0])) for a, b in spans] + [
                    (max(a, away[1]), b) for a, b in spans
                ]
                spans = sorted((a, b) for a, b in clipped if b > a)
            online[(user, kind)] = [(a, min(b, end_ms)) for a, b in spans if a < end_ms]
    trace = Trace(scenario.users, end_ms, online, sends, seed=scenario.seed)
    rate_per_ms = scenario.users * scenario.messages_per_user_per_day / DAY_MS
    at = 0.0
    while rate_per_ms > 0:
        at += rng.expovariate(rate_per_ms)
        if at >= end_ms:
            break
        user = rng.randrange(scenario.users)
        kinds_online = [k for k in KINDS if trace.is_online(user, k, int(at))]
        if not kinds_online or scenario.users < 2:
            continue
        to_user = rng.choice([u for u in range(scenario.users) if u != user])
        size = rng.randint(*scenario.message_bytes)
        sends.append(Send(int(at), user, rng.choice(kinds_online), to_user, size))
    return trace
