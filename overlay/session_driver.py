"""The Trio side of end-to-end sessions: :class:`Session`, what a caller sends and
receives whole messages on, and :class:`Sessions`, an endpoint's open sessions, each
driven by a task that carries its :class:`~overlay.session.SessionCore`'s packets over
the endpoint's paths.

The session protocol (handshake, windows, acknowledgements, retries, closing) is the
core's; what is here is the waiting: a caller waits for the window or for messages, a
driver for its core's next deadline or a kick, and either for the endpoint's paths.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

from .clock import Clock
from .constants import (
    ACCEPT_QUEUE_SESSIONS,
    MAX_OPEN_SESSIONS,
    MAX_SESSIONS_PER_PEER,
    SESSION_WINDOW_FRAGMENTS,
)
from .endpoint_core import EndpointStats, Route
from .introset import Intro
from .keys import KeyPair
from .path import Path
from .payloads import PathPayload, Transfer
from .session import (
    Admits,
    NotPublished,
    Refused,
    SessionAcceptor,
    SessionCore,
    SessionError,
    SessionState,
    intros_to_try,
    packet_session_id,
)

logger = logging.getLogger(__name__)


class SessionClosed(SessionError):
    """The peer closed its side: no more messages will arrive."""


class Session:
    """One end-to-end session. ``send``/``receive`` carry whole messages, in order."""

    def __init__(self, core: SessionCore) -> None:
        self._core = core
        self._changed = trio.Event()
        self._kick = trio.Event()
        self._aborted = False
        #: The secret the peer's introset is published under, if ``connect`` was given it.
        self._secret: bytes | None = None

    @property
    def peer(self) -> bytes:
        """The peer endpoint's Ed25519 public key, authenticated by the handshake."""
        return self._core.peer

    @property
    def peer_intro(self) -> Intro | None:
        """Where this session sends to the peer now (None: it has not said yet); the
        peer moves it to a fresh path of its own before the old one expires."""
        return self._core.peer_intro

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _wake_driver(self) -> None:
        self._kick.set()

    def _check_failed(self) -> None:
        if self._core.state is SessionState.FAILED:
            raise SessionError(self._core.failure or "session failed")

    async def _wait_open(self) -> None:
        while self._core.state is SessionState.HANDSHAKE:
            await self._changed.wait()
        self._check_failed()

    async def send(self, message: bytes) -> None:
        """Queue one message; waits while the window is full (flow control)."""
        while self._core.buffered_fragments >= SESSION_WINDOW_FRAGMENTS:
            self._check_failed()
            await self._changed.wait()
        self._check_failed()
        self._core.send_message(message)
        self._wake_driver()
        await trio.lowlevel.checkpoint()

    async def receive(self) -> bytes:
        """The next message; :class:`SessionClosed` once the peer has closed."""
        while not self._core.received:
            if self._core.peer_finished:
                raise SessionClosed("peer closed the session")
            self._check_failed()
            await self._changed.wait()
        return self._core.take_received()

    def __aiter__(self) -> Session:
        return self

    async def __anext__(self) -> bytes:
        """Messages until the peer closes (no async generator, so breaking out is safe)."""
        try:
            return await self.receive()
        except SessionClosed:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        """Send FIN and wait until everything sent was acknowledged (or the session failed).
        Wrap in a cancel scope to bound the wait. If the peer has already said goodbye, only
        put our FIN on its way: a peer that left on purpose acknowledges nothing more, and
        waiting for it held a device that went offline next for seconds."""
        if self._core.state is SessionState.FAILED or self._aborted:
            return
        if self._core.peer_finished:
            await self.leave()
            return
        self._core.close()
        self._wake_driver()
        while not self._core.all_acknowledged and not self._ended():
            await self._changed.wait()

    def abort(self) -> None:
        """Send FIN without waiting for anything (a later :meth:`aclose` returns at once):
        for a side that is going away, or that has given up on its peer."""
        self._aborted = True
        if self._core.state is not SessionState.FAILED:
            self._core.close()
            self._wake_driver()

    async def leave(self) -> None:
        """Send FIN and return once it is on its way, without waiting for an acknowledgement:
        for a side going away on purpose, so that its peer learns at once instead of when
        the session times out. Bound the wait with a cancel scope (no path, no FIN)."""
        self.abort()
        while not (self._core.fin_sent or self._failed()):
            await self._changed.wait()

    def _failed(self) -> bool:
        return self._core.state is SessionState.FAILED

    def _ended(self) -> bool:
        return self._core.state in (SessionState.FAILED, SessionState.CLOSED)


