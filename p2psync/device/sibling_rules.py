"""What a device does about its siblings' sync copies, decided without I/O.

* :func:`fall_back_plan`: a sibling did not acknowledge a message in time. Does this
  device store a swarm sync copy for it, or has the copy been seen to another way?
* :func:`stands_in`: a sibling just sent a message and pushed it here. Does this device
  take over that sibling's sync copy for the others, should the sender leave first?
* :func:`deleted_once_acknowledged`: every sibling holds the message. What may leave
  the swarm early?
* :func:`complete_until_after_resync`: re-sync from a sibling is over. Up to when is this
  device's history known to be complete?

The driver (:class:`~.siblings.SiblingHandler`) asks and does what they say.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from enum import Enum
from typing import Protocol

from ..swarm.constants import NAMESPACE_MESSAGES
from .deletions import Deletion


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
