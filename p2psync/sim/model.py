"""The storage benchmark's figures computed from a trace, without running devices.

Real devices (:func:`p2psync.run_scenario`) replay a few users for a few days in minutes;
this model gives the same figures (DESIGN.md §9: stored copies per message, sync copies,
byte·hours, peak bytes, losses, completeness) for 10 000 users over a month in minutes, by
applying the device layer's storage rules to each send and the devices' online spans. Its
figures say ``"source": "model"``; :func:`validate_model` compares it with a device run
on the same trace, which is how it earns trust (CI checks it on small seeded traces).

It lives in :mod:`p2psync.sim` beside the device runner because it is that runner's
stand-in at scale, reads the same :class:`~.scenario.Trace`, and answers in the same keys.
``p2psync bench storage --scale`` (:mod:`benchmarks.model_bench`) runs it with progress
bars and a device run to validate it on, and prints the figures.

The rules, per send at ``t`` from device ``D`` of user ``A`` (sibling ``S``) to user
``B``, each copy stored at some moment and ended by a deletion or by expiry one TTL later
(``ModelConfig``; a copy nobody deletes before the run ends lives its whole TTL):

* ``fanout`` (``mapped`` devices, no direct sync): one ``text`` copy in each of ``B``'s
  two device swarms (the desktop's carries the message id), never deleted; one
  ``sync_sent`` copy in ``S``'s swarm, deleted when ``S`` next comes online and reads it
  (``Device._apply``, ``mapped``: "the copy has done its job").
* ``linked`` (one account key, no direct sync): one ``text`` copy in ``B``'s account swarm
  and one ``sync_sent`` copy in ``A``'s, neither ever deleted.
* ``p2p`` (``linked`` with direct sync): each of ``B``'s devices that reads the ``text``
  copy offers it to the other a push delay later (or at their next session, both
  online for ``session_setup_ms``); the other acknowledges, and the device that offered
  deletes the copy (``Device.acknowledged``, early deletion): it goes with the first of
  these deletions. ``S`` acknowledges ``D``'s push once ``A``'s devices have a session;
  if that has not happened by the end of the grace period, or by when ``D`` goes offline
  if that is sooner (§7: a device going offline stores what its siblings have not
  acknowledged), ``D`` stores one ``sync_sent`` copy then, deleted at ``A``'s next
  session (``D`` receives the acknowledgement) or expired after the sync-copy TTL
  (``ModelConfig.sync_copy_ttl_ms``). With two devices a user no sibling ever
  stands in for the origin (``Device._stand_in``: nobody else to serve).

Every deletion goes out a delete delay after the moment above, or when the deleting
device is next online if it is away by then. The devices draw both delays at random
(``device.values.DELETE_DELAY_S`` and ``INBOUND_PUSH_DELAY_S``); the model draws them
from the same ranges, seeded (``ModelConfig``), each device its own, so that the first
of two deletions comes as early as on devices.

A device holds a message at the end if it sent it, read a swarm copy meant for it while
the copy was there (a device coming online reads its swarms at once), or, in ``p2p``,
its sibling held it before a session (live push or re-sync); after ``duration_ms`` every
device is online for :data:`~.scenario.SETTLE_MS`. A copy's size is what the nodes store:
the sealed envelope of the real content (:func:`~p2psync.envelope.seal_envelope` of
:func:`~p2psync.device.content.encode_content`), its text ``size`` characters long, with
the sender's mailbox access if it is the sending device's first envelope to that mailbox
that week (``Local._access_to_carry``; weeks counted as the devices count them, for a
trace starting at :data:`~p2psync.clock.TEST_EPOCH_MS`, as the device runner's does; the
envelopes of set-up, friend requests and pairing, which carry it in the first week, are
not counted).

Not modelled: network and processing delays below a few seconds (a copy deleted "at
once" lives 0 s here, a second or two on devices) and delivery latency (reported as
``None``). Standard library only (machine-int arrays, binary search, one pass): numpy
would vectorise it but is not a dependency, and the pass meets the ten-minute budget.
"""

from __future__ import annotations

