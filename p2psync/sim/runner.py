"""Replaying a trace on real devices: :func:`run_scenario`, what direct sibling sync saves
in swarm storage (DESIGN.md §9), and the floor of ``p2p``'s sync copies on a trace.

Each strategy replays the same seeded trace on real :class:`~p2psync.Device` s
(:mod:`.replay`: ``fanout`` = ``mapped``, ``linked`` = ``linked`` without direct sync,
``p2p`` = ``linked`` with direct sync) over an embedded network of service nodes and
overlay relays under virtual time, with per-link latencies.

Every figure is measured: stored copies, peak bytes and byte·hours from what the nodes
hold (:mod:`.holdings`); latency from when each device files each message; completeness
and losses from the devices' histories at the end. Only the floor of ``p2p``'s sync
copies is computed from the trace, as DESIGN.md §9 defines it, to print beside them.
``p2psync bench storage`` (:mod:`benchmarks.storage`) runs the strategies side by side and
prints the figures.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from overlay.link import MemoryNetwork

from ..clock import TEST_EPOCH_MS, Clock
from ..device.content import MAX_TEXT_CHARS
from ..device.values import check_copy_ttls
from ..network import open_local_network
from ..swarm.constants import DEFAULT_TTL_MS, NAMESPACE_MESSAGES, NAMESPACE_SYNC
from ..swarm.node_config import NodeConfig
from .holdings import byte_hours, peak_bytes, timeline
from .replay import LINK_PROFILE, NODES, RELAYS, Outcome, Replay
from .scenario import HOUR_MS, KINDS, Scenario, Trace, build_trace
from .virtual_time import VirtualClock

STRATEGIES = ("fanout", "linked", "p2p")
#: The devices' grace period (DeviceConfig.grace_s), which the floor is computed with.
GRACE_MS = 10_000
#: Maintenance that comes round rarely, so that days of virtual time stay fast.
QUIET = NodeConfig(
    registry_refresh_s=150,
    announce_interval_s=150,
    repair_interval_s=6 * 3600,
    sweep_interval_s=600,
)
#: Inbound copies per message a strategy stores by design: one per recipient device in
#: ``fanout``, one per account otherwise. The nodes' count must match it.
INBOUND_COPIES = {"fanout": len(KINDS), "linked": 1, "p2p": 1}


class BenchmarkError(RuntimeError):
    """The nodes and the devices disagree, or a figure could not be read: no result."""


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run_scenario(
    trace: Trace | Scenario,
    strategy: str,
    *,
    on_progress: Callable[[float], None] = lambda fraction: None,
    sync_copy_ttl_ms: int | None = None,
) -> dict[str, Any]:
    """Replay ``trace`` with ``strategy`` (``"fanout"``, ``"linked"`` or ``"p2p"``) on real
    devices over an embedded network under virtual time, and return the figures of
    DESIGN.md §9 (``"source": "devices"``), plus ``messages``, ``completeness_by_device``,
    ``sibling_latency_p50_ms`` / ``_p99_ms`` (the sender's other device),
    ``sibling_catch_up_p50_ms`` / ``_p99_ms`` / ``_max_ms`` (that device, if offline at
    the send: from its first coming online after it to the message being filed), ``node_reads``
    and hourly ``stored_bytes_by_hour`` / ``stored_copies_by_hour`` series from the trace's
    start through the settling period (slot ``h`` counts what the nodes held at some
    moment of hour ``h``).

    ``trace`` is a :class:`~p2psync.Trace` of your own (checked first: a bad one raises
    :class:`ValueError` saying what is wrong) or a :class:`~p2psync.Scenario`, which is
    turned into the benchmark's seeded synthetic trace. Before the trace starts every
    user's desktop is paired to the phone and users who write to each other become
    friends (that takes virtual minutes, not counted). Example: two users, both online
    for two hours, user 0's phone writes to user 1 twice and user 1's desktop answers::

        >>> from p2psync import Send, Trace, run_scenario
        >>> HOUR = 3_600_000
        >>> both_on = [(0, 2 * HOUR)]
        >>> trace = Trace(
        ...     users=2,
        ...     duration_ms=2 * HOUR,
        ...     online={(u, k): both_on for u in (0, 1) for k in ("phone", "desktop")},
        ...     sends=[
        ...         Send(at_ms=600_000, user=0, kind="phone", to_user=1, size=300),
        ...         Send(at_ms=900_000, user=0, kind="phone", to_user=1, size=80),
        ...         Send(at_ms=1_800_000, user=1, kind="desktop", to_user=0, size=1000),
        ...     ],
        ... )
        >>> figures = run_scenario(trace, "p2p")
        >>> figures["copies_per_message"], figures["lost"], figures["completeness"]
        (1.0, 0, 1.0)

    ``sync_copy_ttl_ms`` (``p2p`` only): how long the devices' sync copies live
    (``DeviceConfig.sync_copy_ttl_ms``; None: the TTL).

    Raises :class:`BenchmarkError` if the nodes do not hold one inbound copy per
    recipient account (or device, ``fanout``) per send, or hold a copy the runner never
    saw alive (so of unknown size). For a given trace and seed the network's jitter is
    the same; what may differ run to run is the order in which trio runs tasks ready at
    the same virtual moment (its scheduler breaks such ties at random), so latencies, and
    any figure a tie decides, can differ slightly; and the ciphertexts, which sealing
    draws fresh keys for."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")
    if sync_copy_ttl_ms is not None and strategy != "p2p":
        raise ValueError("sync_copy_ttl_ms needs direct sync: p2p only")
    check_copy_ttls(DEFAULT_TTL_MS, sync_copy_ttl_ms)
    if isinstance(trace, Scenario):
        trace = build_trace(trace)
    elif not isinstance(trace, Trace):
        raise ValueError(f"expected a Trace or a Scenario, not {type(trace).__name__}")
    trace.validate()
    for index, send in enumerate(trace.sends):
        if send.size > MAX_TEXT_CHARS:
            raise ValueError(
                f"trace sends[{index}]: a device sends at most {MAX_TEXT_CHARS} characters"
            )
    seed = trace.seed

    async def main() -> Outcome:
        transport = MemoryNetwork(seed=seed, default_profile=LINK_PROFILE)
        with tempfile.TemporaryDirectory(prefix="p2psync-bench-") as devices:
            async with open_local_network(
                NODES,
                relays=RELAYS if strategy == "p2p" else 0,
                transport=transport,
                clock=Clock(TEST_EPOCH_MS),
                node_config=QUIET,
                seed=seed,
            ) as network:
                replay = Replay(trace, strategy, network, Path(devices), sync_copy_ttl_ms)
                return await replay.run(on_progress)

    outcome = trio.run(main, clock=VirtualClock())
    return _figures(strategy, outcome)


