"""A node's directory driver: announce the node, re-read the registry, and hand each
change in membership to the node (which then restarts replication and repair).

The listing is re-read on the schedule of :mod:`.settling` (soon after a start or a
change, doubling while nothing changes, up to ``refresh_s``). Waits are in the
network's :class:`~p2psync.clock.Clock`, so a skipped idle stretch makes the node
announce itself again at once.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import trio

from ..backoff import jittered
from ..clock import Clock
from ..identity import Identity
from .directory import Directory
from .listing import Snapshot
from .node_shared import PEER_ERRORS
from .settling import READ_JITTER, announce_due, listed_members, next_listing_read_s

logger = logging.getLogger(__name__)

#: Delay (and so the rate limit) of a registry re-read asked for by an unknown node.
REFRESH_SOON_S = 5.0


class DirectoryRefresh:
    """The node's view of the registry (``snapshot``, ``first_listed``) and the loop that
    keeps it current; ``on_membership`` is called with each listing whose nodes differ
    from the last one's."""

    def __init__(
        self,
        identity: Identity,
        registration: bytes,
        directory: Directory,
        clock: Clock,
        *,
        url: Callable[[], str],
        on_membership: Callable[[Snapshot], None],
        announce_interval_s: float,
        refresh_s: float,
        rng: random.Random,
    ) -> None:
        self.snapshot = Snapshot()
        #: When this node first saw each node listed (epoch ms).
        self.first_listed: dict[str, int] = {}
        self._identity = identity
        self._pubkey = identity.ed25519_public.hex()
        self._registration = registration
        self._directory = directory
        self._clock = clock
        self._url = url
        self._on_membership = on_membership
        self._announce_interval_ms = announce_interval_s * 1000
        self._refresh_s = refresh_s
        self._random = rng
        #: When this node last announced itself (epoch ms; None: it must announce).
        self._announced_at: int | None = None
        self._soon = trio.Event()

    def soon(self) -> None:
        """Re-read the registry after :data:`REFRESH_SOON_S` (a caller unknown to this
        node may have joined since the last read)."""
        self._soon.set()

    async def refresh(self) -> None:
        """Announce, re-read the registry, and act on a membership change. Failures are
        logged: a node keeps serving with the last registry it saw. A failed announce
        does not stop the read, which may still succeed from other nodes' copies."""
        async with self._directory.one_connection() as directory:
            now = self._clock.now_ms()
            if announce_due(self._announced_at, now, self._announce_interval_ms):
                try:
                    await directory.announce(
                        self._identity, "node", self._url(), registration=self._registration
                    )
                    self._announced_at = now
                except PEER_ERRORS as exc:
                    logger.warning("node %s: cannot announce: %s", self._pubkey[:8], exc)
            try:
                snapshot = await directory.fetch()
            except PEER_ERRORS as exc:
                logger.warning("node %s: registry unavailable: %s", self._pubkey[:8], exc)
                return
        if self._pubkey not in {n.pubkey for n in snapshot.nodes}:
            # A listing without us is stale about us: acting on it would hand everything
            # over. Announce again at the next refresh and keep the map we have.
            logger.warning("node %s: not listed by the registry yet", self._pubkey[:8])
            self._announced_at = None
            return
        seen_at = self._clock.now_ms()
        for listed in snapshot.nodes:
            self.first_listed.setdefault(listed.pubkey, seen_at)
        changed = snapshot.nodes != self.snapshot.nodes
        self.snapshot = snapshot
        if changed:
            self._on_membership(snapshot)

    async def run(self) -> None:
        """Re-read the registry every ``refresh_s`` (settling first), sooner when asked;
        no listing, however bad, ends the loop."""
        interval = next_listing_read_s(None, False, self._refresh_s)
        while True:
            with self._clock.move_on_after(jittered(interval, READ_JITTER, self._random)):
                await self._soon.wait()
                await trio.sleep(REFRESH_SOON_S)
            self._soon = trio.Event()
            before = listed_members(self.snapshot)
            try:
                await self.refresh()
            except Exception as exc:  # a bad listing must not stop later refreshes
                logger.warning("node %s: registry refresh failed: %r", self._pubkey[:8], exc)
            changed = listed_members(self.snapshot) != before
            interval = next_listing_read_s(interval, changed, self._refresh_s)
