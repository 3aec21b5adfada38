"""What each announcement does to the registry's listing."""

from __future__ import annotations

from typing import Any

import pytest

from p2psync.errors import RpcError
from p2psync.swarm.constants import CLOCK_SKEW_MS
from p2psync.swarm.listing import ANNOUNCEMENT_TTL_MS
from p2psync.swarm.registry_book import Dial, Listed, RegistryBook, Repeated

NOW = 10_000_000


def record(n: int, *, url: str | None = None, at: int = NOW, kind: str = "node") -> dict[str, Any]:
    return {
        "kind": kind,
        "pubkey": f"{n:064x}",
        "url": url or f"wss://10.0.0.{n}:1",
        "timestamp": at,
        "contact": b"",
        "registration": b"",
    }


def signature(n: int) -> bytes:
    return bytes([n]) * 64


def listed(book: RegistryBook, now_ms: int = NOW) -> list[str]:
    return [node.pubkey for node in book.snapshot(now_ms).nodes]


def test_a_new_address_is_listed_only_once_reached() -> None:
    book = RegistryBook()
    assert book.announce(record(1), signature(1), NOW, dials=True) == Dial(saved=False)
    assert listed(book) == []
    assert book.reached(record(1), signature(1), NOW + 1) == Listed(ANNOUNCEMENT_TTL_MS)
    assert listed(book) == [f"{1:064x}"]


def test_a_registry_that_does_not_dial_lists_at_once() -> None:
    book = RegistryBook()
    assert book.announce(record(1), signature(1), NOW, dials=False) == Listed(ANNOUNCEMENT_TTL_MS)


def test_the_listed_announcement_again_renews_nothing() -> None:
    book = RegistryBook()
    book.announce(record(1), signature(1), NOW, dials=False)
    later = NOW + 60_000
    assert book.announce(record(1), signature(1), later, dials=True) == Repeated(
        ANNOUNCEMENT_TTL_MS - 60_000
    )
    assert listed(book, NOW + ANNOUNCEMENT_TTL_MS) == []


def test_a_fresh_announcement_at_a_reached_url_needs_no_dial_but_a_new_url_does() -> None:
    book = RegistryBook()
    book.announce(record(1), signature(1), NOW, dials=True)
    book.reached(record(1), signature(1), NOW)
    again = record(1, at=NOW + 1_000)
    assert isinstance(book.announce(again, signature(2), NOW + 1_000, dials=True), Listed)
    moved = record(1, url="wss://10.0.0.9:1", at=NOW + 2_000)
    assert book.announce(moved, signature(3), NOW + 2_000, dials=True) == Dial(saved=False)


def test_an_expired_entry_is_dialled_again() -> None:
    book = RegistryBook()
    book.announce(record(1), signature(1), NOW, dials=False)
    later = NOW + ANNOUNCEMENT_TTL_MS
    assert book.announce(record(1, at=later), signature(2), later, dials=True) == Dial(saved=False)


def test_an_older_announcement_than_the_listed_one_is_refused() -> None:
    book = RegistryBook()
    book.announce(record(1), signature(1), NOW, dials=False)
    with pytest.raises(RpcError) as refused:
        book.announce(record(1, at=NOW - 1), signature(2), NOW, dials=False)
    assert refused.value.code == "unauthorized"


def test_a_full_registry_refuses_new_keys_until_entries_expire() -> None:
    book = RegistryBook(capacity=2)
    for n in (1, 2):
        book.announce(record(n), signature(n), NOW, dials=False)
    with pytest.raises(RpcError) as full:
        book.announce(record(3), signature(3), NOW + 1, dials=False)
    assert full.value.code == "unavailable"
    book.announce(record(1, at=NOW + 1), signature(4), NOW + 1, dials=False)  # a listed key
    later = NOW + ANNOUNCEMENT_TTL_MS
    assert isinstance(book.announce(record(3, at=later), signature(3), later, dials=False), Listed)
    assert listed(book, later) == [f"{1:064x}", f"{3:064x}"]


def test_an_announcement_that_aged_during_its_dial_is_refused() -> None:
    book = RegistryBook()
    book.announce(record(1), signature(1), NOW, dials=True)
    with pytest.raises(RpcError) as aged:
        book.reached(record(1), signature(1), NOW + CLOCK_SKEW_MS + 1)
    assert aged.value.code == "clock_skew"
    assert listed(book, NOW + CLOCK_SKEW_MS + 1) == []


def test_the_registry_filling_during_a_dial_refuses_the_new_key() -> None:
    book = RegistryBook(capacity=1)
    assert isinstance(book.announce(record(1), signature(1), NOW, dials=True), Dial)
    book.announce(record(2), signature(2), NOW, dials=False)
    with pytest.raises(RpcError) as full:
        book.reached(record(1), signature(1), NOW + 1)
    assert full.value.code == "unavailable"


def saved_book() -> RegistryBook:
    first = RegistryBook()
    for n in (1, 2):
        first.announce(record(n), signature(n), NOW, dials=False)
    book = RegistryBook()
    assert book.load(first.to_json(), lambda record: None) == []
    return book


