"""The ``store`` method: what a node acknowledges, and when.

A client's message becomes a row (:meth:`~.node_core.NodeCore.new_row` decides the
refusals), is charged to its connection's byte rate and its owner's quota
(:mod:`.allowance`), is committed with whatever other stores arrived with it
(:mod:`.commit`), and is acknowledged only once ``quorum`` members of the swarm hold it,
this one included (:mod:`.quorum`): no single member's loss for good loses an
acknowledged store. A store whose quorum does not come in time is answered
``unavailable``; its row stays and keeps replicating, and a retry (to any member) is the
same message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import trio

from ..clock import Clock
from ..errors import RpcError
from ..rpc import Connection, TokenBucket
from ..wire import Fields
from .allowance import OwnerQuota, connection_budget
from .commit import CommitFailed, GroupCommit
from .messages import StoreReply, StoreRequest
from .node_config import NodeConfig
from .node_core import NodeCore, Push, Replicate
from .node_shared import NodeStats
from .quorum import QuorumBook, RowKey, row_key
from .rows import StoredMessage
from .store import MessageStore

#: Runs a node core's effects (pushes to subscribers, rows queued for the peers).
Execute = Callable[[Iterable[Push[Connection] | Replicate]], None]


class StoreAcceptance:
    """``store`` (an RPC handler), the group commit it waits on (``run``), and the
    quorum it waits for (``peer_committed``, from the replicator)."""

    def __init__(
        self,
        core: NodeCore[Connection],
        store: MessageStore,
        clock: Clock,
        config: NodeConfig,
        quota: OwnerQuota,
        stats: NodeStats,
        execute: Execute,
    ) -> None:
        self._core = core
        self._clock = clock
        self._config = config
        self._quota = quota
        self._stats = stats
        self._execute = execute
        self._commits = GroupCommit(store)
        self._quorum = QuorumBook()
        self._reached: dict[RowKey, trio.Event] = {}
        self._budgets: dict[Connection, TokenBucket] = {}

    async def run(self) -> None:
        """Commit what gathers, until cancelled."""
        await self._commits.run()

    def pending(self) -> list[StoredMessage]:
        """Rows still short of their quorum, to offer again to a new membership's peers."""
        return self._quorum.rows()

    async def store(self, params: Fields, conn: Connection) -> Any:
        row = self._core.new_row(StoreRequest.from_wire(params), self._clock.now_ms())
        self._charge(conn, row)
        key = row_key(row)

        def committed(new: bool) -> trio.Event | None:
            """The quorum to wait for. Runs in the commit loop, so a transaction's rows are
            queued for the peers together (see :mod:`.commit`), and the event is taken
            there too: looked up once this store resumed, it could be gone because
            another store of the same row gave up on it, and this one would be answered
            without its quorum."""
            effects: list[Push[Connection] | Replicate] = []
            if new:
                self._stats.stored += 1
                self._quota.stored(row.pubkey, len(row.data or b""))
                effects.extend(self._core.pushes([row]))
            else:
                self._stats.duplicates += 1
            # A duplicate waits for its quorum too: the first store of it may have been
            # answered ``unavailable``, and this node keeps no record of which rows made
            # it. Peers that hold it already answer at once.
            awaiting = key not in self._reached and self._quorum.expect(
                row, self._core.peers_needed()
            )
            if awaiting:
                self._reached[key] = trio.Event()
            if new or awaiting:  # every new row goes to every peer, whatever the quorum
                effects.append(Replicate((row,)))
            self._execute(effects)
            return self._reached.get(key)

        try:
            reached = await self._commits.put(row, committed)
        except CommitFailed as exc:
            raise RpcError("unavailable", f"the node could not store: {exc}") from exc
        if reached is not None:
            with trio.move_on_after(self._config.quorum_timeout_s):
                await reached.wait()
            if not reached.is_set():
                self._quorum.give_up(key)
                self._reached.pop(key, None)
                self._stats.quorum_missed += 1
                raise RpcError(
                    "unavailable",
                    "stored here but not yet on enough members of the swarm; retrying is safe",
                )
        return StoreReply(row.hash, row.expiry_ms).to_wire()

    def peer_committed(self, peer: str, rows: Iterable[StoredMessage]) -> None:
        """``peer`` committed ``rows``: wake the stores whose quorum that completes."""
        for key in self._quorum.committed(peer, rows):
            reached = self._reached.pop(key, None)
            if reached is not None:
                reached.set()

    def _charge(self, conn: Connection, row: StoredMessage) -> None:
        """Refuse a store past its connection's byte rate (``rate_limited``) or its
        owner's quota (``too_large``): :mod:`.allowance`."""
        size = len(row.data or b"")
        now = self._clock.now_s()
        budget = self._budgets.get(conn)
        if budget is None:
            budget = connection_budget(now, self._config.store_bytes_per_s)
            self._budgets[conn] = budget
            conn.on_close(lambda: self._forget_budget(conn))
        if not budget.take(now, size):
            raise RpcError("rate_limited", "this connection stores too fast: slow down")
        if not self._quota.admits(row.pubkey, size):
            raise RpcError("too_large", f"this owner's mailbox is full ({self._quota.quota} bytes)")

    def _forget_budget(self, conn: Connection) -> None:
        self._budgets.pop(conn, None)
