"""Siblings enter the overlay through relays of their own: :class:`EntryShare` deals the
relays out among them by a keyed hash (with a minimum for each), and an endpoint core given
it as its entry filter starts every path at one of its own."""

from __future__ import annotations

import random

import pytest

from overlay.constants import DEFAULT_PATH_LIFETIME_MS, INTROSET_REPUBLISH_MS, PATH_PING_INTERVAL_MS
from overlay.contact import verified_directory
from overlay.endpoint_core import EndpointCore, EntryFilter, EntryShare
from tests.core.overlay.test_cores import NOW, Net

SECRET = b"\x07" * 32
PHONE, DESKTOP, LAPTOP = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
RELAYS = [bytes([n]) * 32 for n in range(10, 50)]


def shares(
    secret: bytes, members: frozenset[bytes], relays: list[bytes] = RELAYS
) -> dict[bytes, frozenset[bytes]]:
    return {member: EntryShare(secret, members, member)(relays) for member in members}


def admitting(keys: set[bytes]) -> EntryFilter:
    return lambda listed: frozenset(listed) & keys


@pytest.mark.parametrize("members", [{PHONE, DESKTOP}, {PHONE, DESKTOP, LAPTOP}])
def test_every_relay_is_one_members_entry_and_no_two_members_share_one(
    members: set[bytes],
) -> None:
    dealt = shares(SECRET, frozenset(members))
    assert set().union(*dealt.values()) == set(RELAYS)
    assert sum(map(len, dealt.values())) == len(RELAYS)
    assert all(dealt.values())  # 40 relays: every member has some


def test_the_split_depends_on_the_secret_members_and_listing_only() -> None:
    """Both siblings compute it alone, from what they share; a relay list read in another
    order changes nothing, and on a listing where no member is short (40 relays) one with
    relays missing changes nothing for the relays it holds; another account (another
    secret) splits differently, and nobody without the secret can tell."""
    members = frozenset({PHONE, DESKTOP})
    phone = EntryShare(SECRET, members, PHONE)
    assert phone(RELAYS) == EntryShare(bytes(SECRET), frozenset([DESKTOP, PHONE]), PHONE)(
        list(reversed(RELAYS))
    )
    assert phone(RELAYS[:30]) == phone(RELAYS) & set(RELAYS[:30])
    assert shares(b"\x08" * 32, members) != shares(SECRET, members)


def test_a_new_member_takes_relays_only_from_the_others() -> None:
    """Rendezvous hashing: a third sibling moves some relays to itself and no others."""
    before = shares(SECRET, frozenset({PHONE, DESKTOP}))
    after = shares(SECRET, frozenset({PHONE, DESKTOP, LAPTOP}))
    assert after[PHONE] <= before[PHONE] and after[DESKTOP] <= before[DESKTOP]


