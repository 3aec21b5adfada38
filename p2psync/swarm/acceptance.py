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

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import replace
from functools import partial
from typing import Any

import outcome
import trio

from ..clock import Clock
from ..errors import RpcError
from ..rpc import Connection, Later, refusal_of
from ..wire import Fields
from .access import NEEDS_ACCESS, AccessChecks
from .allowance import ConnectionBudgets, OwnerQuota, charge_of
from .commit import GroupCommit
from .messages import StoreBatchReply, StoreBatchRequest, StoreReply, StoreRequest
from .node_config import NodeConfig
from .node_core import NodeCore, Push, Replicate
from .node_shared import NodeStats
from .quorum import QuorumBook, RowKey, row_key
from .rows import StoredMessage
from .store import MessageStore

#: Runs a node core's effects (pushes to subscribers, rows queued for the peers).
Execute = Callable[[Iterable[Push[Connection] | Replicate]], None]


class StoreAcceptance:
    """``store`` (an RPC handler answering with a :class:`~p2psync.rpc.Later`), the group
    commit and the quorum timeouts it relies on (``run``), and the quorum it waits for
    (``peer_committed``, from the replicator). No store has a task of its own: the
    commit loop, the replicator and the timeout loop answer it (and the RPC server, if
    the reply has to wait for room in the client's outbox)."""

    def __init__(
        self,
        core: NodeCore[Connection],
        store: MessageStore,
        clock: Clock,
        config: NodeConfig,
        quota: OwnerQuota,
        stats: NodeStats,
        execute: Execute,
        count_refusal: Callable[[str], None] = lambda code: None,
    ) -> None:
        """``count_refusal``: told the code of each store of a batch that is refused (the
        RPC server counts a whole request's refusals itself)."""
        self._core = core
        self._count_refusal = count_refusal
        self._clock = clock
        self._config = config
        self._quota = quota
        self._stats = stats
        self._execute = execute
        self._store = store
        self._commits = GroupCommit(store)
        self._quorum = QuorumBook()
        #: Per row short of its quorum, the stores waiting for it, with their replies.
        self._waiting: dict[RowKey, dict[Later, Any]] = {}
        #: (deadline, row, store) of every store that waited, in deadline order: one
        #: timeout for all, so arrival order.
        self._deadlines: deque[tuple[int, RowKey, Later]] = deque()
        self._deadline_added = trio.Event()
        self._budgets = ConnectionBudgets(config.store_bytes_per_s)
        self._access = AccessChecks()

    async def run(self) -> None:
        """Commit what gathers and give up on late quorums, until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._commits.run)
            nursery.start_soon(self._give_up_late)

    def pending(self) -> list[StoredMessage]:
        """Rows still short of their quorum, to offer again to a new membership's peers."""
        return self._quorum.rows()

    def store(self, params: Fields, conn: Connection) -> Later:
        return self._accept(StoreRequest.from_wire(params), conn)

    def store_batch(self, params: Fields, conn: Connection) -> Later:
        """Each store of the batch taken as ``store`` takes it (its own refusals, charge,
        commit and quorum), all answered in one reply once the last is settled. The
        owners must all be of this node's swarm: one that is not refuses the whole
        batch ``wrong_swarm`` (naming its swarm), as a ``store`` would be, so a client
        sends it there instead of learning it item by item."""
        stores = StoreBatchRequest.from_wire(params).stores
        for owner in dict.fromkeys(store.pubkey for store in stores):  # the first foreign one
            self._core.require_swarm(owner)
        batch = _Batch(len(stores), self._count_refusal)
        for index, store in enumerate(stores):
            try:
                later = self._accept(store, conn)
            except Exception as exc:
                batch.settle(index, outcome.Error(exc))
            else:
                later.listen(partial(batch.settle, index))
        return batch.reply

    def _accept(self, request: StoreRequest, conn: Connection) -> Later:
        now_ms = self._clock.now_ms()
        vouched = self._access.vouched(request.pubkey, request.access, now_ms)
        row = replace(self._core.new_row(request, now_ms), vouched=vouched)
        self._charge(conn, row)
        later = Later()
        self._commits.add(row, partial(self._committed, row, later))
        return later

    def _committed(self, row: StoredMessage, later: Later, result: bool | Exception) -> None:
        """In the commit loop, so a transaction's rows are queued for the peers together
        (see :mod:`.commit`). Whatever fails here fails this store alone, answered as a
        handler's failure, and leaves no quorum counted for nobody."""
        try:
            self._follow_up(row, later, result)
        except Exception as exc:
            self._stop_waiting(row_key(row), later)
            later.fail(exc)

    def _follow_up(self, row: StoredMessage, later: Later, result: bool | Exception) -> None:
        if isinstance(result, Exception):
            later.fail(RpcError("unavailable", f"the node could not store: {result}"))
            return
        effects: list[Push[Connection] | Replicate] = []
        if result:
            self._stats.stored += 1
            effects.extend(self._core.pushes([row]))
        else:
            self._stats.duplicates += 1
        timeout_ms = int(self._config.quorum_timeout_s * 1000)
        then = self._quorum.after_commit(
            row, result, self._core.peers_needed(), self._clock.now_ms(), timeout_ms
        )
        if then.replicate:
            effects.append(Replicate((row,)))
        self._execute(effects)
        reply = StoreReply(row.hash, row.expiry_ms).to_wire()
        if then.wait_until_ms is None:
            later.resolve(reply)
            return
        key = row_key(row)
        self._waiting.setdefault(key, {})[later] = reply
        while self._deadlines and self._deadlines[0][2].done:
            self._deadlines.popleft()
        self._deadlines.append((then.wait_until_ms, key, later))
        self._deadline_added.set()

    def peer_committed(self, peer: str, rows: Iterable[StoredMessage]) -> None:
        """``peer`` committed ``rows``: answer the stores whose quorum that completes."""
        for key in self._quorum.committed(peer, rows):
            for later, reply in self._waiting.pop(key, {}).items():
                later.resolve(reply)

    async def _give_up_late(self) -> None:
        """Answer ``unavailable`` to each store whose quorum did not come within
        ``quorum_timeout_s`` of its commit; once no store waits for a row, stop counting
        its peers' commits."""
        while True:
            if not self._deadlines:
                self._deadline_added = trio.Event()
                await self._deadline_added.wait()
                continue
            deadline, key, later = self._deadlines[0]
            if not later.done and self._clock.now_ms() < deadline:
                await self._clock.sleep_until_ms(deadline)
                continue
            self._deadlines.popleft()
            if later.done:
                continue
            self._stop_waiting(key, later)
            self._stats.quorum_missed += 1
            later.fail(
                RpcError(
                    "unavailable",
                    "stored here but not yet on enough members of the swarm; retrying is safe",
                )
            )
            await trio.lowlevel.checkpoint()  # many may be due at once: let the rest run

    def _stop_waiting(self, key: RowKey, later: Later) -> None:
        """``later`` no longer waits for ``key``'s quorum; once no store does, its peers'
        commits are no longer counted."""
        waiting = self._waiting.get(key, {})
        waiting.pop(later, None)
        if not waiting:
            self._waiting.pop(key, None)
            self._quorum.give_up(key)

    def _charge(self, conn: Connection, row: StoredMessage) -> None:
        """Refuse a store past its connection's byte rate or its owner's quota (less the
        owner's reserve, unless the row is vouched for: :mod:`.access`), both
        ``rate_limited`` (:mod:`.allowance`): a full mailbox takes mail again as rows
        expire, so a sender keeps its copy and asks later; a refusal for good would have
        every sender drop its mail to an owner a stranger flooded."""
        size = charge_of(row)
        if not self._budgets.charge(conn, self._clock.now_s(), size):
            raise RpcError("rate_limited", "this connection stores too fast: slow down")
        if self._quota.has_room_for(row):
            # Counted now, not once committed: stores read in one turn add up.
            self._quota.stored(row.pubkey, size)
            return
        if self._store.holds(*row_key(row), self._clock.now_ms()):
            return  # a retry of a row held already takes no room, and is counted no more
        if row.vouched:
            raise RpcError(
                "rate_limited", f"this owner's mailbox is full ({self._quota.quota} bytes): later"
            )
        limit = self._quota.quota - self._quota.reserve
        raise RpcError(
            "rate_limited",
            f"this owner's mailbox is full ({limit} bytes) to stores without its access: later",
            {NEEDS_ACCESS: True},
        )


class _Batch:
    """A ``store_batch``'s answer: one result per store, in order, resolved once each
    store has its own (the reply of a ``store``, or its refusal, counted as the server
    counts a refused request's)."""

    def __init__(self, stores: int, count_refusal: Callable[[str], None]) -> None:
        self.reply = Later()
        self._results: list[Any] = [None] * stores
        self._open = stores
        self._count_refusal = count_refusal

    def settle(self, index: int, result: outcome.Outcome[Any]) -> None:
        if isinstance(result, outcome.Value):
            self._results[index] = result.value
        else:
            error = result.error if isinstance(result, outcome.Error) else None
            refusal = refusal_of(
                "store_batch", error if isinstance(error, Exception) else RuntimeError(error)
            )
            self._count_refusal(refusal.code)
            self._results[index] = refusal
        self._open -= 1
        if self._open == 0:
            self.reply.resolve(StoreBatchReply.wire(self._results))
