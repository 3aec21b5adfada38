"""A node's hand-over driver: give every owner that no longer maps to this node's swarm
to its new swarm, and forget it once every new member has taken it.

An owner's rows are forgotten here only once every member of its new swarm has them, as
read back from each (a member's word that it took them is not enough), and at least one
of those members is established: listed here for ``HAND_OVER_ELDER_MS`` already
(:func:`~.node_core.may_forget`). A wave of fresh nodes that takes over a swarm and
vanishes cannot make the old members drop what they held; it must stay, listed and
admitted, for that long first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import trio

from ..backoff import Backoff
from ..clock import Clock
from .constants import REPLICATION_RETRY_S
from .messages import LISTING_PAGE
from .node_core import batches, may_forget
from .node_shared import Dial, NodeStats
from .quorum import row_key
from .ring import NodeInfo, SwarmMap
from .rows import StoredMessage
from .store import MessageStore

logger = logging.getLogger(__name__)

HAND_OVER_MAX_BACKOFF_S = 300.0


class HandOver:
    """Hand-over passes over the owners ``owns`` rejects, by the map ``swarms()``;
    ``first_listed`` is when this node first saw each node listed (epoch ms)."""

    def __init__(
        self,
        store: MessageStore,
        clock: Clock,
        *,
        swarms: Callable[[], SwarmMap],
        owns: Callable[[str], bool],
        first_listed: Mapping[str, int],
        dial: Dial,
        stats: NodeStats,
    ) -> None:
        self._store = store
        self._clock = clock
        self._swarms = swarms
        self._owns = owns
        self._first_listed = first_listed
        self._dial = dial
        self._stats = stats

    async def run(self) -> None:
        """Pass after pass, with back-off (a new member may not have read the registry
        yet), until nothing foreign is left. The replicator runs it inside each epoch,
        so a newer membership restarts it."""
        backoff = Backoff(REPLICATION_RETRY_S, HAND_OVER_MAX_BACKOFF_S)
        while True:
            if await self.once():
                return
            await trio.sleep(backoff.failed())

    async def once(self) -> bool:
        """One pass; True when this node holds no foreign owner any more. A target's
        failure, whatever it is, leaves that owner for the next pass."""
        if not self._swarms().swarms:
            return True
        now = self._clock.now_ms()
        complete = True
        for owner in self._store.owners():
            if self._owns(owner):
                continue
            rows = list(self._store.records(now, [owner]))
            targets = self._swarms().members_of_owner(owner)
            takers: list[NodeInfo] = []
            for target in targets:
                try:
                    if await self._hand_to(target, rows):
                        takers.append(target)
                except Exception as exc:  # one peer's failure, whatever it is, is that peer's
                    logger.info(
                        "hand-over of %s to %s failed: %r", owner[:10], target.pubkey[:8], exc
                    )
            if may_forget(takers, targets, self._first_listed, now):
                self._store.remove_owner(owner)
                self._stats.handed_over += len(rows)
            else:
                complete = False
        return complete

    async def _hand_to(self, target: NodeInfo, rows: Sequence[StoredMessage]) -> bool:
        """Push ``rows`` to ``target`` a batch at a time, reading back after each that it
        holds every row of it: a target that counts this node a stranger to the owner
        answers ``held`` only about the rows this node pushed it lately."""
        calls = await self._dial(target)
        for part in batches(rows):
            if (await calls.replicate(part)).refused:
                return False
            for start in range(0, len(part), LISTING_PAGE):
                keys = [row_key(r) for r in part[start : start + LISTING_PAGE]]
                if await calls.held(keys) < len(keys):
                    return False
        return True
