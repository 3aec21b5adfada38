"""Keeping one overlay session to each sibling: the driver of :mod:`.presence`'s rules.

A device publishes its sibling-only introset and then, per sibling, either dials (the
sibling with the lower overlay key keeps dialling, backing off while the sibling is
away) or says hello when it starts (the other side, tried a few times: the dialler may be
away, or hold a session to our previous run). A session the sibling opens replaces ours,
which is how a stale session to a sibling that went away and came back is dropped at
once; it counts only once it carries its first record, so a relay replaying an old INIT
cannot replace the live one.

What a session carries is not this module's business: each session kept is handed to
``carry`` (:meth:`~.syncer.SiblingSync.carry`) until it ends.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from functools import partial

import trio

from overlay.endpoint import Endpoint
from overlay.introset import Intro
from overlay.session import NotPublished, SessionError
from overlay.session_driver import Session

from .presence import (
    MOVED_CHECK_S,
    SessionChoice,
    dials,
    hello_again,
    hellos,
    keep_session,
    moved,
    redials,
)

logger = logging.getLogger(__name__)

#: How long a session a sibling opened has to carry its first record before it counts:
#: a relay replaying an old INIT opens a session that never will, and must not replace the
#: live one. (The dialing side sends its re-sync query as soon as the session is open.)
FIRST_RECORD_S = 30.0
#: How long a device going offline spends telling its siblings.
GOODBYE_S = 1.0

#: ``carry(sibling, session, first, keeper)``: carry a kept session's records until it
#: ends (``first``: a record already read from it; ``keeper``: whether this side sends the
#: session's keep-alives, :func:`~.presence.keepalive_due_ms`).
Carry = Callable[[str, Session, bytes | None, bool], Awaitable[None]]


class SiblingSessions:
    """One session per sibling, kept by :meth:`run` while the device is online."""

    def __init__(
        self,
        endpoint: Endpoint,
        secret: bytes,
        siblings: Mapping[str, bytes],
        carry: Carry,
        changed: Callable[[], None],
    ) -> None:
        """``siblings`` maps each sibling's device id to its overlay key; ``changed`` is
        called whenever :attr:`serving` or :attr:`tried` changed (a session came up or
        ended, or a try failed)."""
        self._endpoint = endpoint
        self._secret = secret
        self._keys = dict(siblings)
        self._by_key = {key: sibling for sibling, key in siblings.items()}
        self._carry = carry
        self._changed = changed
        self._serving: dict[str, tuple[trio.CancelScope, trio.Event, Session]] = {}
        #: Set when a sibling shows it is here (it opened a session to us): the dialer
        #: stops backing off and dials again at once.
        self._present: dict[str, trio.Event] = {sibling: trio.Event() for sibling in siblings}
        #: Siblings whose first session came up or whose first try to reach failed.
        self.tried: set[str] = set()
        #: Set when the device is about to leave: say hello without waiting for the dialer.
        self._leaving = trio.Event()

    async def run(self) -> None:
        """Until cancelled: publish presence, dial or say hello, accept (from siblings
        alone: whoever else learns the secret, a device revoked since, opens nothing)."""
        self._endpoint.accept_only(self._by_key.__contains__)
        await self._endpoint.publish(self._secret)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._accept, nursery)
            for sibling, key in self._keys.items():
                if dials(self._endpoint.public_key, key):
                    nursery.start_soon(self._dial, sibling, key)
                else:
                    nursery.start_soon(self._hello, sibling, key)

    @property
    def serving(self) -> set[str]:
        """Siblings with a session kept right now."""
        return set(self._serving)

    def leaving(self) -> None:
        """The device is about to go offline: say hello now rather than after the delay."""
        self._leaving.set()

    async def leave(self) -> None:
        """Say goodbye on every session and see the goodbyes written to the links (for at
        most :data:`GOODBYE_S`): siblings of a device going offline on purpose learn it
        at once, not when a session times out. A goodbye still queued when the device
        stops is never sent."""
        with trio.move_on_after(GOODBYE_S):
            async with trio.open_nursery() as nursery:
                for _, _, session in self._serving.values():
                    nursery.start_soon(session.leave)
            await self._endpoint.written()

    def _tried_to_reach(self, sibling: str) -> None:
        self.tried.add(sibling)
        self._changed()

    async def _hello(self, sibling: str, key: bytes) -> None:
        """Dial on start, unless the sibling dialed us first: it may be away (and redials
        only every :data:`~.presence.REDIAL_MAX_S`) or holding a stale session to our last
        run, which it would otherwise notice only much later. Tried again as
        :func:`~.presence.hello_again` says; once leaving, once is enough."""
        waits = hellos()
        tries = 0
        while True:
            with trio.move_on_after(waits.failed()):
                await self._leaving.wait()  # leaving: no time to wait for the dialer
            if sibling in self._serving:
                return
            tries += 1
            try:
                async with self._endpoint.connect(key, shared_secret=self._secret) as session:
                    await self._serve(sibling, session)
                return
            except SessionError as exc:
                logger.debug("hello to sibling %s: %s", sibling[:10], exc)
                self._tried_to_reach(sibling)
                published = not isinstance(exc, NotPublished)
                if self._leaving.is_set() or not hello_again(tries, published):
                    return

    async def _dial(self, sibling: str, key: bytes) -> None:
        """Dial ``sibling`` again and again, backing off while it cannot be reached; the
        back-off starts again when it shows up (it dialed us) or moves (:func:`moved`)."""
        waits = redials()
        while True:
            while sibling in self._serving:  # the sibling dialed us: nothing to do
                await self._serving[sibling][1].wait()
            present = self._present[sibling] = trio.Event()
            intros: list[Intro] = []
            try:
                intros = await self._endpoint.lookup(self._secret, key)
                async with self._endpoint.connect(
                    key, shared_secret=self._secret, intros=intros
                ) as session:
                    waits.succeeded()
                    await self._serve(sibling, session)
            except SessionError as exc:
                logger.debug("session to sibling %s: %s", sibling[:10], exc)
                self._tried_to_reach(sibling)
            with trio.move_on_after(waits.failed()):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_cancel_after, present.wait, nursery.cancel_scope)
                    nursery.start_soon(
                        _cancel_after, partial(self._moved, key, intros), nursery.cancel_scope
                    )
                waits.succeeded()  # only once it showed up or moved: the wait was cut short

    async def _moved(self, key: bytes, failed_at: list[Intro]) -> None:
        """Return once the sibling, whose introset named ``failed_at`` when it could not
        be reached, has moved (:func:`moved`), looked up every :data:`MOVED_CHECK_S`; never
        while it publishes nothing."""
        if not failed_at:
            await trio.sleep_forever()
        while True:
            await trio.sleep(MOVED_CHECK_S)
            if moved(failed_at, await self._endpoint.lookup(self._secret, key)):
                return

    async def _accept(self, nursery: trio.Nursery) -> None:
        async for session in self._endpoint.sessions():
            sibling = self._by_key.get(session.peer)
            if sibling is not None:
                self._present[sibling].set()
            nursery.start_soon(self._serve_accepted, sibling, session)

    async def _serve_accepted(self, sibling: str | None, session: Session) -> None:
        try:
            first = None
            if sibling is not None:
                with trio.move_on_after(FIRST_RECORD_S):
                    first = await session.receive()
            if sibling is not None and first is not None:
                await self._serve(sibling, session, replace=True, first=first)
        except SessionError as exc:
            logger.debug("session from sibling %s ended early: %s", (sibling or "?")[:10], exc)
        except BaseException:
            session.abort()  # going offline: no goodbye to wait for
            raise
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await session.aclose()

    async def _serve(
        self, sibling: str, session: Session, *, replace: bool = False, first: bytes | None = None
    ) -> None:
        """Carry ``sibling``'s records over ``session`` until it ends (``first``: a record
        already read from it). One session per sibling: a new one the sibling opened
        (``replace``) ends ours, else it is dropped."""
        current = self._serving.get(sibling)
        choice = keep_session(current is not None, opened_by_sibling=replace)
        if choice is SessionChoice.DROP:
            return
        if current is not None:  # SessionChoice.REPLACE
            current[0].cancel()
            await current[1].wait()
        ended = trio.Event()
        try:
            with trio.CancelScope() as scope:
                self._serving[sibling] = (scope, ended, session)
                self._tried_to_reach(sibling)
                keeper = dials(self._endpoint.public_key, self._keys[sibling])
                await self._carry(sibling, session, first, keeper)
            if scope.cancelled_caught:
                session.abort()  # replaced: the sibling has moved on to its new session
        finally:
            del self._serving[sibling]
            ended.set()
            self._changed()  # a device waiting to leave may stop waiting for this sibling


async def _cancel_after(wait: Callable[[], Awaitable[object]], scope: trio.CancelScope) -> None:
    """Wait for ``wait``, then cancel ``scope``: the first of several waits ends them all."""
    await wait()
    scope.cancel()
