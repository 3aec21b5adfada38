"""Live-sync records between sibling devices (DESIGN.md §7), with strict decoding.

A record is a CBOR array whose first element names its type:

* ``["MSG", id, timestamp_ms, body]`` — a message (sent or received) the sibling needs;
* ``["ACK", [id, ...]]`` — batched acknowledgement of what was received and stored;
* ``["OFFER", id, timestamp_ms, size]`` — a large body announced, not pushed;
* ``["REQ", [id, ...]]`` — the sibling asks for offered bodies it lacks;
* ``["STORED", [id, ...]]`` — the sender stored the sync copies of these for the siblings
  that had not acknowledged them: a sibling standing in for the sender stores none;
* ``["NEGQ", since_ms, bytes]`` / ``["NEGR", since_ms, bytes]`` — a Negentropy V1 query
  and its reply, over the history items timestamped at or after ``since_ms``;
* ``["WANT", [id, ...]]`` — send these history items (as ``MSG``), found missing by
  reconciliation;
* ``["PING"]`` — keeps an idle session proven alive: it must be acknowledged by the
  session layer, whose retransmissions fail a session to a sibling that vanished;
* ``["ARCHQ"]`` — a device with no history yet (just paired) asks for all of it;
* ``["ARCH", [[id, timestamp_ms, body], ...], last]`` — one part of that archive, in
  timestamp order; ``last`` marks the final part;
* ``["RELAYS", read_ms, [contact, ...]]`` — the newest relay listing the sender knows:
  when it was read, and its relays' signed contacts (``overlay.contact``), sorted by key.
  Siblings build paths through, and deal their entry relays out on, the newest one any
  of them read, so they agree on it. A listing longer than a record takes goes as its
  read time alone, with no contacts: dealt by hash alone (see :meth:`Relays.agreed`).

Ids are the 32-byte message ids of :mod:`p2psync.identity` (BLAKE2b of the stored
ciphertext), so a record is idempotent: applying a ``MSG`` twice stores it once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from overlay.contact import Contact, ContactError

from ..errors import DecodeError
from ..wire import decode_cbor, encode_cbor

ID_BYTES = 32
MAX_BODY_BYTES = 96 * 1024
MAX_IDS_PER_RECORD = 1024
MAX_RECORD_BYTES = MAX_BODY_BYTES + 1024
#: Contacts a RELAYS record carries at most (about 64 KiB of them). A longer listing is
#: passed on as its read time alone (:meth:`Relays.agreed`).
MAX_RELAYS_PER_RECORD = 512
#: How far ahead of a device's clock a sibling's relay listing may say it was read.
LISTING_AHEAD_MS = 10 * 60 * 1000


@dataclass(frozen=True, slots=True)
class Msg:
    id: bytes
    timestamp_ms: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    ids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Offer:
    id: bytes
    timestamp_ms: int
    size: int


@dataclass(frozen=True, slots=True)
class Req:
    ids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Stored:
    ids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class NegQuery:
    since_ms: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class NegReply:
    since_ms: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Want:
    ids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class ArchiveQuery:
    pass


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Relays:
    """A relay listing as siblings pass it on: when it was read, and its contacts (one
    per relay). Signatures and expiry are checked where the contacts are used."""

    read_ms: int
    contacts: tuple[Contact, ...]

    @property
    def keys(self) -> frozenset[bytes]:
        return frozenset(contact.pubkey for contact in self.contacts)

    @classmethod
    def read(cls, read_ms: int, contacts: Iterable[Contact]) -> Relays:
        """A listing read at ``read_ms``: one contact per relay, in key order."""
        by_key = {contact.pubkey: contact for contact in contacts}
        return cls(read_ms, tuple(by_key[key] for key in sorted(by_key)))

    def agreed(self) -> Relays:
        """This listing as siblings agree on it: itself, or, when one record cannot take
        it (:data:`MAX_RELAYS_PER_RECORD` contacts, ``MAX_RECORD_BYTES`` encoded), its
        read time alone. That one deals every relay by hash alone, which needs no list:
        on so many relays the dealing's minimum moves none anyway, and a sibling still on
        an older, small listing would otherwise go on dealing with the minimum on that
        one (measured: 205 of 1 000 3-device accounts sharing an entry for a network
        grown from 8 relays to 612). A sibling that learns it reads the registry again."""
        fits = len(self.contacts) <= MAX_RELAYS_PER_RECORD
        if fits and len(encode_record(self)) <= MAX_RECORD_BYTES:
            return self
        return Relays(self.read_ms, ())

    def from_the_future(self, now_ms: int) -> bool:
        """Read more than :data:`LISTING_AHEAD_MS` after ``now_ms``: the newest listing
        wins, so one dated far ahead would stand against every later read."""
        return self.read_ms > now_ms + LISTING_AHEAD_MS

    def replaces(self, known: Relays | None, now_ms: int) -> bool:
        """Whether siblings that know ``known`` take this listing instead: the one read
        last, ties going to the greater key list, so every sibling that has seen both
        picks the same one; never one :meth:`from_the_future`. The same relays read again
        change no dealing (:meth:`~p2psync.device.local.Local.learn_entry_listing` still
        keeps their fresher contacts)."""
        if self.from_the_future(now_ms):
            return False
        if known is None:
            return True
        if self.keys == known.keys:
            return False
        return (self.read_ms, sorted(self.keys)) > (known.read_ms, sorted(known.keys))

    def refreshes(self, known: Relays | None, now_ms: int) -> bool:
        """The same relays as ``known``, read later: worth keeping for their fresher
        contacts, though it changes no dealing."""
        return (
            known is not None
            and self.keys == known.keys
            and known.read_ms < self.read_ms
            and not self.from_the_future(now_ms)
        )

    def answered_with(self, known: Relays | None, now_ms: int) -> Relays | None:
        """What a sibling that did not take this listing sends back: its own, when that
        won against it (so both settle on one; each side only ever takes a listing that
        beats its own, so this ends); nothing to one dated ahead of its clock."""
        if known is None or known.keys == self.keys or self.from_the_future(now_ms):
            return None
        return known


@dataclass(frozen=True, slots=True)
class Archive:
    items: tuple[Msg, ...]
    last: bool


Record = (
    Msg
    | Ack
    | Offer
    | Req
    | Stored
    | NegQuery
    | NegReply
    | Want
    | ArchiveQuery
    | Archive
    | Ping
    | Relays
)


def shareable_listing(listing: Relays) -> bytes:
    """The record that passes ``listing`` on to a sibling, as siblings agree on it
    (:meth:`Relays.agreed`)."""
    return encode_record(listing.agreed())


def encode_record(record: Record) -> bytes:
    match record:
        case Msg(id=i, timestamp_ms=t, body=b):
            return encode_cbor(["MSG", i, t, b])
        case Ack(ids=ids):
            return encode_cbor(["ACK", list(ids)])
        case Offer(id=i, timestamp_ms=t, size=n):
            return encode_cbor(["OFFER", i, t, n])
        case Req(ids=ids):
            return encode_cbor(["REQ", list(ids)])
        case Stored(ids=ids):
            return encode_cbor(["STORED", list(ids)])
        case NegQuery(since_ms=since, payload=payload):
            return encode_cbor(["NEGQ", since, payload])
        case NegReply(since_ms=since, payload=payload):
            return encode_cbor(["NEGR", since, payload])
        case Want(ids=ids):
            return encode_cbor(["WANT", list(ids)])
        case ArchiveQuery():
            return encode_cbor(["ARCHQ"])
        case Ping():
            return encode_cbor(["PING"])
        case Archive(items=items, last=last):
            return encode_cbor(["ARCH", [[m.id, m.timestamp_ms, m.body] for m in items], last])
        case Relays(read_ms=read_ms, contacts=contacts):
            return encode_cbor(["RELAYS", read_ms, [contact.encode() for contact in contacts]])
    raise TypeError(f"not a sync record: {record!r}")


def _id(value: object) -> bytes:
    if not isinstance(value, bytes) or len(value) != ID_BYTES:
        raise DecodeError(f"a message id is {ID_BYTES} bytes")
    return value


def _count(value: object, what: str, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise DecodeError(f"{what} must be an integer in [0, {maximum}]")
    return value


def _ids(value: object) -> tuple[bytes, ...]:
    if not isinstance(value, list) or not 0 < len(value) <= MAX_IDS_PER_RECORD:
        raise DecodeError(f"an id list holds 1 to {MAX_IDS_PER_RECORD} ids")
    return tuple(_id(item) for item in value)


def _msg(fields: list[object]) -> Msg:
    body = fields[2]
    if not isinstance(body, bytes) or len(body) > MAX_BODY_BYTES:
        raise DecodeError(f"a MSG body is bytes of at most {MAX_BODY_BYTES}")
    return Msg(_id(fields[0]), _count(fields[1], "timestamp", 2**63 - 1), body)


def _relays(fields: list[object]) -> Relays:
    encoded = fields[1]
    if not isinstance(encoded, list) or len(encoded) > MAX_RELAYS_PER_RECORD:
        raise DecodeError(f"a RELAYS listing holds 0 to {MAX_RELAYS_PER_RECORD} contacts")
    contacts: list[Contact] = []
    for item in encoded:
        if not isinstance(item, bytes):
            raise DecodeError("a RELAYS contact is bytes")
        try:
            contacts.append(Contact.decode(item))
        except ContactError as exc:
            raise DecodeError(f"a RELAYS contact: {exc}") from None
    keys = [contact.pubkey for contact in contacts]
    if keys != sorted(set(keys)):
        raise DecodeError("a RELAYS listing is one contact per relay, in key order")
    return Relays(_count(fields[0], "read time", 2**63 - 1), tuple(contacts))


def decode_record(data: bytes) -> Record:
    """A record from a sibling, or :class:`DecodeError`."""
    value = decode_cbor(data, max_bytes=MAX_RECORD_BYTES)
    if not isinstance(value, list) or not value or not isinstance(value[0], str):
        raise DecodeError("a sync record is an array starting with its type")
    kind, fields = value[0], value[1:]
    shapes = {
        "MSG": 3,
        "ACK": 1,
        "OFFER": 3,
        "REQ": 1,
        "STORED": 1,
        "NEGQ": 2,
        "NEGR": 2,
        "WANT": 1,
        "ARCHQ": 0,
        "PING": 0,
        "ARCH": 2,
        "RELAYS": 2,
    }
    if kind not in shapes:
        raise DecodeError(f"unknown sync record type {kind!r}")
    if len(fields) != shapes[kind]:
        raise DecodeError(f"a {kind} record has {shapes[kind]} fields")
    if kind == "MSG":
        return _msg(fields)
    if kind == "ARCHQ":
        return ArchiveQuery()
    if kind == "PING":
        return Ping()
    if kind == "ARCH":
        items, last = fields
        if not isinstance(items, list) or not isinstance(last, bool):
            raise DecodeError("an ARCH record is a list of items and a last flag")
        parts = [
            _msg(item) if isinstance(item, list) and len(item) == 3 else None for item in items
        ]
        if None in parts:
            raise DecodeError("an ARCH item is [id, timestamp, body]")
        return Archive(tuple(p for p in parts if p is not None), last)
    if kind == "OFFER":
        return Offer(
            _id(fields[0]),
            _count(fields[1], "timestamp", 2**63 - 1),
            _count(fields[2], "size", 2**32),
        )
    if kind in ("NEGQ", "NEGR"):
        payload = fields[1]
        if not isinstance(payload, bytes) or len(payload) > MAX_BODY_BYTES:
            raise DecodeError(f"a {kind} payload is bytes of at most {MAX_BODY_BYTES}")
        since = _count(fields[0], "since", 2**63 - 1)
        return NegQuery(since, payload) if kind == "NEGQ" else NegReply(since, payload)
    if kind == "RELAYS":
        return _relays(fields)
    if kind == "ACK":
        return Ack(_ids(fields[0]))
    if kind == "WANT":
        return Want(_ids(fields[0]))
    if kind == "STORED":
        return Stored(_ids(fields[0]))
    return Req(_ids(fields[0]))
