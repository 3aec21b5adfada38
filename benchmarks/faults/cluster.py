"""A multi-process local network whose every process the fault driver owns.

The same processes as ``p2psync network up`` (registry, service nodes, overlay relays,
each ``python -m p2psync ...`` with its own data directory), but started from here so a
fault is a method call: :meth:`Cluster.kill` (``kill -9``), :meth:`Cluster.stop` and
:meth:`Cluster.start` (same directory, same port). Every child belongs to the nursery of
:func:`open_cluster`, so leaving the ``async with`` (or Ctrl-C) ends them all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from overlay.tasks import open_task_nursery
from p2psync.clock import Clock
from p2psync.errors import ConnectionLost, DecodeError, RpcError
from p2psync.identity import Identity, session_id_key
from p2psync.rpc import RpcPool, open_rpc_pool
from p2psync.services import RELAY_KEY_FILE, admit_node, open_ledger
from p2psync.swarm.directory import RegistryDirectory
from p2psync.swarm.listing import Snapshot
from p2psync.swarm.ring import NodeInfo, SwarmMap
from p2psync.websocket import WebSocketTransport
from p2psync.wire import Fields

from .polling import poll_until
from .process import ServiceProcess

#: How long a freshly started network gets until every node agrees on the swarms (a node
#: learns of later ones when they first contact it, a few seconds after they start).
SETTLE_TIMEOUT_S = 60.0
#: Session ids whose swarms every node is asked about when checking that views agree.
PROBES = [Identity.from_label(f"p2psync-faults/probe/{i}").session_id for i in range(4)]


@dataclass
class Cluster:
    """The running network. Valid only inside :func:`open_cluster`."""

    data_dir: Path
    transport: WebSocketTransport
    clock: Clock
    registry: ServiceProcess
    nodes: list[ServiceProcess]
    relays: list[ServiceProcess]
    pool: RpcPool
    #: The public key of the ledger that admitted the nodes.
    ledger: bytes
    _nursery: trio.Nursery

    @property
    def registry_url(self) -> str:
        return self.registry.url

    def directory(self) -> RegistryDirectory:
        """How a client that knows the network description reads it: the registry, and
        the nodes when the registry is down."""
        seeds = tuple(node.url for node in self.nodes)
        return RegistryDirectory(
            self.transport, self.registry_url, self.clock, self.ledger, seeds=seeds
        )

    def services(self) -> list[ServiceProcess]:
        return [self.registry, *self.nodes, *self.relays]

    async def start(self, service: ServiceProcess) -> None:
        await service.start(self._nursery)

    async def kill(self, service: ServiceProcess) -> None:
        await service.kill()

    async def stop(self, service: ServiceProcess) -> None:
        await service.stop()

    async def listing(self) -> Snapshot:
        return await self.directory().fetch()

    async def swarm_map(self) -> SwarmMap:
        """The swarms as the registry's listing implies them (what every party computes)."""
        return SwarmMap.build((await self.listing()).nodes)

    def node_info(self, service: ServiceProcess, swarms: SwarmMap) -> NodeInfo:
        return next(n for n in swarms.all_nodes() if n.url == service.url)

    async def wait_settled(self) -> None:
        """Wait until the registry lists every node and relay and every node places itself
        and the probe ids in the swarms the listing implies: from then on a store reaches
        every member of its swarm."""
        with trio.fail_after(SETTLE_TIMEOUT_S):
            await poll_until(self._settled)

    async def _settled(self) -> bool:
        try:
            listing = await self.listing()
            if len(listing.nodes) < len(self.nodes) or len(listing.relays) < len(self.relays):
                return False
            expected = SwarmMap.build(listing.nodes)
            for node in listing.nodes:
                info = Fields(await self.pool.call(node.url, "info", {}), "info")
                if info.uint("swarm") != expected.swarm_of_node(node.pubkey):
                    return False
                for probe in PROBES:
                    view = Fields(
                        await self.pool.call(node.url, "get_swarm", {"pubkey": probe}), "view"
                    )
                    members = sorted(
                        Fields(m, "node").text("pubkey", max_len=64)
                        for m in view.items("nodes", max_len=64)
                    )
                    wanted = expected.nodes_for_key(session_id_key(probe))
                    if members != sorted(n.pubkey for n in wanted):
                        return False
        except (OSError, ConnectionLost, RpcError, DecodeError):
            return False
        return True


@asynccontextmanager
async def open_cluster(
    data_dir: Path,
    *,
    nodes: int = 3,
    relays: int = 0,
    log_level: str = "warning",
    node_args: Sequence[str] = (),
    plain_links: bool = False,
) -> AsyncIterator[Cluster]:
    """Registry, ``nodes`` service nodes and ``relays`` relays as child processes, settled
    (see :meth:`Cluster.wait_settled`) before the body runs. Each child logs at
    ``log_level`` to ``DIR/<name>.log``; with ``plain_links`` every one serves plaintext
    (a registry serving TLS lists only pinned urls).

    Nodes start side by side (they find each other within seconds). A relay reads the
    relay list only when it starts and then every minute, and relays started side by
    side miss each other, so once all are listed each is restarted: from then on every
    relay can forward to every other."""
    if nodes < 1:
        raise ValueError("a cluster needs at least one service node")
    transport = WebSocketTransport(plain=plain_links)
    ledger = open_ledger(data_dir / "ledger")
    ledger_args = ["--ledger", ledger.public_key.hex()]
    for i in range(nodes):
        admit_node(ledger, data_dir / f"node-{i}")
    for i in range(relays):
        admit_node(ledger, data_dir / f"relay-{i}", RELAY_KEY_FILE)
    async with open_rpc_pool(transport) as pool, open_task_nursery() as nursery:
        log_args = ["--log-level", log_level]
        links = ["--plain-links"] if plain_links else []
        registry = ServiceProcess(
            "registry", [*log_args, "registry", *links, *ledger_args], data_dir / "registry"
        )
        await registry.start(nursery)
        cluster = Cluster(
            data_dir,
            transport,
            Clock(),
            registry,
            [
                ServiceProcess(
                    f"node-{i}",
                    [
                        *log_args,
                        "node",
                        *links,
                        "--registry",
                        registry.url,
                        *ledger_args,
                        *node_args,
                    ],
                    data_dir / f"node-{i}",
                )
                for i in range(nodes)
            ],
            [
                ServiceProcess(
                    f"relay-{i}",
                    [*log_args, "relay", *links, "--registry", registry.url, *ledger_args],
                    data_dir / f"relay-{i}",
                )
                for i in range(relays)
            ],
            pool,
            ledger.public_key,
            nursery,
        )
        await _start_all(cluster, [*cluster.nodes, *cluster.relays])
        if len(cluster.relays) > 1:
            for relay in cluster.relays:
                await relay.stop()
            await _start_all(cluster, cluster.relays)
        await cluster.wait_settled()
        yield cluster


async def _start_all(cluster: Cluster, services: Sequence[ServiceProcess]) -> None:
    async with trio.open_nursery() as starting:
        for service in services:
            starting.start_soon(cluster.start, service)
