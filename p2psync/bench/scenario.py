"""The storage benchmark's scenario: users, devices, churn and traffic, all seeded.

Every user has a phone and a desktop. Phones are online roughly 07:00–23:00 with a few
random gaps; desktops 09:00–18:00 on weekdays. One desktop (user 0's) is away for
``long_offline_days`` from the middle of the first day, longer than the swarm's TTL.
Messages are sent at a seeded Poisson rate by an online device of a random user to a
random other user. The same scenario and seed give the same trace for every strategy,
so their figures compare.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MINUTE_MS = 60_000
KINDS = ("phone", "desktop")


@dataclass(frozen=True)
class Scenario:
    users: int = 8
    days: float = 5.0
    messages_per_user_per_day: float = 20.0
    long_offline_days: float = 3.0
    message_bytes: tuple[int, int] = (100, 1200)
    seed: int = 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Send:
    at_ms: int
    user: int
    kind: str
    to_user: int
    size: int


@dataclass
class Trace:
    scenario: Scenario
    online: dict[tuple[int, str], list[tuple[int, int]]] = field(default_factory=dict)
    sends: list[Send] = field(default_factory=list)

    def is_online(self, user: int, kind: str, at_ms: int) -> bool:
        return any(start <= at_ms < end for start, end in self.online[(user, kind)])


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
    rng = random.Random(scenario.seed)
    trace = Trace(scenario)
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
            trace.online[(user, kind)] = [(a, min(b, end_ms)) for a, b in spans if a < end_ms]
    rate_per_ms = scenario.users * scenario.messages_per_user_per_day / DAY_MS
    at = 0.0
    while True:
        at += rng.expovariate(rate_per_ms)
        if at >= end_ms:
            break
        user = rng.randrange(scenario.users)
        online = [k for k in KINDS if trace.is_online(user, k, int(at))]
        if not online or scenario.users < 2:
            continue
        to_user = rng.choice([u for u in range(scenario.users) if u != user])
        size = rng.randint(*scenario.message_bytes)
        trace.sends.append(Send(int(at), user, rng.choice(online), to_user, size))
    return trace
