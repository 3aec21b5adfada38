"""A node's expiry sweep: delete expired rows every interval of the network's clock
(reads never return them anyway; this gives their space back)."""

from __future__ import annotations

import logging

from ..clock import Clock
from .node_shared import NodeStats
from .store import MessageStore

logger = logging.getLogger(__name__)


async def sweep_expired(
    store: MessageStore, clock: Clock, interval_s: float, stats: NodeStats, name: str
) -> None:
    """Sweep until cancelled; a failed sweep (say a full disk) is logged under the node's
    ``name`` and the next one tries again."""
    while True:
        await clock.sleep(interval_s)
        try:
            stats.swept += store.sweep(clock.now_ms())
        except Exception as exc:  # say a full disk: the next sweep tries again
            logger.warning("node %s: sweep failed: %r", name, exc)
