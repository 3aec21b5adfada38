"""How often a node or a relay re-reads the registry's listing, and when it announces.

Nodes and relays start in batches, so a listing that just changed (or that one started
with) is likely to change again soon: the next re-read comes :data:`LISTING_SETTLING_S`
after a start or a change and the interval doubles while nothing changes, up to the
refresh interval. One started beside others so learns of them in seconds, without anyone
having to contact it, and a settled network costs one read per refresh interval.

Announcing is due less often than reading: an announcement stays listed
:data:`~.listing.ANNOUNCEMENT_TTL_MS` (5 min), so one every
:data:`~.constants.ANNOUNCE_INTERVAL_S` (2 min) keeps it listed with a retry to spare.
"""

from __future__ import annotations

from .constants import LISTING_SETTLING_S
from .listing import Snapshot


def listed_members(snapshot: Snapshot) -> tuple[object, ...]:
    """What of a listing a change in brings the next read soon: the nodes (a node's
    swarms, a relay's exit) and the relays by key and url (a relay's forwarding, a node's
    onion exits), not the relays' contacts, which each announcement re-signs."""
    return (snapshot.nodes, frozenset((r.pubkey, r.url) for r in snapshot.relays))


def next_listing_read_s(previous_s: float | None, changed: bool, limit_s: float) -> float:
    """Seconds until the next re-read: after a start (``previous_s`` None) or a change,
    :data:`LISTING_SETTLING_S`; else twice ``previous_s``; never more than ``limit_s``."""
    if previous_s is None or changed:
        return min(LISTING_SETTLING_S, limit_s)
    return min(2 * previous_s, limit_s)


#: How much a node's re-reads vary either way (a fraction of the interval), so that
#: nodes started together do not read the registry together.
READ_JITTER = 0.1


def announce_due(announced_at_ms: int | None, now_ms: int, interval_ms: float) -> bool:
    """Whether to announce at a refresh: about ``interval_ms`` after the last
    announcement (a read up to :data:`READ_JITTER` early counts: were it skipped, the
    next announcement could come nearly a read later, and with reads as far apart as
    announcements, after the entry's 5 minutes), or at the first refresh after none (a
    start, a failed announcement, or a listing that left this announcer out, whose
    announcement the registry must have lost)."""
    return announced_at_ms is None or now_ms - announced_at_ms >= interval_ms * (1 - READ_JITTER)
