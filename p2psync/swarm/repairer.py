"""A node's repair driver: anti-entropy with its swarm's members (:mod:`.repair`), so a
node that was down or partitioned converges without anyone re-sending.

With whom and when is :class:`~.repair.RepairSchedule`'s to say. One peer's failure,
whatever it is, ends only that peer's round.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence

import trio

from ..clock import Clock
from . import repair
from .constants import REPLICATION_RETRY_S
from .messages import LISTING_PAGE
from .node_core import batches
from .node_shared import PEER_CALL_TIMEOUT_S, PEER_ERRORS, Dial, Ingest, NodeStats
from .peer_calls import PeerCalls
from .quorum import RowKey, row_key
from .ring import NodeInfo
from .rows import RowSummary
from .store import MessageStore

logger = logging.getLogger(__name__)

#: How long a peer's whole repair round may take.
REPAIR_ROUND_TIMEOUT_S = PEER_CALL_TIMEOUT_S * 6


class Repairer:
    """Repair rounds with the peers ``peers()`` names. ``summaries()`` lists the rows
    this node serves, ``ingest`` keeps rows a peer sent
    and ``refused`` logs the ones a peer's batch carried that did not check out."""

    def __init__(
        self,
        store: MessageStore,
        clock: Clock,
        *,
        peers: Callable[[], Sequence[NodeInfo]],
        dial: Dial,
        summaries: Callable[[], list[RowSummary]],
        ingest: Ingest,
        refused: Callable[[Sequence[str], str], None],
        stats: NodeStats,
        interval_s: float,
        rng: random.Random,
    ) -> None:
        self._store = store
        self._clock = clock
        self._peers = peers
        self._dial = dial
        self._summaries = summaries
        self._ingest = ingest
        self._refused = refused
        self._stats = stats
        self._interval_s = interval_s
        self._random = rng
        self._soon = trio.Event()

    def soon(self) -> None:
        """Repair with every peer shortly (replication lost rows, or members changed)."""
        self._soon.set()

    async def run(self) -> None:
        """Rounds until cancelled, with the peers and at the times
        :class:`~.repair.RepairSchedule` says."""
        schedule = repair.RepairSchedule(self._interval_s, self._random)
        while True:
            failed: set[str] = set()
            for peer in schedule.peers(self._peers()):
                try:
                    with trio.fail_after(REPAIR_ROUND_TIMEOUT_S):
                        await self.repair_with(peer)
                except PEER_ERRORS as exc:
                    failed.add(peer.pubkey)
                    logger.info("repair with %s failed: %r", peer.pubkey[:8], exc)
                except Exception as exc:  # one peer's failure, whatever it is, is that peer's
                    failed.add(peer.pubkey)
                    logger.warning("repair with %s failed: %r", peer.pubkey[:8], exc)
            with self._clock.move_on_after(schedule.round_over(failed)):
                await self._soon.wait()
                await trio.sleep(REPLICATION_RETRY_S)
            if self._soon.is_set():
                schedule.repair_everyone()
            self._soon = trio.Event()

    async def repair_with(self, peer: NodeInfo) -> None:
        """One anti-entropy round with one peer: both end up with the union."""
        calls = await self._dial(peer)
        theirs = await calls.repair_digest()
        ours = repair.by_bucket(self._summaries())
        for bucket in repair.differing_buckets(repair.bucket_digests(ours), theirs.digests):
            diff = repair.diff_bucket(ours.get(bucket, ()), await calls.repair_list(bucket))
            for start in range(0, len(diff.pull), LISTING_PAGE):
                await self._pull(calls, peer, diff.pull[start : start + LISTING_PAGE])
            pushed = (self._store.get(*key) for key in diff.push)
            for part in batches(row for row in pushed if row is not None):
                await calls.replicate(part)
                self._stats.repaired_out += len(part)

    async def _pull(self, calls: PeerCalls, peer: NodeInfo, keys: Sequence[RowKey]) -> None:
        """Fetch the rows of ``keys`` (at most a page) from ``peer``, a batch at a time."""
        while keys:
            reply = await calls.repair_fetch(keys)
            self._refused(reply.refused, peer.pubkey)
            if not reply.rows:
                return
            self._stats.repaired_in += self._ingest(reply.rows).new
            got = {row_key(r) for r in reply.rows}
            keys = [k for k in keys if k not in got]
            if reply.refused:
                return  # the peer sent rows we refuse; the next round retries
