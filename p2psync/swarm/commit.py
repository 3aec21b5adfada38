"""Group commit: the rows of every store that arrived together, in one transaction.

A transaction's COMMIT is most of what a store costs a node (a profile put 109 of 316 µs
per store there), and it costs the same for one row as for a hundred. Clients pipeline
their stores and a node serves many clients, so while one commit runs the next requests
gather; each store waits for the commit that holds its row, and is then acknowledged,
so nothing is acknowledged before it is durable.

What a store does next with its committed row (queue it for the swarm's peers) runs in
the committing loop, for every row of the transaction, before any of the waiting stores
resumes: the rows of one transaction then reach the replication queues together. Done by
each store as it resumed, the replication workers (woken by the first row, and run in
Trio's random order among the resuming stores) took them a few at a time, and every
replication call and peer transaction carried a handful of rows instead of the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import outcome
import trio

from .rows import StoredMessage
from .store import MessageStore

T = TypeVar("T")


class CommitFailed(Exception):
    """The transaction holding a row failed (say, the disk is full); nothing of it is
    stored."""


class _Batch:
    def __init__(self) -> None:
        self.rows: list[StoredMessage] = []
        #: Per row, what runs once it is committed, called with whether it was new here.
        self.then: list[Callable[[bool], Any]] = []
        #: Per row, what its ``then`` returned or raised.
        self.outcomes: list[outcome.Outcome[Any]] = []
        self.error: Exception | None = None
        self.done = trio.Event()


class GroupCommit:
    """``await put(row, then)`` from any number of tasks; ``run`` commits what has
    gathered."""

    def __init__(self, store: MessageStore) -> None:
        self._store = store
        self._batch = _Batch()
        self._wanted = trio.Event()
        self.transactions = 0

    async def put(self, row: StoredMessage, then: Callable[[bool], T]) -> T:
        """Commit ``row`` with whatever else is waiting. ``then(new)``, with ``new`` True if
        the row was new here, runs in the committing loop once the transaction is
        committed (see above); ``put`` returns what it returned, or raises what it raised
        (and :class:`CommitFailed` if the transaction failed)."""
        batch = self._batch
        index = len(batch.rows)
        batch.rows.append(row)
        batch.then.append(then)
        self._wanted.set()
        await batch.done.wait()
        if batch.error is not None:
            raise CommitFailed(str(batch.error)) from batch.error
        return cast(T, batch.outcomes[index].unwrap())

    async def run(self) -> None:
        """Commit batches until cancelled. A failed transaction fails its own stores and
        no others, and a ``then`` that raises fails its own store only."""
        while True:
            await self._wanted.wait()
            # Woken by the first row, let the other stores that the read loops started in
            # the same scheduler turn add theirs (under the throughput bench's load, this
            # alone took a transaction from 4 rows to 8).
            await trio.lowlevel.checkpoint()
            self._wanted = trio.Event()
            batch, self._batch = self._batch, _Batch()
            try:
                added = self._store.put_many(batch.rows)
                self.transactions += 1
            except Exception as exc:  # the stores waiting on it report it; the loop goes on
                batch.error = exc
            else:
                batch.outcomes = [
                    outcome.capture(then, new) for then, new in zip(batch.then, added, strict=True)
                ]
            batch.done.set()
