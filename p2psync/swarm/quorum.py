"""Which stores a node has committed but not yet acknowledged, and who else holds them.

A node acknowledges a client's store only once the row is committed on ``quorum`` members
of its swarm, itself included (DESIGN.md §4): with the default of 2, losing any one member
for good, the one that answered included, loses nothing that was acknowledged. The other
members' commits are learnt from the replies to the replication the node does anyway (a
peer answers ``replicate`` after its own commit), so quorum costs no extra message.

This is the bookkeeping alone, without I/O or time: the node says what it expects and
which peer committed which rows, and is told which stores are now safe to acknowledge.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .rows import StoredMessage

#: A row's identity on every member: owner, namespace, hash.
RowKey = tuple[str, int, bytes]


def row_key(row: StoredMessage) -> RowKey:
    return (row.pubkey, row.namespace, row.hash)


@dataclass
class _Waiting:
    row: StoredMessage
    needed: int
    holders: set[str] = field(default_factory=set)


class QuorumBook:
    """Stores waiting for other members' commits."""

    def __init__(self) -> None:
        self._waiting: dict[RowKey, _Waiting] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, key: RowKey) -> bool:
        return key in self._waiting

    def expect(self, row: StoredMessage, peers_needed: int) -> bool:
        """Start waiting for ``peers_needed`` other members to commit ``row``; False when
        nothing is needed (a swarm of one, or a quorum of one)."""
        if peers_needed <= 0:
            return False
        self._waiting.setdefault(row_key(row), _Waiting(row, peers_needed))
        return True

    def committed(self, peer: str, rows: Iterable[StoredMessage]) -> list[RowKey]:
        """``peer`` has committed ``rows``; the keys that have now reached their quorum
        (and are forgotten here)."""
        done = []
        for row in rows:
            key = row_key(row)
            waiting = self._waiting.get(key)
            if waiting is None:
                continue
            waiting.holders.add(peer)
            if len(waiting.holders) >= waiting.needed:
                del self._waiting[key]
                done.append(key)
        return done

    def give_up(self, key: RowKey) -> None:
        """The client was answered without its quorum (time ran out): stop counting."""
        self._waiting.pop(key, None)

    def rows(self) -> list[StoredMessage]:
        """Every row still waiting, to offer again to the peers of a new membership."""
        return [waiting.row for waiting in self._waiting.values()]
