"""Each server as a process: what ``p2psync node``, ``registry``, ``fileserver`` and
``opengroup`` run until Ctrl-C.

A service keeps everything (its key, its SQLite file, a node's ledger registration) in
its data directory, which the caller creates, so that a restart on the same directory is
the same service with the same data. Once it listens it prints one line, ``ready <url>``,
which is what ``p2psync network up`` waits for.

A network with admission has a ledger (:mod:`p2psync.swarm.admission`): its key and height
live in a directory of their own (:func:`open_ledger`), and :func:`admit_node` writes a
node's registration into the node's data directory before the node first starts.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import trio

from overlay import Contact, KeyPair, make_contact, serve_relay
from overlay.addresses import pinned_address, split_host_port
from overlay.link import Transport
from overlay.relay import Exit
from overlay.relay_core import RelayCore, SeenCell

from .clock import Clock
from .errors import DecodeError, P2PSyncError
from .fileserver.server import FileServer
from .identity import SEED_BYTES, Identity
from .onion.addresses import ExitServers
from .onion.exit import open_rpc_exit
from .onion.service import ListedExits, OnionService
from .opengroup.posts import check_room_name
from .opengroup.server import OpenGroupServer
from .opengroup.store import OpenGroupStore
from .rpc import RpcServer
from .swarm.admission import MAX_REGISTRATION_BYTES, Ledger, Registration, checked_registration
from .swarm.constants import ANNOUNCE_INTERVAL_S
from .swarm.directory import Directory, FileDirectory, Listing, RegistryDirectory
from .swarm.listing import IpRange, Snapshot
from .swarm.node import StorageNode
from .swarm.node_config import NodeConfig
from .swarm.registry import RegistryServer
from .swarm.settling import announce_due, listed_members, next_listing_read_s
from .swarm.store import MessageStore
from .urls import server_url
from .whole_file import create_file, read_small_file

logger = logging.getLogger(__name__)


async def exit_when_stdin_closes(service: Callable[..., Awaitable[None]], *args: Any) -> None:
    """Run ``service`` until it ends or this process's stdin reaches EOF.

    ``network up`` holds each child's stdin open, so children end with their launcher
    even when it is killed outright and cannot stop them itself."""
    async with trio.open_nursery() as nursery:

        async def watch_stdin() -> None:
            async with trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())) as stdin:
                while await stdin.receive_some(4096):
                    pass
            nursery.cancel_scope.cancel()

        async def run() -> None:
            await service(*args)
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch_stdin)
        nursery.start_soon(run)


def load_or_create_identity(path: Path) -> Identity:
    """The service's key, created on first start (readable by the owner only). Read and
    made without following a link at its name: the launcher, as root, reads it in a
    folder the service may write (:func:`~.whole_file.read_small_file`)."""
    seed = read_small_file(path, SEED_BYTES)
    if seed is not None:
        if len(seed) != SEED_BYTES:
            raise ValueError(f"{path} is not a {SEED_BYTES}-byte key file")
        return Identity(seed)
    identity = Identity.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    create_file(path, identity.seed, 0o600)
    return identity


LISTING_FILE = "listing.cbor"
NODE_KEY_FILE = "node.key"
REGISTRATION_FILE = "registration.cbor"
REGISTRY_FILE = "registry.json"


class NotAdmittedError(P2PSyncError):
    """A node was asked to join a network with a ledger but holds no registration."""


def open_ledger(directory: Path) -> Ledger:
    """The ledger kept in ``directory`` (``ledger.key``, ``ledger.json``), made there the
    first time."""
    directory.mkdir(parents=True, exist_ok=True)
    return Ledger.open(load_or_create_identity(directory / "ledger.key"), directory / "ledger.json")


def admit_node(ledger: Ledger, data_dir: Path, key_file: str = "") -> Registration:
    """The registration of the node (or, with ``key_file`` :data:`RELAY_KEY_FILE`, the
    relay) kept in ``data_dir`` (its key made if new), issued by ``ledger`` the first
    time and kept there, so a node keeps its ring position."""
    path = data_dir / REGISTRATION_FILE
    kept = read_small_file(path, MAX_REGISTRATION_BYTES)
    if kept is not None:
        return Registration.decode(kept)
    identity = load_or_create_identity(data_dir / (key_file or NODE_KEY_FILE))
    registration = ledger.register(identity.ed25519_public.hex())
    create_file(path, registration.encode(), 0o644)
    return registration


def parse_ledger_key(text: str) -> bytes:
    """``--ledger HEX``: the 32-byte Ed25519 public key of a network's ledger."""
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ValueError("--ledger takes the ledger's public key as 64 hex digits")
    return key


