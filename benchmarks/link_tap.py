"""A link observer: a TCP proxy that forwards both ways and keeps every byte it carried.

What a passive observer on the wire (an ISP, a shared Wi-Fi) reads of a link is what this
records; :func:`plaintext_keys` counts how many of the given account or node keys it can
read there, raw or hex-encoded (the two ways our formats carry a key). Tests use a tap
to prove TLS hides the keys (and that without TLS it finds them, so the check can fail).

:class:`LinkWatch` puts a tap in front of every server and relay a device talks to: the
demo's ``privacy.link_plaintext_keys`` is :meth:`LinkWatch.plaintext_keys` of the
account and node keys (:func:`account_and_node_keys`) over what those taps carried.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Request
from wsproto.utilities import RemoteProtocolError

from overlay.addresses import split_host_port
from overlay.link import Link, LinkHandler, Transport
from p2psync.device.access import NetworkAccess
from p2psync.device.values import Whoami
from p2psync.network import LocalNetwork
from p2psync.swarm.directory import RegistryDirectory
from p2psync.urls import bare_address


@dataclass
class _Connection:
    """The bytes of one tapped connection: all of them, and the client's alone."""

    both_ways: bytearray = field(default_factory=bytearray)
    from_client: bytearray = field(default_factory=bytearray)


class LinkTap:
    """Forwards each accepted connection to ``target`` and records the bytes both ways.

    It connects on from the address its client came from, so the server still sees the
    client's own address (an audit of what servers see stays true with a tap in between;
    on loopback every 127.0.0.0/8 address is this machine's)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._connections: list[_Connection] = []
        self._port = 0
        self._listening = trio.Event()

    async def port(self) -> int:
        """The loopback port it listens on, once it does."""
        await self._listening.wait()
        return self._port

    @property
    def connections(self) -> int:
        """Connections it carried."""
        return len(self._connections)

    @property
    def captured(self) -> bytes:
        """Every byte carried, both ways, as the wire showed it."""
        return b"".join(bytes(c.both_ways) for c in self._connections)

    @property
    def readable(self) -> bytes:
        """What an observer reads: the bytes as carried, plus plaintext WebSocket
        clients' frames unmasked (RFC 6455 masks them with a key sent beside them, which
        hides nothing from an observer but would hide them from a byte search)."""
        return self.captured + b"".join(_unmasked(bytes(c.from_client)) for c in self._connections)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on a free loopback port (reported by ``nursery.start``) until cancelled."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self._port = listeners[0].socket.getsockname()[1]
        self._listening.set()
        task_status.started(self._port)
        await trio.serve_listeners(self._forward, listeners)

    async def _forward(self, client: trio.SocketStream) -> None:
        source = client.socket.getpeername()[0]
        try:
            server = await trio.open_tcp_stream(*self._target, local_address=source)
        except OSError:
            await client.aclose()  # as the server refusing would look to the client
            return
        connection = _Connection()
        self._connections.append(connection)
        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, server, nursery.cancel_scope, connection, True)
            nursery.start_soon(self._pump, server, client, nursery.cancel_scope, connection, False)

    async def _pump(
        self,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        scope: trio.CancelScope,
        connection: _Connection,
        from_client: bool,
    ) -> None:
        """One direction; when either side ends, the whole connection ends."""
        try:
            while chunk := await source.receive_some(65536):
                connection.both_ways += chunk
                if from_client:
                    connection.from_client += chunk
                await sink.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()


def plaintext_keys(captured: bytes, keys: Iterable[bytes]) -> int:
    """How many of ``keys`` appear in ``captured``, as raw bytes or as hex (either case)."""
    lowered = captured.lower()
    return sum(1 for key in keys if key in captured or key.hex().encode() in lowered)


def account_and_node_keys(network: LocalNetwork, devices: Iterable[Whoami]) -> list[bytes]:
    """The keys a link observer must not read: each device's account id, its own id and
    Ed25519 key, and every service node's key (which tells the observer whose swarm the
    device reads)."""
    keys = [node.identity.ed25519_public for node in network.nodes]
    for me in devices:
        keys += [bytes.fromhex(me.session_id), bytes.fromhex(me.device_id), me.device_key]
        keys.append(bytes.fromhex(me.receives_as))
    return list(dict.fromkeys(keys))


class LinkWatch:
    """Taps every link that the devices given :meth:`access` open: to the registry, the
    servers and the relays, one :class:`LinkTap` per server in front of it. Made by
    :func:`open_link_watch`, whose nursery runs the taps."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._taps: dict[tuple[str, int], LinkTap] = {}
        #: Whether any link could be tapped: an emulated network has no wire to watch.
        self.on_wire = False

    def access(self, access: NetworkAccess) -> NetworkAccess:
        """``access`` with every link it opens (its registry reads included) tapped; on an
        emulated network, ``access`` itself."""
        if access.transport.simulated:
            return access
        self.on_wire = True
        transport = _TappedTransport(access.transport, self)
        directory = access.directory
        if isinstance(directory, RegistryDirectory):
            directory = dataclasses.replace(directory, transport=transport)
        return dataclasses.replace(
            access,
            transport=transport,
            directory=directory,
            overlay_transport=_TappedTransport(access.overlay_transport, self),
        )

    @property
    def connections(self) -> int:
        """Links tapped so far."""
        return sum(tap.connections for tap in self._taps.values())

    def plaintext_keys(self, keys: Iterable[bytes]) -> int | None:
        """How many of ``keys`` an observer of the tapped links read (on any of them);
        ``None`` if no link was on a wire (an emulated network)."""
        if not self.on_wire:
            return None
        readable = [tap.readable for tap in self._taps.values()]
        return sum(1 for key in set(keys) if any(plaintext_keys(r, [key]) for r in readable))

    async def via_tap(self, address: str) -> str:
        """``address`` (``ws://``, ``wss://…/<key>``, ``host:port[#<key>]``) with its host
        and port replaced by those of a tap in front of it; the pin, if any, stays."""
        prefix, authority, suffix = _authority_of(address)
        target = split_host_port(authority)
        tap = self._taps.get(target)
        if tap is None:  # one tap per server, even for connections opened side by side
            tap = self._taps[target] = LinkTap(*target)
            self._nursery.start_soon(tap.serve)
        return f"{prefix}127.0.0.1:{await tap.port()}{suffix}"


