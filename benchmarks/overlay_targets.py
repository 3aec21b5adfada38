"""The DESIGN.md §6 overlay targets that only the demo's single sample spoke to:
introset publish + lookup (≤ 50 ms) and sibling delivery over 3 + 3 hops (p50 ≤ 10 ms,
p99 ≤ 50 ms, plus the link latency the route crosses), each as a distribution.

Both run the code users run, on an embedded network (3 service nodes, 8 relays, every
relay an exit): an introset is published by one overlay :class:`~overlay.endpoint.Endpoint`
and looked up by another (a fresh sibling secret each round, so a lookup can only succeed
on the introset just published); a sibling delivery is Alice's phone sending to Bob while
her desktop, paired in ``linked`` mode with direct sync on, files the message from the
phone's push over their sibling session. Devices reach servers by onion requests, as in
the demo; Bob goes offline once he is a friend, so his polling is not in the figures (the
phone's stores to his swarm, in the background of every send, are).

Times are read from Trio's clock, so the same code measures wall time on the real clock
and virtual time under ``MockClock`` (where CPU costs nothing and what is left is the
emulated latency and the protocol's own waits: what the driver test checks). Messages
are sent open-loop, one every ``interval_ms``, so a slow delivery does not slow the next
send down and hide in the mean.

Route of a delivery: phone → its 3 path relays → the desktop's intro relay (the terminal
of one of the desktop's 3-hop paths) → 2 more relays → desktop, i.e. 7 links when the
phone's terminal is not the desktop's intro relay, 6 when it is. ``floor_ms`` is
``DELIVERY_MIN_LINKS`` links times the per-link latency, a bound no delivery can beat;
the targets add ``DELIVERY_LINKS`` links (the usual route) to the §6 figures.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

from overlay.endpoint import open_endpoint
from p2psync.device import Device, open_device
from p2psync.identity import Identity
from p2psync.network import LocalNetwork, wait_until

#: §6: an introset published and then found by a sibling, in one process.
INTROSET_TARGET_MS = 50.0
#: §6: device-to-device delivery over 3 + 3 hops, on top of the links' own latency.
DELIVERY_TARGET_P50_MS = 10.0
DELIVERY_TARGET_P99_MS = 50.0
#: Hops of each device's paths (the default, and the §6 figure).
HOPS = 3
#: Links a delivery crosses: each side's path plus the hand-over between the terminals.
DELIVERY_LINKS = 2 * HOPS + 1
#: When the phone's path ends at the desktop's intro relay there is no hand-over.
DELIVERY_MIN_LINKS = 2 * HOPS


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile by rank (no interpolation): a value that was measured."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, printed beside timings measured on a shared
    machine so a reader can tell a slow run from a busy one (taken as a run's figures are
    made, so the 1-minute figure covers the run)."""
    return [round(load, 2) for load in os.getloadavg()]


class Section(dict[str, Any]):
    """A JSON object of figures that prints as one line: ``p2psync bench overlay`` prints
    each top-level value of the result with ``str``, and a dict's repr is no table row."""

    def __init__(self, figures: dict[str, Any], line: str) -> None:
        super().__init__(figures)
        self.line = line

    def __str__(self) -> str:
        return self.line


def _ms_since(start: float) -> float:
    return (trio.current_time() - start) * 1000


async def measure_introsets(network: LocalNetwork, rounds: int) -> dict[str, list[float]]:
    """``rounds`` publishes by one endpoint, each followed by a lookup by another: the ms
    of each (Trio's clock). Raises if a lookup does not find the introset just published."""
    contacts = await network.access().relay_contacts()
    transport = network.overlay_transport
    figures: dict[str, list[float]] = {"publish": [], "lookup": [], "publish_lookup": []}
    async with (
        open_endpoint(b"\x51" * 32, transport, contacts, clock=network.clock, seed=1) as owner,
        open_endpoint(b"\x52" * 32, transport, contacts, clock=network.clock, seed=2) as sibling,
    ):
        await owner.wait_ready()
        await sibling.wait_ready()
        for round_ in range(rounds):
            secret = round_.to_bytes(4, "big") * 8
            start = trio.current_time()
            await owner.publish(secret)
            published = trio.current_time()
            intros = await sibling.lookup(secret, owner.public_key)
            if not intros:
                raise RuntimeError(f"introset lookup {round_} found nothing")
            figures["publish"].append((published - start) * 1000)
            figures["lookup"].append(_ms_since(published))
            figures["publish_lookup"].append(_ms_since(start))
    return figures


