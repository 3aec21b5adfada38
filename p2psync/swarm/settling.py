"""How often a node or a relay re-reads the registry's listing.

Nodes and relays start in batches, so a listing that just changed (or that one started
with) is likely to change again soon: the next re-read comes :data:`LISTING_SETTLING_S`
after a start or a change and the interval doubles while nothing changes, up to the
refresh interval. One started beside others so learns of them in seconds, without anyone
having to contact it, and a settled network costs one read per refresh interval.
"""

from __future__ import annotations

from .constants import LISTING_SETTLING_S


def next_listing_read_s(previous_s: float | None, changed: bool, limit_s: float) -> float:
    """Seconds until the next re-read: after a start (``previous_s`` None) or a change,
    :data:`LISTING_SETTLING_S`; else twice ``previous_s``; never more than ``limit_s``."""
    if previous_s is None or changed:
        return min(LISTING_SETTLING_S, limit_s)
    return min(2 * previous_s, limit_s)