@pytest.mark.parametrize("members", [2, 3, 4])
@pytest.mark.parametrize("listed", [3, 4, 5, 6, 8, 12])
def test_on_a_small_network_every_member_still_gets_its_share_of_entries(
    members: int, listed: int
) -> None:
    """Hashing alone leaves some member no relay often (8 relays, 3 devices: one account
    in nine), and that device could not sync directly. Over many accounts (secrets), each
    member gets :data:`MIN_ENTRY_RELAYS` or, on a listing too small for that, an equal
    share; the shares stay disjoint and cover the listing."""
    keys = frozenset(bytes([m]) * 32 for m in range(1, members + 1))
    least = min(2, listed // members)  # MIN_ENTRY_RELAYS, or an equal share
    for account in range(200):
        secret = account.to_bytes(32, "big")
        dealt = shares(secret, keys, RELAYS[:listed])
        assert all(len(entries) >= least for entries in dealt.values()), (account, dealt)
        assert sum(map(len, dealt.values())) == listed
        assert frozenset().union(*dealt.values()) == frozenset(RELAYS[:listed])


def test_a_member_with_enough_relays_by_hash_keeps_exactly_those() -> None:
    """On a listing of normal size the minimum never moves a relay: each is its
    rendezvous owner's, so a listing read with relays missing changes nothing else."""
    members = frozenset({PHONE, DESKTOP, LAPTOP})
    share = EntryShare(SECRET, members, PHONE)
    owners = share.owners(RELAYS)
    assert owners == {relay: share.owners([relay])[relay] for relay in RELAYS}


def overlapping_accounts(base: bool, *, accounts: int = 300) -> int:
    """Of ``accounts`` 3-device accounts on 8 relays, how many have two devices sharing an
    entry while a 9th relay joins and a 9th leaves the listing: the phone has read the
    new listing, the desktop and the laptop not yet; each deals on what it read, or
    (``base``) all on the listing they last agreed on."""
    members = frozenset({PHONE, DESKTOP, LAPTOP})
    old, new = RELAYS[:8], RELAYS[1:9]
    overlapping = 0
    for n in range(accounts):
        secret = n.to_bytes(4, "big") * 8
        agreed = frozenset(old) if base else None
        phone = EntryShare(secret, members, PHONE, agreed)(new)
        others = [EntryShare(secret, members, m, agreed)(old) for m in (DESKTOP, LAPTOP)]
        overlapping += bool(phone & others[0] or phone & others[1] or others[0] & others[1])
    return overlapping


def test_members_that_read_different_listings_share_no_entry_on_an_agreed_base() -> None:
    assert overlapping_accounts(base=False) > 0  # what the agreed base is for
    assert overlapping_accounts(base=True) == 0


def test_on_a_base_relays_outside_it_go_by_hash_alone_and_the_base_keeps_its_minimum() -> None:
    members = frozenset({PHONE, DESKTOP, LAPTOP})
    base = frozenset(RELAYS[:8])
    for n in range(100):
        secret = n.to_bytes(4, "big") * 8
        split = {m: EntryShare(secret, members, m, base)(RELAYS) for m in members}
        assert frozenset().union(*split.values()) == frozenset(RELAYS)
        assert all(len(share & base) >= 2 for share in split.values())
        for relay in set(RELAYS) - base:  # its owner does not depend on the listing
            alone = {m for m in members if EntryShare(secret, members, m, base)([relay])}
            assert alone == {m for m in members if relay in split[m]}


def test_a_member_must_be_one_of_the_members() -> None:
    with pytest.raises(ValueError):
        EntryShare(SECRET, frozenset({PHONE}), DESKTOP)


def core(entry_filter: EntryFilter | None, seed: int = 1) -> tuple[EndpointCore, Net]:
    net = Net(8)
    return (
        EndpointCore(
            verified_directory(net.contacts, NOW),
            random.Random(seed),
            NOW,
            hops=3,
            paths=2,
            path_lifetime_ms=DEFAULT_PATH_LIFETIME_MS,
            ping_interval_ms=PATH_PING_INTERVAL_MS,
            republish_ms=INTROSET_REPUBLISH_MS,
            entry_filter=entry_filter,
        ),
        net,
    )


def test_every_path_enters_through_a_relay_the_filter_admits_and_goes_on_anywhere() -> None:
    keys = sorted(c.pubkey for c in Net(8).contacts)
    admitted = set(keys[:2])
    endpoint, _ = core(admitting(admitted))
    paths = [endpoint.choose_hops() for _ in range(300)]
    assert {path[0].pubkey for path in paths} == admitted
    assert all(len({hop.pubkey for hop in path}) == 3 for path in paths)
    assert {hop.pubkey for path in paths for hop in path[1:]} == set(keys)


def test_without_a_filter_entries_are_every_relay() -> None:
    endpoint, net = core(None)
    entries = {endpoint.choose_hops()[0].pubkey for _ in range(300)}
    assert entries == {c.pubkey for c in net.contacts}


def test_after_a_path_through_the_only_admitted_entry_died_it_is_still_the_entry() -> None:
    """Avoiding a dead path's relays never overrides the filter: with no other relay of
    its own, the endpoint enters through the same one again rather than a sibling's."""
    keys = sorted(c.pubkey for c in Net(8).contacts)
    endpoint, _ = core(admitting({keys[0]}))
    path, _ = endpoint.add_path(endpoint.choose_hops(), NOW)
    endpoint.drop_path(path, NOW + 1)
    hops = endpoint.choose_hops()
    assert hops[0].pubkey == keys[0]
    assert not {hop.pubkey for hop in hops[1:]} & {hop.pubkey for hop in path.hops}


@pytest.mark.parametrize("link", ["held", "broke"])
def test_with_every_admitted_relay_on_the_path_that_died_its_first_hop_goes_first_if_its_link_held(
    link: str,
) -> None:
    """Two admitted relays, both on the path that died (one its first hop, one its
    middle): the next paths enter through the first hop if its link held (the fault lay
    further on), through the other if its link broke."""
    net = Net(8)
    contacts = sorted(net.contacts, key=lambda c: c.pubkey)
    first, middle = contacts[0], contacts[1]
    endpoint, _ = core(admitting({first.pubkey, middle.pubkey}))
    path, _ = endpoint.add_path([first, middle, contacts[5]], NOW)
    if link == "broke":
        endpoint.link_lost(path)
    endpoint.drop_path(path, NOW + 1)
    expected = first if link == "held" else middle
    for _ in range(50):
        hops = endpoint.choose_hops()
        assert hops[0] == expected
        assert not {hop.pubkey for hop in hops[1:]} & {hop.pubkey for hop in path.hops}


def test_a_filter_that_admits_no_relay_is_refused() -> None:
    with pytest.raises(ValueError, match="admits none"):
        core(admitting(set()))


def test_paths_through_an_entry_no_longer_admitted_are_replaced_and_not_counted_as_failed() -> None:
    """A device that pairs gets a share of the relays: a path it built before, through a
    relay now its sibling's, goes at the next look at the paths (and nothing about it is
    avoided later), and the new one enters through a relay of its own."""
    keys = sorted(c.pubkey for c in Net(8).contacts)
    admitted = set(keys)
    endpoint, _ = core(lambda listed: frozenset(listed) & admitted)
    path, _ = endpoint.add_path(endpoint.choose_hops(), NOW)
    admitted.clear()
    admitted.update(k for k in keys if k != path.hops[0].pubkey)
    effects = endpoint.keep_paths(NOW + 1)
    assert path not in endpoint.paths
    assert [type(e).__name__ for e in effects].count("ClosePath") == 1
    assert endpoint.stats.paths_failed == 0
    assert all(endpoint.choose_hops()[0].pubkey in admitted for _ in range(50))


def test_a_filter_that_admits_none_of_the_listing_keeps_the_entries_it_gave_last() -> None:
    keys = sorted(c.pubkey for c in Net(8).contacts)
    admitted = {keys[3]}
    endpoint, _ = core(lambda listed: frozenset(listed) & admitted)
    admitted.clear()
    assert {endpoint.choose_hops()[0].pubkey for _ in range(20)} == {keys[3]}
