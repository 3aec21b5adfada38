"""What a device does about its siblings' sync copies, decided without I/O.

* :func:`fall_back_plan`: a sibling did not acknowledge a message in time. Does this
  device store a swarm sync copy for it, or has the copy been seen to another way?
* :func:`stands_in`: a sibling just sent a message and pushed it here. Does this device
  take over that sibling's sync copy for the others, should the sender leave first?
* :func:`deleted_once_acknowledged`: every sibling holds the message. What may leave
  the swarm early?
* :func:`complete_until_after_resync`: re-sync from a sibling is over. Up to when is this
  device's history known to be complete?
* :func:`sibling_timings`: the grace periods, keep-alives and republishing that follow
  from a device's settings; :func:`publish_terms` and :func:`push_at`: when and on what
  terms a message goes to the siblings; :func:`syncs_directly`: whether sibling sync
  runs at all.

The driver (:class:`~.siblings.SiblingHandler`) asks and does what they say.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from overlay.constants import (
    INTROSET_LIFETIME_MS,
    INTROSET_REPUBLISH_MS,
    PATH_PING_INTERVAL_MS,
)

from ..swarm.constants import NAMESPACE_MESSAGES
from ..sync.presence import KEEPALIVE_S
from .deletions import Deletion

#: A sibling standing in for a message's origin stores the sync copy after this many of
#: the origin's grace periods, if the origin has gone away without storing it.
TAKEOVER_GRACES = 3


class PendingState(Protocol):
    """What the rules read of a message some sibling has yet to acknowledge."""

    @property
    def inbound(self) -> bool: ...  # received (in the account's swarm already)
    @property
    def fell_back(self) -> bool: ...  # its copies were decided before
    @property
    def relayed_from(self) -> str | None: ...  # the sibling this device stands in for


class FallBack(Enum):
    """What :func:`fall_back_plan` decides."""

    #: Acknowledged since, or decided before a restart: nothing to do.
    NOTHING = "nothing"
    #: No copy from this device: the message is in the account's swarm already (it was
    #: received), or the sibling that sent it is still here and stores its own.
    SETTLED = "settled"
    #: Store a sync copy for the siblings that did not acknowledge.
    STORE = "store"


def fall_back_plan(pending: PendingState | None, connected: Collection[str]) -> FallBack:
    """The grace period passed without every sibling's acknowledgement of ``pending``
    (None: acknowledged meanwhile); ``connected`` are the siblings in session now."""
    if pending is None or pending.fell_back:
        return FallBack.NOTHING
    if pending.inbound or pending.relayed_from in connected:
        return FallBack.SETTLED
    return FallBack.STORE


def stands_in(other_siblings: int, age_ms: int, takeover_ms: int) -> bool:
    """Whether to stand in for the sibling that sent a message ``age_ms`` ago: only if
    there are ``other_siblings`` to serve and the message is news, not history arriving
    in a re-sync (past ``takeover_ms``, three of the sender's grace periods)."""
    return other_siblings > 0 and age_ms <= takeover_ms


def deleted_once_acknowledged(
    pending: Sequence[PendingState], account: str, message_id: bytes
) -> list[Deletion]:
    """What leaves the swarm early once every sibling holds ``message_id`` (besides its
    sync copies, which always go): in the account's swarm, a message this device
    received, which no sibling needs to read from there any more."""
    if any(state.inbound for state in pending):
        return [(account, NAMESPACE_MESSAGES, message_id)]
    return []


def complete_until_after_resync(complete_until_ms: int, started_ms: int, grace_ms: int) -> int:
    """The history watermark once a sibling's whole history is here: up to when the re-sync
    began, less the grace period (what was in flight then may still arrive live), and
    never back (another sibling's re-sync may have moved it further)."""
    return max(complete_until_ms, started_ms - grace_ms)


@dataclass(frozen=True, slots=True)
class SiblingTimings:
    """The intervals of sibling sync that follow from a device's settings."""

    #: How long a sibling has to acknowledge a message before a sync copy is stored.
    grace_ms: int
    #: How long after its origin sent it a message is news, for standing in
    #: (:func:`stands_in`): :data:`TAKEOVER_GRACES` grace periods.
    takeover_ms: int
    #: After how long without a record an idle sibling session's keeper proves its sibling
    #: is still there (:func:`~p2psync.sync.presence.keepalive_due_ms`).
    session_keepalive_s: float
    #: After how long without hearing from it an overlay path under it is pinged.
    path_ping_ms: int
    #: How often an unchanged introset is republished.
    republish_ms: int


def sibling_timings(grace_s: float, keepalive_s: float | None) -> SiblingTimings:
    """``grace_s`` and ``keepalive_s`` as :class:`~.values.DeviceConfig` has them. A
    keep-alive (None: the overlay's and live sync's own intervals) sets both the session's
    and the paths' checks, and stretches republishing in the overlay's own proportion (2.5
    min per 5 s of pings), up to half an introset's life, so that a sibling can always
    find one that has not expired."""
    grace_ms = int(grace_s * 1000)
    takeover_ms = int(TAKEOVER_GRACES * grace_s * 1000)
    if keepalive_s is None:
        return SiblingTimings(
            grace_ms, takeover_ms, KEEPALIVE_S, PATH_PING_INTERVAL_MS, INTROSET_REPUBLISH_MS
        )
    stretched = keepalive_s * 1000 * INTROSET_REPUBLISH_MS / PATH_PING_INTERVAL_MS
    republish_ms = int(min(INTROSET_LIFETIME_MS // 2, max(INTROSET_REPUBLISH_MS, stretched)))
    return SiblingTimings(grace_ms, takeover_ms, keepalive_s, int(keepalive_s * 1000), republish_ms)


def publish_terms(
    relayed_from: str | None, timings: SiblingTimings
) -> tuple[int | None, tuple[str, ...]]:
    """The grace period and the siblings known to hold it, of a message this device
    publishes to its siblings: its own (live sync's grace period, no holder), or one it
    stands in for (the origin's takeover grace, and the origin, which holds it)."""
    if relayed_from is None:
        return None, ()
    return timings.takeover_ms, (relayed_from,)


def push_at(
    now_ms: int, inbound: bool, delay_s: tuple[float, float], draw: Callable[[float, float], float]
) -> int:
    """When a message filed now goes to the siblings: at once if this device sent it; a
    random delay (``draw`` over ``delay_s``) later if it was received, so that the sibling
    traffic does not follow the device's read of the account's swarm within milliseconds."""
    return now_ms + (int(draw(*delay_s) * 1000) if inbound else 0)


def syncs_directly(
    direct_sync: bool, sibling_keys: Collection[object], secret: bytes | None
) -> bool:
    """Whether sibling sync runs: direct sync is on, and the device knows a sibling's
    overlay key and the siblings' secret (what they find each other's introsets by)."""
    return direct_sync and bool(sibling_keys) and secret is not None
