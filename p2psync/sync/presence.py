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

from overlay.constants import INTROSET_REPUBLISH_MS
from overlay.introset import Intro

from ..backoff import Backoff

REDIAL_MIN_S = 1.0
#: Re-dials of a sibling that is away back off to this. Each costs an introset lookup (up
#: to 24 requests through the overlay): with a cap of 300 s, the quick storage benchmark's
#: devices made 1 852 lookups that found nothing, 60 % of their DHT requests (704 at this
#: cap, hellos as they are now). A sibling that comes back dials us
#: itself when it starts (its hellos, :func:`hello_again`), and that wakes the dialer at
#: once, so the back-off costs latency only when every one of those fails.
REDIAL_MAX_S = 1800.0
#: While it backs off from a sibling whose introset was found but did not answer, the
#: dialer looks the introset up this often: a sibling that republished (its paths
#: changed: it retired one whose intro delivered nothing, or it came back) is dialled at
#: once, with the back-off started again. The sibling republishes at least this often.
MOVED_CHECK_S = INTROSET_REPUBLISH_MS / 1000
#: How long the non-dialing side gives the dialing one before saying hello itself; a
#: hello that fails is tried again after twice as long (:func:`hello_again`).
HELLO_DELAY_S = 2.0
#: Hellos to a dialer whose introset was found but did not answer: the last one comes
#: :data:`HELLO_SPAN_S` (252 s) after the first, past twice the path-ping interval of a
#: phone-like keep-alive (120 s) and a ping's time-out, by when the dialer has found a
#: dead intro and republished (a device set to ping its paths less often than that can
#: stay apart from its sibling until the next redial).
HELLO_TRIES = 7
HELLO_SPAN_S = sum(HELLO_DELAY_S * 2**n for n in range(1, HELLO_TRIES))
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


def redials() -> Backoff:
    """The waits between dials of a sibling: doubling from :data:`REDIAL_MIN_S` to
    :data:`REDIAL_MAX_S` while it is away, from the start once it showed up (it dialled
    us) or a session with it opened."""
    return Backoff(REDIAL_MIN_S, REDIAL_MAX_S)


def moved(failed_at: Collection[Intro], found: Collection[Intro]) -> bool:
    """Whether a sibling whose intros ``failed_at`` did not answer a dial has moved: its
    introset names others now (``found``). What failed says nothing of where it is now,
    so the dialer dials again at once and backs off from the start (:func:`redials`). A
    sibling that no longer publishes has not moved: it is away, and dials us when back."""
    return bool(found) and {i.intro_id for i in found} != {i.intro_id for i in failed_at}


def hellos() -> Backoff:
    """The waits before each hello of the non-dialing side: :data:`HELLO_DELAY_S`, then
    doubling (see :func:`hello_again`)."""
    return Backoff(HELLO_DELAY_S, REDIAL_MAX_S)


def hello_again(tries: int, published: bool) -> bool:
    """Whether the non-dialing side says hello again after ``tries`` failed: not if the
    dialer had no introset (``published`` false: it is away, and dials us when it is
    back), else up to :data:`HELLO_TRIES` in all. An introset whose intros do not answer
    may name a path that died since: its owner notices within a path-ping interval and
    republishes, and the hellos, :func:`hellos` apart, outlast that (their last is
    :data:`HELLO_SPAN_S` after the first)."""
    return published and tries < HELLO_TRIES


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
