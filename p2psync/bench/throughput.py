"""``p2psync bench throughput``: stores/s and retrieves/s of one service node over
WebSocket, beside the floor measured in the same run (DESIGN.md §9).

The node runs as its own process (``p2psync node``), so it has a core to itself; the load
comes from this process over ``clients`` connections with ``pipeline`` requests in flight
each, and a rate is replies ÷ the time until the last reply came back. The floor is what
the node's storage costs at the least: single-row SQLite inserts, each committed on its
own, in the same schema and journal mode (WAL, synchronous=NORMAL), with the message hash
computed, in this process. ``ratio`` = stores/s ÷ floor.

On a small machine the load generator competes with the node for CPU, so the node's own
CPU time is read from ``/proc`` around each phase too: ``node_cpu_us_per_store`` and
``ratio_per_node_core`` (stores per second of node CPU ÷ floor) describe the node alone.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio
from rich.console import Console
from rich.table import Table

from ..clock import Clock
from ..identity import Identity
from ..swarm.auth import AuthSigner
from ..swarm.registry import RegistryServer
from ..swarm.store import MessageStore, StoredMessage
from ..websocket import WebSocketLink, WebSocketTransport
from ..wire import Reply, Request, decode_frame, encode_frame

MESSAGE_BYTES = 200
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


async def _start_node(registry_url: str, data_dir: Path) -> tuple[trio.Process, str]:
    process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "p2psync",
            "node",
            "--data",
            str(data_dir),
            "--registry",
            registry_url,
        ],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    line = b""
    with trio.fail_after(60):
        while b"\n" not in line:
            chunk = await process.stdout.receive_some(1024)
            if not chunk:
                raise RuntimeError("the node process exited before it was ready")
            line += chunk
    return process, line.decode().split()[1]


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux ``/proc``; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _load(
    url: str, clients: int, pipeline: int, seconds: float, make_request: RequestMaker
) -> tuple[int, float]:
    """Successful replies and the seconds they took, from ``clients`` connections keeping
    ``pipeline`` requests in flight each until ``seconds`` have passed and then waiting
    for the last replies (so the rate is never flattered by unanswered requests).

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
                try:
                    data = link.receive_nowait()
                except trio.WouldBlock:
                    break
            done += answered
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


def run_throughput(*, seconds: float = 5.0, clients: int = 4, pipeline: int = 32) -> dict[str, Any]:
    console = Console(stderr=True)
    console.print(f"[bold]floor[/]: single-commit SQLite inserts for {seconds:.0f} s …")
    floor = measure_floor(seconds)
    owners = [Identity.from_label(f"bench-owner-{i}") for i in range(OWNERS)]
    signers = [AuthSigner(o) for o in owners]
    payload = os.urandom(MESSAGE_BYTES)
    clock = Clock()

    def store_request(worker: int, sequence: int) -> tuple[str, dict[str, Any]]:
        owner = owners[(worker + sequence) % OWNERS]
        data = payload + worker.to_bytes(4, "big") + sequence.to_bytes(8, "big")
        return "store", {
            "pubkey": owner.session_id,
            "namespace": 0,
            "ttl": TTL_MS,
            "timestamp": clock.now_ms(),
            "data": data,
        }

    def retrieve_request(worker: int, sequence: int) -> tuple[str, dict[str, Any]]:
        index = (worker + sequence) % OWNERS
        return "retrieve", {
            "pubkey": owners[index].session_id,
            "namespace": 0,
            "last_hash": None,
            "limit": 1,
            "auth": signers[index].auth("retrieve", 0, clock.now_ms()),
        }

    async def main() -> dict[str, Any]:
        transport = WebSocketTransport()
        with tempfile.TemporaryDirectory() as directory:
            async with trio.open_nursery() as nursery:
                registry = await nursery.start(
                    RegistryServer(clock).serve, transport, "127.0.0.1:0"
                )
                process, url = await _start_node(registry, Path(directory) / "node")
                try:
                    console.print(
                        f"[bold]stores[/]: {clients}×{pipeline} in flight for {seconds:.0f} s …"
                    )
                    cpu_before = _process_cpu_s(process.pid)
                    stores, store_s = await _load(url, clients, pipeline, seconds, store_request)
                    node_cpu_s = _process_cpu_s(process.pid) - cpu_before
                    console.print(f"[bold]retrieves[/]: signed, for {seconds:.0f} s …")
                    retrieves, retrieve_s = await _load(
                        url, clients, pipeline, seconds, retrieve_request
                    )
                finally:
                    process.terminate()
                    await process.wait()
                nursery.cancel_scope.cancel()
        per_node_cpu_s = stores / node_cpu_s if node_cpu_s else 0.0
        return {
            "stores_per_s": round(stores / store_s, 1),
            "retrieves_per_s": round(retrieves / retrieve_s, 1),
            "floor_stores_per_s": round(floor, 1),
            "ratio": round(stores / store_s / floor, 3),
            "node_cpu_us_per_store": round(1e6 / per_node_cpu_s, 1) if per_node_cpu_s else None,
            "ratio_per_node_core": round(per_node_cpu_s / floor, 3),
            "clients": clients,
            "pipeline": pipeline,
            "message_bytes": MESSAGE_BYTES,
        }

    return trio.run(main)


def print_report(result: dict[str, Any]) -> None:
    table = Table(title="service node throughput (one node process, WebSocket, loopback)")
    table.add_column("measure")
    table.add_column("per second", justify="right")
    table.add_row("stores", f"{result['stores_per_s']:,.0f}")
    table.add_row("retrieves (signed)", f"{result['retrieves_per_s']:,.0f}")
    table.add_row("floor: SQLite single-commit inserts", f"{result['floor_stores_per_s']:,.0f}")
    table.add_row("stores ÷ floor", f"{result['ratio']:.2f}")
    table.add_row("node CPU per store (µs)", f"{result['node_cpu_us_per_store']}")
    table.add_row("stores per node-CPU-second ÷ floor", f"{result['ratio_per_node_core']:.2f}")
    Console().print(table)
