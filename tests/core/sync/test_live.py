"""Live sync between siblings: records, and the state machine under loss and churn."""

from __future__ import annotations

import contextlib
import hashlib
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from overlay.contact import Contact, make_contact
from overlay.endpoint_core import EntryShare
from overlay.keys import KeyPair
from p2psync.errors import DecodeError
from p2psync.sync.live import (
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
from p2psync.sync.records import (
    LISTING_AHEAD_MS,
    MAX_RELAYS_PER_RECORD,
    Ack,
    Archive,
    ArchiveQuery,
    Msg,
    Offer,
    Ping,
    Record,
    Relays,
    Req,
    Stored,
    decode_record,
    encode_record,
    shareable_listing,
)

ID = b"\x07" * 32


def contact(n: int) -> Contact:
    return make_contact(KeyPair.from_seed(bytes([n]) * 32), f"mem:relay{n}", 0)


CONTACTS = [contact(n) for n in range(1, 4)]


@pytest.mark.parametrize(
    "record",
    [
        Msg(ID, 5, b"body"),
        Ack((ID, ID)),
        Offer(ID, 5, 10_000),
        Req((ID,)),
        Stored((ID,)),
        ArchiveQuery(),
        Ping(),
        Archive((Msg(ID, 5, b"body"), Msg(ID, 6, b"")), last=False),
        Archive((), last=True),
        Relays.read(5, [contact(1), contact(2)]),
    ],
)
def test_records_round_trip(record: Record) -> None:
    assert decode_record(encode_record(record)) == record


def test_siblings_settle_on_the_listing_read_last_and_refuse_one_from_the_future() -> None:
    old, new = Relays.read(100, CONTACTS[:1]), Relays.read(200, CONTACTS[:2])
    assert new.replaces(None, 200) and new.replaces(old, 200) and not old.replaces(new, 200)
    assert not Relays.read(300, CONTACTS[:1]).replaces(old, 300)  # the same relays again
    tie = Relays.read(200, CONTACTS[2:3])
    assert tie.replaces(new, 200) != new.replaces(tie, 200)  # one answer, either way round
    ahead = Relays.read(200 + LISTING_AHEAD_MS + 1, CONTACTS[:2])
    assert not ahead.replaces(old, 200) and ahead.replaces(old, 201)
    assert Relays.read(300, CONTACTS[:1]).refreshes(old, 300) and not new.refreshes(old, 300)
    assert old.answered_with(new, 200) == new  # the loser hears the winner
    assert new.answered_with(Relays.read(50, CONTACTS[:2]), 200) is None  # same relays
    assert ahead.answered_with(old, 200) is None  # from the future: no answer


#: A network grown from 8 relays to 612: more than a record takes.
GROWN = [
    make_contact(KeyPair.from_seed(n.to_bytes(4, "big") * 8), f"mem:relay{n}", 0)
    for n in range(MAX_RELAYS_PER_RECORD + 100)
]
PHONE, DESKTOP, LAPTOP = b"P" * 32, b"D" * 32, b"L" * 32
ACCOUNTS = 300


def test_a_listing_longer_than_a_record_takes_goes_as_its_read_time_alone() -> None:
    fits = Relays.read(5, CONTACTS)
    assert fits.agreed() == fits and shareable_listing(fits) == encode_record(fits)
    grown = Relays.read(5, GROWN)
    assert grown.agreed() == Relays(5, ())
    assert decode_record(shareable_listing(grown)) == Relays(5, ())
    # The newest still wins, either way round, so siblings settle on one.
    assert grown.agreed().replaces(Relays.read(4, GROWN[:8]), 5)
    assert not Relays.read(4, GROWN[:8]).replaces(grown.agreed(), 5)
    assert Relays.read(6, GROWN[:8]).replaces(grown.agreed(), 6)  # the network shrank
    assert not Relays.read(6, GROWN).agreed().replaces(grown.agreed(), 6)  # a re-read
    assert Relays.read(6, GROWN).agreed().refreshes(grown.agreed(), 6)


def overlapping(accounts: int, dealt: dict[bytes, tuple[Relays | None, list[Contact]]]) -> int:
    """Of ``accounts`` 3-device accounts, how many have two devices sharing an entry, each
    device dealing its directory (the relays it read) on its agreed listing
    (:meth:`EntryShare.or_on_listed`, as every endpoint of a device does)."""
    members = frozenset(dealt)
    count = 0
    for n in range(accounts):
        secret = n.to_bytes(4, "big") * 8
        entries = [
            EntryShare(secret, members, member, None if base is None else base.keys).or_on_listed(
                [contact.pubkey for contact in directory]
            )
            for member, (base, directory) in dealt.items()
        ]
        count += any(a & b for i, a in enumerate(entries) for b in entries[i + 1 :])
    return count


def taken(known: Relays | None, learned: Relays, now_ms: int) -> Relays | None:
    """What a device deals on after it learns ``learned`` (its read, or a sibling's)."""
    return learned if learned.replaces(known, now_ms) else known


def test_siblings_deal_alike_on_a_network_too_large_to_pass_its_listing_on() -> None:
    small = Relays.read(100, GROWN[:8])  # what all three agreed on before the network grew
    read = Relays.read(200, GROWN).agreed()  # the phone's read once it had
    phone = taken(small, read, 200)
    # Before: the phone dealt on its own read, the others on the small listing.
    before = {PHONE: (Relays.read(200, GROWN), GROWN), DESKTOP: (small, GROWN[:8])}
    before[LAPTOP] = before[DESKTOP]
    assert overlapping(ACCOUNTS, before) > 0
    # Now the others learn the read time over their sessions and deal by hash alone:
    # from their old directories at first, then from the listing they read again.
    others = taken(small, phone or read, 200)
    stale = {PHONE: (phone, GROWN), DESKTOP: (others, GROWN[:8]), LAPTOP: (others, GROWN[:8])}
    assert overlapping(ACCOUNTS, stale) < overlapping(ACCOUNTS, before)
    reread = taken(others, Relays.read(260, GROWN).agreed(), 260)
    assert overlapping(ACCOUNTS, {m: (reread, GROWN) for m in (PHONE, DESKTOP, LAPTOP)}) == 0
    # A sibling paired later, with nothing kept, and siblings that never meet, each on
    # its own read: all by hash alone.
    fresh = taken(None, Relays.read(300, GROWN).agreed(), 300)
    assert (
        overlapping(
            ACCOUNTS, {PHONE: (phone, GROWN), DESKTOP: (reread, GROWN), LAPTOP: (fresh, GROWN)}
        )
        == 0
    )


@given(st.binary(max_size=200))
def test_garbage_records_raise_decode_error_only(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_record(data)


@pytest.mark.parametrize(
    "value",
    [
        ["MSG", ID, 1],
        ["MSG", b"short", 1, b""],
        ["ACK", []],
        ["STORED", [b"short"]],
        ["NOPE"],
        ["OFFER", ID, -1, 3],
        {},
        ["ARCHQ", 1],
        ["PING", 0],
        ["ARCH", [[ID, 1]], True],
        ["ARCH", [[ID, 1, b""]], 1],
        ["ARCH", {}, True],
        ["RELAYS", 5, [c.encode() for c in sorted(CONTACTS, key=lambda c: c.pubkey)[::-1]]],
        ["RELAYS", 5, [CONTACTS[0].encode(), CONTACTS[0].encode()]],  # twice
        ["RELAYS", -1, [CONTACTS[0].encode()]],
        ["RELAYS", 5, [ID]],  # not a contact
        ["RELAYS", 5, [CONTACTS[0].encode()] * 513],
    ],
)
def test_malformed_records_are_refused(value: object) -> None:
    from p2psync.wire import encode_cbor

    with pytest.raises(DecodeError):
        decode_record(encode_cbor(value))


def item(n: int, size: int = 10) -> Item:
    body = (b"%d:" % n).ljust(size, b".")
    return Item(hashlib.blake2b(body, digest_size=32).digest(), n, body)


class Device:
    """A LiveSync with a history, and the events it produced."""

    def __init__(self, name: str, siblings: list[str], offer_over: int = 64) -> None:
        self.name = name
        self.history: dict[bytes, Item] = {}
        self.sync = LiveSync(
            siblings, has=lambda i: i in self.history, grace_ms=10_000, offer_over_bytes=offer_over
        )
        self.events: list[Event] = []


class Siblings(RuleBasedStateMachine):
    """Three siblings; sessions come and go and lose what was in flight."""

    def __init__(self) -> None:
        super().__init__()
        names = ["a", "b", "c"]
        self.now = 0
        self.devices = {n: Device(n, [m for m in names if m != n]) for n in names}
        self.links: set[frozenset[str]] = set()
        self.wire: list[tuple[str, str, bytes]] = []  # (from, to, data) in flight
        self.published: dict[bytes, tuple[str, int]] = {}
        self.counter = 0

    def handle(self, device: Device, events: list[Event]) -> None:
        for event in events:
            device.events.append(event)
            if isinstance(event, Send):
                if frozenset((device.name, event.sibling)) in self.links:
                    self.wire.append((device.name, event.sibling, event.data))
            elif isinstance(event, Deliver):
                device.history.setdefault(event.item.id, event.item)
            assert not isinstance(event, PeerError), event

    @rule(origin=st.sampled_from("abc"), big=st.booleans())
    def publish(self, origin: str, big: bool) -> None:
        self.counter += 1
        new = item(self.counter, 200 if big else 10)
        device = self.devices[origin]
        device.history[new.id] = new
        self.published[new.id] = (origin, self.now)
        self.handle(device, device.sync.publish(new, self.now))

    @rule(a=st.sampled_from("abc"), b=st.sampled_from("abc"))
    def connect(self, a: str, b: str) -> None:
        if a == b or frozenset((a, b)) in self.links:
            return
        self.links.add(frozenset((a, b)))
        self.handle(self.devices[a], self.devices[a].sync.connected(b, self.now))
        self.handle(self.devices[b], self.devices[b].sync.connected(a, self.now))

    @rule(a=st.sampled_from("abc"), b=st.sampled_from("abc"))
    def disconnect(self, a: str, b: str) -> None:
        pair = frozenset((a, b))
        if a == b or pair not in self.links:
            return
        self.links.discard(pair)
        self.wire = [w for w in self.wire if frozenset(w[:2]) != pair]  # lost in flight
        self.handle(self.devices[a], self.devices[a].sync.disconnected(b, self.now))
        self.handle(self.devices[b], self.devices[b].sync.disconnected(a, self.now))

    @precondition(lambda self: bool(self.wire))
    @rule(count=st.integers(1, 5))
    def deliver(self, count: int) -> None:
        for _ in range(min(count, len(self.wire))):
            source, target, data = self.wire.pop(0)
            self.handle(
                self.devices[target], self.devices[target].sync.receive(source, data, self.now)
            )

    @rule(ms=st.sampled_from([10, 100, 3_000, 12_000]))
    def advance(self, ms: int) -> None:
        self.now += ms
        for device in self.devices.values():
            self.handle(device, device.sync.tick(self.now))

    @rule(name=st.sampled_from("abc"))
    def leave(self, name: str) -> None:
        """The device is about to go offline (its sessions come down in later steps)."""
        device = self.devices[name]
        self.handle(device, [*device.sync.leaving()])

    @invariant()
    def fallback_and_completion_happen_at_most_once(self) -> None:
        for device in self.devices.values():
            falls = Counter(e.item.id for e in device.events if isinstance(e, FallbackDue))
            done = Counter(e.id for e in device.events if isinstance(e, AllAcknowledged))
            assert max(falls.values(), default=0) <= 1
            assert max(done.values(), default=0) <= 1

    def teardown(self) -> None:
        """Heal the network and run to quiescence: everything converges."""
        for a, b in (("a", "b"), ("a", "c"), ("b", "c")):
            self.connect(a, b)
        for _ in range(200):
            while self.wire:
                self.deliver(len(self.wire))
            self.advance(100)
            if not self.wire and all(d.sync.pending == 0 for d in self.devices.values()):
                break
        everything = set(self.published)
        for device in self.devices.values():
            assert set(device.history) == everything
        for message_id, (origin, _published_at) in self.published.items():
            events = self.devices[origin].events
            done = [e for e in events if isinstance(e, AllAcknowledged) and e.id == message_id]
            assert len(done) == 1
            fell = [e for e in events if isinstance(e, FallbackDue) and e.item.id == message_id]
            assert done[0].fell_back == bool(fell)


TestSiblings = Siblings.TestCase
TestSiblings.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_online_siblings_never_fall_back() -> None:
    a, b = Device("a", ["b"]), Device("b", ["a"])
    a.sync.connected("b", 0)
    b.sync.connected("a", 0)
    new = item(1)
    a.history[new.id] = new
    (push,) = a.sync.publish(new, 0)
    assert isinstance(push, Send)
    assert b.sync.receive("a", push.data, 5) == [Deliver("a", new)]
    (ack,) = b.sync.tick(55)
    assert isinstance(ack, Send) and decode_record(ack.data) == Ack((new.id,))
    assert a.sync.receive("b", ack.data, 60) == [AllAcknowledged(new.id, fell_back=False)]
    assert a.sync.tick(20_000) == []
    assert a.sync.next_deadline_ms() is None


def test_an_offline_sibling_gets_one_fallback_after_the_grace_period() -> None:
    a = Device("a", ["b", "c"])
    new = item(1)
    assert a.sync.publish(new, 1_000) == []
    assert a.sync.next_deadline_ms() == 11_000
    assert a.sync.tick(10_999) == []
    assert a.sync.tick(11_000) == [FallbackDue(new, ("b", "c"))]
    assert a.sync.tick(50_000) == []


def test_big_bodies_are_offered_and_fetched_only_when_missing() -> None:
    a, b = Device("a", ["b"], offer_over=64), Device("b", ["a"], offer_over=64)
    big = item(1, 1000)
    a.sync.connected("b", 0)
    (offer,) = a.sync.publish(big, 0)
    assert isinstance(offer, Send) and isinstance(decode_record(offer.data), Offer)
    (request,) = b.sync.receive("a", offer.data, 1)
    assert isinstance(request, Send) and decode_record(request.data) == Req((big.id,))
    (body,) = a.sync.receive("b", request.data, 2)
    assert isinstance(body, Send) and decode_record(body.data) == Msg(big.id, 1, big.body)
    b.history[big.id] = big
    other = item(2, 1000)
    b.history[other.id] = other
    a.sync.publish(other, 3)
    offers = [e for e in a.sync.tick(3) if isinstance(e, Send)]
    assert offers == []  # already pushed at publish time; resend only after resend_ms
    c = b.sync.receive("a", encode_record(Offer(other.id, 2, 1000)), 4)
    assert c == []  # b has it: no request, just an acknowledgement at the next tick
    assert decode_record(b.sync.tick(100)[0].data) == Ack((other.id,))  # type: ignore[union-attr]


def test_a_stand_in_waits_its_own_grace_skips_holders_and_stores_nothing_once_covered() -> None:
    """A sibling standing in for a message's origin: it waits for the others only (the
    origin holds the message), falls back after its longer grace, and not at all once
    another device has stored the copy."""
    live = LiveSync(["origin", "tablet", "laptop"], has=lambda _: False, grace_ms=100)
    relayed, covered = item(1), item(2)
    assert live.publish(relayed, 0, grace_ms=300, holders=("origin",)) == []
    assert live.publish(covered, 0, grace_ms=300, holders=("origin",)) == []
    assert live.next_deadline_ms() == 300
    assert live.tick(299) == []
    live.covered(covered.id)
    assert live.tick(300) == [FallbackDue(relayed, ("laptop", "tablet"))]
    assert live.next_deadline_ms() is None
    assert live.publish(item(3), 400, holders=("origin", "tablet", "laptop")) == [
        AllAcknowledged(item(3).id, fell_back=False)
    ]


def test_leaving_falls_back_what_is_unacknowledged_once_and_holders_hear_of_the_copy() -> None:
    """A device going offline falls back, inside the grace period, exactly what some
    sibling has not acknowledged; once it stored the copy, the siblings that hold the
    message hear so (now, or when they connect), and a stand-in among them stores none."""
    a = Device("a", ["b", "c"])
    acked, unacked = item(1), item(2)
    a.sync.connected("b", 0)
    a.sync.publish(acked, 0)
    a.sync.publish(unacked, 0)
    a.sync.receive("b", encode_record(Ack((acked.id,))), 10)
    assert a.sync.leaving() == [FallbackDue(acked, ("c",)), FallbackDue(unacked, ("b", "c"))]
    assert a.sync.leaving() == []
    assert not [e for e in a.sync.tick(20_000) if isinstance(e, FallbackDue)]

    (told,) = a.sync.stored(acked.id)
    assert told == Send("b", encode_record(Stored((acked.id,))))
    assert a.sync.stored(unacked.id) == []  # b lacks it: it reads it from the copy
    a.sync.disconnected("b", 30)
    again = a.sync.connected("b", 40)
    assert told in again
    assert a.sync.receive("c", encode_record(Ack((acked.id,))), 50) == [
        AllAcknowledged(acked.id, fell_back=True)
    ]

    stand_in = LiveSync(["a", "c"], has=lambda _: True, grace_ms=10_000)
    stand_in.publish(acked, 0, grace_ms=30_000, holders=("a",))
    assert stand_in.receive("a", told.data, 60) == [Covered(acked.id)]
    assert stand_in.receive("a", told.data, 70) == []
    assert stand_in.tick(30_000) == []


def test_a_message_published_for_later_is_held_until_then_and_its_grace_starts_then() -> None:
    """A device holds back what it read from the swarm (a random delay): no push before
    its publication time, not even to a sibling that connects meanwhile, nothing owed
    to wait for when leaving, and the grace period counts from then."""
    a = Device("a", ["b"])
    a.sync.connected("b", 0)
    new = item(1)
    assert a.sync.publish(new, 0, published_ms=5_000) == []
    assert a.sync.next_deadline_ms() == 5_000
    assert a.sync.owed_to(4_999) == set() and a.sync.owed_to(5_000) == {"b"}
    a.sync.disconnected("b", 1_000)
    assert a.sync.connected("b", 2_000) == []
    assert a.sync.tick(4_999) == []
    (push,) = a.sync.tick(5_000)
    assert isinstance(push, Send) and decode_record(push.data) == Msg(new.id, 1, new.body)
    fallbacks = [e for t in (10_000, 14_999) for e in a.sync.tick(t) if isinstance(e, FallbackDue)]
    assert fallbacks == []
    assert FallbackDue(new, ("b",)) in a.sync.tick(15_000)
