"""``p2psync bench storage``: what direct sibling sync saves in swarm storage (DESIGN.md §9).

Each strategy replays the same seeded trace (:mod:`.scenario`) on the real code — an
embedded network of service nodes, sealed envelopes, signed retrieves, subscriptions, and
for ``p2p`` the sans-I/O :class:`~p2psync.sync.live.LiveSync` — under virtual time.

* ``fanout`` (v1.5.0 mapped): every device has its own key; a send stores one copy for
  each recipient device and one for each of the sender's other devices.
* ``linked``: devices of a user share one key; a send stores one copy in the recipient's
  swarm and one sync copy (namespace 1) in the sender's.
* ``p2p``: ``linked`` plus direct sibling sync: siblings push what they send and receive
  to each other over a session (an emulated 3+3-hop onion path) and acknowledge it; only
  what a sibling has not acknowledged within the grace period gets a sync copy, deleted
  once acknowledged, and an inbound copy is deleted once every sibling holds it.

A stored copy is one logical message in some swarm (replicas inside a swarm count once),
counted by a ledger that every store and delete goes through; byte·hours is its size
times the time until it was deleted or expired.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
import trio._core._run
import trio.testing

from ..clock import TEST_EPOCH_MS, Clock
from ..envelope import open_envelope, seal_envelope
from ..errors import P2PSyncError
from ..identity import Identity, message_hash
from ..network import LocalNetwork, open_local_network
from ..swarm.client import Cursor, Message, SwarmClient, open_swarm_client
from ..swarm.constants import DEFAULT_TTL_MS, NAMESPACE_MESSAGES, NAMESPACE_SYNC
from ..swarm.node import NodeConfig
from ..sync.live import AllAcknowledged, Deliver, Event, FallbackDue, Item, LiveSync, Send
from .scenario import HOUR_MS, KINDS, Scenario, Trace, build_trace

STRATEGIES = ("fanout", "linked", "p2p")
#: Emulated one-way latency of a 3+3-hop onion path between siblings.
SESSION_LATENCY_S = 0.06
#: Time for siblings that both came online to find each other and open a session.
PRESENCE_DELAY_S = 2.0
CATCH_UP_S = 900.0
SETTLE_MS = 2 * HOUR_MS


@dataclass
class Ledger:
    """Every logical copy stored in a swarm, with when it stopped being stored."""

    copies: dict[tuple[str, int, bytes], list[int]] = field(default_factory=dict)

    def stored(self, owner: str, namespace: int, digest: bytes, size: int, at: int) -> None:
        self.copies.setdefault((owner, namespace, digest), [size, at, at + DEFAULT_TTL_MS])

    def deleted(self, owner: str, namespace: int, digest: bytes, at: int) -> None:
        copy = self.copies.get((owner, namespace, digest))
        if copy is not None:
            copy[2] = min(copy[2], at)

    def byte_hours(self) -> float:
        return sum(size * (end - start) / HOUR_MS for size, start, end in self.copies.values())

    def timeline(self, step_ms: int, end_ms: int, *, copies: bool = False) -> list[int]:
        """Per ``step_ms`` slot up to ``end_ms``: the bytes (or, with ``copies``, the number
        of copies) stored at some moment of that slot."""
        points = [0] * (end_ms // step_ms + 1)
        for size, start, end in self.copies.values():
            for index in range(start // step_ms, min(end, end_ms) // step_ms + 1):
                points[index] += 1 if copies else size
        return points


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class _Device:
    def __init__(self, user: int, kind: str, identity: Identity) -> None:
        self.user, self.kind, self.identity = user, kind, identity
        self.name = f"u{user}-{kind}"
        self.history: dict[int, int] = {}  # logical message -> virtual ms it arrived
        self.bodies: dict[bytes, Item] = {}
        self.cursors = {NAMESPACE_MESSAGES: Cursor(), NAMESPACE_SYNC: Cursor()}
        self.scope: trio.CancelScope | None = None
        self.live: LiveSync | None = None
        self.inbound: dict[bytes, bytes] = {}  # item id -> hash of the inbound swarm copy
        self.fallback: dict[bytes, bytes] = {}  # item id -> hash of its sync copy
        self.wake = trio.Event()

    @property
    def online(self) -> bool:
        return self.scope is not None


class _Run:
    """One strategy over one trace."""

    def __init__(self, strategy: str, trace: Trace, network: LocalNetwork, swarm: SwarmClient):
        self.strategy, self.trace, self.network, self.swarm = strategy, trace, network, swarm
        self.ledger = Ledger()
        self.clock = network.clock
        self.random = random.Random(trace.seed)
        users = range(trace.users)
        shared = {u: Identity.from_label(f"bench/{u}") for u in users}
        self.devices = {
            (u, k): _Device(
                u, k, Identity.from_label(f"bench/{u}/{k}") if strategy == "fanout" else shared[u]
            )
            for u in users
            for k in KINDS
        }
        self.sent_at: dict[int, int] = {}
        self.relevant: dict[int, tuple[int, int]] = {}  # message -> (sender user, recipient)
        self.latencies: list[float] = []
        #: The sender's other device only: what sibling sync (direct or by sync copy) costs.
        self.sibling_latencies: list[float] = []
        self.online_at_send: dict[int, set[str]] = {}
        self.sessions: set[frozenset[str]] = set()

    def now(self) -> int:
        return self.clock.now_ms() - TEST_EPOCH_MS

    # --- storing through the ledger -------------------------------------------------------

    async def _store(self, owner: Identity, namespace: int, data: bytes) -> bytes:
        digest, _ = await self.swarm.store(owner.session_id, namespace, data)
        self.ledger.stored(owner.session_id, namespace, digest, len(data), self.now())
        return digest

    async def _delete(self, owner: Identity, namespace: int, digest: bytes) -> None:
        try:
            await self.swarm.delete(owner, namespace, [digest])
        except P2PSyncError:
            return
        self.ledger.deleted(owner.session_id, namespace, digest, self.now())

    # --- devices ----------------------------------------------------------------------------

    def _arrived(self, device: _Device, logical: int) -> bool:
        if logical in device.history:
            return False
        device.history[logical] = self.now()
        if device.name in self.online_at_send.get(logical, ()):
            self.latencies.append(self.now() - self.sent_at[logical])
            if device.user == self.relevant[logical][0]:
                self.sibling_latencies.append(self.now() - self.sent_at[logical])
        return True

    async def _receive(self, device: _Device, namespace: int, batch: list[Message]) -> None:
        for message in batch:
            envelope = open_envelope(device.identity, message.data)
            logical = int.from_bytes(envelope.body[:8], "big")
            item = Item(message.hash, envelope.timestamp_ms, message.data)
            if self._arrived(device, logical):
                device.bodies[item.id] = item
                if self.strategy == "p2p" and device.live is not None:
                    if namespace == NAMESPACE_MESSAGES:
                        device.inbound[item.id] = message.hash
                    await self._handle(device, device.live.publish(item, self.now()))

    async def _online(self, device: _Device, nursery: trio.Nursery) -> None:
        async def run(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
            with trio.CancelScope() as scope:
                task_status.started(scope)
                async with trio.open_nursery() as inner:
                    namespaces = [NAMESPACE_MESSAGES]
                    if self.strategy != "fanout":
                        namespaces.append(NAMESPACE_SYNC)
                    for ns in namespaces:
                        inner.start_soon(self._subscribe, device, ns)
                    if device.live is not None:
                        inner.start_soon(self._ticker, device)

        device.scope = await nursery.start(run)
        if self.strategy == "p2p":
            sibling = self._sibling(device)
            if sibling.online:
                nursery.start_soon(self._open_session, device, sibling)

    async def _subscribe(self, device: _Device, namespace: int) -> None:
        async def deliver(batch: list[Message]) -> None:
            await self._receive(device, namespace, batch)

        await self.swarm.subscribe(
            device.identity,
            namespace,
            deliver,
            cursor=device.cursors[namespace],
            catch_up_s=CATCH_UP_S,
        )

    async def _offline(self, device: _Device) -> None:
        if device.scope is not None:
            device.scope.cancel()
            device.scope = None
        sibling = self._sibling(device)
        pair = frozenset((device.name, sibling.name))
        if pair in self.sessions:
            self.sessions.discard(pair)
            for a, b in ((device, sibling), (sibling, device)):
                assert a.live is not None
                await self._handle(a, a.live.disconnected(b.name, self.now()))

    def _sibling(self, device: _Device) -> _Device:
        return self.devices[(device.user, "desktop" if device.kind == "phone" else "phone")]

    # --- p2p: sessions and the LiveSync driver ----------------------------------------------

    async def _open_session(self, a: _Device, b: _Device) -> None:
        await trio.sleep(PRESENCE_DELAY_S)
        if not (a.online and b.online):
            return
        self.sessions.add(frozenset((a.name, b.name)))
        for one, other in ((a, b), (b, a)):
            assert one.live is not None
            await self._handle(one, one.live.connected(other.name, self.now()))

    async def _ticker(self, device: _Device) -> None:
        assert device.live is not None
        while True:
            deadline = device.live.next_deadline_ms()
            with trio.move_on_after(
                3600 if deadline is None else max(0, deadline - self.now()) / 1000
            ):
                await device.wake.wait()
            device.wake = trio.Event()
            await self._handle(device, device.live.tick(self.now()), wake=False)

    async def _handle(self, device: _Device, events: list[Event], *, wake: bool = True) -> None:
        """Carry out what the device's LiveSync asked for; ``wake`` re-arms its ticker,
        whose deadline may have moved (the ticker itself never needs to)."""
        for event in events:
            if isinstance(event, Send):
                self._nursery.start_soon(self._carry, device, event)
            elif isinstance(event, Deliver):
                envelope = open_envelope(device.identity, event.item.body)
                if self._arrived(device, int.from_bytes(envelope.body[:8], "big")):
                    device.bodies[event.item.id] = event.item
            elif isinstance(event, FallbackDue):
                if event.item.id not in device.inbound:  # inbound: its swarm copy is the fallback
                    device.fallback[event.item.id] = await self._store(
                        device.identity, NAMESPACE_SYNC, event.item.body
                    )
            elif isinstance(event, AllAcknowledged):
                if event.id in device.fallback:
                    await self._delete(
                        device.identity, NAMESPACE_SYNC, device.fallback.pop(event.id)
                    )
                if event.id in device.inbound:
                    await self._delete(
                        device.identity, NAMESPACE_MESSAGES, device.inbound.pop(event.id)
                    )
        if wake:
            device.wake.set()

    async def _carry(self, source: _Device, send: Send) -> None:
        target = next(d for d in self.devices.values() if d.name == send.sibling)
        pair = frozenset((source.name, target.name))
        await trio.sleep(SESSION_LATENCY_S)
        if pair in self.sessions and target.live is not None:
            await self._handle(target, target.live.receive(source.name, send.data, self.now()))

    # --- sending -------------------------------------------------------------------------

    async def _send(self, logical: int, sender: _Device, to_user: int, size: int) -> None:
        now = self.now()
        self.sent_at[logical] = now
        self.relevant[logical] = (sender.user, to_user)
        self.online_at_send[logical] = {
            d.name
            for d in self.devices.values()
            if d.online and d is not sender and d.user in (sender.user, to_user)
        }
        self._arrived(sender, logical)
        body = logical.to_bytes(8, "big") + bytes(size)
        timestamp = self.clock.now_ms()
        recipients = [self.devices[(to_user, k)].identity for k in KINDS]
        own = [self._sibling(sender).identity]
        if self.strategy == "fanout":
            targets = [(r, NAMESPACE_MESSAGES) for r in recipients] + [
                (o, NAMESPACE_MESSAGES) for o in own
            ]
        elif self.strategy == "linked":
            targets = [(recipients[0], NAMESPACE_MESSAGES), (own[0], NAMESPACE_SYNC)]
        else:
            targets = [(recipients[0], NAMESPACE_MESSAGES)]
        for owner, namespace in targets:
            data = seal_envelope(sender.identity, owner.x25519_public, "text", body, timestamp)
            await self._store(owner, namespace, data)
        if self.strategy == "p2p":
            assert sender.live is not None
            data = seal_envelope(
                sender.identity, sender.identity.x25519_public, "sent", body, timestamp
            )
            item = Item(message_hash(data), timestamp, data)
            sender.bodies[item.id] = item
            await self._handle(sender, sender.live.publish(item, now))

    async def run(self, on_progress: Callable[[float], None]) -> dict[str, Any]:
        trace = self.trace
        end_ms = trace.duration_ms
        events: list[tuple[int, int, Any]] = []
        for (user, kind), spans in trace.online.items():
            for start, stop in spans:
                events.append((start, 1, ("up", user, kind)))
                events.append((stop, 0, ("down", user, kind)))
        for number, send in enumerate(trace.sends):
            events.append((send.at_ms, 2, ("send", number, send)))
        events.sort(key=lambda e: (e[0], e[1]))
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.strategy == "p2p":
                for device in self.devices.values():
                    sibling = self._sibling(device).name
                    device.live = LiveSync([sibling], has=device.bodies.__contains__)
            for at, _, event in events:
                await trio.sleep(max(0, at - self.now()) / 1000)
                on_progress(at / end_ms)
                if event[0] == "up":
                    await self._online(self.devices[(event[1], event[2])], nursery)
                elif event[0] == "down":
                    await self._offline(self.devices[(event[1], event[2])])
                else:
                    send = event[2]
                    await self._send(
                        event[1], self.devices[(send.user, send.kind)], send.to_user, send.size
                    )
            for device in self.devices.values():  # settle: everyone online for a while
                if not device.online:
                    await self._online(device, nursery)
            await trio.sleep(SETTLE_MS / 1000)
            on_progress(1.0)
            nursery.cancel_scope.cancel()
        return self._figures(end_ms + SETTLE_MS)

    def _figures(self, end_ms: int) -> dict[str, Any]:
        messages = len(self.sent_at)
        completeness = {}
        for device in self.devices.values():
            mine = [m for m, users in self.relevant.items() if device.user in users]
            completeness[device.name] = (
                round(sum(m in device.history for m in mine) / len(mine), 4) if mine else 1.0
            )
        lost = sum(
            1
            for m, (_, to_user) in self.relevant.items()
            if not any(m in self.devices[(to_user, k)].history for k in KINDS)
        )
        timeline = self.ledger.timeline(HOUR_MS, end_ms)
        return {
            "messages": messages,
            "copies_per_message": round(len(self.ledger.copies) / messages, 3) if messages else 0.0,
            "sync_copies_per_message": round(
                sum(ns == NAMESPACE_SYNC for _, ns, _ in self.ledger.copies) / max(1, messages), 3
            ),
            "byte_hours": round(self.ledger.byte_hours(), 1),
            "peak_bytes": max(timeline, default=0),
            "lost": lost,
            "completeness": round(min(completeness.values()), 4),
            "completeness_by_device": completeness,
            "latency_p50_ms": round(_percentile(self.latencies, 0.5), 1),
            "latency_p99_ms": round(_percentile(self.latencies, 0.99), 1),
            "sibling_latency_p50_ms": round(_percentile(self.sibling_latencies, 0.5), 1),
            "sibling_latency_p99_ms": round(_percentile(self.sibling_latencies, 0.99), 1),
            "stored_bytes_by_hour": timeline,
            "stored_copies_by_hour": self.ledger.timeline(HOUR_MS, end_ms, copies=True),
        }


def run_scenario(
    trace: Trace | Scenario,
    strategy: str,
    *,
    on_progress: Callable[[float], None] = lambda fraction: None,
) -> dict[str, Any]:
    """Replay ``trace`` with ``strategy`` (``"fanout"``, ``"linked"`` or ``"p2p"``) on an
    embedded network under virtual time and return the figures of DESIGN.md §9, plus
    ``messages``, ``sync_copies_per_message``, ``completeness_by_device`` and hourly
    ``stored_bytes_by_hour`` / ``stored_copies_by_hour`` series (slot ``h`` counts what was
    stored at some moment of hour ``h``, through the settling period).

    ``trace`` is a :class:`~p2psync.Trace` of your own (checked first: a bad one raises
    :class:`ValueError` saying what is wrong) or a :class:`~p2psync.Scenario`, which is
    turned into the benchmark's seeded synthetic trace. A run takes seconds per virtual
    hour of traffic-heavy trace; a quiet one is faster. Example: two users, both online
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

    Repeatable for a given trace and seed, up to the ciphertexts (sealing draws fresh
    keys), whose ids order a few same-millisecond deletions: byte·hours then differ in the
    seventh digit."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")
    if isinstance(trace, Scenario):
        trace = build_trace(trace)
    elif not isinstance(trace, Trace):
        raise ValueError(f"expected a Trace or a Scenario, not {type(trace).__name__}")
    trace.validate()
    seed = trace.seed
    quiet = NodeConfig(
        registry_refresh_s=150,
        announce_interval_s=150,
        repair_interval_s=6 * 3600,
        sweep_interval_s=600,
    )

    async def main() -> dict[str, Any]:
        async with (
            open_local_network(
                6, clock=Clock(TEST_EPOCH_MS), node_config=quiet, seed=seed
            ) as network,
            open_swarm_client(
                network.transport, network.directory(), network.clock, seed=seed
            ) as swarm,
        ):
            return await _Run(strategy, trace, network, swarm).run(on_progress)

    # Trio breaks ties between runnable tasks with its own unseeded Random; seeding it
    # makes a run repeatable to the millisecond (else the latency tail varies run to run).
    trio._core._run._r.seed(seed)
    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


