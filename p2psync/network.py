"""The embedded local network: registry, service nodes, file server and open group server
and overlay relays, in this process, on real loopback sockets or on the
in-memory transport.

Each node runs in its own cancel scope, so a test or a demo can stop one (its SQLite file
stays, as after a crash) and start it again on the same address.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from overlay.link import MemoryNetwork, Transport
from overlay.tasks import open_task_nursery

from .clock import Clock
from .device.access import NetworkAccess
from .fileserver.server import FileServer
from .identity import Identity
from .network_defaults import DEFAULT_RELAYS as DEFAULT_RELAYS
from .network_defaults import TRANSPORTS as TRANSPORTS
from .onion.addresses import exit_host
from .onion.service import OnionService
from .opengroup.server import OpenGroupServer
from .rpc import RpcServer
from .services import AnnouncedRelay
from .swarm.admission import Ledger
from .swarm.directory import RegistryDirectory
from .swarm.listing import ANNOUNCEMENT_TTL_MS
from .swarm.node import StorageNode
from .swarm.node_config import NodeConfig
from .swarm.registry import RegistryServer
from .swarm.store import MessageStore
from .websocket import WebSocketTransport

#: How often :meth:`LocalNetwork.pass_idle` reads the listing while services announce
#: again, and how long they may take (past it, a service that does not is a failure).
RELISTED_LOOK_S = 0.1
RELISTED_WITHIN_S = 120.0


async def wait_until(condition: Callable[[], bool], *, poll_s: float = 0.05) -> None:
    """Wait until ``condition`` holds, checking every ``poll_s`` (wrap it in a cancel scope
    for a deadline). For conditions over many components of the embedded network, such
    as "every member holds this message", which no single event signals; under
    ``MockClock`` each check is at a deterministic virtual time."""
    while not condition():  # noqa: ASYNC110
        await trio.sleep(poll_s)


def make_transport(kind: str, *, seed: int = 0, plain: bool = False) -> Transport:
    """``tcp``: WebSocket over loopback sockets, every server serving TLS pinned to its
    announced key (``plain``: plaintext, for benchmarks that compare); ``memory``: the
    emulated network."""
    if kind == "tcp":
        return WebSocketTransport(plain=plain)
    if kind == "memory":
        return MemoryNetwork(seed=seed)
    raise ValueError(f"transport must be one of {TRANSPORTS}, not {kind!r}")


@dataclass
class NodeHandle:
    """One node of the network, restartable on the same identity, file and address."""

    index: int
    identity: Identity
    db_path: Path
    #: The ledger's registration, issued once, so a restart keeps the node's ring position.
    registration: bytes
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
    #: The network's admission authority: it registers every node this network starts.
    ledger: Ledger
    nodes: list[NodeHandle] = field(default_factory=list)
    fileserver_url: str = ""
    opengroup_url: str = ""
    #: The file server's and the open group server's keys by url (onion requests are
    #: sealed to them; service nodes' keys are in the registry).
    server_keys: dict[str, bytes] = field(default_factory=dict)
    _other_servers: dict[str, RpcServer] = field(default_factory=dict)
    #: The registry's RPC server (to observe who reads the listing, as
    #: :meth:`servers` offers the others).
    registry_rpc: RpcServer | None = None
    #: The relays running now (:meth:`stop_relay` takes one out).
    relays: list[AnnouncedRelay] = field(default_factory=list)
    _nursery: trio.Nursery | None = None
    _relay_runs: dict[AnnouncedRelay, tuple[trio.CancelScope, trio.Event]] = field(
        default_factory=dict
    )
    _relays_started: int = 0

    def identity_for(self, role: str) -> Identity:
        """The key a server of this network (``role``: ``node/3``, ``relay/0``, ``ledger``…)
        serves as: derived from the data directory's name on the emulated network, so runs
        repeat; fresh from the OS on real sockets, where anyone who knew the directory's
        name could otherwise sign as the ledger or any server."""
        return _identity_for(self.transport, self.data_dir, role)

    @property
    def overlay_transport(self) -> Transport:
        """Relays and endpoints share the memory network, or use plain TCP on loopback."""
        return self.transport.for_overlay()

    def directory(self, transport: Transport | None = None) -> RegistryDirectory:
        """The registry, read with ``transport`` (a device's own host; default: the
        network's transport)."""
        return RegistryDirectory(
            transport or self.transport, self.registry_url, self.clock, self.ledger.public_key
        )

    def description(self) -> dict[str, Any]:
        """What ``p2psync network up`` writes to ``network.json`` for this network, so a
        device process can join it (:meth:`NetworkAccess.from_file`)."""
        return {
            "ledger": self.ledger.public_key.hex(),
            "registry": self.registry_url,
            "fileserver": self.fileserver_url,
            "opengroup": self.opengroup_url,
            "fileserver_key": self.server_keys[self.fileserver_url].hex(),
            "opengroup_key": self.server_keys[self.opengroup_url].hex(),
            "nodes": [
                {"pubkey": h.identity.ed25519_public.hex(), "url": h.url} for h in self.nodes
            ],
            "relays": [
                {"pubkey": r.identity.ed25519_public.hex(), "address": r.address}
                for r in self.relays
            ],
        }

    def access(self, *, rpc_route: str = "direct", host: str | None = None) -> NetworkAccess:
        """What a device needs to use this network (:func:`p2psync.open_device`); with
        ``rpc_route="onion"`` it reaches every server through overlay paths. ``host``
        gives the device an address of its own: a host name on the in-memory network, a
        loopback address (``127.0.0.N``) on tcp."""
        transport, overlay = self.transport, self.overlay_transport
        if host is not None and isinstance(transport, MemoryNetwork):
            transport = overlay = transport.host(host)
        elif host is not None:  # a client of the network's links, TLS or plaintext
            transport = WebSocketTransport(local_address=host, plain=not transport.pins_keys)
        return NetworkAccess(
            transport,
            self.directory(transport),
            self.clock,
            self.fileserver_url,
            self.opengroup_url,
            overlay,
            rpc_route=rpc_route,
            server_keys=dict(self.server_keys),
            ledger=self.ledger.public_key,
        )

    def servers(self) -> dict[str, RpcServer]:
        """The RPC servers devices talk to, by url: the running service nodes, the file
        server and the open group server (to observe what they see,
        :meth:`RpcServer.observe`)."""
        nodes = {node.url: node.rpc for node in self.running_nodes()}
        return nodes | self._other_servers

    async def add_node(self) -> NodeHandle:
        index = len(self.nodes)
        identity = self.identity_for(f"node/{index}")
        handle = NodeHandle(
            index,
            identity,
            self.data_dir / f"node-{index}.sqlite3",
            self.ledger.register(identity.ed25519_public.hex()).encode(),
            self.transport.listen_address(f"node{index}"),
        )
        self.nodes.append(handle)
        await self.start_node(handle)
        return handle

    async def start_node(self, handle: NodeHandle) -> None:
        assert self._nursery is not None, "the network is not running"
        transport = self.transport.as_host(handle.address)  # so a partition can cut its links
        node = StorageNode(
            handle.identity,
            MessageStore(handle.db_path),
            self.clock,
            transport,
            self.directory(),
            self.node_config,
            handle.registration,
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

    async def pass_idle(self, ms: int) -> None:
        """Let ``ms`` of idle time pass on the network's clock at once
        (:meth:`Clock.skip_idle`) as it passes for a network that keeps up its
        maintenance: the jump wakes every service's timers, so each announces itself
        again at once, and this returns when the registry, every relay and every running
        node list every running node and relay by an announcement made since (relays
        then reach every node as exits, and nodes take onion requests from every relay).
        What runs next meets the network it would after living through the stretch, not
        one whose announcements all lapsed in the same instant. Only for a stretch past an
        announcement's life (after a shorter one, not everyone need announce again: sleep
        through it instead)."""
        if ms <= ANNOUNCEMENT_TTL_MS:
            raise ValueError(f"pass_idle needs a stretch past {ANNOUNCEMENT_TTL_MS} ms, not {ms}")
        self.clock.skip_idle(ms)
        since = self.clock.now_ms()
        everyone = {node.identity.ed25519_public.hex() for node in self.running_nodes()}
        everyone |= {relay.identity.ed25519_public.hex() for relay in self.relays}
        missing: list[str] = []
        with trio.move_on_after(RELISTED_WITHIN_S):
            while True:
                views = {"the registry": await self.directory().fetch()}
                for relay in self.relays:
                    views[f"relay {relay.identity.ed25519_public.hex()[:12]}"] = relay.listing
                for node in self.running_nodes():
                    views[f"node {node.identity.ed25519_public.hex()[:12]}"] = node.snapshot
                missing = [
                    f"{name} ({len(everyone - listing.announced_since(since))} missing)"
                    for name, listing in views.items()
                    if not everyone <= listing.announced_since(since)
                ]
                if not missing:
                    return
                await trio.sleep(RELISTED_LOOK_S)
        raise TimeoutError(
            f"not all listed again {RELISTED_WITHIN_S:g} s after the jump: {', '.join(missing)}"
        )

    def exit_hosts(self) -> frozenset[str]:
        """The hosts the running relays call servers from, as an onion exit: what the
        file server and the open group server share onion requests among (the nodes
        read theirs from the registry's listing)."""
        return frozenset(exit_host(relay.address) for relay in self.relays)

    async def add_relays(self, count: int) -> None:
        """Start ``count`` overlay relays, each listed in the registry, all knowing all."""
        assert self._nursery is not None, "the network is not running"
        overlay = self.overlay_transport
        for _ in range(count):
            index = self._relays_started
            self._relays_started += 1
            identity = self.identity_for(f"relay/{index}")
            # How the relay reaches servers as an onion exit, as its own host (so servers
            # see the relay's host).
            exits = self.transport.as_host(f"relay{index}")
            relay = AnnouncedRelay(
                overlay,
                identity,
                self.clock,
                refresh_s=self.node_config.registry_refresh_s,
                exit_transport=exits,
                exit_servers=(self.fileserver_url, self.opengroup_url),
                registration=self.ledger.register(identity.ed25519_public.hex()).encode(),
            )
            address = overlay.listen_address(f"relay{index}")
            await self._nursery.start(self._run_relay, relay, address)
            self.relays.append(relay)
        for relay in self.relays:
            await relay.refresh()

    async def _run_relay(
        self,
        relay: AnnouncedRelay,
        address: str,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        stopped = trio.Event()
        with trio.CancelScope() as scope:
            self._relay_runs[relay] = (scope, stopped)
            try:
                await relay.serve(address, self.directory(), task_status=task_status)
            finally:
                stopped.set()

    async def stop_relay(self, relay: AnnouncedRelay) -> None:
        """Stop ``relay`` at once, as a crash would: every link it has closes mid-stream
        and it does not come back. Its registry entry stays (a crashed relay does not
        deregister), so endpoints and relays that use it must notice and route around it."""
        scope, stopped = self._relay_runs.pop(relay)
        scope.cancel()
        await stopped.wait()
        self.relays.remove(relay)

    def running_nodes(self) -> list[StorageNode]:
        return [h.node for h in self.nodes if h.node is not None]


@asynccontextmanager
async def open_local_network(
    nodes: int = 6,
    *,
    relays: int = DEFAULT_RELAYS,
    transport: str | Transport = "memory",
    clock: Clock | None = None,
    data_dir: Path | None = None,
    node_config: NodeConfig | None = None,
    seed: int = 0,
) -> AsyncIterator[LocalNetwork]:
    """Registry, ``nodes`` service nodes (every one aware of every other), ``relays``
    overlay relays (0: devices sync through the swarm only), file server and open group
    server, all in this process. Data lives in ``data_dir`` (default: a temporary
    directory removed afterwards, named after ``seed``, so that on the emulated network
    the runs of one seed have the same server keys, and the same swarms for the same
    accounts; ``seed`` also makes a ``transport`` named here repeat its jitter and loss).
    On ``tcp`` every link is TLS pinned to its server's announced key;
    ``make_transport("tcp", plain=True)`` as ``transport`` makes them plaintext."""
    chosen = make_transport(transport, seed=seed) if isinstance(transport, str) else transport
    clock = clock or Clock()
    with tempfile.TemporaryDirectory(prefix="p2psync-") as temporary:
        directory = Path(data_dir) if data_dir is not None else Path(temporary) / f"network-{seed}"
        directory.mkdir(parents=True, exist_ok=True)
        async with open_task_nursery() as nursery:
            ledger = Ledger(_identity_for(chosen, directory, "ledger"))
            network = LocalNetwork(
                chosen, clock, "", directory, node_config or NodeConfig(), ledger, _nursery=nursery
            )
            # Every server serves as its announced key: TLS pinned to it on tcp.
            keys = {
                name: network.identity_for(name) for name in ("registry", "fileserver", "opengroup")
            }
            registry = RegistryServer(
                clock, ledger=ledger.public_key, dial_back=chosen.as_host("registry")
            )
            network.registry_rpc = registry.rpc
            network.registry_url = await nursery.start(
                registry.serve,
                chosen.as_server(keys["registry"].seed),
                chosen.listen_address("registry"),
            )
            fileserver = FileServer(directory / "fileserver.sqlite3", clock)
            network.fileserver_url = await nursery.start(
                fileserver.serve,
                chosen.as_server(keys["fileserver"].seed),
                chosen.listen_address("fileserver"),
            )
            opengroup = OpenGroupServer(
                directory / "opengroup.sqlite3",
                clock,
                network.fileserver_url,
                chosen.as_host("opengroup"),  # what the file server sees it call from
            )
            network.opengroup_url = await nursery.start(
                opengroup.serve,
                chosen.as_server(keys["opengroup"].seed),
                chosen.listen_address("opengroup"),
            )
            for name, server, url in (
                ("fileserver", fileserver.rpc, network.fileserver_url),
                ("opengroup", opengroup.rpc, network.opengroup_url),
            ):
                OnionService(server, keys[name], clock, exits=network.exit_hosts)
                network.server_keys[url] = keys[name].ed25519_public
                network._other_servers[url] = server
            for _ in range(nodes):
                await network.add_node()
            await network.refresh_all()
            await network.add_relays(relays)
            yield network


def _identity_for(transport: Transport, directory: Path, role: str) -> Identity:
    if transport.simulated:
        return Identity.from_label(f"{directory.name}/{role}")
    return Identity(os.urandom(32))
