"""Exit requests, sans-I/O: what a path's owner asks its exit hop to hand to a server, and
how the fragments of a request or a reply are put back together (DESIGN.md §6).

The owner sends :func:`encode_exit_request` (the server's opaque address and an opaque
body, which p2psync seals end-to-end to the server) cut into
:class:`~overlay.payloads.ExitRequest` fragments; the exit hop hands the body to the server
and answers with :func:`encode_exit_reply` cut into :class:`~overlay.payloads.ExitReply`
fragments. The overlay never looks into either body, nor into the address: which servers
an exit reaches is its owner's policy (a :class:`~overlay.relay_core.RelayCore`'s
``exit_route``); how many requests it lets be under way at once is :class:`ExitCaps`.
Whoever sends fragments chooses every byte, so each decoder here raises nothing but
:class:`~overlay.cells.CellError`, and a :class:`Reassembly` never holds more than
``EXIT_MAX_MESSAGE_BYTES``.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from .cells import CellError
from .constants import EXIT_MAX_MESSAGE_BYTES, EXIT_MAX_PER_HOST, EXIT_MAX_PER_PATH, EXIT_MAX_TOTAL
from .payloads import EXIT_CHUNK_BYTES, ExitReply, ExitRequest

#: A server address is opaque to the overlay but short: a URL or a host:port.
MAX_EXIT_ADDRESS_BYTES = 255


class ExitStatus(enum.IntEnum):
    """The first byte of an exit reply."""

    OK = 0
    #: The server could not be reached, did not answer in time, or answered too much.
    FAILED = 1
    #: Not a server this exit hands requests to (an exit reaches only the servers its
    #: network lists, never any address a request names): nothing was connected to.
    REFUSED = 2
    #: The exit had no room for another request from that path or link, or at all
    #: (:class:`ExitCaps`): another path's exit may have.
    BUSY = 3


@dataclass(frozen=True)
class ExitCaps:
    """How many exit requests a relay lets be under way at once (reassembling or at a
    server): per path, per host, and in all. The host is the neighbour's a path came in
    by (:func:`peer_host`), the only thing an exit knows of who asks: without its cap one
    client (or the relay carrying its paths) could hold every slot, however many paths
    it takes. Per host, not per link: four links from one machine took every slot."""

    per_path: int = EXIT_MAX_PER_PATH
    per_host: int = EXIT_MAX_PER_HOST
    total: int = EXIT_MAX_TOTAL

    def admits(self, on_path: int, on_host: int, under_way: int) -> bool:
        """Whether one more request may start, with ``on_path`` already under way on its
        path, ``on_host`` on the paths from its host and ``under_way`` in all."""
        return on_path < self.per_path and on_host < self.per_host and under_way < self.total


def peer_host(peer: str, *, loopback_apart: bool = False) -> str:
    """Who is at the other end of a link, for caps: its address without the port (or the
    pin of a relay address, or an IPv6 zone), an IPv4-mapped IPv6 address as the IPv4
    one, and an IPv6 address by its /64, which one machine is commonly given whole. A
    peer that names no address is itself. ``loopback_apart``: a loopback peer is its own
    link (on one machine every process is 127.0.0.1, and those are the operator's own;
    a relay's exit caps take that, a server behind a local proxy must not)."""
    bare = peer.partition("#")[0]
    host, port = bare, ""
    if bare.startswith("["):
        host, _, port = bare[1:].partition("]")
        port = port.removeprefix(":")
    elif bare.count(":") == 1:
        host, _, port = bare.partition(":")
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host if port.isdigit() else bare
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if loopback_apart and address.is_loopback:
        return bare
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class RepeatedFragment(CellError):
    """A fragment that was already received: a replay (dropped and counted as one)."""


class Reassembly:
    """The fragments of one exit message as they arrive, in any order. Every fragment but
    the last must be full, so what is held never exceeds the message's declared size."""

    def __init__(self, count: int) -> None:
        self._chunks: list[bytes | None] = [None] * count
        self._missing = count

    def add(self, fragment: ExitRequest | ExitReply) -> bytes | None:
        """Take one fragment; the whole message once the last one is in."""
        count = len(self._chunks)
        if fragment.count != count:
            raise CellError(f"exit fragment says {fragment.count} fragments, not {count}")
        if self._chunks[fragment.index] is not None:
            raise RepeatedFragment(f"exit fragment {fragment.index} repeated")
        if fragment.index < count - 1 and len(fragment.chunk) != EXIT_CHUNK_BYTES:
            raise CellError("an exit fragment before the last is not full")
        self._chunks[fragment.index] = fragment.chunk
        self._missing -= 1
        if self._missing:
            return None
        message = b"".join(chunk for chunk in self._chunks if chunk is not None)
        if len(message) > EXIT_MAX_MESSAGE_BYTES:
            raise CellError(f"exit message of {len(message)} bytes")
        return message


def encode_exit_request(address: str, body: bytes) -> bytes:
    """address length (1) ‖ address ‖ body."""
    raw = address.encode("ascii")
    if not 0 < len(raw) <= MAX_EXIT_ADDRESS_BYTES:
        raise ValueError(f"exit address of {len(raw)} bytes")
    return bytes((len(raw),)) + raw + body


def decode_exit_request(message: bytes) -> tuple[str, bytes]:
    """The server address and the body of a reassembled exit request."""
    if not message or message[0] == 0 or len(message) < 1 + message[0]:
        raise CellError("exit request without a whole address")
    raw = message[1 : 1 + message[0]]
    try:
        address = raw.decode("ascii")
    except UnicodeDecodeError:
        raise CellError("exit address is not ASCII") from None
    if not address.isprintable():
        raise CellError("exit address is not printable")
    return address, message[1 + message[0] :]


def encode_exit_reply(status: ExitStatus, body: bytes = b"") -> bytes:
    """status (1) ‖ the server's reply (empty unless OK)."""
    return bytes((status,)) + body


def decode_exit_reply(message: bytes) -> tuple[ExitStatus, bytes]:
    if not message:
        raise CellError("empty exit reply")
    try:
        status = ExitStatus(message[0])
    except ValueError:
        raise CellError(f"unknown exit status {message[0]}") from None
    if status is not ExitStatus.OK and len(message) > 1:
        raise CellError("a failed exit reply with a body")
    return status, message[1:]


class ExitFailed(Exception):
    """The exit hop could not get an answer from the server (see :class:`ExitStatus`)."""
