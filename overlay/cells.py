"""Cells: the only thing that crosses an overlay link, always ``CELL_BYTES`` long.

``kind (1) ‖ id (16) ‖ body``. The id is a per-link path id for path cells, an intro id
for transfers, a request token for DHT traffic. Decoding never raises anything but
:class:`CellError`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .constants import CELL_BODY_BYTES, CELL_BYTES, PATH_ID_BYTES


class CellError(ValueError):
    """Bytes that are not a cell."""


class CellKind(enum.IntEnum):
    BUILD = 1
    DATA = 2
    #: relay → relay: deliver a payload down the path whose terminal has this intro id
    TRANSFER = 3
    DHT_REQUEST = 4
    DHT_RESPONSE = 5


_KINDS = {int(kind): kind for kind in CellKind}


@dataclass(frozen=True, slots=True)
class Cell:
    kind: CellKind
    id: bytes
    body: bytes

    def encode(self) -> bytes:
        return bytes((self.kind,)) + self.id + self.body


def make_cell(kind: CellKind, id: bytes, body: bytes) -> bytes:
    """Encode a cell, padding a short body with zeros (callers pad with random bytes where
    the padding would otherwise reveal a length)."""
    if len(id) != PATH_ID_BYTES or len(body) > CELL_BODY_BYTES:
        raise ValueError("bad cell id or oversize body")
    return bytes((kind,)) + id + body + bytes(CELL_BODY_BYTES - len(body))


def decode_cell(data: bytes) -> Cell:
    if len(data) != CELL_BYTES:
        raise CellError(f"cell of {len(data)} bytes, expected {CELL_BYTES}")
    kind = _KINDS.get(data[0])
    if kind is None:
        raise CellError(f"unknown cell kind {data[0]}")
    return Cell(kind, data[1 : 1 + PATH_ID_BYTES], data[1 + PATH_ID_BYTES :])


def frame_payload(payload: bytes, size: int) -> bytes:
    """2-byte length ‖ payload ‖ zero padding to ``size``."""
    if len(payload) + 2 > size:
        raise ValueError(f"payload of {len(payload)} bytes does not fit in {size}")
    return len(payload).to_bytes(2, "big") + payload + bytes(size - 2 - len(payload))


def unframe_payload(data: bytes) -> bytes:
    size = int.from_bytes(data[:2], "big")
    if size + 2 > len(data):
        raise CellError("payload length exceeds its frame")
    return data[2 : 2 + size]
