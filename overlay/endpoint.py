"""An overlay endpoint: keeps paths, publishes and finds introsets, runs sessions, and
has its paths' exit hops hand requests to servers (:meth:`Endpoint.exit_request`).

The protocol lives in the sans-I/O pieces (:class:`~overlay.endpoint_core.EndpointCore`
for the paths, pings, DHT answers and republishing, :class:`~overlay.session.SessionCore`,
:mod:`overlay.introset`); this module is the Trio driver of the paths, and
:mod:`overlay.introset_driver` and :mod:`overlay.session_driver` drive introsets and
sessions over them. :func:`open_endpoint` owns every task: paths (one link each, to
their first hop), the path keeper, the introset republisher, one driver per session.
Leaving its ``async with`` cancels them all.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Collection
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import assert_never

import trio

from .clock import Clock
from .constants import (
    DEFAULT_HOPS,
    DEFAULT_PATH_LIFETIME_MS,
    DEFAULT_PATHS_PER_ENDPOINT,
    INTROSET_REPUBLISH_MS,
    PATH_CHECK_INTERVAL_MS,
    PATH_PING_INTERVAL_MS,
)
from .contact import Contact, verified_directory
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
)
from .introset_driver import Introsets
from .keys import KeyPair
from .link import LinkClosed, LinkPump, Transport
from .path import Path, PathState
from .payloads import PathPayload
from .session import Admits
from .session_driver import Session, Sessions
from .tasks import open_task_nursery

logger = logging.getLogger(__name__)


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
        self._introsets = Introsets(
            core,
            keys,
            clock,
            ask=self._dht,
            ready=self.wait_ready,
            paths_event=lambda: self._paths_changed,
        )
        self._sessions = Sessions(
            keys,
            clock,
            nursery,
            core.stats,
            route=core.route,
            send=self._send_on,
            paths_changed=self.paths_changed,
            ready=self.wait_ready,
            lookup=self.lookup,
            secrets=lambda: core.secrets,
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
        self._sessions.paths_moved()

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
        return self._sessions.count

    def sessions_with(self, peer: bytes) -> list[Session]:
        """The sessions open now with the endpoint whose key is ``peer`` (dialed or
        accepted: for a moment, while one replaces the other, there can be two)."""
        return self._sessions.with_peer(peer)

    async def written(self) -> None:
        """Return once every cell sent so far is written to its path's first link: what a
        device going offline waits for after its sessions' goodbyes, so they leave before
        its links are cancelled (a cell still queued then was never sent). Bound it with
        a cancel scope."""
        for _, pump in list(self._links.values()):
            await pump.written()

    async def paths_changed(self) -> None:
        """Wait for the next change in this endpoint's paths (built, dead, dropped)."""
        await self._paths_changed.wait()

    async def _usable_path(self) -> Path:
        while (path := self._core.next_path(self._clock.now_ms())) is None:
            await self._paths_changed.wait()
        return path

    # --- exit requests -----------------------------------------------------------------------

    async def exit_path(self, tried: Collection[Path] = ()) -> Path:
        """The path for an exit request's next attempt
        (:meth:`EndpointCore.exit_path`), once there is one."""
        while (path := self._core.exit_path(self._clock.now_ms(), tried)) is None:
            await self._paths_changed.wait()
        return path

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

    def exit_unanswered(self, path: Path) -> None:
        """See :meth:`EndpointCore.exit_unanswered`."""
        self._execute(self._core.exit_unanswered(path, self._clock.now_ms()))

    def exit_answered(self, path: Path) -> None:
        """See :meth:`EndpointCore.exit_answered`."""
        self._core.exit_answered(path)

    # --- introsets and sessions -----------------------------------------------------------

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
        return await self._introsets.publish(shared_secret)

    async def lookup(self, shared_secret: bytes, owner: bytes) -> list[Intro]:
        """The live intros of sibling ``owner``, or [] if no replica has them
        (:meth:`.Introsets.lookup`)."""
        return await self._introsets.lookup(shared_secret, owner)

    def deliver_packet(self, packet: bytes) -> None:
        """Take one session packet as if our intro had delivered it
        (:meth:`.Sessions.deliver_packet`; tests play other endpoints and relays through
        this call). Call it inside the endpoint's ``async with``."""
        self._sessions.deliver_packet(packet)

    def connect(
        self,
        peer: bytes,
        *,
        shared_secret: bytes | None = None,
        intros: list[Intro] | None = None,
    ) -> AbstractAsyncContextManager[Session]:
        """A session to endpoint ``peer``, found through its introset (``shared_secret``)
        or at known ``intros``. Closed cleanly when the block ends."""
        return self._sessions.connect(peer, shared_secret=shared_secret, intros=intros)

    def accept_only(self, admits: Admits) -> None:
        """Take sessions from the peers ``admits`` names alone (see
        :meth:`Sessions.accept_only`)."""
        self._sessions.accept_only(admits)

    def sessions(self) -> trio.MemoryReceiveChannel[Session]:
        """Sessions other endpoints open to this one, as they arrive (``async for``)."""
        return self._sessions.accepted()


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
    clock = clock or Clock()
    keys = KeyPair.from_seed(identity_seed)
    core = EndpointCore(
        verified_directory(directory, clock.now_ms()),
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
        nursery.start_soon(endpoint._introsets.run)
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