QUICK = Scenario(users=4, days=4.5, messages_per_user_per_day=12, long_offline_days=3.0)
FULL = Scenario(users=8, days=7.0, messages_per_user_per_day=20, long_offline_days=3.0)


def sibling_away_at_send(trace: Trace) -> float:
    """The share of sends made while the sender's other device was offline: what the
    ``p2p`` strategy's sync copies (namespace 1) come from, whatever the sync design."""
    other = {"phone": "desktop", "desktop": "phone"}
    away = sum(not trace.is_online(s.user, other[s.kind], s.at_ms) for s in trace.sends)
    return round(away / max(1, len(trace.sends)), 3)


def origin_leaves_first(trace: Trace) -> float:
    """The share of sends made while the sender's other device was offline by a device
    that itself went offline before the other came back: the sync copies that any design
    keeping a swarm fallback must store, however long it waits (the floor of ``p2p``'s
    namespace-1 copies on this trace; the rest could wait for the devices to meet)."""
    other = {"phone": "desktop", "desktop": "phone"}

    def online_until(user: int, kind: str, at_ms: int) -> int:
        return next(end for start, end in trace.online[(user, kind)] if start <= at_ms < end)

    def back_at(user: int, kind: str, at_ms: int) -> int:
        starts = [start for start, _ in trace.online.get((user, kind), []) if start >= at_ms]
        return min(starts, default=trace.duration_ms)

    needed = sum(
        online_until(s.user, s.kind, s.at_ms) < back_at(s.user, other[s.kind], s.at_ms)
        for s in trace.sends
        if not trace.is_online(s.user, other[s.kind], s.at_ms)
    )
    return round(needed / max(1, len(trace.sends)), 3)


