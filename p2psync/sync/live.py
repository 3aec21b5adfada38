"""Live sync between sibling devices, as a sans-I/O state machine (DESIGN.md §7).

One :class:`LiveSync` per device. Its driver tells it what happens — a message to share
(:meth:`publish`), a sibling session coming up or going down, bytes from a sibling, the
passing of time (:meth:`tick`) — and gets back :class:`Event` objects saying what to do:
send these bytes to that sibling, apply this message to history, store a fallback sync
copy in the swarm, delete it again. Time is always passed in (``now_ms``); nothing here
touches a socket, a clock or a task.

Guarantees, for each published message and each sibling:

* it is pushed while the sibling is reachable (from its publication time: one published
  for later is held until then) and resent (on reconnection, and every ``resend_ms``
  while unacknowledged) until the sibling acknowledges it;
* if some sibling has not acknowledged it ``grace_ms`` after publication, or when the
  device leaves first (:meth:`LiveSync.leaving`), exactly one :class:`FallbackDue` is
  emitted (the driver stores one sync copy in namespace 1), unless the driver said
  another device stored it (:meth:`LiveSync.covered`) or a sibling did (``STORED``,
  which a device sends its siblings that hold a message once it stored the message's
  sync copy, :meth:`LiveSync.stored`: one standing in for it then stores none);
* once every sibling has acknowledged it, exactly one :class:`AllAcknowledged` is emitted
  (the driver deletes the sync copy, if any, and may delete the inbound copy early).

Bodies over ``offer_over_bytes`` are offered first (``OFFER``) and sent only when the
sibling asks (``REQ``), so a sibling that already has a big message never downloads it
twice. Everything is idempotent by message id.

A device acknowledges what it received at the next :meth:`tick` after ``ack_delay_ms``;
its driver applies every :class:`Deliver` to durable history before calling ``tick``
again, so an acknowledgement never covers a message that could still be lost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..errors import DecodeError
from .records import (
    MAX_IDS_PER_RECORD,
    Ack,
    Msg,
    Offer,
    Record,
    Req,
    Stored,
    decode_record,
    encode_record,
)

DEFAULT_GRACE_MS = 10_000
DEFAULT_RESEND_MS = 5_000
DEFAULT_ACK_DELAY_MS = 50
DEFAULT_OFFER_OVER_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Item:
    """A message as siblings exchange it: its id, its timestamp and its stored bytes."""

    id: bytes
    timestamp_ms: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Send:
    sibling: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Deliver:
    """A sibling pushed this message: apply it to history (idempotent by id)."""

    sibling: str
    item: Item


@dataclass(frozen=True, slots=True)
class FallbackDue:
    """Some siblings did not acknowledge in time: store one sync copy in the swarm."""

    item: Item
    siblings: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AllAcknowledged:
    """Every sibling holds this message: a sync copy, if any, can be deleted."""

    id: bytes
    fell_back: bool


@dataclass(frozen=True, slots=True)
class Covered:
    """A sibling stored this message's sync copy: store none (remember it across restarts)."""

    id: bytes


@dataclass(frozen=True, slots=True)
class PeerError:
    """A sibling sent a record that does not decode; it was dropped."""

    sibling: str
    reason: str


Event = Send | Deliver | FallbackDue | Covered | AllAcknowledged | PeerError


@dataclass
class _Outgoing:
    item: Item
    published_ms: int
    waiting: set[str]
    grace_ms: int
    last_sent_ms: dict[str, int] = field(default_factory=dict)
    fell_back: bool = False
    #: This device stored the sync copy itself (siblings holding the message hear so).
    stored: bool = False


@dataclass
class _Sibling:
    reachable: bool = False
    acks: list[bytes] = field(default_factory=list)
    ack_due_ms: int | None = None


