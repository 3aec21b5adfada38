"""When a copy queued for deletion leaves its swarm, sans-I/O: the outbox driver asks
:class:`DeletionSchedule` which deletions are due and sends them, grouped by
:func:`delete_batches`.

A deletion goes out a random delay (``DeviceConfig.delete_delay_s``) after it is first
seen: sent at the acknowledgement that queued it, it would reach the server within
milliseconds of the siblings' session traffic, and the server's log would carry the
rhythm of sibling sync (``benchmarks/relay_audit.py``, check b). One an earlier process
queued is due at once: its acknowledgement is a process ago, and a short-lived process
(``p2psync device send``) never lives through a delay of its own.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Sequence

from ..swarm.constants import MAX_HASHES_PER_REQUEST

#: (owner, namespace, message hash) of a copy to delete.
Deletion = tuple[str, int, bytes]


class DeletionSchedule:
    """The time each queued deletion goes out (epoch ms), drawn when first seen."""

    def __init__(
        self,
        inherited: Iterable[Deletion],
        now_ms: int,
        delay_s: tuple[float, float],
        rng: random.Random,
    ) -> None:
        """``inherited``: what an earlier process queued (due at ``now_ms``)."""
        self._delay_s = delay_s
        self._rng = rng
        self._at: dict[Deletion, int] = {key: now_ms for key in inherited}

    def due(self, queued: Sequence[Deletion], now_ms: int) -> list[Deletion]:
        """Of the deletions queued now, those whose time has come; the others keep (or
        get) theirs, and any no longer queued are forgotten."""
        low, high = self._delay_s
        self._at = {
            key: self._at[key]
            if key in self._at
            else now_ms + int(self._rng.uniform(low, high) * 1000)
            for key in queued
        }
        return [key for key in queued if self._at[key] <= now_ms]

    def sent(self, key: Deletion) -> None:
        self._at.pop(key, None)

    def next_ms(self) -> int | None:
        """When the next queued deletion is due (None: none is queued)."""
        return min(self._at.values(), default=None)

    def overdue(self, now_ms: int) -> bool:
        """Whether a deletion is past due (one that failed to go out)."""
        due = self.next_ms()
        return due is not None and due <= now_ms


def delete_batches(deletions: Iterable[Deletion]) -> list[tuple[str, int, list[bytes]]]:
    """``deletions`` as requests: one per owner and namespace, at most
    ``MAX_HASHES_PER_REQUEST`` hashes each."""
    grouped: dict[tuple[str, int], list[bytes]] = defaultdict(list)
    for owner, namespace, digest in deletions:
        grouped[owner, namespace].append(digest)
    return [
        (owner, namespace, digests[start : start + MAX_HASHES_PER_REQUEST])
        for (owner, namespace), digests in grouped.items()
        for start in range(0, len(digests), MAX_HASHES_PER_REQUEST)
    ]
