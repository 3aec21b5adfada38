"""The faults, each with the check that must hold after it.

* :func:`node_crash_during_burst` — ``kill -9`` a swarm member a third of the way into a
  burst of stores, restart it (same directory, same port) two thirds in, and keep storing
  a third more once it is back; then every acknowledged store must come back from
  *every* member, with no operator action (peers' replication queues and the restarted
  node's start-up repair fill its gap).
* :func:`registry_outage` — stop the registry, then run a burst; clients that already know
  the swarms keep storing, and once it is back a client that knows nothing bootstraps.
* :func:`relay_crash` — ``kill -9`` a relay on an endpoint's paths; the endpoint notices
  and builds new paths around it, and a round trip works on every path again.

Faults are timed by the load's progress (acknowledgements), conditions are waited for by
polling under a deadline, and every figure is measured, never assumed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import partial

import trio

from overlay import Contact, open_endpoint
from overlay.path import Path as OverlayPath
from p2psync.identity import session_id_key
from p2psync.swarm.client import SwarmClient, open_swarm_client
from p2psync.swarm.ring import SwarmMap

from .cluster import PROBES, Cluster
from .ledger import NAMESPACE, AckLedger, Audit, audit, wait_converged
from .load import CLIENT_ERRORS, LoadStats, run_storers
from .polling import poll_until
from .process import ServiceProcess

CONVERGE_TIMEOUT_S = 60.0
RECOVERY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class FaultReport:
    """What one fault showed. ``recovery_s`` runs from the service being back (or, for a
    relay that stays down, from the kill) until the check first held."""

    fault: str
    acknowledged: int
    failed: int
    lost: int
    down_s: float
    recovery_s: float | None
    converged: bool
    notes: dict[str, float | int | str] = field(default_factory=dict)


async def _settle(swarm: SwarmClient, cluster: Cluster, ledger: AckLedger) -> Audit:
    """Wait (bounded) until every member returns everything acknowledged; the last audit."""
    swarms = await cluster.swarm_map()
    with trio.move_on_after(CONVERGE_TIMEOUT_S):
        return await wait_converged(swarm, ledger, swarms)
    return await audit(swarm, ledger, swarms)


async def node_crash_during_burst(
    cluster: Cluster,
    swarm: SwarmClient,
    ledger: AckLedger,
    victim: ServiceProcess,
    *,
    burst: int = 600,
    concurrency: int = 16,
) -> FaultReport:
    """Stores run throughout: ``burst // 3`` acknowledged before the kill, as many while
    the victim is down, and as many again after it is back (its start-up included)."""
    stats = LoadStats()
    base = ledger.count
    third = burst // 3
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(run_storers, swarm, ledger, stats, concurrency))
        await ledger.reached(base + third)
        killed_at = trio.current_time()
        await cluster.kill(victim)
        acknowledged_at_kill = ledger.count - base
        await ledger.reached(base + 2 * third)
        await cluster.start(victim)
        back_at = trio.current_time()
        acknowledged_while_down = ledger.count - base - acknowledged_at_kill
        await ledger.reached(ledger.count + third)
        nursery.cancel_scope.cancel()
    load_ended_at = trio.current_time()
    acknowledged_after = ledger.count - base - acknowledged_at_kill - acknowledged_while_down
    result = await _settle(swarm, cluster, ledger)
    return FaultReport(
        f"kill -9 {victim.name} mid-burst, restart",
        ledger.count - base,
        stats.store_failures,
        result.lost,
        round(back_at - killed_at, 2),
        round(trio.current_time() - back_at, 2) if result.converged else None,
        result.converged,
        {
            "acknowledged_before_kill": acknowledged_at_kill,
            "acknowledged_while_down": acknowledged_while_down,
            "acknowledged_after_restart": acknowledged_after,
            "converged_after_load_s": round(trio.current_time() - load_ended_at, 2),
            "store_p99_ms": stats.store_latency.quantile_ms(0.99) or 0.0,
        },
    )


async def accepting_node_lost(
    cluster: Cluster,
    swarm: SwarmClient,
    ledger: AckLedger,
    victim: ServiceProcess,
    *,
    burst: int = 300,
    concurrency: int = 16,
    pause_s: float = 1.5,
) -> FaultReport:
    """Every store goes to ``victim`` itself, the member that answers the client. Half-way
    through the burst its peers hang (``SIGSTOP``) for ``pause_s``, so what it replicates
    lands nowhere; then it is killed with ``kill -9`` and never started again, and the
    peers go on. Every store it acknowledged must come back from the members left (a node
    acknowledges only what another member has committed too: while its peers hang it
    acknowledges nothing), and those must converge among themselves. The ledger's owners
    must all belong to the victim's swarm."""
    swarms = await cluster.swarm_map()
    target = cluster.node_info(victim, swarms)
    members = {n.url for n in swarms.nodes_for_key(session_id_key(ledger.owners[0].session_id))}
    peers = [node for node in cluster.nodes if node.url in members and node is not victim]
    stats = LoadStats()
    base = ledger.count
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(run_storers, swarm, ledger, stats, concurrency, node=target))
        await ledger.reached(base + burst // 2)
        for peer in peers:
            peer.pause()
        before_pause = ledger.count
        await trio.sleep(pause_s)
        acknowledged_while_peers_hung = ledger.count - before_pause
        killed_at = trio.current_time()
        await cluster.kill(victim)
        for peer in peers:
            peer.pause(False)
        nursery.cancel_scope.cancel()
    survivors = SwarmMap(
        {sid: tuple(n for n in nodes if n != target) for sid, nodes in swarms.swarms.items()}
    )
    with trio.move_on_after(CONVERGE_TIMEOUT_S):
        result = await wait_converged(swarm, ledger, survivors)
    result = await audit(swarm, ledger, survivors)
    return FaultReport(
        f"kill -9 {victim.name}, the member answering every store, for good",
        ledger.count - base,
        stats.store_failures,
        result.lost,
        round(trio.current_time() - killed_at, 2),
        None,
        result.converged,
        {
            "members_left": len(peers),
            "acknowledged_while_peers_hung": acknowledged_while_peers_hung,
        },
    )


async def client_bootstraps(cluster: Cluster, ledger: AckLedger) -> bool:
    """Whether a client that knows nothing (it must read the registry) can store and read
    back; its store is acknowledged like any other."""
    owner = ledger.owners[0]
    try:
        async with open_swarm_client(
            cluster.transport, cluster.directory(), cluster.clock
        ) as fresh:
            digest, _ = await fresh.store(owner.session_id, NAMESPACE, os.urandom(64))
            ledger.record(owner, digest)
            messages, _, _ = await fresh.retrieve(owner, NAMESPACE, None)
    except CLIENT_ERRORS:
        return False
    return bool(messages)


async def _knows_the_swarms(cluster: Cluster, node: ServiceProcess) -> bool:
    """Whether ``node`` answers ``get_swarm`` (it says ``unavailable`` without a swarm map)."""
    try:
        await cluster.pool.call(node.url, "get_swarm", {"pubkey": PROBES[0]})
    except CLIENT_ERRORS:
        return False
    return True


async def registry_outage(
    cluster: Cluster,
    swarm: SwarmClient,
    ledger: AckLedger,
    *,
    burst: int = 300,
    concurrency: int = 16,
) -> FaultReport:
    stats = LoadStats()
    base = ledger.count
    stopped_at = trio.current_time()
    await cluster.stop(cluster.registry)
    await run_storers(swarm, ledger, stats, concurrency, total=burst)
    fresh_client_during_outage = await client_bootstraps(cluster, ledger)
    restarted = cluster.nodes[-1]
    await cluster.kill(restarted)
    await cluster.start(restarted)
    restarted_serves = await _knows_the_swarms(cluster, restarted)
    await cluster.start(cluster.registry)
    back_at = trio.current_time()
    with trio.fail_after(RECOVERY_TIMEOUT_S):
        await poll_until(partial(client_bootstraps, cluster, ledger))
    bootstrap_s = trio.current_time() - back_at
    result = await _settle(swarm, cluster, ledger)
    return FaultReport(
        "registry stopped, burst while down, restarted",
        ledger.count - base,
        stats.store_failures,
        result.lost,
        round(back_at - stopped_at, 2),
        round(bootstrap_s, 2),
        result.converged,
        {
            "stores_acknowledged_while_down": stats.stores,
            "new_client_bootstraps_while_down": "yes" if fresh_client_during_outage else "no",
            "node_restarted_while_down_serves": "yes" if restarted_serves else "no",
        },
    )


def _healthy(paths: list[OverlayPath], dead: bytes, wanted: int, now_ms: int) -> bool:
    usable = [p for p in paths if p.usable(now_ms)]
    return len(usable) >= wanted and all(dead not in {h.pubkey for h in p.hops} for p in usable)


async def relay_crash(cluster: Cluster, *, hops: int = 3, paths: int = 2) -> FaultReport:
    listing = await cluster.listing()
    contacts = [Contact.decode(r.contact) for r in listing.relays if r.contact]
    async with open_endpoint(
        os.urandom(32),
        cluster.transport.for_overlay(),
        contacts,
        hops=hops,
        paths=paths,
        clock=cluster.clock,
    ) as endpoint:
        with trio.fail_after(RECOVERY_TIMEOUT_S):
            await endpoint.wait_ready(paths)
        dead = endpoint.paths[0].hops[min(1, hops - 1)]
        victim = next(r for r in cluster.relays if r.url == dead.address)
        killed_at = trio.current_time()
        await cluster.kill(victim)
        with trio.fail_after(RECOVERY_TIMEOUT_S):
            while not _healthy(endpoint.paths, dead.pubkey, paths, cluster.clock.now_ms()):
                await endpoint.paths_changed()
            for path in endpoint.paths:
                if path.usable(cluster.clock.now_ms()):
                    await endpoint.ping(path)
        recovery_s = trio.current_time() - killed_at
        failed_paths = endpoint.stats.paths_failed
    await cluster.start(victim)
    return FaultReport(
        f"kill -9 {victim.name} (on a path)",
        0,
        0,
        0,
        round(trio.current_time() - killed_at, 2),
        round(recovery_s, 2),
        True,
        {"paths_failed": failed_paths, "relays": len(contacts), "hops": hops},
    )
