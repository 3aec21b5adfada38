"""The embedded local network: registry and service nodes (and, as they land, the file
server, open groups and relays) in this process, on real loopback sockets or on the
in-memory transport.

Each node runs in its own cancel scope, so a test or a demo can stop one (its SQLite file
stays, as after a crash) and start it again on the same address.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from overlay.link import MemoryNetwork, Transport
from overlay.tasks import open_task_nursery

from .clock import Clock
from .identity import Identity
from .swarm.node import NodeConfig, StorageNode
from .swarm.registry import RegistryDirectory, RegistryServer
from .swarm.store import MessageStore
from .websocket import WebSocketTransport

TRANSPORTS = ("tcp", "memory")


def make_transport(kind: str, *, seed: int = 0) -> Transport:
    """``tcp``: WebSocket over loopback sockets; ``memory``: the emulated network."""
    if kind == "tcp":
        return WebSocketTransport()
    if kind == "memory":
        return MemoryNetwork(seed=seed)
    raise ValueError(f"transport must be one of {TRANSPORTS}, not {kind!r}")


@dataclass
class NodeHandle:
    """One node of the network, restartable on the same identity, file and address."""

    index: int
    identity: Identity
    db_path: Path
    address: str
    node: StorageNode | None = None
    scope: trio.CancelScope | None = None
    stopped: trio.Event = field(default_factory=trio.Event)

    @property
    def running(self) -> bool:
        return self.node is not None

    @property
    def url(self) -> str:
        return self.address


@dataclass
class LocalNetwork:
    transport: Transport
    clock: Clock
    registry_url: str
    data_dir: Path
    node_config: NodeConfig
    nodes: list[NodeHandle] = field(default_factory=list)
    _nursery: trio.Nursery | None = None

    def directory(self) -> RegistryDirectory:
        return RegistryDirectory(self.transport, self.registry_url, self.clock)

    def _listen_address(self, index: int) -> str:
        if isinstance(self.transport, MemoryNetwork):
            return f"mem:node{index}"
        return "127.0.0.1:0"

    async def add_node(self) -> NodeHandle:
        index = len(self.nodes)
        handle = NodeHandle(
            index,
            Identity.from_label(f"{self.data_dir.name}/node/{index}"),
            self.data_dir / f"node-{index}.sqlite3",
            self._listen_address(index),
        )
        self.nodes.append(handle)
        await self.start_node(handle)
        return handle

    async def start_node(self, handle: NodeHandle) -> None:
        assert self._nursery is not None, "the network is not running"
        node = StorageNode(
            handle.identity,
            MessageStore(handle.db_path),
            self.clock,
            self.transport,
            self.directory(),
            self.node_config,
        )

        async def run(*, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
            with trio.CancelScope() as scope:
                handle.scope = scope
                handle.stopped = trio.Event()
                try:
                    await node.serve(handle.address, task_status=task_status)
                finally:
                    node.store.close()
                    handle.node = None
                    handle.stopped.set()

        handle.address = await self._nursery.start(run)
        handle.node = node

    async def stop_node(self, handle: NodeHandle) -> None:
        """Stop a node at once, as a crash would (what it committed stays on disk)."""
        if handle.scope is not None and handle.node is not None:
            handle.scope.cancel()
            await handle.stopped.wait()

    async def refresh_all(self) -> None:
        """Make every running node re-read the registry now (instead of at its next tick)."""
        for handle in self.nodes:
            if handle.node is not None:
                await handle.node.refresh()

    def running_nodes(self) -> list[StorageNode]:
        return [h.node for h in self.nodes if h.node is not None]


@asynccontextmanager
async def open_storage_network(
    nodes: int = 6,
    *,
    transport: str | Transport = "memory",
    clock: Clock | None = None,
    data_dir: Path | None = None,
    node_config: NodeConfig | None = None,
    seed: int = 0,
) -> AsyncIterator[LocalNetwork]:
    """Registry plus ``nodes`` service nodes, every node aware of every other."""
    chosen = make_transport(transport, seed=seed) if isinstance(transport, str) else transport
    clock = clock or Clock()
    with tempfile.TemporaryDirectory(prefix="p2psync-") as temporary:
        directory = Path(data_dir) if data_dir is not None else Path(temporary)
        directory.mkdir(parents=True, exist_ok=True)
        registry = RegistryServer(clock)
        async with open_task_nursery() as nursery:
            registry_address = (
                "mem:registry" if isinstance(chosen, MemoryNetwork) else "127.0.0.1:0"
            )
            registry_url = await nursery.start(registry.serve, chosen, registry_address)
            network = LocalNetwork(
                chosen,
                clock,
                registry_url,
                directory,
                node_config or NodeConfig(),
                _nursery=nursery,
            )
            for _ in range(nodes):
                await network.add_node()
            await network.refresh_all()
            yield network
