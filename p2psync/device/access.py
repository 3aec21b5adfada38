"""How a device reaches the network: the transport, the node registry, the file server and
the open group server, with the clock they all share.

A device gets one from the embedded network (:meth:`p2psync.network.LocalNetwork.access`)
or from the ``network.json`` that ``p2psync network up`` writes
(:meth:`NetworkAccess.from_file`); the device itself does not care which.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Protocol, TypeGuard

from overlay.addresses import split_host_port
from overlay.constants import DEFAULT_HOPS
from overlay.contact import Contact, ContactError, verified_directory
from overlay.endpoint import open_endpoint
from overlay.endpoint_core import EntryFilter
from overlay.link import TcpTransport, Transport
from overlay.tasks import open_task_nursery

from ..clock import Clock
from ..errors import ConnectionLost, DecodeError, P2PSyncError
from ..onion.directory import DirectoryKeys, KnownListing, OnionDirectory
from ..onion.pool import OnionRpcPool
from ..rpc import RpcRouter, open_rpc_pool
from ..swarm.directory import Listing, RegistryDirectory
from ..swarm.listing import CACHED_LISTING_MAX_AGE_MS, Snapshot
from ..urls import split_url
from ..websocket import WebSocketTransport
from .keys import choice_seed
from .relay_listing import keep_relays_current

#: The ways a device may reach servers (:attr:`NetworkAccess.rpc_route`).
RPC_ROUTES = ("direct", "onion")


class NetworkFileError(P2PSyncError):
    """A ``network.json`` that is missing, unreadable or not what ``network up`` writes."""


def _is_url(value: object) -> TypeGuard[str]:
    """A server URL a device can connect to: ``wss://host:port/<hex key>`` (TLS pinned to
    the server's announced key, what servers serve) or ``ws://host:port`` (plaintext)."""
    if not isinstance(value, str):
        return False
    try:
        split_host_port(split_url(value)[0])
    except ValueError:
        return False
    return True


def _url(description: dict[str, object], key: str, path: Path) -> str:
    value = description.get(key)
    if not _is_url(value):
        raise NetworkFileError(
            f"{path}: {key!r} must be a wss://HOST:PORT/KEY (or plain ws://HOST:PORT) URL"
        )
    return value


def _ledger(description: dict[str, object], path: Path) -> bytes:
    value = description.get("ledger")
    try:
        key = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        key = b""
    if len(key) != 32:
        raise NetworkFileError(f"{path}: 'ledger' must be the ledger's key, 64 hex digits")
    return key


def _enough_relays(relays: object) -> bool:
    return isinstance(relays, list) and len(relays) >= DEFAULT_HOPS


def _key(description: dict[str, object], key: str, path: Path) -> bytes:
    value = description.get(key)
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
        raise NetworkFileError(f"{path}: {key!r} must be 32 bytes in hex")
    return bytes.fromhex(value)


def _node_urls(description: dict[str, object]) -> tuple[str, ...]:
    """The nodes ``network up`` listed, asked for the network while the registry is down
    (entries that are not what it writes are skipped: they are only a fallback)."""
    nodes = description.get("nodes")
    if not isinstance(nodes, list):
        return ()
    return tuple(
        node["url"] for node in nodes if isinstance(node, dict) and _is_url(node.get("url"))
    )


def relay_contacts_in(snapshot: Snapshot, now_ms: int) -> list[Contact]:
    """The relays ``snapshot`` lists whose signed contacts verify (anyone may announce a
    relay: counting one whose contact is expired or forged towards a path's hops let an
    endpoint start that could not build any)."""
    contacts = []
    for relay in snapshot.relays:
        try:
            contacts.append(Contact.decode(relay.contact))
        except ContactError:
            continue
    return list(verified_directory(contacts, now_ms).values())


class ListingKeeper(Protocol):
    """Where a device keeps the registry's listing between starts, so that a start
    builds its first paths from it rather than ask the registry from its address."""

    def kept_listing(self) -> object | None: ...  # the announcements, as kept
    def keep_listing(self, listing: Snapshot) -> None: ...


