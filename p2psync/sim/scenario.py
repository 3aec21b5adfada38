"""The storage benchmark's traces: who is online when, and who sends what to whom.

A :class:`Trace` is what :func:`p2psync.run_scenario` replays on devices and what the
trace-level model (:mod:`.model`) computes from: ``users`` users, each with a ``"phone"``
and a ``"desktop"``, the spans of virtual time each device is online, and the messages
sent. Client code can build its own (``Trace.validate`` says what is accepted), read one
from a file (:func:`load_trace`, JSON or CSV, formats below) or have one generated from a
:class:`Scenario`, under one of two churn profiles:

* ``office`` (the default): phones are online roughly 07:00–23:00 with a few random gaps;
  desktops 09:00–18:00 on weekdays.
* ``mobile``: desktops as in ``office``; a phone is reachable only in short foreground
  sessions (1–5 minutes, 8–16 a day between 07:00 and 23:00, seeded) and whenever its
  user writes while no device of theirs is online in those hours: writing opens the app
  for 1–5 minutes. Backgrounded, a phone neither reads its swarm nor reaches its sibling
  (a trace has one notion of online), so in this profile phones are mostly away.

In both, one desktop (user 0's) is away for ``long_offline_days`` from the middle of the
first day, longer than the swarm's TTL. Users try to send at a seeded Poisson rate
(``messages_per_user_per_day``), from an online device, to a random other user; an attempt
while none of the user's devices is online (and, in ``mobile``, outside 07:00–23:00) is
dropped. The same scenario and seed give the same trace for every strategy, so their
figures compare.

Large traces (10 000 users for a month are millions of sends) are held packed: spans in a
:class:`Spans`, sends in a :class:`SendTable`, each a read-only sequence of the same
tuples and :class:`Send` objects a hand-built trace uses.

Trace files
-----------
JSON (what :func:`dump_trace` writes)::

    {"format": "p2psync-trace/1", "users": 2, "duration_ms": 10800000, "seed": 1,
     "devices": [{"user": 0, "kind": "phone", "online": [[0, 10800000]]}, ...],
     "sends": [{"at_ms": 1200000, "user": 0, "kind": "phone", "to_user": 1,
                "size": 300}, ...]}

``format`` and ``seed`` (default 1) may be left out; a device not listed is never online.
CSV, one record per line, its type first (blank lines and lines starting ``#`` skipped)::

    users,2
    duration_ms,10800000
    seed,1
    online,0,phone,0,10800000
    send,1200000,0,phone,1,300

``online`` rows are ``user,kind,start_ms,end_ms`` (one span each, a device's in order),
``send`` rows ``at_ms,user,kind,to_user,size``. Times are virtual ms from the start of
the trace; ``size`` is the message's text in bytes. A bad file raises
:class:`TraceFileError`, one line naming the file and the line (CSV) or field (JSON).
"""

from __future__ import annotations

import csv
import json
import random
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import IO, Any, overload

from ..envelope import MAX_BODY_BYTES
from ..errors import P2PSyncError

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MINUTE_MS = 60_000
KINDS = ("phone", "desktop")
PROFILES = ("office", "mobile")
#: Bounds on what a trace replayed on devices may ask for: the runner keeps an hourly
#: series over the whole trace and two devices per user, and a message body carries an
#: 8-byte message number.
MAX_USERS = 1000
MAX_DURATION_MS = 366 * DAY_MS
MAX_SEND_BYTES = MAX_BODY_BYTES - 8
#: The trace-level model keeps a few machine ints per user and per send, not devices.
MAX_MODEL_USERS = 100_000
#: After ``duration_ms`` every device is online this long, so what was left in swarms can
#: still arrive (part of what a trace means: the runner and the model both settle).
SETTLE_MS = 2 * HOUR_MS
#: ``mobile``: the hours a phone may come to the foreground, its sessions' count a day
#: and their length.
AWAKE_MS = (7 * HOUR_MS, 23 * HOUR_MS)
FOREGROUND_PER_DAY = (8, 16)
FOREGROUND_S = (60, 300)
TRACE_FORMAT = "p2psync-trace/1"