def test_entries_read_back_are_listed_and_dialled_on_their_next_announcement() -> None:
    book = saved_book()
    assert listed(book) == [f"{1:064x}", f"{2:064x}"]
    again = record(1, at=NOW + 1)
    assert book.announce(again, signature(5), NOW + 1, dials=True) == Dial(saved=True)
    moved = record(2, url="wss://10.0.0.9:1", at=NOW + 1)
    assert book.announce(moved, signature(6), NOW + 1, dials=True) == Dial(saved=False)


def test_a_read_back_entry_the_dial_could_not_try_stays_listed_and_unreached() -> None:
    book = saved_book()
    again = record(1, at=NOW + 1)
    assert book.reached(again, signature(5), NOW + 1, dialled=False) == Listed(ANNOUNCEMENT_TTL_MS)
    third = record(1, at=NOW + 2)
    assert book.announce(third, signature(6), NOW + 2, dials=True) == Dial(saved=True)
    book.reached(third, signature(6), NOW + 2)
    fourth = record(1, at=NOW + 3)
    assert isinstance(book.announce(fourth, signature(7), NOW + 3, dials=True), Listed)


def test_a_read_back_entry_whose_url_does_not_answer_is_listed_no_more() -> None:
    book = saved_book()
    assert book.unreachable(record(1), saved=True)
    assert listed(book) == [f"{2:064x}"]
    assert not book.unreachable(record(2), saved=False)
    assert listed(book) == [f"{2:064x}"]


def test_a_state_file_keeps_only_what_the_registry_would_still_take() -> None:
    first = RegistryBook()
    for n in (1, 2):
        first.announce(record(n), signature(n), NOW, dials=False)

    def admissible(checked: dict[str, Any]) -> None:
        if checked["pubkey"] == f"{1:064x}":
            raise RpcError("unauthorized", "not admitted")

    book = RegistryBook()
    ((pubkey, why),) = book.load(first.to_json(), admissible)
    assert pubkey == f"{1:064x}" and "not admitted" in str(why)
    assert listed(book) == [f"{2:064x}"]


def test_a_state_that_does_not_parse_takes_nothing() -> None:
    first = RegistryBook()
    for n in (1, 2):
        first.announce(record(n), signature(n), NOW, dials=False)
    # The first entry is whole, the second is not: neither is taken.
    broken = first.to_json().replace(
        b'"signature": "' + signature(2).hex().encode(), b'"signature": "zz'
    )
    book = RegistryBook()
    with pytest.raises(ValueError):
        book.load(broken, lambda record: None)
    assert listed(book) == []


def test_an_entry_the_check_finds_malformed_is_left_out_and_the_rest_kept() -> None:
    first = RegistryBook()
    for n in (1, 2):
        first.announce(record(n), signature(n), NOW, dials=False)

    def admissible(checked: dict[str, Any]) -> None:
        if checked["pubkey"] == f"{1:064x}":
            int(checked["url"])  # a field the check cannot read: ValueError

    book = RegistryBook()
    ((pubkey, why),) = book.load(first.to_json(), admissible)
    assert pubkey == f"{1:064x}" and isinstance(why, ValueError)
    assert listed(book) == [f"{2:064x}"]


def test_a_saved_entry_stays_unreached_when_a_dial_elsewhere_is_refused_after() -> None:
    book = saved_book()
    moved = record(1, url="wss://10.0.0.9:1", at=NOW + 1)
    assert book.announce(moved, signature(5), NOW + 1, dials=True) == Dial(saved=False)
    with pytest.raises(RpcError):  # the dial reached the new url, but the announcement aged
        book.reached(moved, signature(5), NOW + CLOCK_SKEW_MS + 2)
    # Back at the saved url: never dialled by this registry, so dialled now.
    back = record(1, at=NOW + CLOCK_SKEW_MS + 3)
    assert book.announce(back, signature(6), NOW + CLOCK_SKEW_MS + 3, dials=True) == Dial(
        saved=True
    )


def test_the_listing_is_built_once_until_it_changes_or_an_entry_expires() -> None:
    book = RegistryBook()
    book.announce(record(1), signature(1), NOW, dials=False)
    book.announce(record(2, at=NOW + 1_000), signature(2), NOW + 1_000, dials=False)
    first = book.snapshot(NOW + 2_000)
    assert book.snapshot(NOW + 3_000) is first  # every page of a read takes the same one
    book.announce(record(3), signature(3), NOW + 3_000, dials=False)
    assert listed(book, NOW + 3_000) == [f"{n:064x}" for n in (1, 2, 3)]
    # Entry 1 expires first: the listing drops it at that moment, not at the next change.
    assert listed(book, NOW + ANNOUNCEMENT_TTL_MS - 1) == [f"{n:064x}" for n in (1, 2, 3)]
    assert listed(book, NOW + ANNOUNCEMENT_TTL_MS) == [f"{n:064x}" for n in (2, 3)]
    assert listed(book, NOW + ANNOUNCEMENT_TTL_MS + 1_000) == [f"{3:064x}"]


def test_a_state_from_a_registry_with_more_room_is_read_up_to_this_ones() -> None:
    first = RegistryBook()
    for n in (1, 2, 3):
        first.announce(record(n, at=NOW + n), signature(n), NOW + n, dials=False)
    book = RegistryBook(capacity=2)
    assert book.load(first.to_json(), lambda record: None) == []
    assert listed(book, NOW + 3) == [f"{2:064x}", f"{3:064x}"]  # those that last longest