@asynccontextmanager
async def open_link_watch() -> AsyncIterator[LinkWatch]:
    """A :class:`LinkWatch` whose taps run until the block ends."""
    async with trio.open_nursery() as nursery:
        yield LinkWatch(nursery)
        nursery.cancel_scope.cancel()


def _authority_of(address: str) -> tuple[str, str, str]:
    """``address`` as (what comes before ``host:port``, ``host:port``, what comes after)."""
    authority = bare_address(address)
    prefix, _, suffix = address.partition(authority)
    return prefix, authority, suffix


@dataclass(frozen=True)
class _TappedTransport(Transport):
    """A client transport whose every connection goes through the watch's tap in front of
    the server it is for."""

    inner: Transport
    watch: LinkWatch

    async def serve(
        self,
        handler: LinkHandler,
        address: str,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        await self.inner.serve(handler, address, task_status=task_status)

    @asynccontextmanager
    async def connect(self, address: str) -> AsyncIterator[Link]:
        async with self.inner.connect(await self.watch.via_tap(address)) as link:
            yield link

    def for_overlay(self) -> Transport:
        return _TappedTransport(self.inner.for_overlay(), self.watch)


def _unmasked(client_bytes: bytes) -> bytes:
    """The payloads of a plaintext WebSocket client's messages; nothing from other bytes
    (TLS records, our framed TCP links, several connections run together past the first)."""
    ws = WSConnection(ConnectionType.SERVER)
    payloads = bytearray()
    request, end, frames = client_bytes.partition(b"\r\n\r\n")
    try:
        ws.receive_data(request + end)
        if not any(isinstance(event, Request) for event in ws.events()):
            return b""
        ws.send(AcceptConnection())  # wsproto's server parses frames only once it accepted
        ws.receive_data(frames)
        for event in ws.events():
            if isinstance(event, BytesMessage):
                payloads += event.data
    except RemoteProtocolError:
        pass
    return bytes(payloads)
