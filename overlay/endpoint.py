"""An overlay endpoint: keeps paths, publishes and finds introsets, runs sessions, and
has its paths' exit hops hand requests to servers (:meth:`Endpoint.exit_request`).

The protocol lives in the sans-I/O pieces (:class:`~overlay.endpoint_core.EndpointCore`
for the paths, pings, DHT answers and republishing, :class:`~overlay.session.SessionCore`,
:mod:`overlay.introset`); this module is their Trio driver. :func:`open_endpoint` owns
every task: paths (one link each, to their first hop), the path keeper, the introset
republisher, one driver per session. Leaving its ``async with`` cancels them all.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from functools import partial
from typing import assert_never

import trio

from .clock import Clock
from .constants import (
    ACCEPT_QUEUE_SESSIONS,
    DEFAULT_HOPS,
    DEFAULT_PATH_LIFETIME_MS,
    DEFAULT_PATHS_PER_ENDPOINT,
    DHT_ATTEMPTS,
    INTROSET_LIFETIME_MS,
    INTROSET_REPLICAS,
    INTROSET_REPUBLISH_MS,
    PATH_CHECK_INTERVAL_MS,
    PATH_PING_INTERVAL_MS,
    SESSION_INTRO_REFRESH_MS,
    SESSION_WINDOW_FRAGMENTS,
)
from .contact import Contact, verified_directory
from .dht import DhtStatus, closest_relays, get_request, put_request
from .endpoint_core import (
    Answered,
    BuildPath,
    ClosePath,
    DeliverPacket,
    Effect,
    EndpointCore,
    EntryFilter,
    PathsChanged,
    Question,
    SendPayload,
)
from .exits import ExitFailed, ExitStatus
from .introset import (
    Intro,
    IntrosetError,
    RendezvousKeys,
    epoch_of,
    open_introset,
    rendezvous_keys,
    seal_introset,
)
from .keys import KeyPair
from .link import LinkClosed, LinkPump, Transport
from .path import Path, PathState
from .payloads import PathPayload, Transfer
from .session import (
    Refused,
    SessionAcceptor,
    SessionCore,
    SessionError,
    SessionState,
    packet_session_id,
)
from .tasks import open_task_nursery

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
        self._intro_refreshed_ms: int | None = None

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
        return self._core.received.popleft()

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


class Endpoint:
    """Create with :func:`open_endpoint`. The decisions are its :class:`EndpointCore`'s;
    this driver owns the links (one per path), the tasks and the waiting, and carries the
    core's effects out."""

    def __init__(
        self,
        keys: KeyPair,
        transport: Transport,
        clock: Clock,
        nursery: trio.Nursery,
        core: EndpointCore,
        *,
        local_name: str | None,
    ) -> None:
        self._keys = keys
        self.stats = core.stats
        self._core = core
        self._transport = transport
        self._clock = clock
        self._nursery = nursery
        self._local_name = local_name
        self._links: dict[bytes, tuple[trio.CancelScope, LinkPump]] = {}
        self._paths_changed = trio.Event()
        #: The askers waiting for an answer (:class:`Answered`), by question token.
        self._askers: dict[bytes, trio.Event] = {}
        self._sessions: dict[bytes, Session] = {}
        self._acceptor = SessionAcceptor(keys)
        self._accept_send, self._accept_receive = trio.open_memory_channel[Session](
            ACCEPT_QUEUE_SESSIONS
        )

    @property
    def keys(self) -> KeyPair:
        """This endpoint's key pair (fixed for its life: sessions and introsets use it)."""
        return self._keys

    @property
    def public_key(self) -> bytes:
        return self._keys.public

    @property
    def paths(self) -> list[Path]:
        return self._core.paths

    def _execute(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, SendPayload):
                self._send_on(effect.path, effect.payload)
            elif isinstance(effect, BuildPath):
                self._start_path()
            elif isinstance(effect, ClosePath):
                self._close_path(effect.path)
            elif isinstance(effect, PathsChanged):
                self._signal_paths()
            elif isinstance(effect, DeliverPacket):
                self.deliver_packet(effect.packet)
            elif isinstance(effect, Answered):
                asker = self._askers.get(effect.token)
                if asker is not None:
                    asker.set()
            else:
                assert_never(effect)

    # --- paths ---------------------------------------------------------------------------

    async def _keep_paths(self) -> None:
        """Carry out :meth:`EndpointCore.keep_paths` when a path is due a check
        (:meth:`EndpointCore.next_check_ms`) or the paths changed, at most every
        ``PATH_CHECK_INTERVAL_MS``."""
        while True:
            changed = self._paths_changed
            now = self._clock.now_ms()
            self._execute(self._core.keep_paths(now))
            await self._clock.sleep_until_ms(now + PATH_CHECK_INTERVAL_MS)
            due = self._core.next_check_ms(self._clock.now_ms())
            with self._clock.move_on_at_ms(due):
                await changed.wait()

    def _start_path(self) -> Path:
        path, cell = self._core.add_path(self._core.choose_hops(), self._clock.now_ms())
        pump = LinkPump()
        pump.send_nowait(cell)
        scope = trio.CancelScope()
        self._links[path.first_id] = (scope, pump)
        self._nursery.start_soon(self._run_path, path, scope, pump)
        return path

    def _close_path(self, path: Path) -> None:
        link = self._links.pop(path.first_id, None)
        if link is not None:
            scope, pump = link
            scope.cancel()
            pump.close()

    def _signal_paths(self) -> None:
        self._paths_changed.set()
        self._paths_changed = trio.Event()
        for session in self._sessions.values():
            session._core.announce()  # peers must learn where we are now
            session._wake_driver()

    async def _run_path(self, path: Path, scope: trio.CancelScope, pump: LinkPump) -> None:
        with scope:
            try:
                name = self._local_name
                transport = self._transport if name is None else self._transport.as_host(name)
                async with transport.connect(path.hops[0].address) as link:
                    await pump.run(link, partial(self._on_cell, path), self._count_drop)
            except (OSError, LinkClosed, ValueError) as exc:
                # A first hop anyone could list: unreachable, not the key its contact
                # names (TLS), or an address that does not parse. Its path is lost; the
                # endpoint, and every path and session it keeps, goes on.
                logger.info("path through %s lost: %s", path.hops[0].address, exc)
        self._execute(self._core.link_lost(path))

    def _count_drop(self) -> None:
        self.stats.cells_dropped += 1

    def _on_cell(self, path: Path, data: bytes) -> None:
        """Handle one cell from a path's first hop. Whatever it holds (the terminal hop and
        any endpoint that reaches our intro choose much of it), a failure drops this cell
        only: it must never end the path's receive loop, and with it the endpoint."""
        try:
            self._execute(self._core.receive_cell(path, data, self._clock.now_ms()))
        except Exception as exc:
            self.stats.cells_dropped += 1
            logger.warning("endpoint dropped a cell it could not handle: %r", exc)

    def _send_on(self, path: Path, payload: PathPayload) -> None:
        """Send ``payload`` along ``path``. A cell that cannot be handed to the link was
        counted by every hop already, so the next one would break the path at its first
        hop (see PathBroken): the path is given up at once instead."""
        link = self._links.get(path.first_id)
        if link is None:
            return
        try:
            link[1].send_nowait(path.wrap(payload.encode()))
        except (trio.WouldBlock, LinkClosed):
            self.stats.cells_dropped += 1
            self._execute(self._core.drop_path(path, self._clock.now_ms()))

    async def _ask(self, question: Question) -> None:
        """Send ``question`` and wait until it is answered or its deadline passes."""
        await self._await_answer(question.token, [question.send], question.deadline_ms)

    async def _await_answer(
        self, token: bytes, sends: list[Effect], deadline_ms: int | None
    ) -> None:
        """Carry ``sends`` out and wait until ``token`` is answered or the deadline passes."""
        answered = self._askers[token] = trio.Event()
        try:
            self._execute(sends)
            with self._clock.move_on_at_ms(deadline_ms):
                await answered.wait()
        finally:
            del self._askers[token]

    async def ping(self, path: Path, padding_bytes: int = 0) -> None:
        """One round trip to ``path``'s terminal hop with ``padding_bytes`` of filler each
        way (cells are fixed-size anyway; this is for measuring). Bound it with a cancel
        scope: a lost cell means no answer."""
        question = self._core.ping(path, padding_bytes)
        try:
            await self._ask(question)
        finally:
            self._core.forget_ping(question.token)

    async def build_path(self) -> Path:
        """Build one more path now and wait until it is established (or raise
        RuntimeError if it dies first). Paths built this way are kept until they expire."""
        path = self._start_path()
        while path.state is PathState.BUILDING:
            await self._paths_changed.wait()
        if path.state is PathState.DEAD:
            raise RuntimeError("path build failed")
        return path

    async def wait_ready(self, count: int = 1) -> None:
        """Wait until ``count`` paths are established."""
        while self._core.usable_count(self._clock.now_ms()) < count:
            await self._paths_changed.wait()

    @property
    def relays(self) -> frozenset[bytes]:
        """The keys of the relays paths are built through from now on."""
        return frozenset(self._core.directory)

    def update_directory(self, contacts: list[Contact]) -> bool:
        """Build paths through these relays from now on (see
        :meth:`EndpointCore.update_directory`); False, and nothing changed, if too few
        of them verify for a path."""
        return self._core.update_directory(verified_directory(contacts, self._clock.now_ms()))

    @property
    def session_count(self) -> int:
        """Sessions open now, until each one's driver has ended."""
        return len(self._sessions)

    def sessions_with(self, peer: bytes) -> list[Session]:
        """The sessions open now with the endpoint whose key is ``peer`` (dialed or
        accepted: for a moment, while one replaces the other, there can be two)."""
        return [s for s in self._sessions.values() if s.peer == peer]

    async def paths_changed(self) -> None:
        """Wait for the next change in this endpoint's paths (built, dead, dropped)."""
        await self._paths_changed.wait()

    async def _usable_path(self, avoid: Collection[Path] = ()) -> Path:
        while (path := self._core.next_path(self._clock.now_ms(), avoid)) is None:
            await self._paths_changed.wait()
        return path

    # --- exit requests -----------------------------------------------------------------------

    async def exit_path(self, avoid: Collection[Path] = ()) -> Path:
        """The path for the next exit request: each usable one in turn, none of ``avoid``
        (waits for a path to be built if only those are left)."""
        return await self._usable_path(avoid)

    async def exit_request(self, path: Path, address: str, body: bytes) -> bytes:
        """Have ``path``'s exit hop hand ``body`` to the server at ``address`` and return
        the server's reply; :class:`~overlay.exits.ExitFailed` if the exit got none. The
        exit sees the address and the body, so seal the body to the server. Bound the
        wait with a cancel scope: a lost cell or a dead exit means no answer."""
        token, sends = self._core.ask_exit(path, address, body)
        try:
            await self._await_answer(token, sends, None)
        finally:
            reply = self._core.exit_reply(token)
        assert reply is not None  # answered: the core has the reply
        status, data = reply
        if status is not ExitStatus.OK:
            raise ExitFailed(f"exit {path.terminal.address} could not reach {address}")
        return data

    # --- introsets -------------------------------------------------------------------------

    async def _dht(self, relay: bytes, request: bytes) -> bytes | None:
        path = await self._usable_path()
        question = self._core.ask_dht(path, relay, request, self._clock.now_ms())
        try:
            await self._ask(question)
        finally:
            response = self._core.dht_response(question.token)
        return response

    async def publish(self, shared_secret: bytes) -> int:
        """Publish this endpoint's introset for the siblings sharing ``shared_secret`` and
        keep it republished while the endpoint runs. Returns how many replicas stored it."""
        self._core.publish_under(shared_secret)
        return await self._publish_one(shared_secret)

    async def _publish_one(self, shared_secret: bytes) -> int:
        await self.wait_ready()
        now = self._clock.now_ms()
        rendezvous = rendezvous_keys(shared_secret, self.public_key, epoch_of(now))
        intros = self._core.introset_intros(now)
        introset = seal_introset(rendezvous, self._keys, intros, now + INTROSET_LIFETIME_MS)
        replicas = closest_relays(
            rendezvous.location, list(self._core.directory), INTROSET_REPLICAS
        )
        stored = 0

        async def put(relay: bytes) -> None:
            nonlocal stored
            for _ in range(DHT_ATTEMPTS):
                if await self._dht(relay, put_request(introset)) == bytes((DhtStatus.STORED,)):
                    stored += 1
                    return

        async with trio.open_nursery() as nursery:
            for relay in replicas:
                nursery.start_soon(put, relay)
        return stored

    async def _republish(self) -> None:
        """Carry out :meth:`EndpointCore.keep_introsets` whenever the paths change or its
        timer is due."""
        while True:
            changed = self._paths_changed
            republish = self._core.keep_introsets(self._clock.now_ms())
            if republish is None:
                with self._clock.move_on_at_ms(self._core.republish_at_ms):
                    await changed.wait()
                continue
            for secret in republish.secrets:
                await self._publish_one(secret)
            self._core.republished(self._clock.now_ms())

    async def lookup(self, shared_secret: bytes, owner: bytes) -> list[Intro]:
        """The live intros of sibling ``owner``, or [] if no replica has them. All replicas
        are asked at once (this epoch's and the last's); the first introset that opens
        wins. Replicas that gave no answer are asked again, in up to ``DHT_ATTEMPTS``
        rounds; an answer that they hold nothing is final, so looking up a sibling that
        is offline costs one round."""
        now = self._clock.now_ms()
        found: list[Intro] = []
        asking = [
            (relay, rendezvous)
            for epoch in (epoch_of(now), epoch_of(now) - 1)
            for rendezvous in [rendezvous_keys(shared_secret, owner, epoch)]
            for relay in closest_relays(rendezvous.location, list(self._core.directory))
        ]
        for _ in range(DHT_ATTEMPTS):
            silent: list[tuple[bytes, RendezvousKeys]] = []
            async with trio.open_nursery() as nursery:
                for relay, rendezvous in asking:
                    nursery.start_soon(
                        self._lookup_one, relay, rendezvous, owner, found, silent, nursery
                    )
            if found or not silent:
                return found
            asking = silent
        return []

    async def _lookup_one(
        self,
        relay: bytes,
        rendezvous: RendezvousKeys,
        owner: bytes,
        found: list[Intro],
        silent: list[tuple[bytes, RendezvousKeys]],
        nursery: trio.Nursery,
    ) -> None:
        """Ask one replica; ``silent`` collects those that did not answer."""
        response = await self._dht(relay, get_request(rendezvous.location))
        if not response:
            silent.append((relay, rendezvous))
            return
        if response[0] != DhtStatus.FOUND:
            return
        try:
            intros = open_introset(response[1:], rendezvous, owner, self._clock.now_ms())
        except IntrosetError:
            return
        if intros and not found:
            found.extend(intros)
            nursery.cancel_scope.cancel()

    # --- sessions --------------------------------------------------------------------------

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
        session = self._sessions.get(session_id)
        if session is not None:
            session._core.receive_packet(packet, now)
            session._wake_driver()
            session._notify()
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
        elif opened.why is Refused.STALE:
            self.stats.inits_stale += 1
            logger.info("session refused: %s (is this machine's clock right?)", opened.detail)
        else:
            self.stats.cells_dropped += 1

    def _start_session(self, core: SessionCore) -> Session:
        session = Session(core)
        self._nursery.start_soon(self._drive_session, session)  # raises once closed
        self._sessions[core.session_id] = session
        return session

    async def _drive_session(self, session: Session) -> None:
        core = session._core
        try:
            while core.state not in (SessionState.CLOSED, SessionState.FAILED):
                now = self._clock.now_ms()
                route = self._core.route(now)
                if route is None:
                    await self._paths_changed.wait()
                    continue
                core.local_intro = route.intro
                packets = core.outgoing(now)
                if core.stalled and (
                    session._intro_refreshed_ms is None
                    or now - session._intro_refreshed_ms >= SESSION_INTRO_REFRESH_MS
                ):
                    session._intro_refreshed_ms = now
                    self._nursery.start_soon(self._refresh_intro, session)
                target = core.peer_intro
                if target is not None:
                    for packet in packets:
                        self._send_on(route.path, Transfer(target.relay, target.intro_id, packet))
                session._notify()
                if core.state in (SessionState.CLOSED, SessionState.FAILED):
                    break  # outgoing() closed it: nothing will kick this driver again
                deadline = core.next_deadline_ms()
                with self._clock.move_on_at_ms(deadline):
                    await session._kick.wait()
                session._kick = trio.Event()
        finally:
            session._notify()
            del self._sessions[core.session_id]

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
        secrets = [session._secret] if session._secret is not None else self._core.secrets
        for secret in secrets:
            intros = await self.lookup(secret, core.peer)
            if intros:
                fresh = max(intros, key=lambda i: i.expiry_ms)
                if fresh != core.peer_intro:
                    core.peer_moved(fresh)
                    session._wake_driver()
                return

    @asynccontextmanager
    async def connect(
        self,
        peer: bytes,
        *,
        shared_secret: bytes | None = None,
        intros: list[Intro] | None = None,
    ) -> AsyncIterator[Session]:
        """A session to endpoint ``peer``, found through its introset (``shared_secret``)
        or at known ``intros``. Closed cleanly when the block ends."""
        if intros is None:
            if shared_secret is None:
                raise ValueError("connect needs a shared secret or the peer's intros")
            intros = await self.lookup(shared_secret, peer)
            if not intros:
                raise SessionError("peer has no live introset")
        await self.wait_ready()
        core = SessionCore.initiate(self._keys, peer, self._clock.now_ms())
        core.peer_intro = max(intros, key=lambda i: i.expiry_ms)
        session = self._start_session(core)
        session._secret = shared_secret
        self.stats.sessions_opened += 1
        await session._wait_open()
        try:
            yield session
        except BaseException:
            # Leaving by error or cancellation (the endpoint may be going down with us):
            # say goodbye without waiting for an acknowledgement that cannot come.
            session.abort()
            raise
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await session.aclose()

    def sessions(self) -> trio.MemoryReceiveChannel[Session]:
        """Sessions other endpoints open to this one, as they arrive (``async for``)."""
        return self._accept_receive


