"""The rows a service node has yet to push to one swarm peer, bounded in rows and bytes.

A row that does not fit is dropped rather than waited for: the client's store was already
committed and acknowledged, so holding the client up for a slow or dead peer would only
spread the fault, and repair brings the peer whatever it missed. The bound is in bytes as
well as rows because a row carries up to 76 800 bytes of data: 10 000 such rows held for
a peer that is down would be 768 MB.
"""

from __future__ import annotations

from collections import deque

import trio

from .rows import StoredMessage

#: Rows queued per peer at most.
REPLICATION_QUEUE_ROWS = 10_000
#: Bytes of row data (and a fixed overhead per row) queued per peer at most.
REPLICATION_QUEUE_BYTES = 16 * 1024 * 1024
#: What a row costs besides its data: key, hash, times, proof, and the object itself.
ROW_OVERHEAD_BYTES = 256


def row_cost(row: StoredMessage) -> int:
    """The bytes a queued row is charged for."""
    return ROW_OVERHEAD_BYTES + len(row.data or b"") + len(row.proof or b"")


class ReplicationQueue:
    """A bounded queue with one consumer that takes what has gathered in one go."""

    def __init__(
        self, max_rows: int = REPLICATION_QUEUE_ROWS, max_bytes: int = REPLICATION_QUEUE_BYTES
    ) -> None:
        self._rows: deque[StoredMessage] = deque()
        self._max_rows = max_rows
        self._max_bytes = max_bytes
        self.queued_bytes = 0
        self._nonempty = trio.Event()

    def __len__(self) -> int:
        return len(self._rows)

    def offer(self, row: StoredMessage) -> bool:
        """Queue ``row`` if it fits in both bounds; False if it was dropped."""
        cost = row_cost(row)
        if len(self._rows) >= self._max_rows or self.queued_bytes + cost > self._max_bytes:
            return False
        self._rows.append(row)
        self.queued_bytes += cost
        self._nonempty.set()
        return True

    async def take(self, max_rows: int) -> list[StoredMessage]:
        """Wait until something is queued, then take up to ``max_rows`` rows, oldest first."""
        while not self._rows:
            await self._nonempty.wait()
            self._nonempty = trio.Event()
        batch = [self._rows.popleft() for _ in range(min(max_rows, len(self._rows)))]
        self.queued_bytes -= sum(row_cost(row) for row in batch)
        return batch