def introset_figures(samples: dict[str, list[float]], *, link_ms: float) -> Section:
    """The JSON section for :func:`measure_introsets`' samples, the target beside them.
    ``floor_ms``: a publish and a lookup each go out over a path and back."""
    total = samples["publish_lookup"]
    p50, p99 = percentile(total, 0.5), percentile(total, 0.99)
    met = p99 <= INTROSET_TARGET_MS
    load = load_average()
    figures = {
        "rounds": len(total),
        "link_ms_per_hop": link_ms,
        "floor_ms": 2 * 2 * HOPS * link_ms,
        "publish_ms_p50": round(percentile(samples["publish"], 0.5), 3),
        "lookup_ms_p50": round(percentile(samples["lookup"], 0.5), 3),
        "publish_lookup_ms_p50": round(p50, 3),
        "publish_lookup_ms_p99": round(p99, 3),
        "target_ms": INTROSET_TARGET_MS,
        "met": met,
        "load_avg": load,
    }
    line = (
        f"{len(total)} rounds, {link_ms:g} ms/link: publish + lookup p50 {p50:.2f} / p99 "
        f"{p99:.2f} ms (target p99 <= {INTROSET_TARGET_MS:g} ms: {_verdict(met)}); "
        f"load {load[0]}"
    )
    return Section(figures, line)


def _verdict(met: bool) -> str:
    return "met" if met else "NOT met"


@dataclass(frozen=True)
class Deliveries:
    """What :func:`measure_sibling_delivery` saw."""

    latencies_ms: list[float]
    #: Process CPU over the sends (phone, desktop, relays, nodes: all in this process).
    cpu_s: float


async def _run_device(
    network: LocalNetwork, root: Path, name: str, *, task_status: trio.TaskStatus[Device]
) -> None:
    async with open_device(
        root / name,
        network.access(rpc_route="onion"),
        mode="linked",
        name=name,
        seed=Identity.from_label(f"bench/overlay/{name}").seed,
    ) as device:
        task_status.started(device)
        await trio.sleep_forever()


async def _pair_and_befriend(phone: Device, desktop: Device, bob: Device) -> None:
    """The desktop pairs with the phone, Bob befriends Alice, and the two siblings have a
    session up: what a delivery needs. Each step fetches what it waits for at once
    (``sync_now``) instead of waiting for the next poll."""
    ticket = await desktop.pairing.request(phone.session_id)
    await desktop.flush()
    await _fetch_until(phone, lambda d: any(o.code == ticket.code for o in d.pairing.requests()))
    await phone.pairing.accept(ticket.code)
    await phone.flush()
    await _fetch_until(desktop, lambda d: d.whoami().paired)
    await bob.friends.request(phone.session_id)
    await bob.flush()
    await _fetch_until(phone, lambda d: d.friends.contact(bob.session_id) is not None)
    await phone.friends.accept(bob.session_id)
    await phone.flush()
    await _fetch_until(bob, partial(_is_friend, user=phone.session_id))
    await _fetch_until(desktop, partial(_is_friend, user=bob.session_id))
    desktop_id = desktop.whoami().device_id
    await wait_until(lambda: desktop_id in phone.sync_status().connected_siblings, poll_s=0.01)


async def _fetch_until(device: Device, condition: Callable[[Device], bool]) -> None:
    """Fetch from ``device``'s swarms until ``condition`` holds (a store acknowledged by
    a quorum may reach the node asked a moment later: then ask again)."""
    while not condition(device):
        await device.sync_now()


def _is_friend(device: Device, user: str) -> bool:
    contact = device.friends.contact(user)
    return contact is not None and contact.state == "friend"


