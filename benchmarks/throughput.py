"""``p2psync bench throughput``: stores/s and retrieves/s of a service node in a real swarm
with quorum writes, beside the floor measured in the same run (DESIGN.md §9).

The bench starts a registry and ``nodes`` node processes (``p2psync node``, through
:func:`~benchmarks.faults.cluster.open_cluster`), waits until every node places itself in
the swarm the registry's listing implies, and then loads the first node (the entry node)
only, for owners of its swarm, over ``clients`` connections with ``pipeline`` requests in
flight each. The entry node acknowledges a store once ``quorum`` members of its swarm,
itself included, have committed it, so the rate includes waiting for a peer's commit
(``quorum`` is the nodes' rule, :data:`~p2psync.swarm.constants.STORE_QUORUM` members or every
member of a smaller swarm, applied to the swarm they agreed on). A rate is replies ÷ the
time until the last reply came back. The floor is what the node's storage costs at the
least: single-row SQLite inserts, each committed on its own, in the same schema and
journal mode (WAL, synchronous=NORMAL), with the message hash computed, in this process.
``ratio`` = stores/s ÷ floor.

A second store phase sends the same stores in ``store_batch`` requests of ``batch`` each
(one owner to a request, as a device's outbox sends its backlog for one friend), with as
many stores in flight per connection as the first phase (``pipeline // batch`` batches;
one, if a batch is bigger than that): its figures (``batched_…``) show
what a request's framing costs beside its stores' own work.

Why three nodes by default: three is the smallest swarm in which the quorum of two is a
majority rather than every member, so a store waits for the first of two peers, as it
does in a full swarm, and not for one particular peer. More would add node processes,
each taking its turn on a machine that has two cores for the load, the entry node and
its peers together: the quorum wait would then measure the scheduler more than the node.
The DESIGN.md §4 swarm of six is one ``--nodes 6`` away.

On a small machine the load generator and the peers compete with the entry node for CPU,
so the node processes' CPU time is read from ``/proc`` around the store phase too:
``node_cpu_us_per_store`` and ``ratio_per_core`` (stores per second of the entry node's
CPU ÷ floor) describe the entry node alone, and ``peer_cpu_us_per_store`` what each peer
spends taking the replicas. ``load_average`` is the machine's one-minute load when the
store phase starts, since other work on the machine moves every figure but the floor's
ratio.

Every child process belongs to the cluster's nursery, so success, an error, Ctrl-C and
SIGTERM (turned into the same stop as Ctrl-C) all end them before the bench returns.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio
from rich.console import Console
from rich.table import Table

from p2psync.cli import run_stoppable
from p2psync.clock import Clock
from p2psync.identity import Identity, session_id_key
from p2psync.swarm.auth import AuthSigner
from p2psync.swarm.constants import MAX_STORE_BATCH, REPLICATION_RETRY_S, STORE_QUORUM
from p2psync.swarm.messages import (
    StoreBatchReply,
    StoreBatchRequest,
    StoreReply,
    StoreRequest,
)
from p2psync.swarm.ring import SwarmMap
from p2psync.swarm.rows import StoredMessage
from p2psync.swarm.store import MessageStore
from p2psync.websocket import WebSocketLink, WebSocketTransport
from p2psync.wire import Reply, Request, decode_frame, encode_frame

from .faults.cluster import open_cluster

MESSAGE_BYTES = 200
#: Stores per ``store_batch`` in the batched phase.
DEFAULT_BATCH = 16
OWNERS = 64
TTL_MS = 3_600_000
#: Request ids of one connection start at its index times this (ids stay unique per run).
SEQUENCES_PER_CLIENT = 2**40

#: ``(worker, sequence) -> (method, params)``: what the load sends.
RequestMaker = Callable[[int, int], tuple[str, dict[str, Any]]]


def measure_floor(seconds: float) -> float:
    """Single-commit inserts/s into the node's own store schema, hash included."""
    with tempfile.TemporaryDirectory() as directory:
        store = MessageStore(Path(directory) / "floor.sqlite3")
        payload = os.urandom(MESSAGE_BYTES)
        owner = Identity.from_label("floor").session_id
        count = 0
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            data = payload + count.to_bytes(8, "big")
            digest = hashlib.blake2b(data, digest_size=32).digest()
            store.put(StoredMessage(owner, 0, digest, count, count + TTL_MS, data, count))
            count += 1
        elapsed = time.perf_counter() - start
        store.close()
    return count / elapsed


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux ``/proc``; ``OSError``
    elsewhere or once it has exited)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _one(result: Any) -> int:
    return 1


def _acknowledged(batch: int) -> Callable[[Any], int]:
    """A ``store_batch`` reply to ``batch`` stores stands for them all, every one of which
    must be acknowledged (a refusal, or a reply of another length, ends the run rather
    than count)."""

    def count(result: Any) -> int:
        results = StoreBatchReply.from_wire(result, stores=batch).results
        refused = [r for r in results if not isinstance(r, StoreReply)]
        if refused:
            raise RuntimeError(f"the node refused stores of a batch: {refused[0]}")
        return batch

    return count