class Sessions:
    """An endpoint's open sessions: those it dialed (:meth:`connect`) and those other
    endpoints opened to it (:meth:`accepted`), each driven by a task in ``nursery``."""

    def __init__(
        self,
        keys: KeyPair,
        clock: Clock,
        nursery: trio.Nursery,
        stats: EndpointStats,
        *,
        route: Callable[[int], Route | None],
        send: Callable[[Path, PathPayload], None],
        paths_changed: Callable[[], Awaitable[None]],
        ready: Callable[[], Awaitable[None]],
        lookup: Callable[[bytes, bytes], Awaitable[list[Intro]]],
        secrets: Callable[[], list[bytes]],
    ) -> None:
        """``route``: how a session sends now (None: no usable path yet); ``send``: a
        payload along a path; ``paths_changed``: wait for the paths to change; ``ready``:
        wait for a usable path; ``lookup``: a peer's intros under a secret; ``secrets``:
        those this endpoint publishes under (siblings share theirs)."""
        self._keys = keys
        self._clock = clock
        self._nursery = nursery
        self.stats = stats
        self._route = route
        self._send = send
        self._paths_changed = paths_changed
        self._ready = ready
        self._lookup = lookup
        self._secrets = secrets
        self._open: dict[bytes, Session] = {}
        self._admits: Admits = lambda peer: True
        self._acceptor = SessionAcceptor(keys, self._admitted)
        self._accept_send, self._accept_receive = trio.open_memory_channel[Session](
            ACCEPT_QUEUE_SESSIONS
        )

    @property
    def count(self) -> int:
        """Sessions open now, until each one's driver has ended."""
        return len(self._open)

    def with_peer(self, peer: bytes) -> list[Session]:
        """The sessions open now with the endpoint whose key is ``peer`` (dialed or
        accepted: for a moment, while one replaces the other, there can be two)."""
        return [s for s in self._open.values() if s.peer == peer]

    def accept_only(self, admits: Admits) -> None:
        """Take sessions from the peers ``admits`` names alone (by key): others' INITs are
        refused once they show their key, before the handshake's other work, and open
        nothing."""
        self._admits = admits

    def _admitted(self, peer: bytes) -> bool:
        return self._admits(peer) and len(self.with_peer(peer)) < MAX_SESSIONS_PER_PEER

    def accepted(self) -> trio.MemoryReceiveChannel[Session]:
        """Sessions other endpoints open to this one, as they arrive (``async for``)."""
        return self._accept_receive

    def paths_moved(self) -> None:
        """The endpoint's paths changed: every peer must learn where we are now."""
        for session in self._open.values():
            session._core.announce()
            session._wake_driver()

    def deliver_packet(self, packet: bytes) -> None:
        """Take one session packet as if our intro had delivered it: each path hands over
        here what reaches its intro, with no further check, so what arrives is chosen by
        others (any endpoint that knows our intro, and the relays that carried a packet,
        which can send it again; tests play them through this call). A packet for no open
        session goes to the :class:`SessionAcceptor`. Call it inside the endpoint's
        ``async with`` (it starts the session's task there)."""
        now = self._clock.now_ms()
        session_id = packet_session_id(packet)
        if session_id is None:
            self.stats.cells_dropped += 1
            return
        session = self._open.get(session_id)
        if session is not None:
            session._core.receive_packet(packet, now)
            session._wake_driver()
            session._notify()
            return
        if len(self._open) >= MAX_OPEN_SESSIONS:
            self.stats.inits_refused += 1
            return
        opened = self._acceptor.accept(packet, now)
        if isinstance(opened, SessionCore):
            session = self._start_session(opened)
            try:
                self._accept_send.send_nowait(session)
                self.stats.sessions_accepted += 1
            except trio.WouldBlock:
                opened.close()
        elif opened.why is Refused.REPLAYED:
            self.stats.inits_replayed += 1
        elif opened.why is Refused.NOT_ADMITTED:
            self.stats.inits_refused += 1
        elif opened.why is Refused.STALE:
            self.stats.inits_stale += 1
            logger.info("session refused: %s (is this machine's clock right?)", opened.detail)
        else:
            self.stats.cells_dropped += 1

    def _start_session(self, core: SessionCore) -> Session:
        session = Session(core)
        self._nursery.start_soon(self._drive_session, session)  # raises once closed
        self._open[core.session_id] = session
        return session

    async def _drive_session(self, session: Session) -> None:
        core = session._core
        try:
            while core.state not in (SessionState.CLOSED, SessionState.FAILED):
                now = self._clock.now_ms()
                route = self._route(now)
                if route is None:
                    await self._paths_changed()
                    continue
                core.local_intro = route.intro
                packets = core.outgoing(now)
                if core.intro_lookup_due(now):
                    self._nursery.start_soon(self._refresh_intro, session)
                target = core.peer_intro
                if target is not None:
                    for packet in packets:
                        self._send(route.path, Transfer(target.relay, target.intro_id, packet))
                session._notify()
                if core.state in (SessionState.CLOSED, SessionState.FAILED):
                    break  # outgoing() closed it: nothing will kick this driver again
                deadline = core.next_deadline_ms()
                with self._clock.move_on_at_ms(deadline):
                    await session._kick.wait()
                session._kick = trio.Event()
        finally:
            session._notify()
            del self._open[core.session_id]

    async def _refresh_intro(self, session: Session) -> None:
        """Look the peer's introset up again and send to its freshest intro.

        Each side learns where the other is from the packets it receives, so when one
        relay was on the paths by which both sides are reached and dies, each side tells
        the other about its new path at an intro that is gone: neither hears again, and
        the session would only fail after ``SESSION_MAX_RETRIES``. The introset is
        republished as soon as a path changes, so it is the way out. A session from
        :meth:`connect` knows the peer's secret; an accepted one tries the secrets this
        endpoint publishes under (siblings share theirs)."""
        core = session._core
        secrets = [session._secret] if session._secret is not None else self._secrets()
        for secret in secrets:
            intros = await self._lookup(secret, core.peer)
            if intros:
                if core.found_intros(intros):
                    session._wake_driver()
                return

    async def _handshake(
        self, peer: bytes, intros: list[Intro], shared_secret: bytes | None
    ) -> Session:
        """A session to ``peer``, open: its handshake tried at each of ``intros`` in turn
        until one answers (the last one's failure raised)."""
        for attempt, intro in enumerate(intros, 1):
            core = SessionCore.initiate(self._keys, peer, self._clock.now_ms())
            core.peer_intro = intro
            session = self._start_session(core)
            session._secret = shared_secret
            self.stats.sessions_opened += 1
            try:
                await session._wait_open()
            except SessionError:
                if attempt == len(intros):
                    raise
                continue
            return session
        raise NotPublished("peer has no live introset")

    @asynccontextmanager
    async def connect(
        self,
        peer: bytes,
        *,
        shared_secret: bytes | None = None,
        intros: list[Intro] | None = None,
    ) -> AsyncIterator[Session]:
        """A session to endpoint ``peer``, found through its introset (``shared_secret``;
        :class:`NotPublished` if it has none) or at known ``intros``. Closed cleanly when
        the block ends."""
        if intros is None:
            if shared_secret is None:
                raise ValueError("connect needs a shared secret or the peer's intros")
            intros = await self._lookup(shared_secret, peer)
            if not intros:
                raise NotPublished("peer has no live introset")
        await self._ready()
        session = await self._handshake(peer, intros_to_try(intros), shared_secret)
        try:
            yield session
        except BaseException:
            # Leaving by error or cancellation (the endpoint may be going down with us):
            # say goodbye without waiting for an acknowledgement that cannot come.
            session.abort()
            raise
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await session.aclose()
