"""``p2psync bench storage``: what direct sibling sync saves in swarm storage (DESIGN.md §9).

Each strategy replays the same seeded trace on real :class:`~p2psync.Device` s
(:mod:`.replay`: ``fanout`` = ``mapped``, ``linked`` = ``linked`` without direct sync,
``p2p`` = ``linked`` with direct sync) over an embedded network of service nodes and
overlay relays under virtual time, with per-link latencies.

Every figure is measured: stored copies, peak bytes and byte·hours from what the nodes
hold (:mod:`.holdings`); latency from when each device files each message; completeness
and losses from the devices' histories at the end. Only the floor of ``p2p``'s sync
copies is computed from the trace, as DESIGN.md §9 defines it, to print beside them.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
import trio._core._run
import trio.testing

from overlay.link import MemoryNetwork

from ..clock import TEST_EPOCH_MS, Clock
from ..device.content import MAX_TEXT_CHARS
from ..network import open_local_network
from ..swarm.constants import NAMESPACE_MESSAGES, NAMESPACE_SYNC
from ..swarm.node import NodeConfig
from .holdings import byte_hours, peak_bytes, timeline
from .model import FIGURES
from .replay import CATCH_UP_S, KEEPALIVE_S, LINK_PROFILE, NODES, RELAYS, Outcome, Replay
from .scenario import HOUR_MS, KINDS, Scenario, Trace, build_trace

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
) -> dict[str, Any]:
    """Replay ``trace`` with ``strategy`` (``"fanout"``, ``"linked"`` or ``"p2p"``) on real
    devices over an embedded network under virtual time, and return the figures of
    DESIGN.md §9 (``"source": "devices"``), plus ``messages``, ``completeness_by_device``,
    ``sibling_latency_p50_ms`` / ``_p99_ms`` (the sender's other device), ``node_reads``
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

    Raises :class:`BenchmarkError` if the nodes do not hold one inbound copy per
    recipient account (or device, ``fanout``) per send, or hold a copy the runner never
    saw alive (so of unknown size). Repeatable for a given trace and seed (trio's
    scheduler and the network's jitter are seeded), up to the ciphertexts, which sealing
    draws fresh keys for."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")
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
                return await Replay(trace, strategy, network, Path(devices)).run(on_progress)

    # Trio breaks ties between runnable tasks with its own unseeded Random; seeding it
    # makes a run repeatable to the millisecond (else the latency tail varies run to run).
    trio._core._run._r.seed(seed)
    outcome = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
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
        "rejected": outcome.rejected,
        "node_reads": outcome.holdings.reads,
        "stored_copies_by_hour": counts,
        "stored_bytes_by_hour": sizes,
    }


QUICK = Scenario(users=4, days=4.5, messages_per_user_per_day=12, long_offline_days=3.0)
FULL = Scenario(users=32, days=7.0, messages_per_user_per_day=12, long_offline_days=3.0)


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


def _run_in_worker(scenario: Scenario, strategy: str, progress: Any) -> dict[str, Any]:
    """One strategy in a worker process, reporting progress in whole percents."""
    reported = -1

    def report(fraction: float) -> None:
        nonlocal reported
        if int(fraction * 100) > reported:
            reported = int(fraction * 100)
            progress.put((strategy, fraction))

    started = time.monotonic()
    figures = run_scenario(scenario, strategy, on_progress=report)
    return {**figures, "wall_s": round(time.monotonic() - started, 1)}


def _run_strategies(scenario: Scenario, console: Any) -> dict[str, dict[str, Any]]:
    """Every strategy on ``scenario``, side by side in worker processes (one per core):
    each is a separate deterministic simulation, so nothing is shared but progress."""
    import multiprocessing
    import os
    import queue
    from concurrent.futures import ProcessPoolExecutor

    from rich.progress import Progress

    context = multiprocessing.get_context("spawn")
    workers = max(1, min(len(STRATEGIES), os.cpu_count() or 1))
    with (
        context.Manager() as manager,
        ProcessPoolExecutor(workers, mp_context=context) as pool,
        Progress(console=console, transient=True) as progress,
    ):
        updates = manager.Queue()
        tasks = {name: progress.add_task(name, total=1.0) for name in STRATEGIES}
        # The longest first: p2p runs on one core while the others take turns on the next.
        futures = {
            name: pool.submit(_run_in_worker, scenario, name, updates)
            for name in sorted(STRATEGIES, key=lambda name: name != "p2p")
        }
        while not all(future.done() for future in futures.values()):
            try:
                name, fraction = updates.get(timeout=0.5)
            except queue.Empty:
                continue
            progress.update(tasks[name], completed=fraction)
        return {name: futures[name].result() for name in STRATEGIES}


