"""``p2psync network up``: a local network as separate processes, until Ctrl-C.

Children are this same program (``python -m p2psync registry|fileserver|opengroup|node``)
with their own data directories under ``DIR``. The network's ledger lives in
``DIR/ledger`` and admits each node before it first starts (its registration is kept in the
node's directory, so a restart keeps its place); every process is told the ledger's key.
Each prints ``ready <url>`` once it
listens; the launcher then checks that every one answers an RPC, writes
``DIR/network.json`` and prints ``ready DIR/network.json``. A child's log goes to
``DIR/<name>.log``. Cancelling the launcher (Ctrl-C) terminates every child, and waits
for it, before returning. With ``--hosts`` each child runs on a host of its own
(:mod:`p2psync.hosts`), removed after the children stop.

:func:`run_service` is the one way a service child is started, here and by the fault
drivers (``benchmarks/faults/process.py``), which restart one on the same port.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

from overlay.link import Transport

from .clock import Clock
from .errors import P2PSyncError
from .hosts import LOOPBACK, Host, open_device_host, open_hosts
from .process_lock import InUse, ProcessLock
from .rpc import open_rpc
from .service_users import (
    ServiceUserError,
    end_every_process_of,
    hand_over,
    open_log,
    refuse_foreign_folder,
    refuse_open_folder,
    service_uid,
)
from .services import (
    REGISTRY_FILE,
    RELAY_KEY_FILE,
    admit_node,
    open_ledger,
    server_public_key,
)
from .swarm.directory import read_listing
from .swarm.listing import Snapshot
from .swarm.ring import NodeInfo, SwarmMap
from .urls import bare_address
from .whole_file import read_small_file, replace_file

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0


class StartError(P2PSyncError):
    """A process of the network did not come up: the message names it."""


STOP_GRACE_S = 5.0
#: Held in a network's directory while ``network up`` runs there.
NETWORK_LOCK = "network.lock"
#: The port each service listened on, kept in a network's directory for the next run.
PORTS_FILE = "ports.json"
VIEW_POLL_S = 0.5


@dataclass(frozen=True)
class Service:
    """One service child (``python -m p2psync ARGS --data DIR``): what it runs, on which
    host, and where its data and its log (``DIR/../<name>.log``) live. On a host it runs
    as ``uid``, its folder's own (:mod:`.service_users`), which ``DIR`` is handed to."""

    name: str
    args: tuple[str, ...]
    data_dir: Path
    host: Host = LOOPBACK
    uid: int | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.name}.log"

    def command(self, port: int = 0) -> list[str]:
        return self.host.wrap_service(
            [
                sys.executable,
                # Its working folder is not on its import path (the launcher's may be one
                # another user, or service, can write), and it can make no namespace.
                *(("-m",) if self.uid is None else ("-P", "-m", "p2psync.confine")),
                "p2psync",
                *self.args,
                "--data",
                str(self.data_dir.absolute()),  # it may start elsewhere (in /, on a host)
                "--listen",
                self.host.listen(port),
                "--exit-with-stdin",
            ],
            self.uid,
        )


@dataclass(frozen=True)
class Running:
    """An incarnation of a service that said it was ready, at ``url``."""

    process: trio.Process
    url: str


async def stop_child(process: trio.Process) -> None:
    """How a child is stopped (and a cancelled one): SIGTERM, then SIGKILL if it is still
    there after ``STOP_GRACE_S``."""
    process.terminate()
    with trio.move_on_after(STOP_GRACE_S):
        await process.wait()
    process.kill()