def announce_ready(url: str) -> None:
    print(f"ready {url}", flush=True)
    sys.stdout.flush()


def make_directory(
    transport: Transport,
    clock: Clock,
    registry: str | None,
    static: Path | None,
    data_dir: Path | None = None,
    ledger: bytes | None = None,
) -> Directory:
    """A static file, or the registry with the last listing saved in ``data_dir`` (so a
    service restarted while the registry is down still knows the network), listing only
    nodes admitted by ``ledger`` (``None``: a network without admission)."""
    if (registry is None) == (static is None):
        raise ValueError("give exactly one of --registry URL or --static FILE")
    if static is not None:
        return FileDirectory(static)
    assert registry is not None
    cache = None if data_dir is None else data_dir / LISTING_FILE
    return RegistryDirectory(transport, registry, clock, ledger, cache_path=cache)


def node_registration(data_dir: Path, ledger: bytes | None, key_file: str = "") -> bytes:
    """The registration a node (a relay, with its ``key_file``) announces: the one in its
    data directory, checked against ``ledger``; a network with a ledger does not list
    one without, so starting it is an error."""
    path = data_dir / REGISTRATION_FILE
    data = read_small_file(path, MAX_REGISTRATION_BYTES)
    if data is None:
        if ledger is not None:
            raise NotAdmittedError(
                f"no registration in {path}: the ledger must admit it first"
                " (p2psync ledger register)"
            )
        return b""
    if ledger is not None:
        identity = load_or_create_identity(data_dir / (key_file or NODE_KEY_FILE))
        try:
            checked_registration(data, ledger, identity.ed25519_public.hex())
        except DecodeError as exc:
            raise NotAdmittedError(f"{path}: {exc}") from None
    return data


async def run_node(
    transport: Transport,
    data_dir: Path,
    listen: str,
    directory: Directory,
    clock: Clock,
    registration: bytes = b"",
    config: NodeConfig | None = None,
) -> None:
    identity = load_or_create_identity(data_dir / NODE_KEY_FILE)
    store = MessageStore(data_dir / "messages.sqlite3")
    try:
        node = StorageNode(identity, store, clock, transport, directory, config, registration)
        async with trio.open_nursery() as nursery:
            announce_ready(await nursery.start(node.serve, listen))
    finally:
        store.close()


#: The registry's key: its links are TLS pinned to it (the url it prints carries it).
REGISTRY_KEY_FILE = "registry.key"


async def run_registry(
    transport: Transport,
    data_dir: Path,
    listen: str,
    clock: Clock,
    ledger: bytes | None,
    refused: Sequence[IpRange] = (),
) -> None:
    if ledger is None:
        logger.warning("no --ledger: this registry lists every node that announces itself")
    server = RegistryServer(
        clock, data_dir / REGISTRY_FILE, ledger=ledger, dial_back=transport, refused=refused
    )
    serving = transport.as_server(load_or_create_identity(data_dir / REGISTRY_KEY_FILE).seed)
    async with trio.open_nursery() as nursery:
        announce_ready(await nursery.start(server.serve, serving, listen))


#: A file server's or open group server's key: devices seal onion requests to it, its
#: links are TLS pinned to it, and ``network up`` publishes it in ``network.json``.
SERVER_KEY_FILE = "server.key"


def server_public_key(data_dir: Path) -> bytes:
    """The public key of the server kept in ``data_dir`` (made there if new)."""
    return load_or_create_identity(data_dir / SERVER_KEY_FILE).ed25519_public


async def run_fileserver(
    transport: Transport, data_dir: Path, listen: str, clock: Clock, listing: Listing | None
) -> None:
    server = FileServer(data_dir / "fileserver.sqlite3", clock)
    await _serve_with_onion(server.rpc, server.serve, transport, data_dir, listen, clock, listing)


OPENGROUP_FILE = "opengroup.sqlite3"


async def run_opengroup(
    transport: Transport,
    data_dir: Path,
    listen: str,
    fileserver: str | None,
    clock: Clock,
    listing: Listing | None,
    room_creators: list[str] | None = None,
) -> None:
    server = OpenGroupServer(
        data_dir / OPENGROUP_FILE, clock, fileserver, transport, room_creators=room_creators
    )
    await _serve_with_onion(server.rpc, server.serve, transport, data_dir, listen, clock, listing)


