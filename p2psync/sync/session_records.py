"""What the records of one session with a sibling mean, sans-I/O.

A session carries four kinds of record, and each goes to the one piece that decides
what it asks for: keep-alive pings, which ask nothing; relay listings, which the device
takes or answers (:class:`ListingFrom`); re-sync's (:class:`~.resync.ResyncPeer`); and live
sync's (:class:`~.live.LiveSync`, shared by every session). :class:`SessionRecords` does
that routing for one session and also says when the sibling's re-sync is over: once its
whole range is reconciled and every item it showed missing has been filed, whether that
item came live, in an answer to ``WANT`` or in an archive.

Effects are :mod:`.live`'s events plus the three below; the driver carries them out in
order (an item is filed before the :class:`Resynced` it completes).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DecodeError
from .live import Deliver, Event, LiveSync, PeerError, Send
from .records import Ping, Relays, decode_record
from .resync import ResyncPeer


@dataclass(frozen=True, slots=True)
class ListingFrom:
    """The sibling passed on the relay listing its siblings deal entries on."""

    sibling: str
    listing: Relays


@dataclass(frozen=True, slots=True)
class StreamArchive:
    """The sibling asked for our whole history (once per session)."""

    sibling: str


@dataclass(frozen=True, slots=True)
class Resynced:
    """Re-sync from ``sibling``, begun at ``started_ms``, is over: nothing it holds is
    missing here."""

    sibling: str
    started_ms: int


Effect = Event | ListingFrom | StreamArchive | Resynced


class SessionRecords:
    """The records of one session with ``sibling``, begun at ``started_ms``."""

    def __init__(self, sibling: str, live: LiveSync, peer: ResyncPeer, started_ms: int) -> None:
        self.sibling = sibling
        self._live = live
        self._peer = peer
        self._started_ms = started_ms
        self._resynced = False
        #: Items filed from the sibling's archive of its history.
        self.archive_received = 0

    def open(self) -> list[Effect]:
        """The session is up: live sync pushes what the sibling lacks, re-sync begins."""
        return [
            *self._live.connected(self.sibling, self._started_ms),
            Send(self.sibling, self._peer.start()),
        ]

    def close(self, now_ms: int) -> list[Effect]:
        return list(self._live.disconnected(self.sibling, now_ms))

    def receive(self, data: bytes, now_ms: int) -> list[Effect]:
        """One record the sibling sent. One that does not decode is dropped and
        reported (:class:`PeerError`); the session goes on."""
        try:
            record = decode_record(data)
            if isinstance(record, Ping):
                return []
            if isinstance(record, Relays):
                return [ListingFrom(self.sibling, record)]
            step = self._peer.on_record(record)
            if step is None:
                events: list[Effect] = list(self._live.receive_record(self.sibling, record, now_ms))
        except DecodeError as exc:
            return [PeerError(self.sibling, str(exc))]
        if step is not None:
            self.archive_received += len(step.file)
            events = [Deliver(self.sibling, item) for item in step.file]
            events.extend(Send(self.sibling, reply) for reply in step.send)
        events.extend(self._filed(events))
        if step is not None and step.send_archive:
            events.append(StreamArchive(self.sibling))
        return events

    def _filed(self, effects: list[Effect]) -> list[Effect]:
        """:class:`Resynced` if filing what ``effects`` deliver (all from this sibling: live
        sync answers a record with events of its sender) completes its re-sync."""
        for effect in effects:
            if isinstance(effect, Deliver):
                self._peer.resync.filed(effect.item.id)
        if self._resynced or not self._peer.resync.complete:
            return []
        self._resynced = True
        return [Resynced(self.sibling, self._started_ms)]
