"""How much path state a relay keeps for whom, sans-I/O.

Each path a relay is part of costs it a hop (keys, counters, both path ids: about
1.5 KiB) until the path expires, up to ``MAX_PATH_LIFETIME_MS``, or the link it came in
by closes; each build it accepted also leaves its ephemeral key in the replay filter
until that expiry, link or no link. Builds cost their sender nothing but a key
exchange, so without a bound one link built 3 400 paths a second into a relay (a
review: 1.5 KiB each, some 9 GB within a path's lifetime). :class:`TransitBook` counts
both per host, the neighbour a build came in by (:func:`~overlay.exits.peer_host`: one
relay carrying many endpoints' paths, or one endpoint connected directly), and in all,
and :class:`TransitCaps` says whether one more fits: past a host's share its builds are
dropped while every other host's are still taken.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .constants import TRANSIT_BUILDS_MAX, TRANSIT_HOPS_MAX, TRANSIT_SHARE_PER_HOST


@dataclass(frozen=True)
class TransitCaps:
    """Hops and remembered builds a relay keeps at once, in all; one host may have a
    ``1 / share_per_host`` part of each."""

    hops: int = TRANSIT_HOPS_MAX
    builds: int = TRANSIT_BUILDS_MAX
    share_per_host: int = TRANSIT_SHARE_PER_HOST

    def admits(self, book: TransitBook, host: str) -> bool:
        """Whether a build from ``host`` may add a hop and a remembered build now."""
        hops, builds = book.hops, book.builds
        return (
            hops.total() < self.hops
            and builds.total() < self.builds
            and hops[host] < self.hops // self.share_per_host
            and builds[host] < self.builds // self.share_per_host
        )


@dataclass
class TransitBook:
    """Hops and remembered builds per host, kept by the relay as it adds and forgets
    them."""

    hops: Counter[str] = field(default_factory=Counter)
    builds: Counter[str] = field(default_factory=Counter)

    @staticmethod
    def add(counts: Counter[str], host: str) -> None:
        counts[host] += 1

    @staticmethod
    def remove(counts: Counter[str], host: str) -> None:
        counts[host] -= 1
        if counts[host] <= 0:
            del counts[host]