async def run_service(
    service: Service, port: int = 0, *, task_status: trio.TaskStatus[Running]
) -> int:
    """Run one incarnation of ``service`` on ``port`` (0: any) until it exits, returning
    its exit code; ``task_status.started(Running)`` once it prints ``ready <url>``.

    Started with ``nursery.start``, the child belongs to that nursery: cancelling it
    terminates the child and waits for it. The child's stdin stays open as long as this
    process lives (see services.exit_when_stdin_closes), so no child outlives its
    launcher even if the launcher is killed outright. A service on a host runs in a PID
    namespace that ends with the launcher, everything the service started included, even
    if that service ignores its stdin (:mod:`.contain`); once
    stopped it leaves no process of its uid behind
    (:func:`~.service_users.end_every_process_of`), and before it starts, none is left
    from an older run."""
    service.data_dir.mkdir(parents=True, exist_ok=True)
    if service.uid is not None:
        # Whatever still runs as its uid (an earlier run's, or one a person started): gone
        # before the folder is handed over and the service starts (one of them could
        # trace it before it forbids itself namespaces).
        left = await trio.to_thread.run_sync(end_every_process_of, service.uid)
        if left:
            raise StartError(
                f"{service.name}: processes of its uid {service.uid} could not be ended: "
                + " ".join(map(str, left))
            )
        hand_over(service.data_dir, service.uid)
    try:
        async with trio.open_nursery() as nursery:
            with open_log(service.log_path) as log:
                process: trio.Process = await nursery.start(
                    partial(
                        trio.run_process,
                        service.command(port),
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=log,
                        cwd=None if service.uid is None else "/",
                        # A service of its own uid has no terminal of root's to take over.
                        start_new_session=service.uid is not None,
                        check=False,
                        deliver_cancel=stop_child,
                    )
                )
            url = ""
            with trio.move_on_after(START_TIMEOUT_S):
                url = await _read_ready_line(service, process)
            if not url:
                raise StartError(
                    f"{service.name} did not say it was ready within {START_TIMEOUT_S:g} s "
                    f"(see {service.log_path})"
                )
            task_status.started(Running(process, url))
        return await process.wait()
    finally:
        if service.uid is not None:
            with trio.CancelScope(shield=True):
                try:
                    left = await trio.to_thread.run_sync(end_every_process_of, service.uid)
                except ServiceUserError as error:  # the next start refuses, saying so
                    logger.warning(
                        "%s stopped; its leftovers were not ended: %s", service.name, error
                    )
                    left = []
            if left:
                logger.warning(
                    "%s stopped, but processes of its uid %d could not be ended: %s",
                    service.name,
                    service.uid,
                    " ".join(map(str, left)),
                )


async def _read_ready_line(service: Service, process: trio.Process) -> str:
    assert process.stdout is not None
    buffer = b""
    while b"\n" not in buffer:
        chunk = await process.stdout.receive_some(4096)
        if not chunk:
            raise StartError(f"{service.name} exited before it was ready (see {service.log_path})")
        buffer += chunk
    line = buffer.split(b"\n", 1)[0].decode(errors="replace").strip()
    if not line.startswith("ready "):
        raise StartError(f"{service.name} said {line!r} instead of 'ready <url>'")
    return line.removeprefix("ready ")