def remove_room(data_dir: Path, room: str) -> int:
    """Remove ``room`` and its posts from the open group kept in ``data_dir`` (a server
    running on it answers as if the room had never been, from its next request); how many
    posts went. :class:`P2PSyncError` if there is no open group there, or no such room."""
    path = data_dir / OPENGROUP_FILE
    if not path.is_file():
        raise P2PSyncError(f"no open group in {data_dir} (no {OPENGROUP_FILE})")
    store = OpenGroupStore(path)
    try:
        went = store.remove_room(check_room_name(room))
    finally:
        store.close()
    if went is None:
        raise P2PSyncError(f"no room {room!r} in {path}")
    return went


async def _serve_with_onion(
    rpc: RpcServer,
    serve: Callable[..., Awaitable[None]],
    transport: Transport,
    data_dir: Path,
    listen: str,
    clock: Clock,
    listing: Listing | None,
) -> None:
    """Serve a file server or open group server, and onion requests to it, under the key
    kept in ``data_dir``; with ``listing``, onion requests from the listed relays' hosts
    share the exits' allowance (:class:`~p2psync.onion.service.OnionShare`)."""
    identity = load_or_create_identity(data_dir / SERVER_KEY_FILE)
    async with trio.open_nursery() as nursery:
        exits = None
        if listing is not None:
            exits = ListedExits()
            nursery.start_soon(exits.read, listing, clock, RELAY_REFRESH_S)
        OnionService(rpc, identity, clock, exits=exits)
        announce_ready(await nursery.start(serve, transport.as_server(identity.seed), listen))


RELAY_KEY_FILE = "relay.key"
#: The file each kind of server keeps its key in.
KEY_FILES = {
    "registry": REGISTRY_KEY_FILE,
    "node": NODE_KEY_FILE,
    "relay": RELAY_KEY_FILE,
    "fileserver": SERVER_KEY_FILE,
    "opengroup": SERVER_KEY_FILE,
}


def announced_url(kind: str, data_dir: Path, listen: str, *, plain: bool) -> str:
    """The url the ``kind`` server kept in ``data_dir`` announces once it listens on
    ``listen`` (its key made there if new): what an operator hands the others before it
    starts, since a pinned url names the key. ``ValueError`` unless ``listen`` names a
    port (port 0 is chosen at start)."""
    if split_host_port(listen)[1] == 0:
        raise ValueError("the announced url names the port: give --listen HOST:PORT")
    key = None if plain else load_or_create_identity(data_dir / KEY_FILES[kind]).ed25519_public
    if kind == "relay":
        return listen if key is None else pinned_address(listen, key)
    return server_url(listen, key)


#: How often a relay re-reads the other relays (it announces its contact every
#: :data:`~.swarm.constants.ANNOUNCE_INTERVAL_S`, as nodes do).
RELAY_REFRESH_S = 60.0


async def run_relay(
    transport: Transport,
    data_dir: Path,
    listen: str,
    directory: Directory,
    clock: Clock,
    exit_transport: Transport | None = None,
    exit_servers: Iterable[str] = (),
    registration: bytes = b"",
) -> None:
    """The ``p2psync relay`` process: its key (and ``registration``, the ledger's word
    that it is admitted) lives in ``data_dir``; with
    ``exit_transport`` (how servers are reached) it is an exit for onion requests, to the
    listed service nodes and ``exit_servers`` (the file server, the open group server)."""
    identity = load_or_create_identity(data_dir / RELAY_KEY_FILE)
    relay = AnnouncedRelay(
        transport,
        identity,
        clock,
        exit_transport=exit_transport,
        exit_servers=exit_servers,
        registration=registration,
    )
    async with trio.open_nursery() as nursery:
        announce_ready(await nursery.start(relay.serve, listen, directory))


