"""A trace replayed on real devices: what :func:`p2psync.run_scenario` runs.

Every user of the trace gets a phone and a desktop from :func:`~p2psync.open_device`, on
an embedded network of service nodes and overlay relays on the in-memory transport, whose
every link (device to node, node to node, hop to hop) has a :class:`LinkProfile` latency,
so delivery times are measured, not chosen. Per strategy:

* ``fanout``: ``mapped`` devices without direct sync (v1.5.0: one copy per recipient
  device, one sync copy per own other device);
* ``linked``: ``linked`` devices without direct sync (one copy per account, one sync copy
  in the sender's swarm);
* ``p2p``: ``linked`` devices with direct sync over the overlay, a sync copy only for
  what a sibling did not acknowledge within the grace period, early deletion.

Before the trace starts the runner pairs each user's desktop to the phone and makes
friends of every two users the trace has talking; from then on it only calls what a user
would: ``set_online`` when the trace says a device comes or goes, and ``send``. What the
nodes hold is read from the nodes (:mod:`.holdings`); what each device has, from its
history and its ``incoming`` stream.

Devices receive by subscription (pushes) and catch up with a drain every
``CATCH_UP_S``: a phone-like idle pattern, instead of a poll every 3 s while online.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

from overlay.link import LinkProfile

from ..device import Device, DeviceConfig, open_device
from ..device.friends import is_friend
from ..identity import Identity
from ..network import LocalNetwork
from ..swarm.constants import NAMESPACE_MESSAGES, NAMESPACE_SYNC
from .holdings import Holdings
from .scenario import HOUR_MS, KINDS, Trace

#: Every emulated link: 30 ms plus up to 50 ms of jitter each way (device to node, node to
#: node, device to relay, relay to relay). A 3 + 3-hop sibling path crosses 8 such links.
LINK_PROFILE = LinkProfile(latency_ms=30.0, jitter_ms=50.0)
RELAYS = 8
NODES = 6
#: How often a subscribed device drains its swarm anyway, in case a push was lost.
CATCH_UP_S = 900.0
#: How often an idle sibling session and its overlay paths are checked: a phone-like
#: keep-alive of five minutes (the overlay's own 5 s path pings would dominate a week of
#: idle devices). It took the p2p lane 14 % less CPU than two minutes (32 users × 1 day,
#: side by side) for the same copies, byte·hours, losses, completeness and sibling p50.
KEEPALIVE_S = 300.0
#: After the trace every device comes online for this long, so what waits can arrive.
SETTLE_MS = 2 * HOUR_MS
#: Reads of new rows on the nodes after each trace event, and between them: what devices
#: store follows an event within the grace and take-over periods (10 s, 30 s), retries
#: aside. A store and the deletion that follows it are at least two link latencies apart
#: (the reader's push, its delete): reading every 50 ms at first sees every copy alive.
DENSE_READS = ((0.05, 100), (0.5, 30), (2.0, 30))
#: Tombstones and shortened expiries are re-read this often (well within a TTL).
ENDINGS_EVERY_S = 1800.0
OTHER = {"phone": "desktop", "desktop": "phone"}


def device_mode(strategy: str) -> tuple[str, bool]:
    """The device mode and whether direct sync is on, per strategy."""
    return ("mapped", False) if strategy == "fanout" else ("linked", strategy == "p2p")


@dataclass
class Outcome:
    """What a replay measured, before it becomes the §9 figures."""

    start_ms: int
    end_ms: int
    holdings: Holdings
    #: message id -> (sending user, receiving user, virtual ms of the send)
    sends: dict[bytes, tuple[int, int, int]] = field(default_factory=dict)
    #: Send-to-filed latency, ms, on devices online at the send: all, and the sender's
    #: other device only.
    latencies: list[float] = field(default_factory=list)
    sibling_latencies: list[float] = field(default_factory=list)
    #: For a sender's other device offline at the send: ms from its first coming online
    #: after the send to the message being filed on it (what it waits once back).
    sibling_catch_ups: list[float] = field(default_factory=list)
    #: device name -> the message ids in its history at the end
    histories: dict[str, set[bytes]] = field(default_factory=dict)
    #: device name -> user
    users: dict[str, int] = field(default_factory=dict)
    rejected: int = 0


def _text(number: int, size: int) -> str:
    """A message of ``size`` characters, unique by its number."""
    head = f"m{number} "
    return (head + "x" * size)[: max(size, len(head))]


class Replay:
    """One strategy over one trace, on ``network``."""

    def __init__(
        self,
        trace: Trace,
        strategy: str,
        network: LocalNetwork,
        root: Path,
        sync_copy_ttl_ms: int | None = None,
    ) -> None:
        """``sync_copy_ttl_ms``: the devices' (``DeviceConfig``; p2p only)."""
        self.trace, self.strategy, self.network, self.root = trace, strategy, network, root
        self.clock = network.clock
        self.mode, direct = device_mode(strategy)
        self.config = DeviceConfig(
            receive="subscribe",
            direct_sync=direct,
            catch_up_s=CATCH_UP_S,
            keepalive_s=KEEPALIVE_S,
            sync_copy_ttl_ms=sync_copy_ttl_ms,
        )
        self.devices: dict[tuple[int, str], Device] = {}
        self._sent_at: dict[bytes, int] = {}
        self._due: dict[bytes, set[str]] = {}
        self._online_at_send: dict[bytes, set[str]] = {}
        #: message id -> (the sender's other device, offline at the send; when it comes)
        self._away_sibling: dict[bytes, tuple[str, int]] = {}
        self._activity = trio.Event()

    def _name(self, user: int, kind: str) -> str:
        return f"u{user}-{kind}"

    async def run(self, on_progress: Callable[[float], None]) -> Outcome:
        async with trio.open_nursery() as nursery:
            for user in range(self.trace.users):
                for kind in KINDS:
                    self.devices[(user, kind)] = await nursery.start(self._keep_device, user, kind)
            await self._pair_and_befriend()
            outcome = await self._replay(nursery, on_progress)
            nursery.cancel_scope.cancel()
        return outcome

    async def _keep_device(
        self, user: int, kind: str, *, task_status: trio.TaskStatus[Device]
    ) -> None:
        name = self._name(user, kind)
        seed = Identity.from_label(f"bench/{self.trace.seed}/{name}").seed
        async with open_device(
            self.root / name,
            self.network.access(),
            mode=self.mode,
            name=name,
            seed=seed,
            config=self.config,
        ) as device:
            task_status.started(device)
            await trio.sleep_forever()

    async def _pair_and_befriend(self) -> None:
        """What users do once: pair the desktop to the phone, then befriend whoever the
        trace has them write to (the phone asks; the other user's phone accepts)."""
        async with trio.open_nursery() as nursery:
            for user in range(self.trace.users):
                nursery.start_soon(
                    self._pair, self.devices[(user, "phone")], self.devices[(user, "desktop")]
                )
        pairs = sorted({tuple(sorted((s.user, s.to_user))) for s in self.trace.sends})
        async with trio.open_nursery() as nursery:
            for a, b in pairs:
                nursery.start_soon(self._befriend, a, b)
        for device in self.devices.values():
            await device.flush()

    async def _pair(self, primary: Device, new: Device) -> None:
        ticket = await new.pairing.request(primary.session_id)
        await primary.wait_for(lambda d: any(o.code == ticket.code for o in d.pairing.requests()))
        await primary.pairing.accept(ticket.code)
        await new.pairing.wait_paired()

    async def _befriend(self, a: int, b: int) -> None:
        asker, answerer = self.devices[(a, "phone")], self.devices[(b, "phone")]
        await asker.friends.request(answerer.session_id, "")
        await answerer.wait_for(lambda d: d.friends.contact(asker.session_id) is not None)
        await answerer.friends.accept(asker.session_id)
        for user, other in ((a, answerer), (b, asker)):
            for kind in KINDS:
                await self.devices[(user, kind)].wait_for(
                    partial(_is_friend, other=other.session_id)
                )

    async def _replay(self, nursery: trio.Nursery, on_progress: Callable[[float], None]) -> Outcome:
        trace = self.trace
        owners = {d.whoami().receives_as for d in self.devices.values()}
        holdings = Holdings(
            [handle.db_path for handle in self.network.nodes],
            owners,
            (NAMESPACE_MESSAGES, NAMESPACE_SYNC),
        )
        holdings.endings()  # everything stored so far is the set-up's, not the trace's
        start = self.clock.now_ms()
        outcome = Outcome(start, start + trace.duration_ms + SETTLE_MS, holdings)
        for (user, _), device in self.devices.items():
            outcome.users[device.whoami().name] = user
            nursery.start_soon(self._watch, device, outcome)
        events: list[tuple[int, int, int, str, int]] = []
        for (user, kind), spans in trace.online.items():
            for begin, end in spans:
                events += [(begin, 1, user, kind, -1), (end, 0, user, kind, -1)]
        for number, send in enumerate(trace.sends):
            events.append((send.at_ms, 2, send.user, send.kind, number))
        events.sort()
        nursery.start_soon(self._read_nodes, holdings)
        nursery.start_soon(self._read_endings, holdings)
        for user, kind in self.devices:  # the trace's state at its start
            if not trace.is_online(user, kind, 0):
                await self.devices[(user, kind)].set_online(False)
        for at, what, user, kind, number in events:
            await self.clock.sleep_until_ms(start + at)
            on_progress(at / (trace.duration_ms + SETTLE_MS / 4))
            device = self.devices[(user, kind)]
            if what == 2:
                await self._send(device, user, number, outcome)
            elif (what == 1) != device.sync_status().online:
                nursery.start_soon(device.set_online, what == 1)
            self._activity.set()
        # The settling time starts where the trace ends, and brings every device online,
        # one still going offline included (set_online calls run one at a time).
        await self.clock.sleep_until_ms(start + trace.duration_ms)
        for device in self.devices.values():
            nursery.start_soon(device.set_online, True)
        self._activity.set()
        await self.clock.sleep_until_ms(outcome.end_ms)
        on_progress(1.0)
        holdings.endings()
        holdings.close()
        for name_key, device in self.devices.items():
            outcome.histories[self._name(*name_key)] = {item.id for item in device.history()}
            outcome.rejected += device.rejected
        return outcome

    async def _send(self, device: Device, user: int, number: int, outcome: Outcome) -> None:
        send = self.trace.sends[number]
        recipient = self.devices[(send.to_user, "phone")].session_id
        now = self.clock.now_ms()
        digest = await device.send(recipient, _text(number, send.size))
        outcome.sends[digest] = (user, send.to_user, now - outcome.start_ms)
        due = {self._name(user, OTHER[send.kind])} | {self._name(send.to_user, k) for k in KINDS}
        self._sent_at[digest] = now
        self._online_at_send[digest] = {
            name for name in due if self.devices[_key(name)].sync_status().online
        }
        sibling = (user, OTHER[send.kind])
        if self._name(*sibling) not in self._online_at_send[digest]:
            self._away_sibling[digest] = (self._name(*sibling), self._comes(*sibling, send.at_ms))

    async def _watch(self, device: Device, outcome: Outcome) -> None:
        """Time every message as it is filed on ``device``."""
        name = device.whoami().name
        arrivals = device.incoming()
        async with aclosing(arrivals):
            async for item in arrivals:
                sent = self._sent_at.get(item.id)
                if sent is not None and name in self._online_at_send[item.id]:
                    self._online_at_send[item.id].discard(name)
                    latency = float(self.clock.now_ms() - sent)
                    outcome.latencies.append(latency)
                    if item.outgoing:
                        outcome.sibling_latencies.append(latency)
                away = self._away_sibling.get(item.id)
                if away is not None and away[0] == name:
                    del self._away_sibling[item.id]
                    came_ms = outcome.start_ms + away[1]
                    outcome.sibling_catch_ups.append(float(max(0, self.clock.now_ms() - came_ms)))
                self._activity.set()

    def _comes(self, user: int, kind: str, at_ms: int) -> int:
        """When, in trace time, the device is next online from ``at_ms`` on (the
        settling time, if not within the trace)."""
        spans = self.trace.online.get((user, kind), ())
        later = [max(begin, at_ms) for begin, end in spans if end > at_ms]
        return min(later, default=self.trace.duration_ms)

    async def _read_nodes(self, holdings: Holdings) -> None:
        """New rows on the nodes: densely for a while after any activity, else rarely."""
        while True:
            activity = self._activity = trio.Event()
            for interval, count in DENSE_READS:
                for _ in range(count):
                    await trio.sleep(interval)
                    holdings.new_rows()
            with trio.move_on_after(ENDINGS_EVERY_S):
                await activity.wait()
            holdings.new_rows()

    async def _read_endings(self, holdings: Holdings) -> None:
        while True:
            await trio.sleep(ENDINGS_EVERY_S)
            holdings.endings()


def _key(name: str) -> tuple[int, str]:
    user, kind = name[1:].split("-")
    return int(user), kind


def _is_friend(device: Device, other: str) -> bool:
    contact = device.friends.contact(other)
    return contact is not None and is_friend(contact.state)
