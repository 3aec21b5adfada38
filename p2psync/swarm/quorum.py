"""Which stores a node has committed but not yet acknowledged, and who else holds them.

A node acknowledges a client's store only once the row is committed on ``quorum`` members
of its swarm, itself included (DESIGN.md §4): with the default of 2, losing any one member
for good, the one that answered included, loses nothing that was acknowledged. The other
members' commits are learnt from the replies to the replication the node does anyway (a
peer answers ``replicate`` after its own commit), so quorum costs no extra message.

This is the rule and its bookkeeping, without I/O: told that a store's row is committed
here (:meth:`QuorumBook.after_commit`), it says whether the row goes to the peers and
whether the store is acknowledged now or waits for its quorum, and until when; told which
peer committed which rows, it names the stores now safe to acknowledge.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .rows import StoredMessage

#: A row's identity on every member: owner, namespace, hash.
RowKey = tuple[str, int, bytes]


def row_key(row: StoredMessage) -> RowKey:
    return (row.pubkey, row.namespace, row.hash)


@dataclass(frozen=True, slots=True)
class AfterCommit:
    """What follows a store's commit on the node that took it."""

    #: Queue the row for the swarm's other members.
    replicate: bool
    #: None: acknowledge the store now; else wait for its quorum until this time (then
    #: answer ``unavailable``: the row stays and keeps replicating, and a retry is safe).
    wait_until_ms: int | None


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

    def after_commit(
        self, row: StoredMessage, new: bool, peers_needed: int, now_ms: int, timeout_ms: int
    ) -> AfterCommit:
        """A store's ``row`` is committed here (``new``: it was not held before), and
        ``peers_needed`` other members must commit it too.

        * A new row goes to every peer, whatever the quorum: replication is how the swarm
          holds it at all.
        * A duplicate waits for its quorum too: the first store of it may have been
          answered ``unavailable``, and the node keeps no record of which rows made it.
          Peers holding it already answer at once. It is offered to the peers again
          unless a store waiting for the same row has offered it already.
        * No other member needed (a swarm of one, a quorum of one): acknowledged at once.
        """
        key = row_key(row)
        joining = key in self._waiting
        awaiting = not joining and peers_needed > 0
        if awaiting:
            self._waiting[key] = _Waiting(row, peers_needed)
        waits = joining or awaiting
        return AfterCommit(new or awaiting, now_ms + timeout_ms if waits else None)

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
