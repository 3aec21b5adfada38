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
============= ================================================ ==================

Whoever built a path or reached an intro chooses the bytes a relay or an endpoint decodes,
so :func:`decode_payload` never raises anything but :class:`~overlay.cells.CellError`.
A value whose fixed fields have the wrong size cannot be made (``ValueError``), so every
value encodes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from .cells import CellError
from .constants import PATH_ID_BYTES
from .path import Payload

RELAY_KEY_BYTES = 32
#: An endpoint's name for one of its DHT requests, echoed in the result.
REQUEST_ID_BYTES = 8
#: What a TRANSFER adds to the data it carries: the room a session packet has is what is
#: left of a payload.
TRANSFER_HEADER_BYTES = 1 + RELAY_KEY_BYTES + PATH_ID_BYTES


def _check_size(name: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise ValueError(f"{name} of {len(value)} bytes, expected {size}")


def _fields(kind: Payload, body: bytes, *sizes: int) -> tuple[bytes, ...]:
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


PathPayload: TypeAlias = Built | Ping | Pong | Transfer | Deliver | DhtRequest | DhtResult

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
}


def decode_payload(data: bytes) -> PathPayload:
    """The payload ``data`` encodes (:class:`CellError` if it is none)."""
    if not data:
        raise CellError("empty payload")
    decode = _DECODERS.get(data[0])
    if decode is None:
        raise CellError(f"unknown payload kind {data[0]}")
    return decode(data[1:])
