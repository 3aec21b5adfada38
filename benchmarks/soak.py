"""``p2psync bench soak --minutes N``: load and faults together, for minutes, on a
multi-process local network (:mod:`benchmarks.faults`).

Clients (each its own connections) store, retrieve and subscribe without pause while the
timeline kills a service node with SIGKILL and restarts it, or stops the registry and
starts it again, every ``FAULT_EVERY_S``. Each client has a fixed number of workers that
wait for every reply (backpressure), so memory stays flat whatever a fault does to
latency. At the end the load stops, every service is up, and the audit reads every
owner's messages from every swarm member:

* **held** — stores/s, retrieves/s, latency p50/p99 (store, retrieve, store→subscriber),
  peak RSS of each node process (``VmHWM`` from ``/proc``, over all its incarnations),
  and per fault how long until the system was whole again;
* **lost** — acknowledged stores that no member returns (the goal is 0), and members
  still missing some once the convergence deadline passed.

With ``--flood-seconds S``, a flood phase follows the load (:mod:`benchmarks.faults.flood`):
one node is flooded for ``S`` seconds (connections past its limit, clients that never
read their replies, oversize frames and stores, a request-rate flood) while an honest
client stores and reads back; the report adds the node's RSS before, at its peak and
after, the honest client's latency during the flood against before, and what each
attacker was answered.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from p2psync.cli import run_stoppable
from p2psync.identity import Identity, session_id_key
from p2psync.swarm.client import SwarmClient, open_swarm_client

from .faults import (
    AckLedger,
    Cluster,
    LatencySample,
    LoadStats,
    audit,
    open_cluster,
    wait_converged,
)
from .faults.flood import AttackPlan, FloodPlan, flood_tables, run_flood
from .faults.ledger import Audit, held_by
from .faults.load import CLIENT_ERRORS, run_retriever, run_storers, run_subscriber
from .faults.polling import poll_until
from .faults.process import ServiceProcess
from .faults.scenarios import client_bootstraps

OWNERS = 16
STORERS_PER_CLIENT = 4
FAULT_EVERY_S = 20.0
NODE_DOWN_S = 2.0
REGISTRY_DOWN_S = 5.0
#: How long a fault's recovery is watched before the timeline moves on (it is reported).
RECOVERY_TIMEOUT_S = 60.0
RECOVERY_POLL_S = 1.0
CONVERGE_TIMEOUT_S = 120.0
REFRESH_S = 0.5


@dataclass
class FaultLog:
    node_kills: int = 0
    registry_stops: int = 0
    #: Per fault: seconds from the service being back until it was whole (None: not in time).
    recoveries: list[tuple[str, float | None]] = field(default_factory=list)


async def _node_caught_up(
    swarm: SwarmClient,
    cluster: Cluster,
    node: ServiceProcess,
    owners: Sequence[Identity],
    owed: dict[str, set[bytes]],
) -> bool:
    """Whether ``node`` returns every message in ``owed`` for owners of its swarm."""
    try:
        swarms = await cluster.swarm_map()
        info = cluster.node_info(node, swarms)
        for owner in owners:
            wanted = owed.get(owner.session_id)
            serves = info in swarms.nodes_for_key(session_id_key(owner.session_id))
            if wanted and serves and not wanted <= await held_by(swarm, owner, info):
                return False
    except CLIENT_ERRORS:
        return False
    return True


async def _watch_recovery(check: Callable[[], Awaitable[bool]]) -> float | None:
    started = trio.current_time()
    with trio.move_on_after(RECOVERY_TIMEOUT_S):
        await poll_until(check, poll_s=RECOVERY_POLL_S)
        return round(trio.current_time() - started, 2)
    return None


async def _kill_node(
    cluster: Cluster, swarm: SwarmClient, ledger: AckLedger, node: ServiceProcess, log: FaultLog
) -> None:
    """kill -9, restart after ``NODE_DOWN_S``; recovered once it returns everything that
    was acknowledged before the kill."""
    owed = {owner: set(hashes) for owner, hashes in ledger.acknowledged.items()}
    await cluster.kill(node)
    log.node_kills += 1
    await trio.sleep(NODE_DOWN_S)
    await cluster.start(node)
    recovery = await _watch_recovery(
        partial(_node_caught_up, swarm, cluster, node, ledger.owners, owed)
    )
    log.recoveries.append((f"kill -9 {node.name}", recovery))


async def _stop_registry(cluster: Cluster, ledger: AckLedger, log: FaultLog) -> None:
    """Stop, start after ``REGISTRY_DOWN_S``; recovered once a client that knows nothing
    can bootstrap, store and read."""
    await cluster.stop(cluster.registry)
    log.registry_stops += 1
    await trio.sleep(REGISTRY_DOWN_S)
    await cluster.start(cluster.registry)
    recovery = await _watch_recovery(partial(client_bootstraps, cluster, ledger))
    log.recoveries.append(("registry stop", recovery))


async def _timeline(
    cluster: Cluster, swarm: SwarmClient, ledger: AckLedger, log: FaultLog, seconds: float
) -> None:
    """One fault every ``FAULT_EVERY_S``, alternating node kills (round robin) and registry
    stops; none starts unless it can finish before the end."""
    end = trio.current_time() + seconds
    turn = 0
    while trio.current_time() + FAULT_EVERY_S + NODE_DOWN_S + 5 < end:
        await trio.sleep(FAULT_EVERY_S)
        if turn % 2 == 0:
            node = cluster.nodes[(turn // 2) % len(cluster.nodes)]
            await _kill_node(cluster, swarm, ledger, node, log)
        else:
            await _stop_registry(cluster, ledger, log)
        turn += 1
    await trio.sleep_until(end)


def _status(stats: LoadStats, log: FaultLog, elapsed: float) -> str:
    rate = stats.stores / elapsed if elapsed else 0.0
    return (
        f"stores {stats.stores:,} ({rate:,.0f}/s)  retrieves {stats.retrieves:,}  "
        f"delivered {stats.deliveries:,}  failed {stats.store_failures}  "
        f"faults {log.node_kills + log.registry_stops}"
    )


async def _flood_phase(cluster: Cluster, seconds: float, console: Console) -> dict[str, Any]:
    """Flood the first node for ``seconds`` (with the load stopped, so what the honest
    client sees is the flood's doing); its figures."""
    target = cluster.nodes[0]

    def show(phase: str) -> None:
        console.print(f"[bold]soak[/]: flood of {target.name}, phase {phase} …")

    plan = FloodPlan(AttackPlan(seconds=seconds))
    return (await run_flood(cluster, target, plan, on_phase=show)).figures()


async def _run(
    data_dir: Path,
    seconds: float,
    nodes: int,
    clients: int,
    console: Console,
    flood_seconds: float = 0.0,
) -> dict[str, Any]:
    owners = [Identity.from_label(f"soak/owner/{i}") for i in range(OWNERS)]
    ledger = AckLedger(owners)
    stats = LoadStats()
    log = FaultLog()
    console.print(f"[bold]soak[/]: starting {nodes} nodes and the registry in {data_dir} …")
    async with open_cluster(data_dir, nodes=nodes) as cluster, AsyncExitStack() as stack:
        swarms = [
            await stack.enter_async_context(
                open_swarm_client(cluster.transport, cluster.directory(), cluster.clock, seed=i)
            )
            for i in range(clients)
        ]
        with Progress(
            TextColumn("[bold]soak"),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
            transient=True,
        ) as progress:
            task = progress.add_task("soak", total=seconds, status="")
            started = trio.current_time()
            async with trio.open_nursery() as nursery:
                for i, swarm in enumerate(swarms):
                    nursery.start_soon(
                        partial(run_storers, swarm, ledger, stats, STORERS_PER_CLIENT, seed=i)
                    )
                    nursery.start_soon(partial(run_retriever, swarm, owners, stats, seed=i))
                    nursery.start_soon(run_subscriber, swarm, owners[i % OWNERS], stats)

                async def report() -> None:
                    while True:
                        elapsed = trio.current_time() - started
                        progress.update(
                            task,
                            completed=min(elapsed, seconds),
                            status=_status(stats, log, elapsed),
                        )
                        for node in cluster.nodes:
                            node.sample_rss()
                        await trio.sleep(REFRESH_S)

                nursery.start_soon(report)
                await _timeline(cluster, swarms[0], ledger, log, seconds)
                nursery.cancel_scope.cancel()
            load_s = trio.current_time() - started
        for node in cluster.nodes:
            node.sample_rss()
        flood = await _flood_phase(cluster, flood_seconds, console) if flood_seconds else None
        console.print(f"[bold]soak[/]: load stopped; auditing {ledger.count:,} acknowledged …")
        swarm_map = await cluster.swarm_map()
        audit_started = trio.current_time()
        first = result = await audit(swarms[0], ledger, swarm_map)
        if not first.converged:
            with trio.move_on_after(CONVERGE_TIMEOUT_S):
                result = await wait_converged(swarms[0], ledger, swarm_map)
            if not result.converged:
                result = await audit(swarms[0], ledger, swarm_map)
        converge_s = trio.current_time() - audit_started
    figures = _figures(stats, log, ledger, result, cluster.nodes, load_s, converge_s, clients)
    figures["missing_when_load_stopped"] = sum(first.missing.values())
    if flood is not None:
        figures["flood"] = flood
    return figures


def _figures(
    stats: LoadStats,
    log: FaultLog,
    ledger: AckLedger,
    result: Audit,
    nodes: Sequence[ServiceProcess],
    load_s: float,
    converge_s: float,
    clients: int,
) -> dict[str, Any]:
    def quantiles(sample: LatencySample) -> dict[str, float | None]:
        return {"p50": sample.quantile_ms(0.5), "p99": sample.quantile_ms(0.99)}

    return {
        "seconds": round(load_s, 1),
        "nodes": len(nodes),
        "clients": clients,
        "concurrency": {
            "storers": clients * STORERS_PER_CLIENT,
            "retrievers": clients,
            "subscribers": clients,
        },
        "stores": stats.stores,
        "stores_per_s": round(stats.stores / load_s, 1),
        "store_failures": stats.store_failures,
        "retrieves": stats.retrieves,
        "retrieves_per_s": round(stats.retrieves / load_s, 1),
        "retrieve_failures": stats.retrieve_failures,
        "deliveries": stats.deliveries,
        "store_latency_ms": quantiles(stats.store_latency),
        "retrieve_latency_ms": quantiles(stats.retrieve_latency),
        "delivery_latency_ms": quantiles(stats.delivery_latency),
        "peak_rss_kib": {node.name: node.peak_rss_kib for node in nodes},
        "faults": {
            "node_kills": log.node_kills,
            "registry_stops": log.registry_stops,
            "recovery_s": [{"fault": f, "recovery_s": s} for f, s in log.recoveries],
        },
        "acknowledged": ledger.count,
        "lost": result.lost,
        "missing_on_members": sum(result.missing.values()),
        "unreachable_members": len(result.unreachable),
        "unreachable_reasons": result.unreachable,
        "converged": result.converged,
        "converge_s": round(converge_s, 2),
    }


def print_report(figures: dict[str, Any]) -> None:
    held = Table(title=f"soak: what it held ({figures['seconds']:.0f} s)")
    held.add_column("measure")
    held.add_column("value", justify="right")
    held.add_row("stores (acknowledged)", f"{figures['stores']:,} ({figures['stores_per_s']}/s)")
    held.add_row("retrieves (signed)", f"{figures['retrieves']:,} ({figures['retrieves_per_s']}/s)")
    held.add_row(
        "failed stores / retrieves (retried)",
        "{} / {}".format(figures["store_failures"], figures["retrieve_failures"]),
    )
    for name, key in (
        ("store latency", "store_latency_ms"),
        ("retrieve latency", "retrieve_latency_ms"),
        ("store → subscriber", "delivery_latency_ms"),
    ):
        q = figures[key]
        held.add_row(f"{name} p50 / p99 (ms)", f"{q['p50']} / {q['p99']}")
    held.add_row("subscriber deliveries", f"{figures['deliveries']:,}")
    for name, kib in figures["peak_rss_kib"].items():
        held.add_row(f"peak RSS {name}", f"{kib / 1024:.1f} MiB")
    for fault in figures["faults"]["recovery_s"]:
        seconds = fault["recovery_s"]
        held.add_row(
            f"{fault['fault']}: whole again after",
            "not in time" if seconds is None else f"{seconds:.2f} s",
        )
    lost = Table(title="soak: what it lost")
    lost.add_column("measure")
    lost.add_column("value", justify="right")
    lost.add_row("acknowledged stores", f"{figures['acknowledged']:,}")
    lost.add_row("lost (no member returns it; goal 0)", str(figures["lost"]))
    lost.add_row(
        "copies missing on some member when the load stopped",
        f"{figures['missing_when_load_stopped']:,}",
    )
    lost.add_row("still missing on some member at the end", str(figures["missing_on_members"]))
    for url, reason in figures["unreachable_reasons"].items():
        lost.add_row(f"unreachable at the end: {url}", reason)
    converged = "all members converged after" if figures["converged"] else "not converged after"
    lost.add_row(converged, f"{figures['converge_s']:.2f} s")
    console = Console()
    console.print(held)
    console.print(lost)
    for table in flood_tables(figures["flood"]) if "flood" in figures else []:
        console.print(table)


def run_soak(
    *,
    minutes: float,
    nodes: int = 4,
    clients: int = 4,
    data_dir: Path | None = None,
    json_path: str | None = None,
    flood_seconds: float = 0.0,
) -> dict[str, Any]:
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="p2psync-soak-") as temporary:
        directory = data_dir or Path(temporary)
        figures: dict[str, Any] = run_stoppable(
            _run, directory, minutes * 60, nodes, clients, console, flood_seconds
        )
    print_report(figures)
    if json_path:
        Path(json_path).write_text(json.dumps(figures, indent=2) + "\n")
        console.print(f"wrote {json_path}")
    return figures