class TraceFileError(P2PSyncError, ValueError):
    """A trace file that cannot be read: the message is one line naming the file and the
    line or field at fault."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- packed representations ------------------------------------------------------------


class Spans(Sequence[tuple[int, int]]):
    """A device's online spans as two arrays of machine ints (``starts``, ``ends``): a
    month of a mobile profile's sessions for 10 000 phones is millions of spans, too many
    for a tuple each. Reads as a sequence of ``(start_ms, end_ms)`` tuples."""

    __slots__ = ("ends", "starts")

    def __init__(self, spans: Iterable[tuple[int, int]] = ()) -> None:
        self.starts, self.ends = array("q"), array("q")
        for start, end in spans:
            self.starts.append(start)
            self.ends.append(end)

    def __len__(self) -> int:
        return len(self.starts)

    @overload
    def __getitem__(self, index: int) -> tuple[int, int]: ...
    @overload
    def __getitem__(self, index: slice) -> list[tuple[int, int]]: ...
    def __getitem__(self, index: int | slice) -> tuple[int, int] | list[tuple[int, int]]:
        if isinstance(index, slice):
            return list(zip(self.starts[index], self.ends[index], strict=True))
        return self.starts[index], self.ends[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Spans):
            return self.starts == other.starts and self.ends == other.ends
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(self) == len(other) and all(
                isinstance(o, Sequence) and tuple(o) == s for s, o in zip(self, other, strict=True)
            )
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Spans({list(self)!r})"


@dataclass(frozen=True)
class Send:
    """One message of a trace: at ``at_ms`` (virtual ms from the start of the trace),
    ``user``'s device ``kind`` sends ``size`` bytes to ``to_user``."""

    at_ms: int
    user: int
    kind: str
    to_user: int
    size: int


class SendTable(Sequence[Send]):
    """Sends packed in columns of machine ints (``kind`` as an index into :data:`KINDS`):
    six million sends take about 130 MB here, against gigabytes as :class:`Send`
    objects. Reads as a sequence of :class:`Send`; the model reads the columns."""

    __slots__ = ("at_ms", "kind", "size", "to_user", "user")

    def __init__(self, sends: Iterable[Send] = ()) -> None:
        self.at_ms, self.user, self.kind = array("q"), array("i"), array("b")
        self.to_user, self.size = array("i"), array("i")
        for send in sends:
            self.append(send.at_ms, send.user, KINDS.index(send.kind), send.to_user, send.size)

    @classmethod
    def of(cls, sends: Sequence[Send]) -> SendTable:
        """``sends`` packed (itself if it already is): for a validated trace's sends."""
        return sends if isinstance(sends, SendTable) else cls(sends)

    def append(self, at_ms: int, user: int, kind: int, to_user: int, size: int) -> None:
        self.at_ms.append(at_ms)
        self.user.append(user)
        self.kind.append(kind)
        self.to_user.append(to_user)
        self.size.append(size)

    def __len__(self) -> int:
        return len(self.at_ms)

    @overload
    def __getitem__(self, index: int) -> Send: ...
    @overload
    def __getitem__(self, index: slice) -> list[Send]: ...
    def __getitem__(self, index: int | slice) -> Send | list[Send]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return Send(
            self.at_ms[index],
            self.user[index],
            KINDS[self.kind[index]],
            self.to_user[index],
            self.size[index],
        )

    def __iter__(self) -> Iterator[Send]:
        for at_ms, user, kind, to_user, size in zip(
            self.at_ms, self.user, self.kind, self.to_user, self.size, strict=True
        ):
            yield Send(at_ms, user, KINDS[kind], to_user, size)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SendTable):
            return all(getattr(self, column) == getattr(other, column) for column in self.__slots__)
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SendTable(<{len(self)} sends>)"