@dataclass(frozen=True)
class NetworkAccess:
    """Everything a device needs to reach a network: how to connect, where the registry's
    listing comes from, the servers' addresses and keys, and the ledger its nodes are
    admitted by. :meth:`from_file` reads one from the ``network.json`` that
    ``p2psync network up`` writes; an emulated network hands out its own."""

    transport: Transport
    #: The registry's listing: the registry itself (a service node's copy while it is
    #: down), or, on the onion route while a device is open, read through its paths.
    directory: Listing
    clock: Clock
    fileserver_url: str
    opengroup_url: str
    overlay_transport: Transport
    #: How the device reaches servers: ``"direct"`` connections (each server sees the
    #: device's address; for tests and benchmarks), or ``"onion"`` requests through
    #: overlay paths of its own (:mod:`p2psync.onion`).
    rpc_route: str = "direct"
    #: The announced Ed25519 keys of servers other than service nodes (the file server,
    #: the open group server), by address: an onion request is sealed to its server's key.
    server_keys: Mapping[str, bytes] = field(default_factory=dict)
    #: The key of the network's ledger, which every service node's entry in the listing
    #: must be registered under (None: a network without admission).
    ledger: bytes | None = field(kw_only=True)

    def __post_init__(self) -> None:
        if self.rpc_route not in RPC_ROUTES:
            raise ValueError(f"rpc_route must be one of {RPC_ROUTES}, not {self.rpc_route!r}")

    def random_for(self, device_seed: bytes, purpose: bytes) -> random.Random:
        """Where a device draws the random delays it keeps its timing with: reproducible
        in a simulation (from its seed and ``purpose``), fresh OS randomness elsewhere, so
        that the delays after a restart are not the same again."""
        if self.transport.simulated:
            return random.Random(choice_seed(device_seed, purpose))
        return random.SystemRandom()

    @asynccontextmanager
    async def open_routes(
        self,
        *,
        local_name: str | None = None,
        entry_filter: EntryFilter | None = None,
        rng: random.Random | None = None,
        keeper: ListingKeeper | None = None,
        awake: Callable[[], Awaitable[None]] | None = None,
    ) -> AsyncIterator[tuple[RpcRouter, NetworkAccess]]:
        """The pool a device reaches servers with, as :attr:`rpc_route` says, and the
        network as the device is to use it while the pool is open: reading the registry's
        listing through that pool too, on the onion route (:class:`OnionDirectory`), so
        that the registry sees the device's address at most once a start, and not at every read.

        Onion requests go on paths of an endpoint of their own, with a fresh key each
        time: the paths are not those the device meets its siblings on, and nothing ties
        them to the device's overlay identity or to its paths before a restart. Their
        first hops are relays ``entry_filter`` admits: a device's siblings must not enter
        the overlay where its onion requests do, or that relay would see both
        addresses. ``rng`` picks the service nodes the listing is read from (a device's
        own, so that simulated devices do not all ask the same ones). With a ``keeper``
        holding a listing from an earlier start that still serves (:meth:`_kept_listing`),
        the registry is read directly only if no node of it answers through the paths.
        The pool's endpoint re-reads the relays only once ``awake`` returns (the device is
        online; see :func:`~.relay_listing.keep_relays_current`)."""
        if self.rpc_route == "direct":
            async with open_rpc_pool(self.transport) as pool:
                yield pool, self
            return
        keep = keeper.keep_listing if keeper is not None else lambda listing: None
        snapshot = self._kept_listing(keeper)
        registry: Listing | None = self.directory
        if snapshot is None:
            # The one direct read: the relays to build the first paths through.
            snapshot, registry = await self.directory.fetch(), None
            keep(snapshot)
        contacts = relay_contacts_in(snapshot, self.clock.now_ms())
        if len(contacts) < DEFAULT_HOPS:
            raise ConnectionLost(
                f"the registry lists {len(contacts)} usable relays; onion requests need "
                f"{DEFAULT_HOPS} (is the network up?)"
            )
        listing = OnionDirectory(
            snapshot,
            self.ledger,
            self.clock,
            rng or self.random_for(b"", b"onion listing"),
            registry=registry,
            keep=keep,
        )
        through_paths = replace(self, directory=listing)
        async with (
            open_endpoint(
                os.urandom(32),
                self.overlay_transport,
                contacts,
                clock=self.clock,
                local_name=local_name,
                entry_filter=entry_filter,
            ) as endpoint,
            open_task_nursery() as nursery,
        ):
            keys = DirectoryKeys(KnownListing(listing), self.clock, self.server_keys)
            onion = OnionRpcPool(endpoint, keys, self.clock)
            listing.read_through(
                onion,
                lambda listing: endpoint.update_directory(
                    relay_contacts_in(listing, self.clock.now_ms())
                ),
            )
            nursery.start_soon(partial(keep_relays_current, endpoint, through_paths, awake=awake))
            yield onion, through_paths
            nursery.cancel_scope.cancel()

    def _kept_listing(self, keeper: ListingKeeper | None) -> Snapshot | None:
        """The listing ``keeper`` kept from an earlier start, checked again as a read
        one is (signatures, registrations, announcements at most a day old, as service
        nodes serve their copies), if it still names a service node and enough relays
        whose contacts have not expired to build paths through; else None."""
        kept = None if keeper is None else keeper.kept_listing()
        if kept is None:
            return None
        now_ms = self.clock.now_ms()
        try:
            snapshot = Snapshot.from_announcements(
                kept, now_ms, ledger=self.ledger, max_age_ms=CACHED_LISTING_MAX_AGE_MS
            )
        except DecodeError:
            return None
        if not snapshot.nodes or len(relay_contacts_in(snapshot, now_ms)) < DEFAULT_HOPS:
            return None
        return snapshot

    async def relay_contacts(self) -> list[Contact]:
        """The overlay relays the listing names now whose signed contacts verify."""
        return relay_contacts_in(await self.directory.fetch(), self.clock.now_ms())

    @classmethod
    def from_file(cls, path: str | Path, clock: Clock | None = None) -> NetworkAccess:
        """Read the ``network.json`` of a running ``p2psync network up``."""
        path = Path(path)
        try:
            description = json.loads(path.read_text())
        except FileNotFoundError:
            raise NetworkFileError(
                f"cannot read {path}: no such file (is `p2psync network up` running?)"
            ) from None
        except OSError as exc:
            raise NetworkFileError(f"cannot read {path}: {exc.strerror}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise NetworkFileError(f"{path} is not JSON: {exc}") from None
        if not isinstance(description, dict):
            raise NetworkFileError(f"{path} must hold a JSON object")
        clock = clock or Clock()
        registry = _url(description, "registry", path)
        # A network whose registry url names no key runs plaintext links (``network up
        # --plain-links``); otherwise every link is TLS, and an address without a key is
        # refused rather than dialled in plaintext.
        plain = split_url(registry)[1] is None
        transport = WebSocketTransport(plain=plain)
        ledger = _ledger(description, path)
        keys = {
            _url(description, name, path): _key(description, f"{name}_key", path)
            for name in ("fileserver", "opengroup")
            if f"{name}_key" in description
        }
        relays = description.get("relays")
        return cls(
            transport,
            RegistryDirectory(
                transport,
                registry,
                clock,
                ledger,
                seeds=_node_urls(description),
            ),
            clock,
            _url(description, "fileserver", path),
            _url(description, "opengroup", path),
            TcpTransport(plain=plain),
            # With relays enough for a path and every server's key, no server need ever
            # see this device's address.
            rpc_route="onion" if _enough_relays(relays) and len(keys) == 2 else "direct",
            server_keys=keys,
            ledger=ledger,
        )
