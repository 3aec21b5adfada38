"""Whom an endpoint asks for a sibling's introset, round by round, and what answers mean."""

from __future__ import annotations

from overlay.constants import DHT_ATTEMPTS, INTROSET_REPLICAS, RENDEZVOUS_EPOCH_MS
from overlay.dht import DhtOp, DhtStatus, closest_relays
from overlay.introset import Intro, epoch_of, rendezvous_keys
from overlay.introset_lookup import IntrosetLookup, introset_to_publish, stored
from overlay.keys import KeyPair

SECRET = b"\x05" * 32
OWNER = KeyPair.from_seed(b"\x01" * 32)
RELAYS = [KeyPair.from_seed(bytes([n]) * 32).public for n in range(10, 30)]
NOW = 50 * RENDEZVOUS_EPOCH_MS + 1_000
INTROS = [Intro(RELAYS[0], b"\x09" * 16, NOW + 600_000)]


def published(now_ms: int = NOW, owner: KeyPair = OWNER) -> bytes:
    """What a replica answers to a GET of the introset ``owner`` published at ``now_ms``."""
    request, _ = introset_to_publish(SECRET, owner, INTROS, RELAYS, now_ms)
    return bytes((DhtStatus.FOUND,)) + request[1:]


FOUND = published()
NOT_FOUND = bytes((DhtStatus.NOT_FOUND,))


def test_an_introset_goes_to_the_replicas_of_its_epoch_and_a_store_is_said_so() -> None:
    request, replicas = introset_to_publish(SECRET, OWNER, INTROS, RELAYS, NOW)
    location = rendezvous_keys(SECRET, OWNER.public, epoch_of(NOW)).location
    assert request[0] == DhtOp.PUT
    assert replicas == closest_relays(location, RELAYS, INTROSET_REPLICAS)
    assert stored(bytes((DhtStatus.STORED,)))
    assert not stored(bytes((DhtStatus.FULL,))) and not stored(None)


def test_the_first_round_asks_this_epochs_replicas_and_the_last_ones() -> None:
    asks = IntrosetLookup(SECRET, OWNER.public, RELAYS, NOW).next_round()
    for epoch in (epoch_of(NOW), epoch_of(NOW) - 1):
        location = rendezvous_keys(SECRET, OWNER.public, epoch).location
        asked = [a.relay for a in asks if a.rendezvous.location == location]
        assert asked == closest_relays(location, RELAYS)
        assert all(a.request == bytes((DhtOp.GET,)) + location for a in asks if a.relay in asked)
    assert len(asks) == 2 * INTROSET_REPLICAS


def test_the_first_introset_that_opens_ends_the_lookup() -> None:
    lookup = IntrosetLookup(SECRET, OWNER.public, RELAYS, NOW)
    first, second, *_ = lookup.next_round()
    assert not lookup.answered(first, NOT_FOUND, NOW)
    assert lookup.answered(second, FOUND, NOW)
    assert lookup.found == INTROS
    assert lookup.next_round() == []


def test_an_introset_of_last_epoch_is_found_at_its_old_place() -> None:
    lookup = IntrosetLookup(SECRET, OWNER.public, RELAYS, NOW)
    old = published(epoch_of(NOW) * RENDEZVOUS_EPOCH_MS - 10)  # just before the epoch turned
    asks = lookup.next_round()
    answers = [a for a in asks if lookup.answered(a, old, NOW)]
    assert answers and all(a.rendezvous.location != asks[0].rendezvous.location for a in answers)
    assert lookup.found == INTROS


def test_every_replica_saying_it_holds_nothing_is_final() -> None:
    lookup = IntrosetLookup(SECRET, OWNER.public, RELAYS, NOW)
    for ask in lookup.next_round():
        assert not lookup.answered(ask, NOT_FOUND, NOW)
    assert lookup.next_round() == []
    assert lookup.found == []


def test_silent_replicas_alone_are_asked_again_for_a_bounded_number_of_rounds() -> None:
    lookup = IntrosetLookup(SECRET, OWNER.public, RELAYS, NOW)
    asks = lookup.next_round()
    silent = asks[:3]
    for ask in asks:
        lookup.answered(ask, None if ask in silent else NOT_FOUND, NOW)
    rounds = 1
    while again := lookup.next_round():
        assert again == silent
        rounds += 1
        for ask in again:
            lookup.answered(ask, b"", NOW)
    assert rounds == DHT_ATTEMPTS


def test_an_introset_that_does_not_open_as_the_owners_is_passed_over() -> None:
    lookup = IntrosetLookup(SECRET, OWNER.public, RELAYS, NOW)
    stranger = published(owner=KeyPair.from_seed(b"\x02" * 32))
    asks = lookup.next_round()
    assert not lookup.answered(asks[0], stranger, NOW)
    assert not lookup.answered(asks[1], bytes((DhtStatus.FOUND,)) + b"garbage", NOW)
    assert lookup.answered(asks[2], FOUND, NOW)
    assert lookup.found == INTROS