async def _send_and_time(
    phone: Device, desktop: Device, to: str, messages: int, interval_s: float
) -> list[float]:
    """Send ``messages`` from the phone, one every ``interval_s`` whatever has arrived;
    the ms from each send to the desktop filing it."""
    sent: dict[bytes, float] = {}
    arrived: dict[bytes, float] = {}
    everything = trio.Event()

    async def watch(*, task_status: trio.TaskStatus[None]) -> None:
        async with aclosing(desktop.incoming()) as items:
            task_status.started()
            async for item in items:
                arrived[item.id] = trio.current_time()
                if len(sent) == messages and sent.keys() <= arrived.keys():
                    everything.set()
                    return

    async with trio.open_nursery() as nursery:
        await nursery.start(watch)
        first = trio.current_time()
        for number in range(messages):
            await trio.sleep_until(first + number * interval_s)
            start = trio.current_time()
            sent[await phone.send(to, f"delivery {number}")] = start
        await everything.wait()
    return [(arrived[digest] - start) * 1000 for digest, start in sent.items()]


async def measure_sibling_delivery(
    network: LocalNetwork, root: Path, messages: int, interval_ms: float
) -> Deliveries:
    """Pair a phone and a desktop (``linked``, direct sync), befriend Bob, take Bob
    offline, then time ``messages`` sends from the phone to Bob until the desktop has
    filed each (one every ``interval_ms``)."""
    async with trio.open_nursery() as nursery:
        phone, desktop, bob = [
            await nursery.start(_run_device, network, root, name)
            for name in ("phone", "desktop", "bob")
        ]
        await _pair_and_befriend(phone, desktop, bob)
        await bob.set_online(False)
        cpu = time.process_time()
        latencies = await _send_and_time(
            phone, desktop, bob.session_id, messages, interval_ms / 1000
        )
        cpu_s = time.process_time() - cpu
        nursery.cancel_scope.cancel()
    return Deliveries(latencies, cpu_s)


def delivery_figures(
    deliveries: Deliveries, *, transport: str, link_ms: float, interval_ms: float
) -> Section:
    """The JSON section for one run of :func:`measure_sibling_delivery`: the distribution,
    the floor the links set and the §6 targets on top of the usual route's latency."""
    latencies = deliveries.latencies_ms
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    route_ms = DELIVERY_LINKS * link_ms
    target_p50, target_p99 = DELIVERY_TARGET_P50_MS + route_ms, DELIVERY_TARGET_P99_MS + route_ms
    met = p50 <= target_p50 and p99 <= target_p99
    cpu_ms = deliveries.cpu_s / len(latencies) * 1000
    load = load_average()
    figures = {
        "transport": transport,
        "hops": f"{HOPS} + {HOPS}",
        "links": DELIVERY_LINKS,
        "link_ms_per_hop": link_ms,
        "floor_ms": DELIVERY_MIN_LINKS * link_ms,
        "messages": len(latencies),
        "send_interval_ms": interval_ms,
        "min_ms": round(min(latencies), 3),
        "p50_ms": round(p50, 3),
        "p90_ms": round(percentile(latencies, 0.9), 3),
        "p99_ms": round(p99, 3),
        "max_ms": round(max(latencies), 3),
        "cpu_ms_per_message": round(cpu_ms, 2),
        "target_p50_ms": target_p50,
        "target_p99_ms": target_p99,
        "met": met,
        "load_avg": load,
    }
    line = (
        f"{transport}, {link_ms:g} ms/link (floor {DELIVERY_MIN_LINKS * link_ms:g} ms), "
        f"{len(latencies)} messages: p50 {p50:.2f} / p99 {p99:.2f} / max {max(latencies):.2f} ms "
        f"(target p50 <= {target_p50:g}, p99 <= {target_p99:g}: {_verdict(met)}); "
        f"{cpu_ms:.1f} ms CPU per message; load {load[0]}"
    )
    return Section(figures, line)


async def measure_targets(
    network: LocalNetwork,
    root: Path,
    *,
    transport: str,
    link_ms: float,
    messages: int,
    interval_ms: float,
    introset_rounds: int,
) -> dict[str, Section]:
    """Both targets on ``network`` (whose links have ``link_ms`` of latency each): the
    ``"introset"`` section (if ``introset_rounds``) and the ``"sibling_delivery"`` one."""
    sections = {}
    if introset_rounds:
        samples = await measure_introsets(network, introset_rounds)
        sections["introset"] = introset_figures(samples, link_ms=link_ms)
    deliveries = await measure_sibling_delivery(network, root, messages, interval_ms)
    sections["sibling_delivery"] = delivery_figures(
        deliveries, transport=transport, link_ms=link_ms, interval_ms=interval_ms
    )
    return sections