class AnnouncedRelay:
    """An overlay relay that announces its signed contact to the registry and keeps its
    list of relays it may forward to in step with the registry's."""

    def __init__(
        self,
        transport: Transport,
        identity: Identity,
        clock: Clock,
        *,
        refresh_s: float = RELAY_REFRESH_S,
        exit_transport: Transport | None = None,
        exit_servers: Iterable[str] = (),
        registration: bytes = b"",
    ) -> None:
        """``registration``: the ledger's word that this relay is admitted, announced with
        it. ``exit_transport``: how this relay reaches servers as the exit of onion
        requests (:mod:`p2psync.onion`); without it, it is no exit. As an exit
        it reaches the service nodes of the registry's listing as of its last read and
        ``exit_servers`` (the file server and the open group server), nothing else."""
        self.transport = transport
        self.exit_transport = exit_transport
        self.exit_servers = ExitServers(exit_servers)
        self.registration = registration
        self.identity = identity
        self.clock = clock
        self.refresh_s = refresh_s
        self.address = ""
        self._keys = KeyPair.from_seed(identity.seed)
        self._cores: list[RelayCore] = []
        self._directory: Directory | None = None
        self._listing = Snapshot()
        #: When this relay last announced itself (epoch ms; None: it must announce).
        self._announced_at: int | None = None

    async def serve(
        self,
        listen: str,
        directory: Directory,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen until cancelled; started (with the bound address) once it is listed."""
        self._directory = directory
        async with self._exit() as exit_to, trio.open_nursery() as nursery:
            self.address, core = await nursery.start(
                partial(
                    serve_relay,
                    self.identity.seed,
                    # TLS pinned to the key its contact names, on a real network.
                    self.transport.as_server(self.identity.seed),
                    listen,
                    [],
                    clock=self.clock,
                    exit=exit_to,
                )
            )
            self._cores.append(core)
            await self.refresh()
            task_status.started(self.address)
            interval = next_listing_read_s(None, False, self.refresh_s)  # see .swarm.settling
            while True:
                await self.clock.sleep(interval)
                before = listed_members(self.listing)
                await self.refresh()
                changed = listed_members(self.listing) != before
                interval = next_listing_read_s(interval, changed, self.refresh_s)

    @asynccontextmanager
    async def _exit(self) -> AsyncIterator[Exit | None]:
        """The exit, with the connections to servers it keeps (None: no exit)."""
        if self.exit_transport is None:
            yield None
            return
        async with open_rpc_exit(self.exit_transport, self.exit_servers) as exit_to:
            yield exit_to

    def observe(self, observer: Callable[[SeenCell], None]) -> None:
        """Hand ``observer`` every cell this relay is handed from now on, with the link
        and address it came from (an audit of what a relay sees; see
        :attr:`overlay.relay_core.RelayCore.observer`)."""
        for core in self._cores:
            core.observer = observer

    def introset_records(self) -> list[bytes]:
        """The introsets this relay holds, as it holds them."""
        return [record for core in self._cores for record in core.store.records()]

    @property
    def public_key(self) -> bytes:
        """The Ed25519 key this relay is known by (its contact's, the pin of its links)."""
        return self._keys.public

    @property
    def listing(self) -> Snapshot:
        """The listing as last read: the relays this one forwards to, the service nodes it
        reaches as an exit, and what a change in them is (which brings the next read soon)."""
        return self._listing

    @property
    def known_relays(self) -> frozenset[bytes]:
        """The keys of the relays this one forwards to, as of its last registry read."""
        return frozenset(
            Contact.decode(r.contact).pubkey for r in self._listing.relays if r.contact
        )

    @property
    def exit_nodes(self) -> frozenset[str]:
        """The urls of the service nodes this relay reaches as an exit, as of its last
        registry read."""
        return frozenset(node.url for node in self.listing.nodes)

    async def refresh(self) -> None:
        """Announce a fresh contact if that is due, and re-read the other relays now."""
        assert self._directory is not None, "the relay is not serving"
        try:
            async with self._directory.one_connection() as directory:
                now = self.clock.now_ms()
                if announce_due(self._announced_at, now, ANNOUNCE_INTERVAL_S * 1000):
                    self._announced_at = None
                    contact = make_contact(self._keys, self.address, now)
                    await directory.announce(
                        self.identity, "relay", self.address, contact.encode(), self.registration
                    )
                    self._announced_at = now
                snapshot = await directory.fetch()
            if self.identity.ed25519_public.hex() not in {r.pubkey for r in snapshot.relays}:
                self._announced_at = None  # a listing without this relay: announce again
            contacts = [Contact.decode(r.contact) for r in snapshot.relays if r.contact]
            self._cores[0].update_directory(contacts, self.clock.now_ms())
            self._listing = snapshot
            self.exit_servers.update(self.exit_nodes)
        except (OSError, P2PSyncError, ValueError) as exc:
            logger.warning("relay: registry unavailable: %s", exc)