async def _load(
    url: str,
    clients: int,
    pipeline: int,
    seconds: float,
    make_request: RequestMaker,
    tally: Callable[[Any], int] = _one,
) -> tuple[int, float]:
    """Operations done and the seconds they took, from ``clients`` connections keeping
    ``pipeline`` requests in flight each until ``seconds`` have passed and then waiting
    for the last replies (so the rate is never flattered by unanswered requests).
    ``tally``: how many operations a reply's result stands for.

    Each connection is driven by one task on the link itself rather than by a task per
    request through ``RpcClient``: on a two-core machine the generator shares the
    CPU with the node, and a heavy one would measure itself instead of the node."""
    transport = WebSocketTransport()
    done = 0

    async def drive(link: WebSocketLink, first: int) -> None:
        nonlocal done
        outstanding: set[int] = set()
        sequences = itertools.count()

        def requests(count: int) -> list[bytes]:
            frames = []
            for _ in range(count):
                sequence = next(sequences)
                rid = first + sequence
                method, params = make_request(first // SEQUENCES_PER_CLIENT, sequence)
                outstanding.add(rid)
                frames.append(encode_frame(Request(rid, method, params)))
            return frames

        await link.send_batch(requests(pipeline))
        while outstanding:
            answered = 0
            data = await link.receive()
            while True:
                frame = decode_frame(data)
                if not isinstance(frame, Reply) or frame.id not in outstanding:
                    raise RuntimeError(f"the node answered {frame!r}")
                outstanding.remove(frame.id)
                answered += 1
                done += tally(frame.result)
                try:
                    data = link.receive_nowait()
                except trio.WouldBlock:
                    break
            if trio.current_time() < deadline:
                await link.send_batch(requests(answered))

    async with AsyncExitStack() as stack:
        links = [await stack.enter_async_context(transport.connect(url)) for _ in range(clients)]
        start = trio.current_time()
        deadline = start + seconds
        async with trio.open_nursery() as nursery:
            for c, link in enumerate(links):
                nursery.start_soon(drive, link, c * SEQUENCES_PER_CLIENT)
        elapsed = trio.current_time() - start
    return done, elapsed


def _owners_of(swarms: SwarmMap, swarm: int) -> Iterator[Identity]:
    """Bench owners whose messages belong to ``swarm``, in a fixed order."""
    for index in itertools.count():
        owner = Identity.from_label(f"bench-owner-{index}")
        if swarms.swarm_for_key(session_id_key(owner.session_id)) == swarm:
            yield owner


def _request_makers(
    owners: list[Identity], clock: Clock, batch: int
) -> tuple[RequestMaker, RequestMaker, RequestMaker]:
    """Stores of distinct messages, ``store_batch`` requests of ``batch`` such stores for
    one owner each, and signed one-message retrieves, spread over ``owners``."""
    payload = os.urandom(MESSAGE_BYTES)
    signers = [AuthSigner(owner) for owner in owners]

    def one_store(owner: Identity, worker: int, sequence: int) -> StoreRequest:
        data = payload + worker.to_bytes(4, "big") + sequence.to_bytes(8, "big")
        return StoreRequest(owner.session_id, 0, TTL_MS, clock.now_ms(), data)

    def store(worker: int, sequence: int) -> tuple[str, dict[str, Any]]:
        owner = owners[(worker + sequence) % len(owners)]
        return "store", one_store(owner, worker, sequence).to_wire()

    def store_batch(worker: int, sequence: int) -> tuple[str, dict[str, Any]]:
        owner = owners[(worker + sequence) % len(owners)]
        stores = (one_store(owner, worker, sequence * batch + i) for i in range(batch))
        return "store_batch", StoreBatchRequest(tuple(stores)).to_wire()

    def retrieve(worker: int, sequence: int) -> tuple[str, dict[str, Any]]:
        index = (worker + sequence) % len(owners)
        return "retrieve", {
            "pubkey": owners[index].session_id,
            "namespace": 0,
            "last_hash": None,
            "limit": 1,
            "auth": signers[index].auth("retrieve", 0, clock.now_ms()),
        }

    return store, store_batch, retrieve


def run_throughput(
    *,
    seconds: float = 5.0,
    clients: int = 4,
    pipeline: int = 32,
    nodes: int = 3,
    quorum: int = STORE_QUORUM,
    batch: int = DEFAULT_BATCH,
) -> dict[str, Any]:
    """``quorum`` is what every node is started with (``p2psync node --quorum``); 1 is
    acknowledging after the entry node's own commit, for comparison. ``batch``: stores
    per ``store_batch`` request in the batched phase (see the module docstring)."""
    if not 1 <= batch <= MAX_STORE_BATCH:
        raise ValueError(f"--batch must be in [1, {MAX_STORE_BATCH}]")
    if nodes < 2:
        raise ValueError("a quorum write needs a swarm of at least 2 nodes")
    if not 1 <= quorum <= nodes:
        raise ValueError(f"--quorum must be in [1, {nodes}]")
    console = Console(stderr=True)
    console.print(f"[bold]floor[/]: single-commit SQLite inserts for {seconds:.0f} s …")
    floor = measure_floor(seconds)

    async def measure() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="p2psync-throughput-") as directory:
            console.print(f"[bold]swarm[/]: starting {nodes} node processes …")
            async with open_cluster(
                Path(directory), nodes=nodes, node_args=("--quorum", str(quorum))
            ) as cluster:
                swarms = await cluster.swarm_map()
                entry = cluster.nodes[0]
                swarm = swarms.swarm_of_node(cluster.node_info(entry, swarms).pubkey)
                assert swarm is not None, "a settled cluster lists every node"
                urls = {member.url for member in swarms.swarms[swarm]}
                members = [node for node in cluster.nodes if node.url in urls]
                owners = list(itertools.islice(_owners_of(swarms, swarm), OWNERS))
                store, store_batch, retrieve = _request_makers(owners, cluster.clock, batch)
                # A membership change (each node saw the others join) schedules a repair
                # round with every peer REPLICATION_RETRY_S later; let it pass while
                # nothing is stored, or the store phase measures that round over its rows.
                await trio.sleep(2 * REPLICATION_RETRY_S)
                console.print(
                    f"[bold]stores[/]: {clients}×{pipeline} in flight for {seconds:.0f} s "
                    f"to one of {len(members)} members …"
                )
                load_average = os.getloadavg()[0]
                cpu_before = [_process_cpu_s(node.pid) for node in members]
                stores, store_s = await _load(entry.url, clients, pipeline, seconds, store)
                cpu_s = {
                    node.name: _process_cpu_s(node.pid) - before
                    for node, before in zip(members, cpu_before, strict=True)
                }
                batches = max(1, pipeline // batch)
                console.print(
                    f"[bold]batched stores[/]: {clients}×{batches} batches of {batch} "
                    f"in flight for {seconds:.0f} s …"
                )
                batch_cpu_before = _process_cpu_s(entry.pid)
                batched, batched_s = await _load(
                    entry.url, clients, batches, seconds, store_batch, _acknowledged(batch)
                )
                batch_cpu_s = _process_cpu_s(entry.pid) - batch_cpu_before
                console.print(f"[bold]retrieves[/]: signed, for {seconds:.0f} s …")
                retrieves, retrieve_s = await _load(entry.url, clients, pipeline, seconds, retrieve)
        entry_cpu_s = cpu_s.pop(entry.name)
        peer_cpu_s = sum(cpu_s.values()) / len(cpu_s)
        return {
            "stores_per_s": round(stores / store_s, 1),
            "retrieves_per_s": round(retrieves / retrieve_s, 1),
            "floor_stores_per_s": round(floor, 1),
            "ratio": round(stores / store_s / floor, 3),
            "quorum": min(quorum, len(members)),
            "ratio_per_core": round(stores / entry_cpu_s / floor, 3),
            "node_cpu_us_per_store": round(1e6 * entry_cpu_s / stores, 1),
            "peer_cpu_us_per_store": round(1e6 * peer_cpu_s / stores, 1),
            "batch": batch,
            "batched_stores_per_s": round(batched / batched_s, 1),
            "batched_ratio_per_core": round(batched / batch_cpu_s / floor, 3),
            "batched_node_cpu_us_per_store": round(1e6 * batch_cpu_s / batched, 1),
            "nodes": nodes,
            "swarm_members": len(members),
            "clients": clients,
            "pipeline": pipeline,
            "message_bytes": MESSAGE_BYTES,
            "load_average": round(load_average, 2),
        }

    return run_stoppable(measure)


def print_report(result: dict[str, Any]) -> None:
    table = Table(
        title=f"service node throughput (entry node of a {result['swarm_members']}-member swarm, "
        f"quorum {result['quorum']}, WebSocket, loopback; load {result['load_average']})"
    )
    table.add_column("measure")
    table.add_column("per second", justify="right")
    table.add_row("stores", f"{result['stores_per_s']:,.0f}")
    table.add_row("retrieves (signed)", f"{result['retrieves_per_s']:,.0f}")
    table.add_row("floor: SQLite single-commit inserts", f"{result['floor_stores_per_s']:,.0f}")
    table.add_row("stores ÷ floor", f"{result['ratio']:.2f}")
    table.add_row("entry node CPU per store (µs)", f"{result['node_cpu_us_per_store']}")
    table.add_row("each peer's CPU per store (µs)", f"{result['peer_cpu_us_per_store']}")
    table.add_row("stores per entry-node-CPU-second ÷ floor", f"{result['ratio_per_core']:.2f}")
    batch = result["batch"]
    table.add_row(f"stores in batches of {batch}", f"{result['batched_stores_per_s']:,.0f}")
    table.add_row(
        f"entry node CPU per store in batches of {batch} (µs)",
        f"{result['batched_node_cpu_us_per_store']}",
    )
    table.add_row(
        f"stores in batches of {batch} per entry-node-CPU-second ÷ floor",
        f"{result['batched_ratio_per_core']:.2f}",
    )
    Console().print(table)
