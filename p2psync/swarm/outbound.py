"""The rows a service node has yet to push to one swarm peer, bounded in rows and bytes.

A row that does not fit is dropped rather than waited for: the client's store was already
committed and acknowledged, so holding the client up for a slow or dead peer would only
spread the fault, and repair brings the peer whatever it missed. The bound is in bytes as
well as rows because a row carries up to 76 800 bytes of data: 10 000 such rows held for
a peer that is down would be 768 MB.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace

import trio

from .rows import StoredMessage

#: Rows queued per peer at most.
REPLICATION_QUEUE_ROWS = 10_000
#: Bytes of row data (and a fixed overhead per row) queued per peer at most.
REPLICATION_QUEUE_BYTES = 16 * 1024 * 1024
#: What a row costs besides its data and proof: key, hash, times, and the object itself.
ROW_OVERHEAD_BYTES = 256


def row_cost(row: StoredMessage) -> int:
    """The bytes a queued row is charged for, its proof included (see
    :meth:`ReplicationQueue.offer` for a proof queued already)."""
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
        #: Each proof the queued rows carry, held once, and how many rows carry it.
        self._proofs: dict[bytes, tuple[bytes, int]] = {}
        self._nonempty = trio.Event()

    def __len__(self) -> int:
        return len(self._rows)

    def offer(self, row: StoredMessage) -> bool:
        """Queue ``row`` if it fits in both bounds; False if it was dropped. A proof that
        a queued row carries already costs nothing more and is held once: a delete of
        1 000 hashes is 1 000 tombstones with one 33 KB proof, and charged for each,
        about 490 of them filled the queue."""
        held = None if row.proof is None else self._proofs.get(row.proof)
        cost = row_cost(row) - (0 if held is None else len(held[0]))
        if len(self._rows) >= self._max_rows or self.queued_bytes + cost > self._max_bytes:
            return False
        if row.proof is not None:
            if held is None:
                self._proofs[row.proof] = (row.proof, 1)
            else:
                self._proofs[row.proof] = (held[0], held[1] + 1)
                row = replace(row, proof=held[0])
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
        for row in batch:
            self.queued_bytes -= ROW_OVERHEAD_BYTES + len(row.data or b"")
            if row.proof is not None:
                proof, carriers = self._proofs.pop(row.proof)
                if carriers > 1:
                    self._proofs[proof] = (proof, carriers - 1)
                else:
                    self.queued_bytes -= len(proof)
        return batch
