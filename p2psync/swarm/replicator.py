"""A node's replication driver: every new row goes to every member of its swarm.

One epoch per membership: a worker per peer drains a queue bounded in rows and bytes
(:mod:`.outbound`; a full queue is not an error, repair catches up),
and the hand-over (:mod:`.hand_over`) runs beside them; a membership change cancels the
epoch and starts the next with the new peers. A peer's failure, whatever it is, restarts
only that peer's worker after :data:`REPLICATION_RETRY_S`; what it resends then is
:mod:`.taken_rows`'s to say.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

import trio

from overlay.link import Transport

from ..clock import Clock
from ..identity import Identity
from ..rpc import open_rpc
from .constants import REPLICATION_RETRY_S
from .node_shared import PEER_CALL_TIMEOUT_S, NodeStats
from .outbound import ReplicationQueue
from .peer_calls import PeerCalls
from .ring import NodeInfo
from .rows import StoredMessage
from .taken_rows import TAKE_ROWS, TakenRows

logger = logging.getLogger(__name__)


class Replicator:
    """Replication to the peers ``peers()`` names. Each epoch starts with the rows
    ``pending()`` lists (stores still waiting for their quorum: the new peers count);
    ``committed(peer, rows)`` is told what a peer took, and ``lost()`` that a peer's
    rows may now need repair."""

    def __init__(
        self,
        transport: Transport,
        identity: Identity,
        clock: Clock,
        *,
        peers: Callable[[], Sequence[NodeInfo]],
        pending: Callable[[], Iterable[StoredMessage]],
        committed: Callable[[str, Iterable[StoredMessage]], None],
        lost: Callable[[], None],
        hand_over: Callable[[], Awaitable[None]],
        queue_bytes: int,
        stats: NodeStats,
    ) -> None:
        self._transport = transport
        self._identity = identity
        self._clock = clock
        self._peers = peers
        self._pending = pending
        self._committed = committed
        self._lost = lost
        self._hand_over = hand_over
        self._queue_bytes = queue_bytes
        self._stats = stats
        self._queues: dict[str, ReplicationQueue] = {}
        self._membership_changed = trio.Event()

    @property
    def queues(self) -> Mapping[str, ReplicationQueue]:
        """Per peer of the current membership, the rows waiting to be replicated to it."""
        return self._queues

    def membership_changed(self) -> None:
        """Start the next epoch with the peers of the new membership."""
        self._membership_changed.set()

    def offer(self, rows: Sequence[StoredMessage]) -> None:
        """Queue ``rows`` for every peer; a row a full queue drops is left to repair."""
        for row in rows:
            for queue in self._queues.values():
                if not queue.offer(row):
                    self._stats.replication_dropped += 1
                    self._lost()

    async def run(self) -> None:
        while True:
            changed = self._membership_changed
            async with trio.open_nursery() as nursery:
                self._queues = {}
                for peer in self._peers():
                    queue = ReplicationQueue(max_bytes=self._queue_bytes)
                    self._queues[peer.pubkey] = queue
                    nursery.start_soon(self._replicate_to, peer, queue)
                for row in self._pending():
                    for queue in self._queues.values():
                        queue.offer(row)
                nursery.start_soon(self._hand_over)
                await changed.wait()
                self._membership_changed = trio.Event()
                nursery.cancel_scope.cancel()

    async def _replicate_to(self, peer: NodeInfo, queue: ReplicationQueue) -> None:
        """Send ``peer`` what its queue gathers, as :class:`~.taken_rows.TakenRows` says
        (what is resent after a failure); one failure, whatever it is, is this peer's."""
        taken = TakenRows()
        while True:
            try:
                async with open_rpc(self._transport, peer.url) as client:
                    calls = PeerCalls(client, self._identity, self._clock)
                    while True:
                        if not taken:
                            taken.took(await queue.take(TAKE_ROWS))
                        for part in taken.parts():
                            with trio.fail_after(PEER_CALL_TIMEOUT_S):
                                refused = (await calls.replicate(part)).refused
                            self._committed(peer.pubkey, taken.committed(part, refused))
                            taken.done(part)
            except Exception as exc:
                logger.info("replication to %s interrupted: %r", peer.pubkey[:8], exc)
                self._lost()
                taken.failed()
                await trio.sleep(REPLICATION_RETRY_S)