import random
from array import array
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from ..clock import TEST_EPOCH_MS
from ..device.content import MAX_TEXT_CHARS, SyncSent, Text, encode_content
from ..device.values import DELETE_DELAY_S, INBOUND_PUSH_DELAY_S, check_copy_ttls
from ..envelope import seal_envelope
from ..identity import Identity
from ..swarm.access import access_expiry, sign_access
from ..swarm.constants import DEFAULT_TTL_MS
from ..sync.live import DEFAULT_GRACE_MS
from .scenario import (
    HOUR_MS,
    KINDS,
    MAX_MODEL_USERS,
    SETTLE_MS,
    Scenario,
    SendTable,
    Spans,
    Trace,
    build_trace,
)

STRATEGIES = ("fanout", "linked", "p2p")
#: The figures a device run and the model must agree on, within :data:`TOLERANCE`.
VALIDATED = ("copies_per_message", "byte_hours", "peak_bytes")
#: The per-strategy keys of the §9 JSON.
FIGURES = (
    "copies_per_message",
    "sync_copies_per_message",
    "byte_hours",
    "peak_bytes",
    "lost",
    "completeness",
    "latency_p50_ms",
    "latency_p99_ms",
    "source",
)
TOLERANCE = 0.02
#: Later than anything in a trace: "does not happen".
NEVER = 2**62
#: The seeded small trace a ``--scale`` run is validated on, with real devices, beside it:
#: a user away past the TTL, about a minute and a half a strategy on devices.
VALIDATION = Scenario(users=3, days=2.5, messages_per_user_per_day=12, long_offline_days=1.2)


@dataclass(frozen=True)
class ModelConfig:
    """The device layer's timings the model applies. ``session_setup_ms``: from both
    siblings being online to a session carrying an acknowledgement (drain the swarm,
    build paths, dial: seconds on the emulated overlay); ``push_delay_s`` and
    ``delete_delay_s``: the ranges the devices draw those delays from, and ``seed`` the
    model's draws. ``peak_step_ms``: the time
    resolution of the peak: a copy counts in every slot it was stored in at some moment,
    so copies that follow each other within one slot count as if they overlapped.
    ``sync_copy_ttl_ms``: how long ``p2p``'s sync copies live (the devices'
    ``DeviceConfig.sync_copy_ttl_ms``; None: ``ttl_ms``)."""

    ttl_ms: int = DEFAULT_TTL_MS
    sync_copy_ttl_ms: int | None = None
    grace_ms: int = DEFAULT_GRACE_MS
    session_setup_ms: int = 5_000
    push_delay_s: tuple[float, float] = INBOUND_PUSH_DELAY_S
    delete_delay_s: tuple[float, float] = DELETE_DELAY_S
    seed: int = 0
    settle_ms: int = SETTLE_MS
    peak_step_ms: int = 1_000

    def __post_init__(self) -> None:
        check_copy_ttls(self.ttl_ms, self.sync_copy_ttl_ms)

    @property
    def sync_ttl_ms(self) -> int:
        return self.ttl_ms if self.sync_copy_ttl_ms is None else self.sync_copy_ttl_ms


# --- copy sizes ------------------------------------------------------------------------------


class _CopySizes:
    """Bytes the nodes store for each kind of copy of a message of ``n`` characters, from
    really sealing one (cached: sizes repeat, and sealing costs a public-key operation):
    without and with the sender's access."""

    def __init__(self) -> None:
        self._sender = Identity.from_label("model/sender")
        self._recipient = Identity.from_label("model/recipient").x25519_public
        self._user = Identity.from_label("model/user").session_id
        self._id = bytes(32)
        self._access = sign_access(self._sender, TEST_EPOCH_MS)
        self.plain: dict[int, tuple[int, int]] = {}
        self.with_id: dict[int, tuple[int, int]] = {}
        self.sync: dict[int, tuple[int, int]] = {}

    def fill(self, size: int) -> None:
        if size > MAX_TEXT_CHARS:
            raise ValueError(f"a device sends at most {MAX_TEXT_CHARS} characters, not {size}")
        text = "x" * size
        for table, content in (
            (self.plain, Text(self._user, text)),
            (self.with_id, Text(self._user, text, self._id)),
            (self.sync, SyncSent(self._id, self._user, TEST_EPOCH_MS, text)),
        ):
            kind, body = encode_content(content)
            table[size] = (
                len(seal_envelope(self._sender, self._recipient, kind, body, TEST_EPOCH_MS)),
                len(
                    seal_envelope(
                        self._sender, self._recipient, kind, body, TEST_EPOCH_MS, self._access
                    )
                ),
            )


# --- who is online when ----------------------------------------------------------------------


