"""What a path's owner and its terminal hop say to each other, as typed values (sans-I/O).

A payload is what a path carries to or from its terminal hop inside the onion layers: its
:class:`~overlay.path.Payload` kind (1 byte), fixed-size fields, then the rest.

============= ================================================ ==================
kind          fields                                           direction
============= ================================================ ==================
BUILT         (none)                                           terminal → owner
PING          echo                                             owner → terminal
PONG          echo (the PING's, unchanged)                     terminal → owner
TRANSFER      relay key (32) ‖ intro id (16) ‖ data            owner → terminal
DELIVER       data                                             terminal → owner
DHT_REQUEST   request id (8) ‖ relay key (32) ‖ DHT request    owner → terminal
DHT_RESULT    request id (8) ‖ DHT response                    terminal → owner
EXIT_REQUEST  request id (8) ‖ index (2) ‖ count (2) ‖ chunk   owner → terminal
EXIT_REPLY    request id (8) ‖ index (2) ‖ count (2) ‖ chunk   terminal → owner
============= ================================================ ==================

An exit request (an onion request to a server, DESIGN.md §6) and its reply are larger
than a payload: each is cut into ``count`` fragments of at most :data:`EXIT_CHUNK_BYTES`
(:func:`exit_fragments`); :mod:`overlay.exits` reassembles them. The two exit kinds are
numbered here, after :class:`~overlay.path.Payload`'s, because only this module and the
exit hop deal in them.

Whoever built a path or reached an intro chooses the bytes a relay or an endpoint decodes,
so :func:`decode_payload` never raises anything but :class:`~overlay.cells.CellError`.
A value whose fixed fields have the wrong size cannot be made (``ValueError``), so every
value encodes.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self, TypeAlias, TypeVar

from .cells import CellError
from .constants import EXIT_MAX_MESSAGE_BYTES, PATH_ID_BYTES
from .path import MAX_PAYLOAD_BYTES, Payload

RELAY_KEY_BYTES = 32
#: An endpoint's name for one of its DHT requests, echoed in the result.
REQUEST_ID_BYTES = 8
#: What a TRANSFER adds to the data it carries: the room a session packet has is what is
#: left of a payload.
TRANSFER_HEADER_BYTES = 1 + RELAY_KEY_BYTES + PATH_ID_BYTES


class ExitPayload(enum.IntEnum):
    """The payload kinds of exit requests (after :class:`~overlay.path.Payload`'s)."""

    EXIT_REQUEST = 8  # owner → terminal: one fragment of (server address, sealed request)
    EXIT_REPLY = 9  # terminal → owner: one fragment of (status, reply)


#: kind (1) ‖ request id (8) ‖ index (2) ‖ count (2).
EXIT_HEADER_BYTES = 1 + REQUEST_ID_BYTES + 2 + 2
#: What one fragment of an exit request or reply carries, whatever the path's length.
EXIT_CHUNK_BYTES = MAX_PAYLOAD_BYTES - EXIT_HEADER_BYTES
#: Fragments of the largest exit message: more in a header is refused at decode.
EXIT_MAX_FRAGMENTS = math.ceil(EXIT_MAX_MESSAGE_BYTES / EXIT_CHUNK_BYTES)


def _check_size(name: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise ValueError(f"{name} of {len(value)} bytes, expected {size}")


def _fields(kind: enum.IntEnum, body: bytes, *sizes: int) -> tuple[bytes, ...]:
    """``body`` cut into fields of ``sizes`` bytes, then the rest."""
    if len(body) < sum(sizes):
        raise CellError(f"{kind.name} payload of {len(body) + 1} bytes is too short")
    parts = []
    for size in sizes:
        parts.append(body[:size])
        body = body[size:]
    return (*parts, body)


@dataclass(frozen=True, slots=True)
class Built:
    """The path works (its terminal hop's first word)."""

    def encode(self) -> bytes:
        return bytes((Payload.BUILT,))

    @classmethod
    def decode_body(cls, body: bytes) -> Built:
        if body:
            raise CellError("BUILT payload with a body")
        return cls()


@dataclass(frozen=True, slots=True)
class Ping:
    """Answer with a :class:`Pong` echoing ``echo`` (which also pads the cells measured)."""

    echo: bytes = b""

    def encode(self) -> bytes:
        return bytes((Payload.PING,)) + self.echo


@dataclass(frozen=True, slots=True)
class Pong:
    """The answer to a :class:`Ping`."""

    echo: bytes = b""

    def encode(self) -> bytes:
        return bytes((Payload.PONG,)) + self.echo


@dataclass(frozen=True, slots=True)
class Transfer:
    """Hand ``data`` to relay ``relay``, which delivers it down the path of ``intro_id``."""

    relay: bytes
    intro_id: bytes
    data: bytes

    def __post_init__(self) -> None:
        _check_size("relay key", self.relay, RELAY_KEY_BYTES)
        _check_size("intro id", self.intro_id, PATH_ID_BYTES)

    def encode(self) -> bytes:
        return bytes((Payload.TRANSFER,)) + self.relay + self.intro_id + self.data

    @classmethod
    def decode_body(cls, body: bytes) -> Transfer:
        relay, intro_id, data = _fields(Payload.TRANSFER, body, RELAY_KEY_BYTES, PATH_ID_BYTES)
        return cls(relay, intro_id, data)


@dataclass(frozen=True, slots=True)
class Deliver:
    """``data`` some other path's owner transferred to this path's intro."""

    data: bytes

    def encode(self) -> bytes:
        return bytes((Payload.DELIVER,)) + self.data


@dataclass(frozen=True, slots=True)
class DhtRequest:
    """Ask relay ``relay`` (the terminal hop itself or another) the DHT ``request``."""

    request_id: bytes
    relay: bytes
    request: bytes

    def __post_init__(self) -> None:
        _check_size("request id", self.request_id, REQUEST_ID_BYTES)
        _check_size("relay key", self.relay, RELAY_KEY_BYTES)

    def encode(self) -> bytes:
        return bytes((Payload.DHT_REQUEST,)) + self.request_id + self.relay + self.request

    @classmethod
    def decode_body(cls, body: bytes) -> DhtRequest:
        request_id, relay, request = _fields(
            Payload.DHT_REQUEST, body, REQUEST_ID_BYTES, RELAY_KEY_BYTES
        )
        return cls(request_id, relay, request)


@dataclass(frozen=True, slots=True)
class DhtResult:
    """The answer to the DHT request ``request_id``."""

    request_id: bytes
    response: bytes

    def __post_init__(self) -> None:
        _check_size("request id", self.request_id, REQUEST_ID_BYTES)

    def encode(self) -> bytes:
        return bytes((Payload.DHT_RESULT,)) + self.request_id + self.response

    @classmethod
    def decode_body(cls, body: bytes) -> DhtResult:
        request_id, response = _fields(Payload.DHT_RESULT, body, REQUEST_ID_BYTES)
        return cls(request_id, response)


@dataclass(frozen=True, slots=True)
class _ExitFragment:
    """Fragment ``index`` of ``count`` of exit message ``request_id``. Every field is
    range-checked here, so a fragment that decodes fits a bounded reassembly."""

    request_id: bytes
    index: int
    count: int
    chunk: bytes

    KIND = ExitPayload.EXIT_REQUEST

    def __post_init__(self) -> None:
        _check_size("request id", self.request_id, REQUEST_ID_BYTES)
        if not 1 <= self.count <= EXIT_MAX_FRAGMENTS:
            raise CellError(f"exit message of {self.count} fragments")
        if not 0 <= self.index < self.count:
            raise CellError(f"exit fragment {self.index} of {self.count}")
        if len(self.chunk) > EXIT_CHUNK_BYTES:
            raise CellError(f"exit fragment of {len(self.chunk)} bytes")

    def encode(self) -> bytes:
        return (
            bytes((self.KIND,))
            + self.request_id
            + self.index.to_bytes(2, "big")
            + self.count.to_bytes(2, "big")
            + self.chunk
        )

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        request_id, index, count, chunk = _fields(cls.KIND, body, REQUEST_ID_BYTES, 2, 2)
        return cls(request_id, int.from_bytes(index, "big"), int.from_bytes(count, "big"), chunk)


@dataclass(frozen=True, slots=True)
class ExitRequest(_ExitFragment):
    """A fragment of a request the exit hop hands to a server (see :mod:`overlay.exits`)."""

    KIND = ExitPayload.EXIT_REQUEST


@dataclass(frozen=True, slots=True)
class ExitReply(_ExitFragment):
    """A fragment of the exit hop's answer to an :class:`ExitRequest`."""

    KIND = ExitPayload.EXIT_REPLY


_Fragment = TypeVar("_Fragment", bound=_ExitFragment)


def exit_fragments(kind: type[_Fragment], request_id: bytes, message: bytes) -> list[_Fragment]:
    """``message`` cut into the fragments that carry it (ValueError if it is too large)."""
    if len(message) > EXIT_MAX_MESSAGE_BYTES:
        raise ValueError(f"exit message of {len(message)} bytes")
    chunks = [
        message[start : start + EXIT_CHUNK_BYTES]
        for start in range(0, len(message), EXIT_CHUNK_BYTES)
    ] or [b""]
    return [kind(request_id, i, len(chunks), chunk) for i, chunk in enumerate(chunks)]


PathPayload: TypeAlias = (
    Built | Ping | Pong | Transfer | Deliver | DhtRequest | DhtResult | ExitRequest | ExitReply
)

#: Per kind, what makes a payload of the bytes after the kind (a kind whose whole body is
#: one field: its constructor).
_DECODERS: dict[int, Callable[[bytes], PathPayload]] = {
    Payload.BUILT: Built.decode_body,
    Payload.PING: Ping,
    Payload.PONG: Pong,
    Payload.TRANSFER: Transfer.decode_body,
    Payload.DELIVER: Deliver,
    Payload.DHT_REQUEST: DhtRequest.decode_body,
    Payload.DHT_RESULT: DhtResult.decode_body,
    ExitPayload.EXIT_REQUEST: ExitRequest.decode_body,
    ExitPayload.EXIT_REPLY: ExitReply.decode_body,
}


def decode_payload(data: bytes) -> PathPayload:
    """The payload ``data`` encodes (:class:`CellError` if it is none)."""
    if not data:
        raise CellError("empty payload")
    decode = _DECODERS.get(data[0])
    if decode is None:
        raise CellError(f"unknown payload kind {data[0]}")
    return decode(data[1:])