def _figures(strategy: str, outcome: Outcome) -> dict[str, Any]:
    """The §9 figures of one replay, after checking the nodes against the devices."""
    messages = len(outcome.sends)
    copies = outcome.holdings.since(outcome.start_ms)
    inbound = sum(c.namespace == NAMESPACE_MESSAGES for c in copies)
    expected = INBOUND_COPIES[strategy] * messages
    if inbound != expected:
        raise BenchmarkError(
            f"{strategy}: the nodes hold {inbound} inbound copies for {messages} sends "
            f"({expected} expected): a store was lost or one was not the devices'"
        )
    unsized = sum(c.size is None for c in copies)
    if unsized:
        raise BenchmarkError(
            f"{strategy}: {unsized} copies were stored and deleted between two reads of "
            "the nodes, so their size is unknown"
        )
    completeness = {}
    for name, history in sorted(outcome.histories.items()):
        user = outcome.users[name]
        due = [m for m, (sender, to, _) in outcome.sends.items() if user in (sender, to)]
        completeness[name] = round(sum(m in history for m in due) / len(due), 4) if due else 1.0
    lost = sum(
        not any(m in outcome.histories[f"u{to}-{kind}"] for kind in KINDS)
        for m, (_, to, _) in outcome.sends.items()
    )
    counts, sizes = timeline(copies, outcome.start_ms, HOUR_MS, outcome.end_ms)
    per_message = max(1, messages)
    return {
        "messages": messages,
        "copies_per_message": round(len(copies) / per_message, 3),
        "sync_copies_per_message": round(
            sum(c.namespace == NAMESPACE_SYNC for c in copies) / per_message, 3
        ),
        "byte_hours": round(byte_hours(copies, HOUR_MS), 1),
        "peak_bytes": peak_bytes(copies),
        "lost": lost,
        "completeness": min(completeness.values(), default=1.0),
        "latency_p50_ms": round(_percentile(outcome.latencies, 0.5), 1),
        "latency_p99_ms": round(_percentile(outcome.latencies, 0.99), 1),
        "source": "devices",
        "completeness_by_device": completeness,
        "sibling_latency_p50_ms": round(_percentile(outcome.sibling_latencies, 0.5), 1),
        "sibling_latency_p99_ms": round(_percentile(outcome.sibling_latencies, 0.99), 1),
        "sibling_catch_up_p50_ms": round(_percentile(outcome.sibling_catch_ups, 0.5), 1),
        "sibling_catch_up_p99_ms": round(_percentile(outcome.sibling_catch_ups, 0.99), 1),
        "sibling_catch_up_max_ms": max(outcome.sibling_catch_ups, default=0.0),
        "rejected": outcome.rejected,
        "node_reads": outcome.holdings.reads,
        "stored_copies_by_hour": counts,
        "stored_bytes_by_hour": sizes,
    }


def sibling_away_at_send(trace: Trace) -> float:
    """The share of sends made while the sender's other device was offline."""
    other = {"phone": "desktop", "desktop": "phone"}
    away = sum(not trace.is_online(s.user, other[s.kind], s.at_ms) for s in trace.sends)
    return round(away / max(1, len(trace.sends)), 3)


def floor_sync_copies_per_message(trace: Trace, grace_ms: int = GRACE_MS) -> float:
    """DESIGN.md §9's floor of ``p2p``'s sync copies: the share of sends whose sender's
    sibling stayed unreachable past the grace period. Unreachable means the two were
    never online together from the send until the grace period ends or the sender goes
    offline (which, by §7, stores the copy then): no design can hand the message over
    directly, so a swarm fallback must hold it."""
    other = {"phone": "desktop", "desktop": "phone"}

    def unreachable(user: int, kind: str, at_ms: int) -> bool:
        leaves = next(end for start, end in trace.online[(user, kind)] if start <= at_ms < end)
        until = min(at_ms + grace_ms, leaves)
        spans = trace.online.get((user, other[kind]), ())
        return not any(start < until and at_ms < end for start, end in spans)

    needed = sum(unreachable(s.user, s.kind, s.at_ms) for s in trace.sends)
    return round(needed / max(1, len(trace.sends)), 3)