def _next_on(starts: array[int], ends: array[int], at_ms: int) -> int:
    """The first moment from ``at_ms`` on inside one of the spans, or :data:`NEVER`."""
    index = bisect_right(starts, at_ms) - 1
    if index >= 0 and at_ms < ends[index]:
        return at_ms
    return starts[index + 1] if index + 1 < len(starts) else NEVER


class _Delays:
    """The devices' random delays, drawn from the ranges they draw them from (seeded, one
    stream per strategy, so that a strategy's figures do not depend on which others are
    modelled with it)."""

    def __init__(self, config: ModelConfig, strategy: str) -> None:
        self._rng = random.Random(f"{config.seed}/{strategy}")
        self._push_s = config.push_delay_s
        self._delete_s = config.delete_delay_s

    def push_ms(self) -> int:
        return int(self._rng.uniform(*self._push_s) * 1000)

    def delete_ms(self) -> int:
        return int(self._rng.uniform(*self._delete_s) * 1000)


def _deleted(spans: Spans, queued_ms: int, delays: _Delays) -> int:
    """When a deletion that a device online in ``spans`` queued at ``queued_ms`` reaches
    the swarm: a delete delay later, or when the device is next online."""
    if queued_ms >= NEVER:
        return NEVER
    return _next_on(spans.starts, spans.ends, queued_ms + delays.delete_ms())


def _end_of(starts: array[int], ends: array[int], at_ms: int) -> int:
    """The end of the span holding ``at_ms``."""
    return ends[bisect_right(starts, at_ms) - 1]


def _packed(spans: Sequence[tuple[int, int]]) -> Spans:
    return spans if isinstance(spans, Spans) else Spans(spans)


def _settled(spans: Spans, duration_ms: int, settle_ms: int) -> Spans:
    """``spans`` and the settling period after the trace, joined if they touch."""
    out = Spans()
    out.starts.extend(spans.starts)
    out.ends.extend(spans.ends)
    if out and out.ends[-1] == duration_ms:
        out.ends[-1] = duration_ms + settle_ms
    else:
        out.starts.append(duration_ms)
        out.ends.append(duration_ms + settle_ms)
    return out


def _sessions(one: Spans, other: Spans, setup_ms: int) -> Spans:
    """When two siblings have a session: both online, from ``setup_ms`` after the later
    of them came."""
    out, i, j = Spans(), 0, 0
    while i < len(one) and j < len(other):
        start = max(one.starts[i], other.starts[j]) + setup_ms
        end = min(one.ends[i], other.ends[j])
        if start < end:
            out.starts.append(start)
            out.ends.append(end)
        if one.ends[i] < other.ends[j]:
            i += 1
        else:
            j += 1
    return out


def _zeros(length: int) -> array[int]:
    return array("q", bytes(8 * length))


# --- accounting ------------------------------------------------------------------------------


