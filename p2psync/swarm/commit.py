"""Group commit: the rows of every store that arrived together, in one transaction.

A transaction's COMMIT is most of what a store costs a node's storage (a profile put 109
of 316 µs per store there), and it costs the same for one row as for a hundred. Clients
pipeline their stores and a node serves many clients, so while one commit runs the next
stores gather; each is acknowledged only after the commit that holds its row, so nothing
is acknowledged before it is durable.

A store does not wait here: it hands its row over with what to do once the row's
transaction is over (:meth:`GroupCommit.add`), and the committing loop calls that for
every row of the transaction, in order. The rows of one transaction therefore reach the
replication queues together (done by each store as it resumed, in Trio's random order,
the replication workers took them a few at a time, and every replication call carried a
handful of rows instead of the batch), and no store needs a task of its own to wait.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from .rows import StoredMessage
from .store import MessageStore

logger = logging.getLogger(__name__)

#: Told, once its transaction is over, whether the row was new here (True), a copy of
#: one already held (False), or the exception that failed the transaction.
Committed = Callable[[bool | Exception], None]


class CommitFailed(Exception):
    """The transaction holding a row failed (say, the disk is full); nothing of it is
    stored."""


class GroupCommit:
    """``add(row, then)`` from any number of tasks; ``run`` commits what has gathered."""

    def __init__(self, store: MessageStore) -> None:
        self._store = store
        self._rows: list[StoredMessage] = []
        self._then: list[Committed] = []
        self._wanted = trio.Event()
        self.transactions = 0

    def add(self, row: StoredMessage, then: Committed) -> None:
        """Commit ``row`` with whatever else is waiting, then call ``then`` in the
        committing loop (see above)."""
        self._rows.append(row)
        self._then.append(then)
        self._wanted.set()

    async def run(self) -> None:
        """Commit batches until cancelled. A failed transaction fails its own rows and no
        others, and a ``then`` that raises is logged and costs no other row its answer."""
        while True:
            await self._wanted.wait()
            # Woken by the first row, let the other stores that the read loops took in
            # the same scheduler turn add theirs (under the throughput bench's load, this
            # alone took a transaction from 4 rows to 8).
            await trio.lowlevel.checkpoint()
            self._wanted = trio.Event()
            rows, then = self._rows, self._then
            self._rows, self._then = [], []
            results: list[bool | Exception]
            try:
                results = list(self._store.put_many(rows))
                self.transactions += 1
            except Exception as exc:  # the rows' stores report it; the loop goes on
                results = [CommitFailed(str(exc))] * len(rows)
            for call, result in zip(then, results, strict=True):
                try:
                    call(result)
                except Exception:
                    logger.exception("a store's follow-up to its commit failed")