def run_storage_bench(
    *,
    quick: bool = False,
    seed: int = 1,
    json_path: str | None = None,
    plot_path: str | None = None,
) -> dict[str, Any]:
    """All three strategies on one scenario, with progress bars, a table, the goals of
    the issue checked against the measured figures, and optionally the §9 JSON and a PNG
    plot of stored copies and bytes over time."""
    from dataclasses import replace

    from rich import box
    from rich.console import Console
    from rich.table import Table

    scenario = replace(QUICK if quick else FULL, seed=seed)
    trace = build_trace(scenario)
    floor = floor_sync_copies_per_message(trace)
    console = Console(stderr=True)
    console.print(
        f"scenario: {scenario.users} users × {len(KINDS)} devices, {scenario.days:g} days, "
        f"{len(trace.sends)} messages, one desktop away {scenario.long_offline_days:g} days, "
        f"seed {seed}; every link {LINK_PROFILE.latency_ms:g}–"
        f"{LINK_PROFILE.latency_ms + LINK_PROFILE.jitter_ms:g} ms one way "
        f"({NODES} nodes, {RELAYS} relays for p2p); devices subscribe, catch up every "
        f"{CATCH_UP_S / 60:g} min, p2p keep-alive every {KEEPALIVE_S:g} s"
    )
    started = time.monotonic()
    results = _run_strategies(scenario, console)
    wall_s = time.monotonic() - started
    table = Table(
        title=f"storage per strategy ({len(trace.sends)} messages), read from the nodes",
        caption="copies: stored copies per message (ns 1: of which sync copies); complete: "
        "history completeness of the worst device; p50/p99: send → filed on each other "
        "device online at the send, ms; sibling: the sender's other device",
        box=box.SIMPLE_HEAD,
    )
    columns = ("strategy", "copies", "ns 1", "byte·h", "peak", "lost", "complete", "p50", "p99")
    for column in (*columns, "sibling p50/p99", "wall"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for name, r in results.items():
        table.add_row(
            name,
            f"{r['copies_per_message']:.2f}",
            f"{r['sync_copies_per_message']:.2f}",
            f"{r['byte_hours'] / 1e6:.2f} M",
            f"{r['peak_bytes'] / 1024:.1f} KiB",
            str(r["lost"]),
            f"{r['completeness']:.3f}",
            f"{r['latency_p50_ms']:.0f}",
            f"{r['latency_p99_ms']:.0f}",
            f"{r['sibling_latency_p50_ms']:.0f}/{r['sibling_latency_p99_ms']:.0f}",
            f"{r['wall_s']:.0f} s",
        )
    Console().print(table)
    console.print(
        f"p2p sync-copy floor on this trace (sends whose sender's sibling stayed unreachable "
        f"past the {GRACE_MS / 1000:g} s grace): {floor:.3f} per message; sends made while "
        f"the sibling was offline: {sibling_away_at_send(trace):.3f}; wall {wall_s:.0f} s "
        "for the three strategies side by side"
    )
    for line in goals(results, floor):
        console.print(line)
    report = {
        "strategies": {name: {k: r[k] for k in FIGURES} for name, r in results.items()},
        "floor_sync_copies_per_message": floor,
        "scenario": {
            **scenario.to_json(),
            "devices": scenario.users * len(KINDS),
            "messages": len(trace.sends),
            "sends_with_sibling_away": sibling_away_at_send(trace),
            "link_latency_ms": [
                LINK_PROFILE.latency_ms,
                LINK_PROFILE.latency_ms + LINK_PROFILE.jitter_ms,
            ],
            "wall_s": round(wall_s, 1),
            "wall_s_by_strategy": {name: r["wall_s"] for name, r in results.items()},
        },
    }
    if json_path:
        import json

        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
    if plot_path:
        _plot(results, plot_path, scenario)
    return report


def goals(results: dict[str, dict[str, Any]], floor: float) -> list[str]:
    """The issue's goals, each with the measured figure and whether it is met."""
    fanout, linked, p2p = (results[name] for name in STRATEGIES)

    def line(ok: bool, text: str) -> str:
        return f"{'[green]met[/]' if ok else '[red]NOT MET[/]'}  {text}"

    share = p2p["byte_hours"] / max(1.0, fanout["byte_hours"])
    return [
        line(
            fanout["copies_per_message"] == 3.0,
            f"fanout 3.00 copies/message: {fanout['copies_per_message']:.3f}",
        ),
        line(
            linked["copies_per_message"] == 2.0,
            f"linked 2.00 copies/message: {linked['copies_per_message']:.3f}",
        ),
        line(
            p2p["sync_copies_per_message"] <= floor + 0.02,
            f"p2p sync copies/message ≤ floor {floor:.3f} + 0.02: "
            f"{p2p['sync_copies_per_message']:.3f}",
        ),
        line(share <= 0.2, f"p2p byte·hours ≤ 20 % of fanout: {share:.1%}"),
        line(
            all(r["lost"] == 0 for r in results.values()),
            "0 lost: " + ", ".join(f"{n} {r['lost']}" for n, r in results.items()),
        ),
        line(
            p2p["completeness"] == 1.0
            and fanout["completeness"] < 1.0
            and linked["completeness"] < 1.0,
            "completeness 1.0 on every p2p device, the long-offline device incomplete "
            "otherwise: " + ", ".join(f"{n} {r['completeness']:.3f}" for n, r in results.items()),
        ),
        line(
            p2p["sibling_latency_p50_ms"] < 3000,
            f"p2p p50 sibling latency below the 3 s poll: {p2p['sibling_latency_p50_ms']:.0f} ms",
        ),
    ]


def _plot(results: dict[str, dict[str, Any]], path: str, scenario: Scenario | None = None) -> None:
    """Two stacked panels sharing the day axis, one line per strategy: stored copies and
    stored KiB per hour (what was stored at some moment of each hour)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"fanout": ("tab:red", "-"), "linked": ("tab:blue", "--"), "p2p": ("tab:green", "-")}
    figure, (copies_axes, bytes_axes) = plt.subplots(
        2, 1, sharex=True, figsize=(10, 6.5), constrained_layout=True
    )
    for name, r in results.items():
        color, line = styles.get(name, (None, "-"))
        copies, stored = r["stored_copies_by_hour"], r["stored_bytes_by_hour"]
        # Slot h covers hours h..h+1: repeat the last value so the last slot has a width.
        days = [h / 24 for h in range(len(stored) + 1)]
        label = f"{name} ({r['copies_per_message']:.2f} copies/message)"
        step = {"color": color, "drawstyle": "steps-post", "linewidth": 1.4}
        copies_axes.plot(days, [*copies, copies[-1]], line, label=label, **step)
        bytes_axes.plot(days, [b / 1024 for b in [*stored, stored[-1]]], line, **step)
    for axes in (copies_axes, bytes_axes):
        axes.grid(True, alpha=0.3)
        axes.set_ylim(bottom=0)
        if scenario is not None:
            if scenario.long_offline_days > 0:
                axes.axvspan(0.5, 0.5 + scenario.long_offline_days, color="0.9", zorder=0)
            axes.axvline(scenario.days, color="0.4", linestyle=":", linewidth=1)
    copies_axes.set_ylabel("stored copies")
    bytes_axes.set_ylabel("stored (KiB)")
    bytes_axes.set_xlabel("day (after the dotted line: every device online, settling)")
    copies_axes.legend(loc="upper left", fontsize="small", framealpha=0.9)
    title = "swarm storage over time per strategy"
    if scenario is not None:
        messages = next(iter(results.values()))["messages"] if results else 0
        title += f"\n{scenario.users} users × 2 devices, {messages} messages, seed {scenario.seed}"
        if scenario.long_offline_days > 0:
            title += f"; shaded: user 0's desktop away {scenario.long_offline_days:g} days"
    figure.suptitle(title)
    figure.savefig(path, dpi=110)
    plt.close(figure)
