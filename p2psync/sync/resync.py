"""History re-sync between two siblings, sans-I/O (DESIGN.md §7).

A device that was away longer than the TTL cannot get what expired from the swarm; a
sibling has it. When a session comes up, each side runs a :class:`Resync` as Negentropy
initiator over its history: first from its ``complete_until`` watermark (cheap: only the
recent range), then over the whole range (one round trip and a few hundred bytes when
nothing is missing). Every id the sibling has and this side lacks is asked for with
``WANT``; the sibling answers with ``MSG`` records from its history, which the live-sync
path files and acknowledges. Each side only fetches what *it* lacks; the sibling's own
:class:`Resync` fetches the rest, so nothing is pushed unasked.

A device that has never been complete (no watermark: it was just paired) skips
reconciliation's id lists: it asks for the sibling's whole history as an archive
(``ARCHQ``), which the sibling streams in parts over the end-to-end encrypted session
(``ARCH``), and then checks the whole range as usual. What it already holds (what the
swarm still had) comes again and is filed once.

:class:`Responder` answers queries. Both take history as ``(timestamp_ms, id)`` pairs and
return records as bytes; nothing here touches a session or a clock. :class:`ResyncPeer`
puts both sides together for one session: it takes the re-sync records a sibling sends
and says what to send back and what to file; :func:`archive_parts` cuts a history into
archive records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from .live import Item
from .negentropy import Negentropy, StorageVector
from .records import (
    MAX_IDS_PER_RECORD,
    MAX_RECORD_BYTES,
    Archive,
    ArchiveQuery,
    Msg,
    NegQuery,
    NegReply,
    Record,
    Want,
    encode_record,
)

#: Bounds every Negentropy message (well inside a session message), at the cost of rounds.
FRAME_SIZE_LIMIT = 60_000
#: An archive part's room for items (each costs its body plus a little framing).
ARCHIVE_PART_BYTES = MAX_RECORD_BYTES - 1024
ARCHIVE_ITEM_OVERHEAD = 64

History = Callable[[int], Iterable[tuple[int, bytes]]]
HistoryItem = Callable[[bytes], Item | None]


def _vector(history: History, since_ms: int) -> StorageVector:
    vector = StorageVector()
    for timestamp, digest in history(since_ms):
        vector.insert(timestamp, digest)
    vector.seal()
    return vector


class Resync:
    """The initiating side for one sibling: watermark range, then the whole range."""

    def __init__(self, history: History, complete_until_ms: int, has: Callable[[bytes], bool]):
        self._history = history
        self._has = has
        self._phases = [complete_until_ms, 0] if complete_until_ms > 0 else [0]
        self._negentropy: Negentropy | None = None
        #: Waiting for the archive of a sibling's whole history (we were never complete).
        self.archiving = complete_until_ms == 0
        self.wanted: set[bytes] = set()
        self.reconciled = False

    def start(self) -> bytes:
        if self.archiving:
            return encode_record(ArchiveQuery())
        return self._begin(self._phases[0])

    def on_archive(self, archive: Archive) -> list[bytes]:
        """After the archive's last part (its items filed by the caller), the whole-range
        check that makes sure nothing was missed."""
        if not (self.archiving and archive.last):
            return []
        self.archiving = False
        return [self._begin(0)]

    def _begin(self, since_ms: int) -> bytes:
        self._since = since_ms
        self._negentropy = Negentropy(_vector(self._history, since_ms), FRAME_SIZE_LIMIT)
        return encode_record(NegQuery(since_ms, self._negentropy.initiate()))

    def on_reply(self, reply: NegReply) -> list[bytes]:
        """Records to send next: ``WANT`` for what the reply showed missing, then the next
        query (of this phase or the next), or nothing once the whole range is done.
        Raises :class:`~p2psync.errors.DecodeError` on a malformed reply."""
        if self._negentropy is None or reply.since_ms != self._since:
            return []  # not the reply to our current query
        following, _, need = self._negentropy.process_reply(reply.payload)
        records = self._want(need)
        if following is not None:
            records.append(encode_record(NegQuery(self._since, following)))
            return records
        self._phases.pop(0)
        if self._phases:
            records.append(self._begin(self._phases[0]))
        else:
            self._negentropy = None
            self.reconciled = True
        return records

    def _want(self, ids: Iterable[bytes]) -> list[bytes]:
        missing = [digest for digest in ids if not self._has(digest) and digest not in self.wanted]
        self.wanted.update(missing)
        return [
            encode_record(Want(tuple(missing[i : i + MAX_IDS_PER_RECORD])))
            for i in range(0, len(missing), MAX_IDS_PER_RECORD)
        ]

    def filed(self, digest: bytes) -> None:
        self.wanted.discard(digest)

    @property
    def complete(self) -> bool:
        """Reconciled over the whole range and every missing item arrived."""
        return self.reconciled and not self.wanted


class Responder:
    """Answers a sibling's queries; keeps the set it sealed for the range being asked."""

    def __init__(self, history: History) -> None:
        self._history = history
        self._since: int | None = None
        self._vector: StorageVector | None = None

    def on_query(self, query: NegQuery) -> bytes:
        """Raises :class:`~p2psync.errors.DecodeError` on a malformed query."""
        if self._vector is None or query.since_ms != self._since:
            self._since, self._vector = query.since_ms, _vector(self._history, query.since_ms)
        reply = Negentropy(self._vector, FRAME_SIZE_LIMIT).respond(query.payload)
        return encode_record(NegReply(query.since_ms, reply))


