"""A stored message and its summary: the values the node's cores reason about, apart from
the SQLite store that keeps them, so a core can use them without importing the store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One stored message; ``data is None`` marks a tombstone. ``proof`` (the owner's
    signed delete or expire, encoded) is set on tombstones and shortened expiries, and
    means the node checked it before storing. ``vouched``: its store showed the owner's
    access (:mod:`.access`), so it may fill the owner's reserve on every member."""

    pubkey: str
    namespace: int
    hash: bytes
    timestamp_ms: int
    expiry_ms: int
    data: bytes | None
    order_ms: int = 0
    proof: bytes | None = None
    vouched: bool = False

    @property
    def deleted(self) -> bool:
        return self.data is None


class RowSummary(NamedTuple):
    """A row without its data: what repair compares between members."""

    pubkey: str
    namespace: int
    hash: bytes
    timestamp_ms: int
    expiry_ms: int
    deleted: bool
    proven: bool