@asynccontextmanager
async def open_endpoint(
    identity_seed: bytes,
    transport: Transport,
    directory: list[Contact],
    *,
    hops: int = DEFAULT_HOPS,
    paths: int = DEFAULT_PATHS_PER_ENDPOINT,
    path_lifetime_ms: int = DEFAULT_PATH_LIFETIME_MS,
    clock: Clock | None = None,
    seed: int | None = None,
    local_name: str | None = None,
    ping_interval_ms: int = PATH_PING_INTERVAL_MS,
    republish_ms: int = INTROSET_REPUBLISH_MS,
    entry_filter: EntryFilter | None = None,
) -> AsyncIterator[Endpoint]:
    """An endpoint with ``paths`` paths of ``hops`` relays picked from ``directory``.

    ``seed`` makes relay choice reproducible in a simulation (see :func:`relay_choice`);
    ``local_name`` names this host on a :class:`MemoryNetwork` (for per-host faults and
    profiles). ``ping_interval_ms``: how often an idle path is pinged to find out whether
    it still works (a phone idling on battery pings less often, and notices a dead path
    later); ``republish_ms``: how often its introsets are republished while nothing
    changed (at most half an introset's life). ``entry_filter``: the relays the first hop
    of every path is picked from (:class:`~overlay.endpoint_core.EntryShare` keeps
    siblings off each other's entry relays); ``ValueError`` if it admits none.
    """
    if not 0 < republish_ms <= INTROSET_LIFETIME_MS // 2:
        raise ValueError(f"republish_ms must be in 1..{INTROSET_LIFETIME_MS // 2}")
    clock = clock or Clock()
    keys = KeyPair.from_seed(identity_seed)
    verified = verified_directory(directory, clock.now_ms())
    if len(verified) < hops:
        raise ValueError(f"{hops}-hop paths need at least {hops} verified relay contacts")
    core = EndpointCore(
        verified,
        relay_choice(transport, seed),
        clock.now_ms(),
        hops=hops,
        paths=paths,
        path_lifetime_ms=path_lifetime_ms,
        ping_interval_ms=ping_interval_ms,
        republish_ms=republish_ms,
        entry_filter=entry_filter,
    )
    async with open_task_nursery() as nursery:
        endpoint = Endpoint(keys, transport, clock, nursery, core, local_name=local_name)
        nursery.start_soon(endpoint._keep_paths)
        nursery.start_soon(endpoint._republish)
        yield endpoint


def relay_choice(transport: Transport, seed: int | None) -> random.Random:
    """The random source an endpoint picks its relays with.

    In a simulation (a :attr:`~overlay.link.Transport.simulated` transport) a ``seed``
    makes runs repeat. Anywhere else relays are picked with fresh OS randomness, seed or
    not: a device that seeded its choice from its own identity would pick the same relays
    after every restart, and those relays (or whoever watches them) could follow it across
    address changes by the relays it picks.
    """
    if transport.simulated and seed is not None:
        return random.Random(seed)
    return random.SystemRandom()