class LiveSync:
    """One device's live sync with its siblings (the guarantees are the module's): fed
    what happens, with the time, and answering with the :class:`Event` objects its driver
    carries out."""

    def __init__(
        self,
        siblings: Iterable[str],
        *,
        has: Callable[[bytes], bool],
        grace_ms: int = DEFAULT_GRACE_MS,
        resend_ms: int = DEFAULT_RESEND_MS,
        ack_delay_ms: int = DEFAULT_ACK_DELAY_MS,
        offer_over_bytes: int = DEFAULT_OFFER_OVER_BYTES,
    ) -> None:
        """``has(id)`` tells whether this device already holds a message (its history)."""
        self._has = has
        self.grace_ms = grace_ms
        self.resend_ms = resend_ms
        self.ack_delay_ms = ack_delay_ms
        self.offer_over_bytes = offer_over_bytes
        self._siblings = {name: _Sibling() for name in siblings}
        self._outgoing: dict[bytes, _Outgoing] = {}

    # --- inputs ---------------------------------------------------------------------------

    def add_sibling(self, sibling: str) -> None:
        self._siblings.setdefault(sibling, _Sibling())

    def remove_sibling(self, sibling: str, now_ms: int) -> list[Event]:
        """A sibling was unpaired: stop waiting for it."""
        self._siblings.pop(sibling, None)
        events: list[Event] = []
        for message_id in list(self._outgoing):
            self._acknowledged(sibling, message_id, events)
        return events

    def publish(
        self,
        item: Item,
        now_ms: int,
        *,
        published_ms: int | None = None,
        grace_ms: int | None = None,
        holders: Iterable[str] = (),
    ) -> list[Event]:
        """A message this device sent or received that every sibling should hold, except
        ``holders``, known to hold it already. ``published_ms`` (default: now) is when it
        was published: earlier, for one published before a restart; later, to hold it
        back until then (nothing is pushed before, and the grace period starts then).
        ``grace_ms`` overrides the grace period for this one message: a sibling standing
        in for the message's origin waits longer, so that the origin stores the sync copy
        if it is still there."""
        if item.id in self._outgoing:
            return []
        waiting = set(self._siblings).difference(holders)
        if not waiting:
            return [AllAcknowledged(item.id, fell_back=False)]
        grace = self.grace_ms if grace_ms is None else grace_ms
        published = now_ms if published_ms is None else published_ms
        outgoing = _Outgoing(item, published, waiting, grace)
        self._outgoing[item.id] = outgoing
        if published > now_ms:
            return []
        return [
            self._push(name, outgoing, now_ms)
            for name, sibling in self._siblings.items()
            if sibling.reachable
        ]

    def stored(self, message_id: bytes) -> list[Event]:
        """The driver stored this message's sync copy (after :class:`FallbackDue`): every
        reachable sibling that holds it hears so, now or when it connects, so that one
        standing in for this device does not store a second."""
        outgoing = self._outgoing.get(message_id)
        if outgoing is None:
            return []
        outgoing.stored = True
        return [
            event
            for name, state in self._siblings.items()
            if state.reachable
            for event in self._tell_stored(name, [message_id])
        ]

    def covered(self, message_id: bytes) -> None:
        """Another device stored the sync copy of this message: store none here (it is
        still pushed until every sibling acknowledges it)."""
        outgoing = self._outgoing.get(message_id)
        if outgoing is not None:
            outgoing.fell_back = True

    def connected(self, sibling: str, now_ms: int) -> list[Event]:
        """A session to ``sibling`` is up: push everything it has not acknowledged."""
        state = self._siblings.get(sibling)
        if state is None:
            return []
        state.reachable = True
        events: list[Event] = [
            self._push(sibling, outgoing, now_ms)
            for outgoing in self._outgoing.values()
            if sibling in outgoing.waiting and outgoing.published_ms <= now_ms
        ]
        stored = [o.item.id for o in self._outgoing.values() if o.stored]
        events.extend(self._tell_stored(sibling, stored))
        return events

    def disconnected(self, sibling: str, now_ms: int) -> list[Event]:
        state = self._siblings.get(sibling)
        if state is not None:
            state.reachable = False
            state.acks.clear()
            state.ack_due_ms = None
        return []

    def receive(self, sibling: str, data: bytes, now_ms: int) -> list[Event]:
        """Bytes from a sibling's session."""
        try:
            record = decode_record(data)
        except DecodeError as exc:
            return [PeerError(sibling, str(exc))]
        return self.receive_record(sibling, record, now_ms)

    def receive_record(self, sibling: str, record: Record, now_ms: int) -> list[Event]:
        """A record from a sibling's session, already decoded (records that are not live
        sync's are ignored)."""
        state = self._siblings.get(sibling)
        if state is None:
            return [PeerError(sibling, "not a sibling")]
        events: list[Event] = []
        match record:
            case Msg(id=message_id, timestamp_ms=timestamp, body=body):
                events.append(Deliver(sibling, Item(message_id, timestamp, body)))
                self._queue_ack(state, message_id, now_ms, events, sibling)
            case Offer(id=message_id):
                if self._has(message_id):
                    self._queue_ack(state, message_id, now_ms, events, sibling)
                else:
                    events.append(Send(sibling, encode_record(Req((message_id,)))))
            case Req(ids=ids):
                for message_id in ids:
                    outgoing = self._outgoing.get(message_id)
                    if outgoing is not None:
                        item = outgoing.item
                        events.append(
                            Send(sibling, encode_record(Msg(item.id, item.timestamp_ms, item.body)))
                        )
            case Ack(ids=ids):
                for message_id in ids:
                    self._acknowledged(sibling, message_id, events)
            case Stored(ids=ids):
                for message_id in ids:
                    outgoing = self._outgoing.get(message_id)
                    if outgoing is not None and not outgoing.fell_back:
                        outgoing.fell_back = True
                        events.append(Covered(message_id))
        return events

    def leaving(self) -> list[FallbackDue]:
        """This device is going offline or exiting (or starting again after it crashed,
        with what it had published then): nothing it holds reaches a sibling from here
        until it returns, which may be never (a lost phone), so whatever some sibling has
        not acknowledged falls back now, inside its grace period or not. Acknowledgements
        that come later still end in :class:`AllAcknowledged`, so those copies go early."""
        return [
            self._fall_back(outgoing)
            for outgoing in self._outgoing.values()
            if not outgoing.fell_back
        ]

    def tick(self, now_ms: int) -> list[Event]:
        """Flush due acknowledgements, resend what is overdue, and fall back what waited
        past the grace period."""
        events: list[Event] = []
        for name, state in self._siblings.items():
            if state.ack_due_ms is not None and now_ms >= state.ack_due_ms:
                events.extend(self._flush_acks(name, state))
        for outgoing in self._outgoing.values():
            for name in outgoing.waiting:
                state = self._siblings[name]
                last = outgoing.last_sent_ms.get(name)
                due = outgoing.published_ms if last is None else last + self.resend_ms
                if state.reachable and now_ms >= due:
                    events.append(self._push(name, outgoing, now_ms))
            if not outgoing.fell_back and now_ms - outgoing.published_ms >= outgoing.grace_ms:
                events.append(self._fall_back(outgoing))
        return events

    def next_deadline_ms(self) -> int | None:
        """When :meth:`tick` next has something to do (None: nothing pending)."""
        deadlines: list[int] = []
        for state in self._siblings.values():
            if state.ack_due_ms is not None:
                deadlines.append(state.ack_due_ms)
        for outgoing in self._outgoing.values():
            if not outgoing.fell_back:
                deadlines.append(outgoing.published_ms + outgoing.grace_ms)
            for name in outgoing.waiting:
                if self._siblings[name].reachable:
                    last = outgoing.last_sent_ms.get(name)
                    deadlines.append(
                        outgoing.published_ms if last is None else last + self.resend_ms
                    )
        return min(deadlines) if deadlines else None

    @property
    def pending(self) -> int:
        """Messages some sibling has not acknowledged yet."""
        return len(self._outgoing)

    def owed_to(self, now_ms: int) -> set[str]:
        """The siblings still owed a message that has not fallen back to the swarm (and is
        not held back past ``now_ms``)."""
        return {
            name
            for outgoing in self._outgoing.values()
            if not outgoing.fell_back and outgoing.published_ms <= now_ms
            for name in outgoing.waiting
        }

    # --- internals ------------------------------------------------------------------------

    def _push(self, sibling: str, outgoing: _Outgoing, now_ms: int) -> Send:
        outgoing.last_sent_ms[sibling] = now_ms
        item = outgoing.item
        record: Record
        if len(item.body) > self.offer_over_bytes:
            record = Offer(item.id, item.timestamp_ms, len(item.body))
        else:
            record = Msg(item.id, item.timestamp_ms, item.body)
        return Send(sibling, encode_record(record))

    def _tell_stored(self, sibling: str, ids: list[bytes]) -> list[Event]:
        """``STORED`` records for ``sibling``, of those ``ids`` it holds (those it lacks
        it reads from the copy)."""
        held = [i for i in ids if sibling not in self._outgoing[i].waiting]
        return [
            Send(sibling, encode_record(Stored(tuple(held[n : n + MAX_IDS_PER_RECORD]))))
            for n in range(0, len(held), MAX_IDS_PER_RECORD)
        ]

    def _fall_back(self, outgoing: _Outgoing) -> FallbackDue:
        outgoing.fell_back = True
        return FallbackDue(outgoing.item, tuple(sorted(outgoing.waiting)))

    def _queue_ack(
        self, state: _Sibling, message_id: bytes, now_ms: int, events: list[Event], sibling: str
    ) -> None:
        state.acks.append(message_id)
        if state.ack_due_ms is None:
            state.ack_due_ms = now_ms + self.ack_delay_ms
        if len(state.acks) >= MAX_IDS_PER_RECORD:
            events.extend(self._flush_acks(sibling, state))

    def _flush_acks(self, sibling: str, state: _Sibling) -> list[Event]:
        ids, state.acks, state.ack_due_ms = tuple(state.acks), [], None
        return [Send(sibling, encode_record(Ack(ids)))] if ids else []

    def _acknowledged(self, sibling: str, message_id: bytes, events: list[Event]) -> None:
        outgoing = self._outgoing.get(message_id)
        if outgoing is None:
            return
        outgoing.waiting.discard(sibling)
        if not outgoing.waiting:
            del self._outgoing[message_id]
            events.append(AllAcknowledged(message_id, outgoing.fell_back))
