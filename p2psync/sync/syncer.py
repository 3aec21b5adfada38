"""The live-sync driver: :class:`~p2psync.sync.live.LiveSync` on overlay sessions.

One :class:`SiblingSync` per online device. Its sessions, one to each sibling that is
online, are kept by :class:`~.sessions.SiblingSessions`; this driver carries what each
one holds (:meth:`SiblingSync.carry`): it feeds LiveSync what the sessions carry and the
passing of time, and carries out what LiveSync decides: bytes to a sibling go on that
sibling's session; messages, fallbacks and acknowledgements go to the device
(:class:`SyncHandler`).

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

import trio

from overlay.endpoint import Endpoint
from overlay.session import SessionError
from overlay.session_driver import Session

from ..clock import Clock
from .live import (
    DEFAULT_GRACE_MS,
    AllAcknowledged,
    Covered,
    Deliver,
    FallbackDue,
    Item,
    LiveSync,
    PeerError,
    Send,
)
from .presence import KEEPALIVE_S, keepalive_due_ms, may_leave
from .records import Ping, Relays, encode_record, shareable_listing
from .resync import ResyncPeer, archive_parts
from .session_records import Effect, ListingFrom, Resynced, SessionRecords, StreamArchive
from .sessions import SiblingSessions

logger = logging.getLogger(__name__)

#: Records queued for one sibling's session; beyond that they are dropped, and LiveSync's
#: resend brings them back, so a slow session cannot grow memory without bound.
SESSION_QUEUE_RECORDS = 256
#: How long a device going offline may wait for its siblings to take what it owes them
#: directly (:meth:`SiblingSync.deliver_before_leaving`) before storing sync copies.
DELIVER_BEFORE_LEAVING_S = 4.0


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
        self.clock = clock
        self.handler = handler
        self.live = LiveSync(siblings, has=has, grace_ms=grace_ms)
        self.keepalive_s = keepalive_s
        self.has = has
        self._sessions: dict[str, trio.MemorySendChannel[bytes]] = {}
        self._records: dict[str, SessionRecords] = {}
        self._keeper = (
            None
            if endpoint is None
            else SiblingSessions(endpoint, secret, siblings, self.carry, self._moved)
        )
        self.resynced: set[str] = set()
        #: History items sent to siblings as a pairing-time archive.
        self.archive_sent = 0
        self._archive_received = 0
        self._kick = trio.Event()
        #: Replaced and set whenever sessions or acknowledgements change.
        self._progress = trio.Event()

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
        """Until cancelled: tick, and keep sessions (:class:`SiblingSessions`)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._tick)
            if self._keeper is not None:
                nursery.start_soon(self._keeper.run)

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
        keeper = self._keeper
        if keeper is None:
            return
        keeper.leaving()
        while not may_leave(self.live.owed_to(self.clock.now_ms()), keeper.serving, keeper.tried):
            await self._progress.wait()

    def _moved(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    async def leave(self) -> None:
        """Say goodbye on every session (:meth:`SiblingSessions.leave`)."""
        if self._keeper is not None:
            await self._keeper.leave()

    # --- what a session carries ------------------------------------------------------------

    async def carry(
        self, sibling: str, session: Session, first: bytes | None, keeper: bool
    ) -> None:
        """Carry ``sibling``'s records over ``session`` until it ends (``first``: a record
        already read from it): LiveSync's and re-sync's, both ways; keep-alives too if this
        side is the ``keeper`` (:func:`~.presence.keepalive_due_ms`)."""
        send, receive = trio.open_memory_channel[bytes](SESSION_QUEUE_RECORDS)
        self._sessions[sibling] = send
        peer = ResyncPeer(
            self.handler.history_index,
            self.handler.history_item,
            self.handler.complete_until(),
            self.has,
        )
        records = self._records[sibling] = SessionRecords(
            sibling, self.live, peer, self.clock.now_ms()
        )
        try:
            self._handle(records.open())
            listing = self.handler.entry_listing()
            if listing is not None:
                self.share_listing(listing, only=sibling)
            async with trio.open_nursery() as nursery:
                quiet = _Quiet(self.clock.now_ms(), keeper=keeper)

                async def write() -> None:
                    try:
                        async for data in receive:
                            await session.send(data)
                            quiet.sent_ms = self.clock.now_ms()
                    except SessionError as exc:
                        logger.debug("session to sibling %s failed: %s", sibling[:10], exc)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(write)
                nursery.start_soon(self._keep_alive, send, quiet)

                def on_record(data: bytes) -> None:
                    quiet.heard_ms = self.clock.now_ms()
                    effects = records.receive(data, self.clock.now_ms())
                    # Handled even when there are none: a record may move what live sync
                    # waits on without an effect (an OFFER of a message held here sets an
                    # ACK's deadline; an ACK changes whom a leaving device waits for).
                    self._handle(effects)
                    if StreamArchive(sibling) in effects:
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
            del self._records[sibling]
            self._archive_received += records.archive_received
            self._handle(records.close(self.clock.now_ms()))

    @property
    def archive_received(self) -> int:
        """History items received from siblings as a pairing-time archive."""
        return self._archive_received + sum(r.archive_received for r in self._records.values())

    async def _keep_alive(self, channel: trio.MemorySendChannel[bytes], quiet: _Quiet) -> None:
        """A keep-alive whenever :func:`keepalive_due_ms` says one is due."""
        ping = encode_record(Ping())
        interval_ms = int(self.keepalive_s * 1000)
        while True:
            due_ms = keepalive_due_ms(
                quiet.sent_ms, quiet.heard_ms, interval_ms, keeper=quiet.keeper
            )
            if self.clock.now_ms() < due_ms:
                await self.clock.sleep_until_ms(due_ms)  # a record meanwhile moves it on
                continue
            quiet.sent_ms = self.clock.now_ms()  # queued: the next is due from now
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
        siblings settle on one; one too long for a record goes as its read time alone
        (:func:`shareable_listing`)."""
        data = shareable_listing(listing)
        for sibling in [only] if only is not None else list(self._sessions):
            if sibling != but:
                self._send(sibling, data)

    def _send(self, sibling: str, data: bytes) -> None:
        self._apply([Send(sibling, data)])

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

    def _handle(self, events: Sequence[Effect]) -> None:
        """Carry out ``events`` and have the ticker look at the new deadline."""
        self._apply(events)
        self._kick.set()
        self._moved()

    def _apply(self, events: Iterable[Effect]) -> None:
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
                case Resynced(sibling=sibling, started_ms=started_ms):
                    self.resynced.add(sibling)
                    self.handler.resynced(sibling, started_ms)
                case ListingFrom(sibling=sibling, listing=listing):
                    self._on_listing(sibling, listing)
                case StreamArchive():
                    pass  # the session's carrier streams it (carry)
                case FallbackDue(item=item, siblings=siblings):
                    if self.handler.fall_back(item, siblings):
                        self._apply(self.live.stored(item.id))
                case Covered(id=message_id):
                    self.handler.covered_by_sibling(message_id)
                case AllAcknowledged(id=message_id, fell_back=fell_back):
                    self.handler.acknowledged(message_id, fell_back)
                case PeerError(sibling=sibling, reason=reason):
                    self.handler.reject_from_sibling(sibling, reason)


class _Quiet:
    """When a session last sent a record, and last heard one (epoch ms)."""

    __slots__ = ("heard_ms", "keeper", "sent_ms")

    def __init__(self, now_ms: int, *, keeper: bool) -> None:
        self.sent_ms = self.heard_ms = now_ms
        #: Whether this side sends the keep-alives (:func:`keepalive_due_ms`).
        self.keeper = keeper