# --- scenarios and traces ----------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """The parameters of a generated trace (see the module docstring)."""

    users: int = 8
    days: float = 5.0
    messages_per_user_per_day: float = 20.0
    long_offline_days: float = 3.0
    message_bytes: tuple[int, int] = (100, 1200)
    seed: int = 1
    profile: str = "office"

    def __post_init__(self) -> None:
        if not (_is_int(self.users) and 1 <= self.users <= MAX_MODEL_USERS):
            raise ValueError(f"Scenario.users must be an int in 1..{MAX_MODEL_USERS}")
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
        if self.profile not in PROFILES:
            raise ValueError(f"Scenario.profile must be one of {', '.join(PROFILES)}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Trace:
    """What the storage benchmark replays.

    ``online[(user, kind)]`` lists the ``(start_ms, end_ms)`` spans in which that device is
    online, in order and not overlapping, within ``0..duration_ms`` (a device with no entry
    is offline throughout); ``sends`` are the messages, each from a device online at that
    moment (a span covers ``start_ms <= t < end_ms``). Users are ``0..users-1``, kinds
    ``"phone"`` and ``"desktop"``. After ``duration_ms`` the runner brings every device
    online for a settling period (:data:`SETTLE_MS`), so what was left in swarms can
    still arrive. ``seed`` seeds the network's randomness.
    """

    users: int
    duration_ms: int
    online: Mapping[tuple[int, str], Sequence[tuple[int, int]]] = field(default_factory=dict)
    sends: Sequence[Send] = field(default_factory=list)
    seed: int = 1

    def is_online(self, user: int, kind: str, at_ms: int) -> bool:
        """Whether the device is online at ``at_ms`` (spans in order, as ``validate``
        requires: a binary search, so a long trace is cheap to check)."""
        spans = self.online.get((user, kind), ())
        index = bisect_right(spans, at_ms, key=itemgetter(0)) - 1
        return index >= 0 and at_ms < spans[index][1]

    def validate(self, *, max_users: int = MAX_USERS) -> None:
        """Raise :class:`ValueError` naming the first thing wrong with the trace
        (``max_users``: the device runner's bound, or the model's larger one)."""
        problem = _header_problem(self.users, self.duration_ms, self.seed, max_users)
        if problem:
            raise ValueError(f"trace {problem}")
        if not isinstance(self.online, Mapping):
            raise ValueError("trace online must map (user, kind) to a list of spans")
        for key, spans in self.online.items():
            where = f"trace online[{key!r}]"
            if not (isinstance(key, tuple) and len(key) == 2):
                raise ValueError(f"{where}: the key must be a (user, kind) pair")
            problem = _device_problem(self.users, *key)
            if problem:
                raise ValueError(f"{where}: {problem}")
            if isinstance(spans, str | bytes) or not isinstance(spans, Sequence):
                raise ValueError(f"{where}: expected a list of (start_ms, end_ms) spans")
            previous_end = 0
            for index, span in enumerate(spans):
                problem = _span_problem(span, self.duration_ms, previous_end)
                if problem:
                    raise ValueError(f"{where}[{index}]: {problem}")
                previous_end = span[1]
        if isinstance(self.sends, str | bytes) or not isinstance(self.sends, Sequence):
            raise ValueError("trace sends must be a list of Send")
        for index, send in enumerate(self.sends):
            if not isinstance(send, Send):
                raise ValueError(
                    f"trace sends[{index}]: expected a Send, not {type(send).__name__}"
                )
            problem = self._send_problem(send)
            if problem:
                raise ValueError(f"trace sends[{index}]: {problem}")

    def _send_problem(self, send: Send, *, online: bool = True) -> str:
        """What is wrong with ``send`` ("" if nothing; ``online``: check that its device
        is online then, which needs every span of the trace)."""
        if not (_is_int(send.at_ms) and 0 <= send.at_ms < self.duration_ms):
            return f"at_ms must be an int in 0..{self.duration_ms - 1}, not {send.at_ms!r}"
        problem = _device_problem(self.users, send.user, send.kind)
        if problem:
            return problem
        if not (_is_int(send.to_user) and 0 <= send.to_user < self.users):
            return f"to_user must be a user in 0..{self.users - 1}, not {send.to_user!r}"
        if send.to_user == send.user:
            return f"user {send.user} sends to itself"
        if not (_is_int(send.size) and 0 <= send.size <= MAX_SEND_BYTES):
            return f"size must be an int in 0..{MAX_SEND_BYTES}, not {send.size!r}"
        if online and not self.is_online(send.user, send.kind, send.at_ms):
            return f"user {send.user}'s {send.kind} is offline at {send.at_ms} ms"
        return ""


def _header_problem(users: object, duration_ms: object, seed: object, max_users: int) -> str:
    if not (_is_int(users) and 1 <= users <= max_users):  # type: ignore[operator]
        return f"users must be an int in 1..{max_users}, not {users!r}"
    if not (_is_int(duration_ms) and 0 < duration_ms <= MAX_DURATION_MS):  # type: ignore[operator]
        return f"duration_ms must be an int in 1..{MAX_DURATION_MS} (366 days), not {duration_ms!r}"
    if not _is_int(seed):
        return f"seed must be an int, not {seed!r}"
    return ""


def _device_problem(users: int, user: object, kind: object) -> str:
    if not (_is_int(user) and 0 <= user < users):  # type: ignore[operator]
        return f"user must be in 0..{users - 1}, not {user!r}"
    if kind not in KINDS:
        return f"unknown device kind {kind!r} (kinds: {', '.join(KINDS)})"
    return ""


def _span_problem(span: object, duration_ms: int, previous_end: int) -> str:
    if not (isinstance(span, Sequence) and len(span) == 2 and all(map(_is_int, span))):
        return "a span is a pair of ints (ms)"
    start, end = span
    if start < 0 or end > duration_ms:
        return f"span {span!r} is outside 0..{duration_ms} ms"
    if start >= end:
        return f"span {span!r} does not end after it starts"
    if start < previous_end:
        return (
            f"span {span!r} starts before the previous one ends ({previous_end} ms); "
            "spans must be in order and not overlap"
        )
    return ""


# --- generation ----------------------------------------------------------------------------


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


def _foreground(rng: random.Random, day: int) -> list[tuple[int, int]]:
    """A ``mobile`` phone's foreground sessions on ``day``, unmerged."""
    base = day * DAY_MS
    return [
        (start, start + rng.randint(*FOREGROUND_S) * 1000)
        for start in (
            rng.randrange(base + AWAKE_MS[0], base + AWAKE_MS[1])
            for _ in range(rng.randint(*FOREGROUND_PER_DAY))
        )
    ]


def merged_spans(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """``spans`` in order, overlapping or touching ones joined."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def build_trace(
    scenario: Scenario, *, on_progress: Callable[[float], None] = lambda fraction: None
) -> Trace:
    """The trace ``scenario`` describes; the same scenario gives the same trace (and an
    ``office`` one the same as before profiles existed: its draws are unchanged).
    ``on_progress`` hears the fraction of the trace's time generated so far."""
    rng = random.Random(scenario.seed)
    mobile = scenario.profile == "mobile"
    days = int(scenario.days + 0.999)
    end_ms = int(scenario.days * DAY_MS)
    away = (DAY_MS // 2, DAY_MS // 2 + int(scenario.long_offline_days * DAY_MS))
    packed: dict[tuple[int, str], Spans] = {}
    for user in range(scenario.users):
        for kind in KINDS:
            if mobile and kind == "phone":
                spans = merged_spans(s for day in range(days) for s in _foreground(rng, day))
            else:
                spans = [s for day in range(days) for s in _daily(rng, day, kind)]
            if user == 0 and kind == "desktop" and scenario.long_offline_days > 0:
                clipped = [(a, min(b, away[0])) for a, b in spans] + [
                    (max(a, away[1]), b) for a, b in spans
                ]
                spans = sorted((a, b) for a, b in clipped if b > a)
            packed[(user, kind)] = Spans((a, min(b, end_ms)) for a, b in spans if a < end_ms)
    # Phones a write brought to the foreground (``mobile``): until when, and the sessions.
    opened_until = [0] * scenario.users
    opened: dict[int, Spans] = {}
    sends = SendTable()
    users, (low, high) = scenario.users, scenario.message_bytes
    rate_per_ms = users * scenario.messages_per_user_per_day / DAY_MS
    reported, at = 0, 0.0
    while rate_per_ms > 0:
        at += rng.expovariate(rate_per_ms)
        if at >= end_ms:
            break
        if at - reported >= end_ms / 100:
            reported = int(at)
            on_progress(at / end_ms)
        # randrange(n) draws exactly as choice() of an n-item list did: traces built
        # before the lists were dropped (they cost O(users) a send) stay the same.
        user = rng.randrange(users)
        now = int(at)
        kinds_online = [
            index
            for index, kind in enumerate(KINDS)
            if _inside(packed[(user, kind)], now) or (kind == "phone" and now < opened_until[user])
        ]
        if not kinds_online and mobile and AWAKE_MS[0] <= now % DAY_MS < AWAKE_MS[1]:
            opened_until[user] = now + rng.randint(*FOREGROUND_S) * 1000
            sessions = opened.setdefault(user, Spans())  # in order: each opens after the last
            sessions.starts.append(now)
            sessions.ends.append(min(opened_until[user], end_ms))
            kinds_online = [KINDS.index("phone")]
        if not kinds_online or users < 2:
            continue
        other = rng.randrange(users - 1)
        to_user = other + (other >= user)
        size = rng.randint(low, high)
        sends.append(now, user, kinds_online[rng.randrange(len(kinds_online))], to_user, size)
    for user, sessions in opened.items():
        packed[(user, "phone")] = Spans(merged_spans([*packed[(user, "phone")], *sessions]))
    on_progress(1.0)
    return Trace(scenario.users, end_ms, packed, sends, seed=scenario.seed)


def _inside(spans: Spans, at_ms: int) -> bool:
    index = bisect_right(spans.starts, at_ms) - 1
    return index >= 0 and at_ms < spans.ends[index]


# --- trace files ---------------------------------------------------------------------------


def dump_trace(trace: Trace, path: str | Path) -> None:
    """Write ``trace`` as JSON (the module docstring's format), one send a line, so a
    long trace streams out rather than being built in memory first."""
    with Path(path).open("w") as out:
        header = {
            "format": TRACE_FORMAT,
            "users": trace.users,
            "duration_ms": trace.duration_ms,
            "seed": trace.seed,
        }
        out.write(json.dumps(header)[:-1] + ',\n "devices": [')
        devices = sorted(trace.online.items())
        for index, ((user, kind), spans) in enumerate(devices):
            device = {"user": user, "kind": kind, "online": [list(s) for s in spans]}
            out.write(("," if index else "") + "\n  " + json.dumps(device))
        out.write('\n ],\n "sends": [')
        for index, send in enumerate(trace.sends):
            out.write(("," if index else "") + "\n  " + json.dumps(asdict(send)))
        out.write("\n ]\n}\n")


def load_trace(path: str | Path, *, max_users: int = MAX_MODEL_USERS) -> Trace:
    """The trace in ``path`` (``.csv``: the CSV form; anything else: JSON), checked as
    :meth:`Trace.validate` checks one, or :class:`TraceFileError` with a one-line reason
    naming the file and the line (CSV) or field (JSON). ``max_users``: pass
    :data:`MAX_USERS` for a trace meant for devices."""
    path = Path(path)
    reader = _TraceReader(str(path), max_users)
    try:
        with path.open(newline="") as file:
            if path.suffix.lower() == ".csv":
                return reader.csv(file)
            return reader.json(file)
    except OSError as exc:
        raise TraceFileError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise TraceFileError(f"{path}: not text ({exc.reason})") from None


_SEND_FIELDS = ("at_ms", "user", "kind", "to_user", "size")
_CSV_FIELDS = {"users": 1, "duration_ms": 1, "seed": 1, "online": 4, "send": 5}


class _TraceReader:
    """Builds a trace from a file's records as they come, checking each with the rules of
    :meth:`Trace.validate` (the same functions) and naming where it came from when one is
    wrong. Spans and sends go straight into their packed form."""

    def __init__(self, name: str, max_users: int) -> None:
        self.name = name
        self.max_users = max_users
        self.header: dict[str, object] = {}
        self.stub: Trace | None = None
        self.spans: dict[tuple[int, str], Spans] = {}
        self.sends = SendTable()
        #: The CSV line of each send (JSON names a send by its index instead).
        self.send_lines = array("q")

    def fail(self, where: str, problem: str) -> TraceFileError:
        return TraceFileError(f"{self.name}{where}: {problem}")

    def begin(self, where: str) -> Trace:
        """The header, checked once, before the first span or send."""
        if self.stub is None:
            missing = [key for key in ("users", "duration_ms") if key not in self.header]
            if missing:
                raise self.fail(where, f"{' and '.join(missing)} must be given first")
            users, duration, seed = (
                self.header["users"],
                self.header["duration_ms"],
                self.header.get("seed", 1),
            )
            problem = _header_problem(users, duration, seed, self.max_users)
            if problem:
                raise self.fail(where, problem)
            assert isinstance(users, int) and isinstance(duration, int) and isinstance(seed, int)
            self.stub = Trace(users, duration, self.spans, self.sends, seed)
        return self.stub

    def device(self, where: str, user: object, kind: object) -> Spans:
        stub = self.begin(where)
        problem = _device_problem(stub.users, user, kind)
        if problem:
            raise self.fail(where, problem)
        assert isinstance(user, int) and isinstance(kind, str)
        return self.spans.setdefault((user, kind), Spans())

    def span(self, where: str, spans: Spans, span: object) -> None:
        assert self.stub is not None
        problem = _span_problem(span, self.stub.duration_ms, spans.ends[-1] if spans else 0)
        if problem:
            raise self.fail(where, problem)
        assert isinstance(span, Sequence)
        spans.starts.append(span[0])
        spans.ends.append(span[1])

    def send(self, where: str, values: Sequence[Any]) -> None:
        send = Send(*values)
        problem = self.begin(where)._send_problem(send, online=False)
        if problem:
            raise self.fail(where, problem)
        self.sends.append(send.at_ms, send.user, KINDS.index(send.kind), send.to_user, send.size)

    def finish(self) -> Trace:
        """The trace, once every send is known to come from a device online then."""
        trace = self.begin("")
        empty = Spans()
        for index, (at_ms, user, kind) in enumerate(
            zip(self.sends.at_ms, self.sends.user, self.sends.kind, strict=True)
        ):
            if not _inside(self.spans.get((user, KINDS[kind]), empty), at_ms):
                where = f":{self.send_lines[index]}" if self.send_lines else f": sends[{index}]"
                raise self.fail(where, trace._send_problem(self.sends[index]))
        return trace

    def json(self, file: IO[str]) -> Trace:
        try:
            document = json.load(file)
        except json.JSONDecodeError as exc:
            raise self.fail(f":{exc.lineno}", f"not JSON: {exc.msg}") from None
        if not isinstance(document, dict):
            raise self.fail("", "expected a JSON object with users, duration_ms, devices, sends")
        unknown = sorted(
            set(document) - {"format", "users", "duration_ms", "seed", "devices", "sends"}
        )
        if unknown:
            raise self.fail("", f"unknown field {unknown[0]!r}")
        if document.get("format", TRACE_FORMAT) != TRACE_FORMAT:
            raise self.fail(": format", f"expected {TRACE_FORMAT!r}, not {document['format']!r}")
        self.header = {k: document[k] for k in ("users", "duration_ms", "seed") if k in document}
        self.begin("")
        for index, device in enumerate(self._list(document, "devices")):
            where = f": devices[{index}]"
            if not (isinstance(device, dict) and set(device) == {"user", "kind", "online"}):
                raise self.fail(where, 'expected the fields "user", "kind", "online"')
            known = len(self.spans)
            spans = self.device(where, device["user"], device["kind"])
            if len(self.spans) == known:
                raise self.fail(where, "the same device is listed twice")
            if not isinstance(device["online"], list):
                raise self.fail(f"{where}.online", "expected a list of [start_ms, end_ms]")
            for number, span in enumerate(device["online"]):
                self.span(f"{where}.online[{number}]", spans, span)
        for index, send in enumerate(self._list(document, "sends")):
            where = f": sends[{index}]"
            if not (isinstance(send, dict) and set(send) == set(_SEND_FIELDS)):
                raise self.fail(where, f"expected the fields {', '.join(_SEND_FIELDS)}")
            self.send(where, [send[name] for name in _SEND_FIELDS])
        return self.finish()

    def _list(self, document: dict[str, Any], key: str) -> list[Any]:
        value = document.get(key, [])
        if not isinstance(value, list):
            raise self.fail(f": {key}", "expected a list")
        return value

    def csv(self, file: IO[str]) -> Trace:
        for line, row in enumerate(csv.reader(file), start=1):
            cells = [cell.strip() for cell in row]
            if not any(cells) or cells[0].startswith("#"):
                continue
            where, (record, *fields) = f":{line}", cells
            if record not in _CSV_FIELDS:
                raise self.fail(where, f"unknown record {record!r} ({', '.join(_CSV_FIELDS)})")
            if len(fields) != _CSV_FIELDS[record]:
                raise self.fail(
                    where, f"{record} takes {_CSV_FIELDS[record]} fields, not {len(fields)}"
                )
            values = [_int_or_text(cell) for cell in fields]
            if record == "online":
                self.span(where, self.device(where, values[0], fields[1]), values[2:])
            elif record == "send":
                values[2] = fields[2]  # the kind stays text, even "1"
                self.send(where, values)
                self.send_lines.append(line)
            elif record in self.header or self.stub is not None:
                raise self.fail(where, f"{record} must be given once, before any span or send")
            else:
                self.header[record] = values[0]
        return self.finish()


def _int_or_text(text: str) -> object:
    try:
        return int(text)
    except ValueError:
        return text