class _Ledger:
    """One strategy's copies, summed as they are found (no copy is kept: there are
    millions), and what each device holds at the end."""

    def __init__(self, run_end_ms: int, config: ModelConfig, devices: int) -> None:
        self.run_end_ms = run_end_ms
        self.step_ms = config.peak_step_ms
        self.copies = self.sync_copies = self.byte_ms = self.lost = 0
        #: Bytes stored at some moment of each ``step_ms`` slot, as changes per slot (for
        #: the peak: a copy deleted "at once" is there for a moment on devices, and counts).
        self.changes = _zeros((run_end_ms + config.ttl_ms) // self.step_ms + 2)
        #: Copies and bytes stored at some moment of each hour, as changes per hour.
        self.hour_copies = _zeros(run_end_ms // HOUR_MS + 2)
        self.hour_bytes = _zeros(run_end_ms // HOUR_MS + 2)
        #: Per device (``2 * user + kind``): messages it holds at the end.
        self.held = _zeros(devices)
        #: Per (device, mailbox): the expiry of the access its last envelope there that
        #: carried one carried (:meth:`carries`).
        self._carried: dict[tuple[int, int], int] = {}

    def carries(self, device: int, mailbox: int, at_ms: int) -> int:
        """1 if ``device``'s envelope to ``mailbox`` sealed at ``at_ms`` (from the trace's
        start) carries its access, its first there since it signed that access, else 0:
        the index of its size in a :class:`_CopySizes` table."""
        signed = access_expiry(TEST_EPOCH_MS + at_ms)  # as the device signs it
        if self._carried.get((device, mailbox)) == signed:
            return 0
        self._carried[(device, mailbox)] = signed
        return 1

    def store(self, start_ms: int, end_ms: int, size: int) -> None:
        self.copies += 1
        self.byte_ms += size * (end_ms - start_ms)
        self.changes[start_ms // self.step_ms] += size
        self.changes[end_ms // self.step_ms + 1] -= size
        first, last = start_ms // HOUR_MS, min(end_ms, self.run_end_ms) // HOUR_MS + 1
        self.hour_copies[first] += 1
        self.hour_copies[last] -= 1
        self.hour_bytes[first] += size
        self.hour_bytes[last] -= size

    def figures(self, messages: int, relevant: array[int]) -> dict[str, Any]:
        per_message = max(1, messages)
        hours = self.run_end_ms // HOUR_MS + 1
        completeness = [
            held / relevant[device // 2] if relevant[device // 2] else 1.0
            for device, held in enumerate(self.held)
        ]
        return {
            "messages": messages,
            "copies_per_message": round(self.copies / per_message, 3),
            "sync_copies_per_message": round(self.sync_copies / per_message, 3),
            "byte_hours": round(self.byte_ms / HOUR_MS, 1),
            "peak_bytes": max(accumulate(self.changes), default=0),
            "lost": self.lost,
            "completeness": round(min(completeness, default=1.0), 4),
            "latency_p50_ms": None,
            "latency_p99_ms": None,
            "source": "model",
            "stored_copies_by_hour": list(accumulate(self.hour_copies))[:hours],
            "stored_bytes_by_hour": list(accumulate(self.hour_bytes))[:hours],
        }


class _Floors:
    """The least byte·hours any implementation of DESIGN.md §7 holds on a trace, summed
    per send as :meth:`add` finds it. §7 fixes, for every implementation:

    * a copy for the recipient goes only once every device of the account has the
      message (early deletion), and a device has it no sooner than it is first online
      after the send;
    * a copy owed to the sender's sibling is stored when the grace period ends or the
      sender goes offline, whichever is first, unless the sibling was online before
      then, and stays until the sibling has it (no sooner than it comes) or it expires.

    Both last no longer than the TTL (the sync copy than the devices' sync-copy TTL,
    when it is shorter). Sizes are the padded envelopes the devices store.
    What an implementation adds to this is its own delays (a session's set-up, a push,
    a deletion going out) and any copy §7 does not require; a design that holds less
    breaks one of the rules above. Sync copies that live less than the TTL
    (``sync_copy_ttl_ms``) are such a change, and the floor is then the one of §7 with
    that life."""

    def __init__(self, on: list[Spans], config: ModelConfig) -> None:
        self._on, self._ttl, self._grace = on, config.ttl_ms, config.grace_ms
        self._sync_ttl = config.sync_ttl_ms
        self.byte_ms = 0

    def add(self, at: int, d: int, s: int, reads: tuple[int, int], sizes: tuple[int, int]) -> None:
        """One send at ``at`` from ``d`` (online then; sibling ``s``) to an account whose
        devices are first online at ``reads``; ``sizes``: its plain and sync copies'
        bytes."""
        plain, sync = sizes
        expiry = at + self._ttl
        sender, sibling = self._on[d], self._on[s]
        due = min(at + self._grace, _end_of(sender.starts, sender.ends, at))
        comes = _next_on(sibling.starts, sibling.ends, at)
        owed = 0 if comes < due else min(comes, due + self._sync_ttl) - due
        self.byte_ms += plain * (min(max(reads), expiry) - at) + sync * owed


# --- the model -------------------------------------------------------------------------------


def run_model(
    trace: Trace | Scenario,
    strategies: tuple[str, ...] = STRATEGIES,
    *,
    config: ModelConfig = ModelConfig(),
    on_progress: Callable[[float], None] = lambda fraction: None,
) -> dict[str, Any]:
    """The §9 figures of each of ``strategies`` on ``trace`` (a :class:`Trace`, checked
    first, or a :class:`Scenario`, generated), computed by the rules of the module
    docstring: ``{"strategies": {name: figures}, "floor_sync_copies_per_message": f,
    "floor_byte_hours": b}``.
    Each strategy's figures carry ``"source": "model"``, ``messages``,
    ``sync_copies_per_message`` and hourly ``stored_copies_by_hour`` /
    ``stored_bytes_by_hour`` series (what was stored at some moment of each hour) as a
    device run's do; latencies are ``None``. ``floor_sync_copies_per_message`` is
    §9's floor: the share of sends whose sender's sibling was not online at any moment
    from the send to the end of the grace period or the sender going offline, if sooner.
    ``floor_byte_hours`` is the least byte·hours any implementation of §7 holds on the
    trace (:class:`_Floors`), whatever strategies are asked for.

    One pass over the sends for every strategy, a few binary searches in the devices'
    spans per send: 10 000 users for 30 days (about four million sends) take a minute
    and a half on one core, in about 450 MB. ``on_progress`` hears the fraction of sends
    done."""
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        raise ValueError(f"strategies must be some of {STRATEGIES}, not {strategies!r}")
    if isinstance(trace, Scenario):
        trace = build_trace(trace)
    elif isinstance(trace, Trace):
        trace.validate(max_users=MAX_MODEL_USERS)
    else:
        raise ValueError(f"expected a Trace or a Scenario, not {type(trace).__name__}")
    duration, users = trace.duration_ms, trace.users
    run_end = duration + config.settle_ms
    raw = [_packed(trace.online.get((u, k), ())) for u in range(users) for k in KINDS]
    on = [_settled(spans, duration, config.settle_ms) for spans in raw]
    sessions = [_sessions(on[2 * u], on[2 * u + 1], config.session_setup_ms) for u in range(users)]
    ledgers = {name: _Ledger(run_end, config, 2 * users) for name in strategies}
    fanout, linked, p2p = (ledgers.get(name) for name in STRATEGIES)
    sizes = _CopySizes()
    relevant = _zeros(users)
    ttl, grace = config.ttl_ms, config.grace_ms
    fanout_delays, p2p_delays = _Delays(config, "fanout"), _Delays(config, "p2p")
    floor = 0
    floors = _Floors(on, config)
    table = SendTable.of(trace.sends)
    count = len(table)
    step = max(1, count // 100)
    for index, (at, a, kind, b, size) in enumerate(
        zip(table.at_ms, table.user, table.kind, table.to_user, table.size, strict=True)
    ):
        if index % step == 0:
            on_progress(index / max(1, count))
        if size not in sizes.plain:
            sizes.fill(size)
        plain, sync, with_id = sizes.plain[size], sizes.sync[size], sizes.with_id[size]
        account_b, account_a = 2 * users + b, 2 * users + a  # their mailboxes in linked mode
        relevant[a] += 1
        relevant[b] += 1
        d, s, bp, bd = 2 * a + kind, 2 * a + 1 - kind, 2 * b, 2 * b + 1
        expiry = at + ttl
        s_on = _next_on(on[s].starts, on[s].ends, at)
        bp_on = _next_on(on[bp].starts, on[bp].ends, at)
        bd_on = _next_on(on[bd].starts, on[bd].ends, at)
        leaves = _end_of(raw[d].starts, raw[d].ends, at)
        if _next_on(raw[s].starts, raw[s].ends, at) >= min(at + grace, leaves):
            floor += 1
        floors.add(at, d, s, (bp_on, bd_on), (plain[0], sync[0]))
        if fanout is not None:
            fanout.store(at, expiry, plain[fanout.carries(d, bp, at)])
            fanout.store(at, expiry, with_id[fanout.carries(d, bd, at)])
            # Gone once the sibling has read it and its deletion went out.
            gone = min(_deleted(on[s], s_on, fanout_delays), expiry)
            fanout.store(at, gone, sync[fanout.carries(d, s, at)])
            _swarm_only(fanout, d, s, bp, bd, expiry, s_on, bp_on, bd_on)
        if linked is not None:
            linked.store(at, expiry, plain[linked.carries(d, account_b, at)])
            linked.store(at, expiry, sync[linked.carries(d, account_a, at)])
            _swarm_only(linked, d, s, bp, bd, expiry, s_on, bp_on, bd_on)
        if p2p is not None:
            _p2p_send(
                p2p,
                at,
                d,
                s,
                bp,
                bd,
                (plain, sync),
                (account_b, account_a),
                s_on,
                bp_on,
                bd_on,
                sessions,
                on,
                config,
                p2p_delays,
            )
    on_progress(1.0)
    return {
        "strategies": {name: ledger.figures(count, relevant) for name, ledger in ledgers.items()},
        "floor_sync_copies_per_message": round(floor / max(1, count), 3),
        "floor_byte_hours": round(floors.byte_ms / HOUR_MS, 1),
    }


def _swarm_only(
    ledger: _Ledger,
    d: int,
    s: int,
    bp: int,
    bd: int,
    expiry: int,
    s_on: int,
    bp_on: int,
    bd_on: int,
) -> None:
    """Who holds a message when devices only read swarms (``fanout``, ``linked``): those
    online before their copy expired. Each of these sends stored one sync copy."""
    ledger.sync_copies += 1
    held = ledger.held
    held[d] += 1
    held[s] += s_on < expiry
    held[bp] += bp_on < expiry
    held[bd] += bd_on < expiry
    ledger.lost += bp_on >= expiry and bd_on >= expiry


def _p2p_send(
    ledger: _Ledger,
    at: int,
    d: int,
    s: int,
    bp: int,
    bd: int,
    sizes: tuple[tuple[int, int], tuple[int, int]],
    mailboxes: tuple[int, int],
    s_on: int,
    bp_on: int,
    bd_on: int,
    sessions: list[Spans],
    on: list[Spans],
    config: ModelConfig,
    delays: _Delays,
) -> None:
    """One send under ``p2p`` (the module docstring's rules); ``sizes``: of the text copy
    and of the sync copy (:class:`_CopySizes`), ``mailboxes``: the recipient's and the
    sender's accounts'."""
    expiry = at + config.ttl_ms
    (plain, sync), (theirs_box, ours_box) = sizes, mailboxes
    mine, theirs = sessions[d // 2], sessions[bp // 2]
    # The recipient's copy goes with the first deletion by one of their devices that
    # offered it to the other and was acknowledged.
    met = _next_on(theirs.starts, theirs.ends, at)
    first_read = min(bp_on, bd_on)
    gone = expiry
    for device, read in ((bp, bp_on), (bd, bd_on)):
        if read < expiry:
            acknowledged = _next_on(theirs.starts, theirs.ends, read + delays.push_ms())
            if acknowledged < NEVER:
                gone = min(gone, _deleted(on[device], acknowledged, delays))
    ledger.store(at, gone, plain[ledger.carries(d, theirs_box, at)])
    held = ledger.held
    if met < expiry:
        held[bp] += 1
        held[bd] += 1
    elif first_read < expiry:
        shared = _next_on(theirs.starts, theirs.ends, first_read) < NEVER
        held[bp] += bp_on < expiry or shared
        held[bd] += bd_on < expiry or shared
    else:
        ledger.lost += 1
    # The sender's sibling acknowledges at their first session; a sync copy if too late.
    held[d] += 1
    acked = _next_on(mine.starts, mine.ends, at)
    due = min(at + config.grace_ms, _end_of(on[d].starts, on[d].ends, at))
    if acked < due:
        held[s] += 1
        return
    acknowledged = _next_on(mine.starts, mine.ends, due)
    gone = min(_deleted(on[d], acknowledged, delays), due + config.sync_ttl_ms)
    ledger.store(due, gone, sync[ledger.carries(d, ours_box, due)])
    ledger.sync_copies += 1
    held[s] += acked < NEVER or _next_on(on[s].starts, on[s].ends, due) < gone


# --- validation ------------------------------------------------------------------------------


def relative_errors(
    modelled: Mapping[str, Mapping[str, Any]], measured: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, float]]:
    """Per strategy measured, per :data:`VALIDATED` figure: ``model / measured - 1``
    (0 when both are 0, infinite when only the measurement is)."""
    errors: dict[str, dict[str, float]] = {}
    for name, figures in measured.items():
        errors[name] = {}
        for key in VALIDATED:
            model, real = float(modelled[name][key]), float(figures[key])
            errors[name][key] = (
                round(model / real - 1, 4) if real else 0.0 if model == 0 else float("inf")
            )
    return errors


def validate_model(
    trace: Trace | Scenario,
    measured: Mapping[str, Mapping[str, Any]],
    *,
    config: ModelConfig = ModelConfig(),
) -> dict[str, dict[str, float]]:
    """The model's relative errors against ``measured``: per strategy, what
    :func:`p2psync.run_scenario` returned for it on the same ``trace``."""
    modelled = run_model(trace, tuple(measured), config=config)["strategies"]
    return relative_errors(modelled, measured)