class Launcher:
    """Starts children in its nursery (see :func:`run_service`: cancelling the nursery
    stops every one), each on the host ``hosts`` gives its name, and on the port it had
    the last time (``ports``, by name), so that what devices keep of the network's
    addresses still leads somewhere after a restart; one whose port another process took
    meanwhile starts on a new one. :attr:`ports` holds every child's port once up."""

    def __init__(
        self,
        data_dir: Path,
        nursery: trio.Nursery,
        hosts: Mapping[str, Host] | None = None,
        ports: Mapping[str, int] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self._nursery = nursery
        self._hosts = hosts or {}
        self._kept_ports = dict(ports or {})
        self.ports: dict[str, int] = {}

    def data_dir_of(self, name: str) -> Path:
        """The data directory of child ``name``, made if new. One a service of hosts had
        is not for a child run as this process (on loopback), nor anything in it read
        (:func:`~.service_users.refuse_foreign_folder`)."""
        path = self.data_dir / name
        path.mkdir(parents=True, exist_ok=True)
        if self._hosts.get(name, LOOPBACK).namespace is None:
            refuse_foreign_folder(path)
        return path

    async def start(self, name: str, *args: str) -> str:
        host, folder = self._hosts.get(name, LOOPBACK), self.data_dir_of(name)
        uid = None if host.namespace is None else await trio.to_thread.run_sync(service_uid, folder)
        service = Service(name, args, folder, host, uid)
        port = self._kept_ports.get(name)
        running = None if port is None else await self._start_on_kept_port(service, port)
        if running is None:
            running = await self._nursery.start(self._run, service, 0)
        self.ports[name] = port_of(running.url)
        return running.url

    async def _start_on_kept_port(self, service: Service, port: int) -> Running | None:
        """``service`` started on the port it had the last time, or None if it did not
        come up there (another process may have taken the port meanwhile)."""
        try:
            running: Running = await self._nursery.start(self._run, service, port)
            return running
        except* StartError:
            logger.warning("%s did not start on its port %d: on another now", service.name, port)
        return None

    async def _run(
        self, service: Service, port: int, *, task_status: trio.TaskStatus[Running]
    ) -> None:
        code = await run_service(service, port, task_status=task_status)
        logger.warning("%s exited with code %s (log: %s)", service.name, code, service.log_path)

    async def start_many(
        self, names: Sequence[str], args: Sequence[str], on_ready: Callable[[str, str], None]
    ) -> None:
        """Start ``names`` side by side, each with ``args``; ``on_ready(name, url)`` as each
        comes up. Nodes need no order: each announces itself, and one contacted by a node
        it has not listed yet re-reads the registry."""

        async def one(name: str) -> None:
            on_ready(name, await self.start(name, *args))

        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(one, name)


async def network_up(
    transport: Transport,
    data_dir: Path,
    nodes: int,
    relays: int,
    *,
    separate_hosts: bool = False,
    plain_links: bool = False,
    on_progress: Callable[[str], None] = lambda message: None,
    task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the network until cancelled; ``task_status.started(path of network.json)``.
    With ``separate_hosts`` every process runs on a host of its own (see
    :mod:`p2psync.hosts`), removed once every process has stopped. Every process serves
    TLS pinned to its key and announces its url with the key (``wss://…/<key>``,
    ``host:port#<key>``), unless ``plain_links``."""
    if nodes < 1:
        raise ValueError("a network needs at least one service node")
    refuse_open_folder(data_dir)
    with _network_lock(data_dir):
        ledger = open_ledger(data_dir / "ledger")
        ledger_args = ("--ledger", ledger.public_key.hex())
        link_args = ("--plain-links",) if plain_links else ()
        path = data_dir / "network.json"
        path.unlink(missing_ok=True)  # a description of a network that is gone misleads
        ports_path = data_dir / PORTS_FILE
        node_names = [f"node-{index}" for index in range(nodes)]
        relay_names = [f"relay-{index}" for index in range(relays)]
        names = ["registry", "fileserver", "opengroup", *node_names, *relay_names]
        async with _hosts(data_dir, names, separate_hosts) as hosts, trio.open_nursery() as nursery:
            launcher = Launcher(data_dir, nursery, hosts, read_ports(ports_path))
            try:
                # Every process of this network starts now and announces itself; a listing
                # kept from an earlier run names nodes that may never come back, and the
                # readiness check below would wait for them.
                (launcher.data_dir_of("registry") / REGISTRY_FILE).unlink(missing_ok=True)
                for name in node_names:
                    admit_node(ledger, launcher.data_dir_of(name))
                for name in relay_names:
                    admit_node(ledger, launcher.data_dir_of(name), RELAY_KEY_FILE)
                started: dict[str, str] = {}

                def ready(name: str, url: str) -> None:
                    started[url] = name
                    on_progress(f"{name} {url}")

                # Each process starts as soon as the urls it is given are known: the registry
                # first; the nodes, and beside them the file server and the open group (which
                # needs the file server's; both read the relays from the registry) once it is
                # up; the relays (whose exits reach the two servers) once they are.
                servers: dict[str, str] = {}
                servers_up = trio.Event()

                async def start_servers(registry: str) -> None:
                    listing = ("--registry", registry)
                    servers["fileserver"] = await launcher.start(
                        "fileserver", "fileserver", *listing, *link_args
                    )
                    on_progress(f"file server {servers['fileserver']}")
                    servers["opengroup"] = await launcher.start(
                        "opengroup",
                        "opengroup",
                        "--fileserver",
                        servers["fileserver"],
                        *listing,
                        *link_args,
                    )
                    on_progress(f"open group {servers['opengroup']}")
                    servers_up.set()

                async with trio.open_nursery() as starting:
                    registry_args = ("registry", *ledger_args, *link_args)
                    registry = await launcher.start("registry", *registry_args)
                    on_progress(f"registry {registry}")
                    starting.start_soon(start_servers, registry)
                    node_args = ("node", "--registry", registry, *ledger_args, *link_args)
                    starting.start_soon(launcher.start_many, node_names, node_args, ready)
                    await servers_up.wait()
                    # Exits reach the listed nodes and these (network.json names them too).
                    exits = (
                        "--exit-server",
                        servers["fileserver"],
                        "--exit-server",
                        servers["opengroup"],
                    )
                    relay_args = ("relay", "--registry", registry, *exits, *ledger_args, *link_args)
                    starting.start_soon(launcher.start_many, relay_names, relay_args, ready)
                fileserver, opengroup = servers["fileserver"], servers["opengroup"]
                keys = {
                    name: server_public_key(launcher.data_dir_of(name))
                    for name in ("fileserver", "opengroup")
                }
                description = await _describe(
                    transport, registry, fileserver, opengroup, started, ledger.public_key, keys
                )
                replace_file(ports_path, json.dumps(launcher.ports, indent=2).encode() + b"\n")
                path.write_text(json.dumps(description, indent=2) + "\n")
                task_status.started(path)
                await trio.sleep_forever()
            finally:
                path.unlink(missing_ok=True)
                nursery.cancel_scope.cancel()


def port_of(url: str) -> int:
    """The port of a url a service reports (:func:`~.urls.bare_address`), or
    :class:`StartError`: a service that says it is ready where no port is, is not."""
    try:
        port = int(bare_address(url).rpartition(":")[2])
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise StartError(f"a service said it was ready at {url!r}, which names no port")
    return port


def read_ports(path: Path) -> dict[str, int]:
    """The ports each service of the network had the last time (none if the file is
    missing, unreadable or not what ``network up`` wrote: they are a preference, never
    needed)."""
    try:
        data = read_small_file(path, 1 << 16)
        ports = json.loads(data) if data is not None else {}
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(ports, dict):
        return {}
    return {
        str(name): port for name, port in ports.items() if type(port) is int and 0 < port < 65536
    }


def _network_lock(data_dir: Path) -> ProcessLock:
    """One network at a time on a directory: a second would start services on the first's
    keys and stores, then overwrite its ``network.json`` and delete it on the way out."""
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        return ProcessLock(data_dir / NETWORK_LOCK)
    except InUse:
        raise InUse(f"a network is already running in {data_dir}; one at a time") from None


def _hosts(
    data_dir: Path, names: Sequence[str], separate: bool
) -> AbstractAsyncContextManager[Mapping[str, Host]]:
    return open_hosts(data_dir, names) if separate else _on_loopback()


@asynccontextmanager
async def _on_loopback() -> AsyncIterator[Mapping[str, Host]]:
    yield {}


async def run_in_host(data_dir: Path, name: str, command: Sequence[str]) -> int:
    """Run ``command`` on a host of its own, ``name``, added to the network of hosts
    running on ``data_dir``; its exit code (128 + N if signal N ended it). Cancelled,
    the command is stopped as a service child is, then the host is removed."""
    async with open_device_host(data_dir, name) as host:
        logger.info("host %s at %s", name, host.address)
        result = await trio.run_process(host.wrap(command), check=False, deliver_cancel=stop_child)
    return result.returncode if result.returncode >= 0 else 128 - result.returncode


async def _until_views_agree(
    transport: Transport, nodes: Sequence[NodeInfo], names: Mapping[str, str]
) -> None:
    """Wait until every node answers and places itself in the swarm the registry listing
    implies (a node re-reads the registry within seconds of a start or of a change it
    saw), and only then is the network ready to keep every message on every member.
    Gives up after :data:`START_TIMEOUT_S`, naming the nodes that did not agree."""
    expected = SwarmMap.build(nodes)
    disagreeing = [names.get(node.url, node.url) for node in nodes]
    with trio.move_on_after(START_TIMEOUT_S):
        while disagreeing:
            disagreeing = []
            for node in nodes:
                try:
                    async with open_rpc(transport, node.url) as client:
                        info = await client.call("info", {})
                except (OSError, P2PSyncError):
                    info = None
                swarm = info.get("swarm") if isinstance(info, dict) else None
                if swarm != expected.swarm_of_node(node.pubkey):
                    disagreeing.append(names.get(node.url, node.url))
            if disagreeing:
                await trio.sleep(VIEW_POLL_S)
    if disagreeing:
        raise StartError(
            f"{', '.join(disagreeing)} did not place itself in the swarms of the registry's "
            f"listing within {START_TIMEOUT_S:g} s (see its log)"
        )


async def _describe(
    transport: Transport,
    registry: str,
    fileserver: str,
    opengroup: str,
    started: Mapping[str, str],
    ledger: bytes,
    server_keys: Mapping[str, bytes],
) -> dict[str, Any]:
    """Ask every process to answer, and the registry for the nodes it lists (a node
    announces itself before it prints ``ready``, so all are listed by now). ``started``
    maps each node's and relay's url to its name; ``server_keys`` holds the file server's
    and the open group server's keys, which devices seal onion requests to."""
    try:
        announcements = await read_listing(transport, registry)
    except (OSError, P2PSyncError) as exc:
        raise StartError(f"the registry ({registry}) does not answer: {exc}") from None
    listing = Snapshot.from_announcements(
        {"announcements": announcements}, Clock().now_ms(), ledger=ledger
    )
    listed = {node.url for node in listing.nodes} | {relay.url for relay in listing.relays}
    unlisted = sorted(name for url, name in started.items() if url not in listed)
    if unlisted:
        raise StartError(f"the registry does not list {', '.join(unlisted)}")
    await _until_views_agree(transport, listing.nodes, started)
    for name, url, method, params in (
        ("the open group server", opengroup, "list_rooms", {}),
        ("the file server", fileserver, "get_mappings", {"session_id": "05" + "00" * 32}),
    ):
        try:
            with trio.fail_after(START_TIMEOUT_S):
                async with open_rpc(transport, url) as client:
                    await client.call(method, params)
        except (OSError, P2PSyncError, trio.TooSlowError) as exc:
            raise StartError(f"{name} ({url}) does not answer: {exc!r}") from None
    return {
        "ledger": ledger.hex(),
        "registry": registry,
        "fileserver": fileserver,
        "opengroup": opengroup,
        **{f"{name}_key": key.hex() for name, key in server_keys.items()},
        "nodes": [node.to_wire() for node in listing.nodes],
        "relays": [{"pubkey": r.pubkey, "address": r.url} for r in listing.relays],
    }
