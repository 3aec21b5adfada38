"""The live-sync driver: :class:`~p2psync.sync.live.LiveSync` on overlay sessions.

One :class:`SiblingSync` per online device. It publishes the device's sibling-only
introset, keeps a session to each sibling that is online (the sibling with the lower
overlay key keeps dialing; the other dials once when it starts, and a session a sibling
opens replaces the one we had, which is how a stale session to a sibling that went away
and came back is dropped at once), feeds LiveSync what
the sessions carry and the passing of time, and carries out what LiveSync decides:
bytes to a sibling go on that sibling's session; messages, fallbacks and acknowledgements
go to the device (:class:`SyncHandler`).

When a session comes up, each side also re-syncs its history from the other
(:mod:`p2psync.sync.resync`: Negentropy from its watermark, then over the whole range,
fetching what it lacks), so a device that was away longer than the TTL gets back what
the swarm no longer holds. A sibling with no history yet gets ours as an archive, streamed
in parts with backpressure.

Without an endpoint (no relays to build paths through) it still runs LiveSync's clock,
so every message falls back to the swarm after the grace period, as it must.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import trio

from overlay.endpoint import Endpoint
from overlay.session import SessionError
from overlay.session_driver import Session

from ..clock import Clock
from ..errors import DecodeError
from .live import (
    DEFAULT_GRACE_MS,
    AllAcknowledged,
    Covered,
    Deliver,
    Event,
    FallbackDue,
    Item,
    LiveSync,
    PeerError,
    Send,
)
from .presence import (
    HELLO_DELAY_S,
    REDIAL_MIN_S,
    SessionChoice,
    dials,
    keep_session,
    may_leave,
    next_redial_s,
)
from .records import Ping, Relays, decode_record, encode_record, shareable_listing
from .resync import Resync, ResyncPeer, archive_parts

logger = logging.getLogger(__name__)

#: Records queued for one sibling's session; beyond that they are dropped, and LiveSync's
#: resend brings them back, so a slow session cannot grow memory without bound.
SESSION_QUEUE_RECORDS = 256
#: How long a device going offline spends telling its siblings.
GOODBYE_S = 1.0
#: How long a device going offline may wait for its siblings to take what it owes them
#: directly (:meth:`SiblingSync.deliver_before_leaving`) before storing sync copies.
DELIVER_BEFORE_LEAVING_S = 4.0
#: How long a session a sibling opened has to carry its first record before it counts:
#: a relay replaying an old INIT opens a session that never will, and must not replace the
#: live one. (The dialing side sends its re-sync query as soon as the session is open.)
FIRST_RECORD_S = 30.0
#: How often an idle session is made to prove its sibling is still there: a sibling that
#: vanished without goodbye (crash, lost network) then fails the session's retransmissions.
KEEPALIVE_S = 15.0


class SyncHandler(Protocol):
    def history_index(self, since_ms: int) -> list[tuple[int, bytes]]: ...
    def history_item(self, message_id: bytes) -> Item | None: ...
    def complete_until(self) -> int: ...
    def resynced(self, sibling: str, started_ms: int) -> None: ...
    def file_from_sibling(self, sibling: str, item: Item) -> None: ...
    def fall_back(self, item: Item, siblings: tuple[str, ...]) -> bool: ...
    def covered_by_sibling(self, message_id: bytes) -> None: ...
    def acknowledged(self, message_id: bytes, fell_back: bool) -> None: ...
    def reject_from_sibling(self, sibling: str, reason: str) -> None: ...
    def entry_listing(self) -> Relays | None: ...
    def learn_entry_listing(self, listing: Relays) -> bool: ...


class SiblingSync:
    def __init__(
        self,
        endpoint: Endpoint | None,
        secret: bytes,
        siblings: Mapping[str, bytes],
        clock: Clock,
        handler: SyncHandler,
        *,
        has: Callable[[bytes], bool],
        grace_ms: int = DEFAULT_GRACE_MS,
        keepalive_s: float = KEEPALIVE_S,
    ) -> None:
        """``siblings`` maps each sibling's device id to its overlay key."""
        self.endpoint = endpoint
        self.secret = secret
        self.clock = clock
        self.handler = handler
        self.live = LiveSync(siblings, has=has, grace_ms=grace_ms)
        self.keepalive_s = keepalive_s
        self.has = has
        self._keys = dict(siblings)
        self._by_key = {key: sibling for sibling, key in siblings.items()}
        self._sessions: dict[str, trio.MemorySendChannel[bytes]] = {}
        self._resyncs: dict[str, tuple[Resync, int]] = {}
        self._serving: dict[str, tuple[trio.CancelScope, trio.Event, Session]] = {}
        self.resynced: set[str] = set()
        #: History items sent to / received from siblings as a pairing-time archive.
        self.archive_sent = 0
        self.archive_received = 0
        self._kick = trio.Event()
        #: Set when a sibling shows it is here (it opened a session to us): the dialer
        #: stops backing off and dials again at once.
        self._present: dict[str, trio.Event] = {sibling: trio.Event() for sibling in siblings}
        #: Set once a sibling's first session came up or the first try to reach it failed.
        self._tried: dict[str, trio.Event] = {sibling: trio.Event() for sibling in siblings}
        #: Replaced and set whenever sessions or acknowledgements change.
        self._progress = trio.Event()
        #: Set when the device is about to leave: say hello without waiting for the dialer.
        self._leaving = trio.Event()

    @property
    def connected(self) -> set[str]:
        """Siblings with a session up right now."""
        return set(self._sessions)

    def publish(
        self,
        item: Item,
        published_ms: int,
        *,
        grace_ms: int | None = None,
        holders: tuple[str, ...] = (),
    ) -> None:
        """A message every sibling but ``holders`` should hold (``published_ms``: when it
        was first published, so a restart does not restart its grace period, or a time
        to come to hold it back until; ``grace_ms``: see :meth:`LiveSync.publish`)."""
        now = self.clock.now_ms()
        self._handle(
            self.live.publish(
                item, now, published_ms=published_ms, grace_ms=grace_ms, holders=holders
            )
        )

    def covered(self, message_id: bytes) -> None:
        """Another device stored this message's sync copy."""
        self.live.covered(message_id)

    async def run(self) -> None:
        """Until cancelled: publish presence, keep sessions, tick."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._tick)
            if self.endpoint is None:
                return
            await self.endpoint.publish(self.secret)
            nursery.start_soon(self._accept, nursery)
            for sibling, key in self._keys.items():
                if dials(self.endpoint.public_key, key):
                    nursery.start_soon(self._dial, sibling, key)
                else:
                    nursery.start_soon(self._hello, sibling, key)

    def leaving(self) -> None:
        """The device is about to go offline: have what a sibling has not acknowledged
        fall back now (:meth:`LiveSync.leaving`), while the sessions are still up to tell
        a stand-in from an origin that is still here."""
        self._apply(self.live.leaving())

    async def deliver_before_leaving(self) -> None:
        """Wait until every sibling still owed a message has acknowledged it or cannot be
        reached (no session, and the first try to reach it is over). A process that sends
        and exits at once (``p2psync device send``) so hands the message to a sibling that
        is online, instead of storing its sync copy in the swarm for the sibling to fetch.
        Bound it with a cancel scope (:data:`DELIVER_BEFORE_LEAVING_S`)."""
        self._leaving.set()
        if self.endpoint is None:
            return
        while not may_leave(
            self.live.owed_to(self.clock.now_ms()),
            self._sessions,
            {sibling for sibling, tried in self._tried.items() if tried.is_set()},
        ):
            await self._progress.wait()

    def _moved(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    def _tried_to_reach(self, sibling: str) -> None:
        if sibling in self._tried:
            self._tried[sibling].set()
        self._moved()

    async def leave(self) -> None:
        """Say goodbye on every session (for at most :data:`GOODBYE_S`): siblings of a
        device going offline on purpose learn it at once, not when a session times out."""
        with trio.move_on_after(GOODBYE_S):
            async with trio.open_nursery() as nursery:
                for _, _, session in self._serving.values():
                    nursery.start_soon(session.leave)

    # --- sessions ---------------------------------------------------------------------------

    async def _hello(self, sibling: str, key: bytes) -> None:
        """One dial on start, unless the sibling dialed us first: it may be holding a
        stale session to our last run, which it would otherwise notice only much later."""
        assert self.endpoint is not None
        with trio.move_on_after(HELLO_DELAY_S):
            await self._leaving.wait()  # leaving: no time to wait for the dialer
        if sibling in self._serving:
            return
        try:
            async with self.endpoint.connect(key, shared_secret=self.secret) as session:
                await self._serve(sibling, session)
        except SessionError as exc:
            logger.debug("hello to sibling %s: %s", sibling[:10], exc)
            self._tried_to_reach(sibling)

    async def _dial(self, sibling: str, key: bytes) -> None:
        assert self.endpoint is not None
        delay = REDIAL_MIN_S
        while True:
            while sibling in self._serving:  # the sibling dialed us: nothing to do
                await self._serving[sibling][1].wait()
            present = self._present[sibling] = trio.Event()
            try:
                async with self.endpoint.connect(key, shared_secret=self.secret) as session:
                    delay = REDIAL_MIN_S
                    await self._serve(sibling, session)
            except SessionError as exc:
                logger.debug("session to sibling %s: %s", sibling[:10], exc)
                self._tried_to_reach(sibling)
            with trio.move_on_after(delay):
                await present.wait()
            delay = next_redial_s(delay, present.is_set())

    async def _accept(self, nursery: trio.Nursery) -> None:
        assert self.endpoint is not None
        async for session in self.endpoint.sessions():
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
                await self._carry(sibling, session, first)
            if scope.cancelled_caught:
                session.abort()  # replaced: the sibling has moved on to its new session
        finally:
            del self._serving[sibling]
            ended.set()

    async def _carry(self, sibling: str, session: Session, first: bytes | None) -> None:
        send, receive = trio.open_memory_channel[bytes](SESSION_QUEUE_RECORDS)
        self._sessions[sibling] = send
        self._tried_to_reach(sibling)
        peer = ResyncPeer(
            self.handler.history_index,
            self.handler.history_item,
            self.handler.complete_until(),
            self.has,
        )
        self._resyncs[sibling] = (peer.resync, self.clock.now_ms())
        try:
            self._handle(self.live.connected(sibling, self.clock.now_ms()))
            self._send(sibling, peer.start())
            listing = self.handler.entry_listing()
            if listing is not None:
                self.share_listing(listing, only=sibling)
            async with trio.open_nursery() as nursery:

                async def write() -> None:
                    try:
                        async for data in receive:
                            await session.send(data)
                    except SessionError as exc:
                        logger.debug("session to sibling %s failed: %s", sibling[:10], exc)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(write)
                nursery.start_soon(self._keep_alive, send)

                def on_record(data: bytes) -> None:
                    if self._on_record(sibling, data, peer):
                        nursery.start_soon(self._send_archive, send)

                if first is not None:
                    on_record(first)
                try:
                    async for data in session:
                        on_record(data)
                except SessionError as exc:
                    logger.debug("session with sibling %s ended: %s", sibling[:10], exc)
                nursery.cancel_scope.cancel()
        finally:
            del self._sessions[sibling]
            del self._resyncs[sibling]
            self._handle(self.live.disconnected(sibling, self.clock.now_ms()))
            self._moved()

    def _on_record(self, sibling: str, data: bytes, peer: ResyncPeer) -> bool:
        """Re-sync records go to ``peer``, the rest to LiveSync. True if the sibling asked
        for our whole history as an archive."""
        try:
            record = decode_record(data)
            if isinstance(record, Ping):
                return False
            if isinstance(record, Relays):
                self._on_listing(sibling, record)
                return False
            step = peer.on_record(record)
            if step is None:
                self._handle(self.live.receive_record(sibling, record, self.clock.now_ms()))
                return False
            if step.file:
                self.archive_received += len(step.file)
                self._apply([Deliver(sibling, item) for item in step.file])
            for reply in step.send:
                self._send(sibling, reply)
            self._check_resynced(sibling)
            return step.send_archive
        except DecodeError as exc:
            self.handler.reject_from_sibling(sibling, str(exc))
            return False

    async def _keep_alive(self, channel: trio.MemorySendChannel[bytes]) -> None:
        ping = encode_record(Ping())
        while True:
            await trio.sleep(self.keepalive_s)
            await channel.send(ping)

    async def _send_archive(self, channel: trio.MemorySendChannel[bytes]) -> None:
        """Our whole history, waiting on the session's queue part by part."""
        for part, count in archive_parts(self.handler.history_index, self.handler.history_item):
            await channel.send(part)
            self.archive_sent += count

    def _on_listing(self, sibling: str, listing: Relays) -> None:
        """A sibling's relay listing: pass it on if we take it, else answer as
        :meth:`Relays.answered_with` says."""
        if self.handler.learn_entry_listing(listing):
            self.share_listing(listing, but=sibling)
            return
        answer = listing.answered_with(self.handler.entry_listing(), self.clock.now_ms())
        if answer is not None:
            self.share_listing(answer, only=sibling)

    def share_listing(
        self, listing: Relays, *, but: str | None = None, only: str | None = None
    ) -> None:
        """Pass the relay listing the siblings deal entries on to every sibling connected
        now (``but`` the one it came from; ``only`` one): each keeps it unless it knows a
        newer one (:meth:`Relays.replaces`), and passes that on in turn, so connected
        siblings settle on one; one too long for a record stays here
        (:func:`shareable_listing`)."""
        data = shareable_listing(listing)
        if data is None:
            return
        for sibling in [only] if only is not None else list(self._sessions):
            if sibling != but:
                self._send(sibling, data)

    def _send(self, sibling: str, data: bytes) -> None:
        self._apply([Send(sibling, data)])

    def _check_resynced(self, sibling: str) -> None:
        resync, started_ms = self._resyncs[sibling]
        if resync.complete and sibling not in self.resynced:
            self.resynced.add(sibling)
            self.handler.resynced(sibling, started_ms)

    # --- time and events ------------------------------------------------------------------

    async def _tick(self) -> None:
        while True:
            kick = self._kick
            deadline = self.live.next_deadline_ms()
            with self.clock.move_on_at_ms(deadline):
                await kick.wait()
            if kick.is_set():
                self._kick = trio.Event()
            self._apply(self.live.tick(self.clock.now_ms()))

    def _handle(self, events: list[Event]) -> None:
        """Carry out ``events`` and have the ticker look at the new deadline."""
        self._apply(events)
        self._kick.set()
        self._moved()

    def _apply(self, events: Iterable[Event]) -> None:
        for event in events:
            match event:
                case Send(sibling=sibling, data=data):
                    channel = self._sessions.get(sibling)
                    if channel is not None:
                        try:
                            channel.send_nowait(data)
                        except trio.WouldBlock:
                            logger.info("session to %s is full; a record waits", sibling[:10])
                case Deliver(sibling=sibling, item=item):
                    self.handler.file_from_sibling(sibling, item)
                    if sibling in self._resyncs:
                        self._resyncs[sibling][0].filed(item.id)
                        self._check_resynced(sibling)
                case FallbackDue(item=item, siblings=siblings):
                    if self.handler.fall_back(item, siblings):
                        self._apply(self.live.stored(item.id))
                case Covered(id=message_id):
                    self.handler.covered_by_sibling(message_id)
                case AllAcknowledged(id=message_id, fell_back=fell_back):
                    self.handler.acknowledged(message_id, fell_back)
                case PeerError(sibling=sibling, reason=reason):
                    self.handler.reject_from_sibling(sibling, reason)
