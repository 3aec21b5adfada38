"""Client load with backpressure: a fixed number of workers, each waiting for its reply
before it sends again, so the load never queues more than ``concurrency`` requests and
memory stays flat however slow the network gets during a fault.

Every payload starts with the (monotonic, this process's) time its store began, so a
subscriber in the same process can tell how long a message took to reach it. Latencies
are kept as a bounded uniform sample, not a list of every call.
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from p2psync.errors import ConnectionLost, DecodeError, RpcError
from p2psync.identity import Identity
from p2psync.swarm.client import Message, SwarmClient
from p2psync.swarm.cursor import Cursor
from p2psync.swarm.ring import NodeInfo

from .ledger import NAMESPACE, AckLedger

PAYLOAD_BYTES = 200
LATENCY_SAMPLES = 20_000
#: After a failed call a worker waits this long, so a swarm that is all down is not spun on.
FAILURE_PAUSE_S = 0.2
CLIENT_ERRORS = (OSError, ConnectionLost, RpcError, DecodeError)
_STAMP = struct.Struct(">d")


class LatencySample:
    """A uniform random sample (Vitter's algorithm R) of at most ``capacity`` latencies:
    quantiles of a long run in constant memory."""

    def __init__(self, capacity: int = LATENCY_SAMPLES, seed: int = 0) -> None:
        self.capacity = capacity
        self.count = 0
        self._values: list[float] = []
        self._random = random.Random(seed)

    def add(self, seconds: float) -> None:
        self.count += 1
        if len(self._values) < self.capacity:
            self._values.append(seconds)
        else:
            slot = self._random.randrange(self.count)
            if slot < self.capacity:
                self._values[slot] = seconds

    def __len__(self) -> int:
        """How many latencies the sample holds (at most ``capacity``)."""
        return len(self._values)

    def quantile_ms(self, q: float) -> float | None:
        if not self._values:
            return None
        ordered = sorted(self._values)
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


@dataclass
class LoadStats:
    stores: int = 0
    store_failures: int = 0
    retrieves: int = 0
    retrieve_failures: int = 0
    deliveries: int = 0
    store_latency: LatencySample = field(default_factory=LatencySample)
    retrieve_latency: LatencySample = field(default_factory=LatencySample)
    delivery_latency: LatencySample = field(default_factory=LatencySample)


def make_payload(worker: int, sequence: int) -> bytes:
    head = _STAMP.pack(trio.current_time()) + struct.pack(">IQ", worker, sequence)
    return head + os.urandom(PAYLOAD_BYTES - len(head))


def payload_age_s(data: bytes) -> float | None:
    if len(data) < _STAMP.size:
        return None
    started: float = _STAMP.unpack_from(data)[0]
    return trio.current_time() - started


class Tickets:
    """How many stores are left to start (``None``: until cancelled)."""

    def __init__(self, total: int | None) -> None:
        self.left = total

    def take(self) -> bool:
        if self.left is None:
            return True
        if self.left <= 0:
            return False
        self.left -= 1
        return True


async def run_storers(
    swarm: SwarmClient,
    ledger: AckLedger,
    stats: LoadStats,
    concurrency: int,
    *,
    total: int | None = None,
    seed: int = 0,
    node: NodeInfo | None = None,
) -> None:
    """``concurrency`` workers storing to random owners of ``ledger`` until ``total``
    stores were attempted (or until cancelled); each acknowledgement goes to the ledger.
    With ``node`` every store goes to that member, which must serve every owner."""
    tickets = Tickets(total)

    async def worker(index: int) -> None:
        rng = random.Random(seed * 1_000_003 + index)
        sequence = 0
        while tickets.take():
            owner = rng.choice(ledger.owners)
            started = trio.current_time()
            try:
                digest, _ = await swarm.store(
                    owner.session_id, NAMESPACE, make_payload(index, sequence), node=node
                )
            except CLIENT_ERRORS:
                stats.store_failures += 1
                await trio.sleep(FAILURE_PAUSE_S)
            else:
                stats.stores += 1
                stats.store_latency.add(trio.current_time() - started)
                ledger.record(owner, digest)
            sequence += 1

    async with trio.open_nursery() as nursery:
        for index in range(concurrency):
            nursery.start_soon(worker, index)


async def run_retriever(
    swarm: SwarmClient, owners: Sequence[Identity], stats: LoadStats, *, seed: int = 0
) -> None:
    """Signed retrieves, one at a time, over random owners, each owner read from where
    this reader left it, on the member that served it last (as a polling device does)."""
    rng = random.Random(seed)
    cursors = {o.session_id: Cursor() for o in owners}
    served_by: dict[str, NodeInfo] = {}
    while True:
        owner = rng.choice(owners)
        cursor = cursors[owner.session_id]
        started = trio.current_time()
        try:
            messages, _, node = await swarm.retrieve(
                owner, NAMESPACE, cursor.at(swarm.clock.now_ms()), served_by.get(owner.session_id)
            )
        except CLIENT_ERRORS:
            stats.retrieve_failures += 1
            served_by.pop(owner.session_id, None)
            cursor.for_new_node()
            await trio.sleep(FAILURE_PAUSE_S)
        else:
            stats.retrieves += 1
            stats.retrieve_latency.add(trio.current_time() - started)
            served_by[owner.session_id] = node
            cursor.fresh(messages, trio.current_time())


async def run_subscriber(swarm: SwarmClient, owner: Identity, stats: LoadStats) -> None:
    """A subscription (pushes, catching up by cursor after every reconnection) that
    measures store-to-delivery time of what it receives."""

    async def deliver(batch: list[Message]) -> None:
        await trio.lowlevel.checkpoint()
        for message in batch:
            age = payload_age_s(message.data)
            stats.deliveries += 1
            if age is not None:
                stats.delivery_latency.add(age)

    await swarm.subscribe(owner, NAMESPACE, deliver)