def _run_in_worker(scenario: Scenario, strategy: str, progress: Any) -> dict[str, Any]:
    """One strategy in a worker process, reporting progress in whole percents."""
    reported = -1

    def report(fraction: float) -> None:
        nonlocal reported
        if int(fraction * 100) > reported:
            reported = int(fraction * 100)
            progress.put((strategy, fraction))

    return run_scenario(scenario, strategy, on_progress=report)


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
        futures = {
            name: pool.submit(_run_in_worker, scenario, name, updates) for name in STRATEGIES
        }
        while not all(future.done() for future in futures.values()):
            try:
                name, fraction = updates.get(timeout=0.5)
            except queue.Empty:
                continue
            progress.update(tasks[name], completed=fraction)
        return {name: future.result() for name, future in futures.items()}


def run_storage_bench(
    *,
    quick: bool = False,
    seed: int = 1,
    json_path: str | None = None,
    plot_path: str | None = None,
) -> dict[str, Any]:
    """All three strategies on one scenario, with progress bars, a table, and optionally
    the §9 JSON and a PNG plot of stored copies and bytes over time."""
    from dataclasses import replace
    from pathlib import Path

    from rich import box
    from rich.console import Console
    from rich.table import Table

    scenario = replace(QUICK if quick else FULL, seed=seed)
    console = Console(stderr=True)
    console.print(
        f"scenario: {scenario.users} users × 2 devices, {scenario.days} days, "
        f"{scenario.messages_per_user_per_day} messages/user/day, one desktop away "
        f"{scenario.long_offline_days} days, seed {seed}"
    )
    results = _run_strategies(scenario, console)
    table = Table(
        title=f"storage per strategy ({results['fanout']['messages']} messages)",
        caption="copies: stored copies per message (ns 1: of which sync copies); "
        "complete: history completeness of the worst device; p50/p99: delivery latency, ms",
        box=box.SIMPLE_HEAD,
    )
    for column in (
        "strategy",
        "copies",
        "ns 1",
        "byte·h",
        "peak B",
        "lost",
        "complete",
        "p50",
        "p99",
    ):
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
        )
    Console().print(table)
    console.print(
        f"sends made while the sender's other device was offline: "
        f"{sibling_away_at_send(build_trace(scenario)):.0%} (each needs a sync copy once the "
        f"grace period passes, unless the devices meet first); "
        f"{origin_leaves_first(build_trace(scenario)):.0%} by a device that went offline "
        f"before its sibling came back (a copy any swarm fallback must store)"
    )
    console.print(
        "sibling delivery (sender's other device, online at send) p50/p99 ms: "
        + ", ".join(
            f"{name} {r['sibling_latency_p50_ms']:.0f}/{r['sibling_latency_p99_ms']:.0f}"
            for name, r in results.items()
        )
    )
    keys = (
        "copies_per_message",
        "byte_hours",
        "peak_bytes",
        "lost",
        "completeness",
        "latency_p50_ms",
        "latency_p99_ms",
    )
    report = {
        "strategies": {name: {k: r[k] for k in keys} for name, r in results.items()},
        "scenario": {
            **scenario.to_json(),
            "messages": results["fanout"]["messages"],
            "sends_with_sibling_away": sibling_away_at_send(build_trace(scenario)),
            "sends_whose_origin_leaves_first": origin_leaves_first(build_trace(scenario)),
        },
    }
    if json_path:
        import json

        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
    if plot_path:
        _plot(results, plot_path, scenario)
    return report


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
