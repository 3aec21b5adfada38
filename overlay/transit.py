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
from typing import Any

from .constants import (
    TRANSIT_BUILDS_MAX,
    TRANSIT_HOPS_MAX,
    TRANSIT_ONWARD_SHARE,
    TRANSIT_SHARE_PER_HOST,
)


@dataclass(frozen=True)
class TransitCaps:
    """Hops and remembered builds a relay keeps at once, in all; one host may have a
    ``1 / share_per_host`` part of each, and of its hops a ``1 / onward_share`` part may
    go on to any one next relay. The next relay counts every path this relay carries to
    it as this relay's, so without the last bound one host building through this relay
    could fill this relay's whole share there and shut every honest path this way out."""

    hops: int = TRANSIT_HOPS_MAX
    builds: int = TRANSIT_BUILDS_MAX
    share_per_host: int = TRANSIT_SHARE_PER_HOST
    onward_share: int = TRANSIT_ONWARD_SHARE

    def admits(self, book: TransitBook, host: str, onward: str | None) -> bool:
        """Whether a build from ``host`` (going on to ``onward``, None if this relay is
        its last hop) may add a hop and a remembered build now."""
        per_host_hops = self.hops // self.share_per_host
        return (
            book.hop_total < self.hops
            and book.build_total < self.builds
            and book.hops[host] < per_host_hops
            and book.builds[host] < self.builds // self.share_per_host
            and (onward is None or book.onward[(host, onward)] < per_host_hops // self.onward_share)
        )


@dataclass
class TransitBook:
    """Hops and remembered builds per host (and hops per host and next relay), kept by
    the relay as it adds and forgets them."""

    hops: Counter[str] = field(default_factory=Counter)
    onward: Counter[tuple[str, str]] = field(default_factory=Counter)
    builds: Counter[str] = field(default_factory=Counter)
    hop_total: int = 0
    build_total: int = 0

    def add_hop(self, host: str, onward: str | None) -> None:
        self.hops[host] += 1
        if onward is not None:
            self.onward[(host, onward)] += 1
        self.hop_total += 1

    def drop_hop(self, host: str, onward: str | None) -> None:
        _less(self.hops, host)
        if onward is not None:
            _less(self.onward, (host, onward))
        self.hop_total -= 1

    def add_build(self, host: str) -> None:
        self.builds[host] += 1
        self.build_total += 1

    def drop_build(self, host: str) -> None:
        _less(self.builds, host)
        self.build_total -= 1


def _less(counts: Counter[Any], key: Any) -> None:
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]
