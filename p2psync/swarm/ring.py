"""Swarm membership, computed by every party from the registry alone.

Swarm ids are 64-bit points spread evenly over the ring; a registry of N nodes forms
``max(1, N // 6)`` swarms. Nodes are ordered by their ring position (from their ledger
registration: :mod:`.admission`; where a network has no ledger, a hash of their key) and
dealt into swarms in contiguous runs of near-equal size, at most 8 each (the rest are
spares that still answer and redirect). When one node joins or leaves, only the nodes at
run boundaries move, so hand-over traffic stays small. A public key belongs to the swarm
whose id is closest, with wrap-around, to the XOR of the four big-endian 64-bit words of
its X25519 key.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

from ..identity import session_id_key
from .constants import SWARM_MAX_SIZE, SWARM_TARGET_SIZE

RING_SIZE = 2**64
#: Owners whose swarm one map remembers (see :meth:`SwarmMap.swarm_of_owner`); past it,
#: it starts again, so owners a stranger makes up cost memory only up to this.
OWNERS_REMEMBERED = 65_536


@dataclass(frozen=True, slots=True, order=True)
class NodeInfo:
    """A service node as the registry lists it: Ed25519 key (hex), RPC url, and its ring
    position from its :mod:`.admission` registration (``None`` on a network without
    admission, where the position is a hash of the key: :func:`node_position`)."""

    pubkey: str
    url: str
    position: int | None = None

    @property
    def ring_position(self) -> int:
        return node_position(self.pubkey) if self.position is None else self.position

    def to_wire(self) -> dict[str, str]:
        return {"pubkey": self.pubkey, "url": self.url}


def key_position(x25519_public: bytes) -> int:
    """The ring position of a 32-byte X25519 key (DESIGN.md §4)."""
    if len(x25519_public) != 32:
        raise ValueError("ring positions are defined for 32-byte keys")
    position = 0
    for offset in range(0, 32, 8):
        position ^= int.from_bytes(x25519_public[offset : offset + 8], "big")
    return position


def node_position(node_pubkey_hex: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(
            bytes.fromhex(node_pubkey_hex), digest_size=8, person=b"p2psync-ring"
        ).digest(),
        "big",
    )


def ring_distance(a: int, b: int) -> int:
    d = (a - b) % RING_SIZE
    return min(d, RING_SIZE - d)


@dataclass(frozen=True)
class SwarmMap:
    """The swarms of one registry snapshot: ``swarms[swarm_id] = nodes``."""

    swarms: dict[int, tuple[NodeInfo, ...]]

    @classmethod
    def build(cls, nodes: Iterable[NodeInfo]) -> SwarmMap:
        unique = sorted(set(nodes), key=lambda n: (n.ring_position, n.pubkey))
        count = max(1, len(unique) // SWARM_TARGET_SIZE)
        ids = [(RING_SIZE * k) // count for k in range(count)]
        swarms: dict[int, tuple[NodeInfo, ...]] = {}
        start = 0
        for k, swarm_id in enumerate(ids):
            size = len(unique) // count + (1 if k < len(unique) % count else 0)
            swarms[swarm_id] = tuple(unique[start : start + min(size, SWARM_MAX_SIZE)])
            start += size
        return cls(swarms)

    def swarm_for_key(self, x25519_public: bytes) -> int:
        """The swarm whose id is nearest the key's position (the smaller id of two as
        near). A node asks this of every store, so it is a search among the ids in ring
        order, not a scan of every swarm: the nearest is the position's successor or
        its predecessor, with wrap-around."""
        position = key_position(x25519_public)
        ids = self._ids_in_ring_order
        if not ids:
            raise ValueError("a map without swarms places no key")
        after = bisect.bisect_left(ids, position)
        neighbours = (ids[after % len(ids)], ids[after - 1])
        return min(neighbours, key=lambda sid: (ring_distance(sid, position), sid))

    @cached_property
    def _ids_in_ring_order(self) -> list[int]:
        return sorted(self.swarms)

    def swarm_of_owner(self, session_id: str) -> int:
        """:meth:`swarm_for_key` of a Session id's key (``DecodeError`` for one that is
        not), remembered: a node asks it of every store, every row a peer replicates and
        every read, for the few owners its swarm serves."""
        known = self._owner_swarms.get(session_id)
        if known is None:
            known = self.swarm_for_key(session_id_key(session_id))
            if len(self._owner_swarms) >= OWNERS_REMEMBERED:
                self._owner_swarms.clear()
            self._owner_swarms[session_id] = known
        return known

    @cached_property
    def _owner_swarms(self) -> dict[str, int]:
        return {}

    def members_of_owner(self, session_id: str) -> tuple[NodeInfo, ...]:
        """The members of the swarm :meth:`swarm_of_owner` names."""
        return self.swarms[self.swarm_of_owner(session_id)]

    def peers_of(self, node_pubkey: str) -> tuple[NodeInfo, ...]:
        """The other members of ``node_pubkey``'s swarm (none if it has none)."""
        peers = self._peers.get(node_pubkey)
        if peers is None:
            swarm = self.swarm_of_node(node_pubkey)
            members = () if swarm is None else self.swarms[swarm]
            peers = tuple(n for n in members if n.pubkey != node_pubkey)
            self._peers[node_pubkey] = peers
        return peers

    @cached_property
    def _peers(self) -> dict[str, tuple[NodeInfo, ...]]:
        return {}

    def nodes_for_key(self, x25519_public: bytes) -> tuple[NodeInfo, ...]:
        return self.swarms[self.swarm_for_key(x25519_public)]

    def swarm_of_node(self, node_pubkey: str) -> int | None:
        return self._swarm_by_node.get(node_pubkey)

    @cached_property
    def _swarm_by_node(self) -> dict[str, int]:
        """Looked up for every request a node answers (is this owner ours?), so built
        once per snapshot rather than searched each time."""
        by_node: dict[str, int] = {}
        for swarm_id, members in self.swarms.items():
            for member in members:
                by_node.setdefault(member.pubkey, swarm_id)
        return by_node

    def all_nodes(self) -> Sequence[NodeInfo]:
        return [node for members in self.swarms.values() for node in members]