@dataclass
class ResyncStep:
    """What one re-sync record asks of the driver."""

    send: list[bytes] = field(default_factory=list)
    #: History items from the sibling's archive, to file as if pushed live.
    file: list[Item] = field(default_factory=list)
    #: The sibling asked for our whole history (once per session): stream the archive.
    send_archive: bool = False


class ResyncPeer:
    """Both sides of history re-sync on one session with one sibling."""

    def __init__(
        self,
        history: History,
        history_item: HistoryItem,
        complete_until_ms: int,
        has: Callable[[bytes], bool],
    ) -> None:
        self.resync = Resync(history, complete_until_ms, has)
        self._responder = Responder(history)
        self._history_item = history_item
        self._archive_asked = False

    def start(self) -> bytes:
        return self.resync.start()

    def on_record(self, record: Record) -> ResyncStep | None:
        """The driver's part in answering ``record``; None if it is not a re-sync record
        (live sync's, then). Raises :class:`~p2psync.errors.DecodeError` on a malformed
        Negentropy message."""
        step = ResyncStep()
        match record:
            case ArchiveQuery():
                step.send_archive, self._archive_asked = not self._archive_asked, True
            case Archive(items=items):
                if self.resync.archiving:  # an archive nobody asked for is not filed
                    step.file = [Item(m.id, m.timestamp_ms, m.body) for m in items]
                    step.send = self.resync.on_archive(record)
            case NegQuery():
                step.send = [self._responder.on_query(record)]
            case NegReply():
                step.send = self.resync.on_reply(record)
            case Want(ids=ids):
                found = (self._history_item(digest) for digest in ids)
                step.send = [
                    encode_record(Msg(item.id, item.timestamp_ms, item.body))
                    for item in found
                    if item is not None
                ]
            case _:
                return None
        return step


def archive_parts(history: History, history_item: HistoryItem) -> Iterator[tuple[bytes, int]]:
    """A whole history in timestamp order as ``ARCH`` records that each fit a record, with
    the number of items in each; lazily, so a big history is never in memory at once."""
    part: list[Msg] = []
    room = ARCHIVE_PART_BYTES
    for _, digest in history(0):
        item = history_item(digest)
        if item is None:
            continue
        cost = len(item.body) + ARCHIVE_ITEM_OVERHEAD
        if part and cost > room:
            yield encode_record(Archive(tuple(part), last=False)), len(part)
            part, room = [], ARCHIVE_PART_BYTES
        part.append(Msg(item.id, item.timestamp_ms, item.body))
        room -= cost
    yield encode_record(Archive(tuple(part), last=True)), len(part)
