"""Who opens a sibling session, when to try again, which session to keep, and when a
device going offline has waited long enough: decided without I/O.

Two siblings that both dialled would open two sessions and race to replace each other,
so exactly one dials (:func:`dials`) and keeps trying, backing off while the sibling is
away (:func:`redials`); the other says hello when it starts (:func:`hellos`), in case the
dialler is away or holding a session to its previous run. One session per sibling: a
new one the sibling opened replaces ours, a second dial of our own is dropped
(:func:`keep_session`). :class:`~.sessions.SiblingSessions` is the driver that does it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from enum import Enum

from ..backoff import Backoff

REDIAL_MIN_S = 1.0
#: Re-dials of a sibling that is away back off to this. Each costs an introset lookup (up
#: to 24 requests through the overlay): with a cap of 300 s, the quick storage benchmark's
#: devices made 1 852 lookups that found nothing, 60 % of their DHT requests (655 at this
#: cap; the relays carried 16 % fewer cells in all). A sibling that comes back dials us
#: itself when it starts (its hello, tried :data:`HELLO_TRIES` times), and that wakes the
#: dialer at once, so the back-off costs latency only when every one of those fails.
REDIAL_MAX_S = 1800.0
#: How long the non-dialing side gives the dialing one before saying hello itself; a
#: hello that fails is tried again after twice as long, up to :data:`HELLO_TRIES` in all.
HELLO_DELAY_S = 2.0
HELLO_TRIES = 3
#: How often an idle session is made to prove its sibling is still there: a sibling that
#: vanished without goodbye (crash, lost network) then fails the session's retransmissions.
KEEPALIVE_S = 15.0
#: How much longer than the keep-alive interval a side that keeps hearing its sibling waits
#: before sending a keep-alive of its own (see :func:`keepalive_due_ms`).
LISTENER_SLACK = 1.5


def dials(own_key: bytes, sibling_key: bytes) -> bool:
    """Whether this device is the one that dials ``sibling_key`` (the lower overlay key
    dials); the other only says hello."""
    return own_key < sibling_key


def redials(*, after_goodbye: bool = False) -> Backoff:
    """The waits between dials of a sibling: doubling from :data:`REDIAL_MIN_S` to
    :data:`REDIAL_MAX_S` while it is away, from the start once it showed up (it dialled
    us) or a session with it opened.

    ``after_goodbye``: the sibling's last session ended with its goodbye, so it went
    offline on purpose and dials us, or says hello, when it is back; every wait is then
    the cap (a dial then would find its introset of minutes ago, and time out on intros
    that are gone). One that went quiet instead may still be there, behind a path that
    failed, and is dialled again at once and then ever less often."""
    return Backoff(REDIAL_MAX_S if after_goodbye else REDIAL_MIN_S, REDIAL_MAX_S)


def hellos() -> Backoff:
    """The waits before each hello of the non-dialing side: :data:`HELLO_DELAY_S`, then
    doubling."""
    return Backoff(HELLO_DELAY_S, REDIAL_MAX_S)


class SessionChoice(Enum):
    """What to do with a new session to a sibling: see :func:`keep_session`."""

    SERVE = "serve"  # the only one
    REPLACE = "replace"  # end the current one, then serve this
    DROP = "drop"  # keep the current one


def keep_session(has_current: bool, opened_by_sibling: bool) -> SessionChoice:
    """One session per sibling: one it opened is the newest word of its state (it may have
    restarted), so it replaces ours; a second one of ours is dropped."""
    if not has_current:
        return SessionChoice.SERVE
    return SessionChoice.REPLACE if opened_by_sibling else SessionChoice.DROP


def may_leave(owed: Iterable[str], in_session: Collection[str], tried: Collection[str]) -> bool:
    """Whether a device going offline may stop waiting for the siblings it still owes a
    message (``owed``): none of them is in session, and each was tried at least once
    (one still in session may acknowledge yet; one never tried may be online)."""
    return not any(sibling in in_session or sibling not in tried for sibling in owed)


def keepalive_due_ms(sent_ms: int, heard_ms: int, interval_ms: int, *, keeper: bool) -> int:
    """When an idle session next sends its sibling a keep-alive, having last sent a record
    at ``sent_ms`` and last heard one at ``heard_ms``.

    A record heard shows the sibling is there as well as the acknowledgement of one sent
    does, so one side of a session sends keep-alives and the other listens: the
    ``keeper`` (the side that :func:`dials`) sends one ``interval_ms`` after the last
    record either way; the listener waits :data:`LISTENER_SLACK` intervals after the last
    it heard, so it sends none while they keep coming and one as soon as they stop. A
    sibling gone without goodbye is found out by whichever side's keep-alive then goes
    unacknowledged. (With one rule for both sides, link jitter would leave both sending
    whenever their timers ran close together, each keep-alive costing an acknowledgement
    too.)"""
    if keeper:
        return max(sent_ms, heard_ms) + interval_ms
    return max(sent_ms + interval_ms, heard_ms + int(LISTENER_SLACK * interval_ms))
