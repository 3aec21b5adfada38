"""Which swarm a key belongs to (DESIGN.md §4): the swarm whose id is nearest the key's
ring position, with wrap-around, the smaller id of two as near."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2psync.errors import DecodeError
from p2psync.identity import session_id_key
from p2psync.swarm import ring
from p2psync.swarm.ring import RING_SIZE, NodeInfo, SwarmMap, key_position, ring_distance

KEYS = st.binary(min_size=32, max_size=32)
IDS = st.integers(0, RING_SIZE - 1)


def _nearest_by_scan(swarm_ids: set[int], position: int) -> int:
    """The rule as DESIGN.md states it, over every swarm."""
    return min(swarm_ids, key=lambda sid: (ring_distance(sid, position), sid))


def _map(swarm_ids: set[int]) -> SwarmMap:
    return SwarmMap({sid: (NodeInfo(f"{sid:064x}", f"mem:{sid}"),) for sid in swarm_ids})


@given(st.sets(IDS, min_size=1, max_size=40), KEYS)
def test_the_nearest_swarm_is_found_as_a_scan_of_every_swarm_would_find_it(
    swarm_ids: set[int], key: bytes
) -> None:
    assert _map(swarm_ids).swarm_for_key(key) == _nearest_by_scan(swarm_ids, key_position(key))


@given(st.sets(IDS, min_size=1, max_size=40), IDS, st.sampled_from([-1, 0, 1]))
def test_keys_at_and_beside_a_swarm_id_and_across_the_wrap_find_the_nearest(
    swarm_ids: set[int], chosen: int, offset: int
) -> None:
    """Positions on an id, one either side of it, and at both ends of the ring, where
    the nearest id may be across the wrap; a position exactly between two ids goes to
    the smaller."""
    swarms = _map(swarm_ids)
    ids = sorted(swarm_ids)
    positions = [(ids[0] + offset) % RING_SIZE, (chosen + offset) % RING_SIZE, 0, RING_SIZE - 1]
    if len(ids) > 1:
        positions.append((ids[0] + ids[1]) // 2)
    for position in positions:
        key = position.to_bytes(8, "big") + bytes(24)  # the XOR of its words is ``position``
        assert key_position(key) == position
        assert swarms.swarm_for_key(key) == _nearest_by_scan(swarm_ids, position)


def test_a_map_without_swarms_places_no_key() -> None:
    with pytest.raises(ValueError):
        SwarmMap({}).swarm_for_key(bytes(32))


@given(st.sets(IDS, min_size=1, max_size=40), st.lists(KEYS, min_size=1, max_size=20))
def test_an_owners_swarm_is_its_keys_asked_again_or_not(
    swarm_ids: set[int], keys: list[bytes]
) -> None:
    swarms = _map(swarm_ids)
    for key in keys + keys:  # the second time from what the map remembers
        assert swarms.swarm_of_owner("05" + key.hex()) == swarms.swarm_for_key(key)


def test_a_map_remembers_a_bounded_number_of_owners_and_none_that_is_not_a_session_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Remembered owners cost no key decoding; past the bound the map starts again."""
    decoded: list[str] = []

    def counted(session_id: str) -> bytes:
        decoded.append(session_id)
        return session_id_key(session_id)

    monkeypatch.setattr(ring, "OWNERS_REMEMBERED", 4)
    monkeypatch.setattr(ring, "session_id_key", counted)
    swarms = _map({0, RING_SIZE // 2})
    owners = [f"05{i:064x}" for i in range(6)]
    for owner in owners:
        assert swarms.swarm_of_owner(owner) == swarms.swarm_for_key(bytes.fromhex(owner[2:]))
    assert decoded == owners
    swarms.swarm_of_owner(owners[-1])  # remembered since the map started again at the 5th
    swarms.swarm_of_owner(owners[0])  # forgotten then
    assert decoded == [*owners, owners[0]]
    with pytest.raises(DecodeError):
        swarms.swarm_of_owner("05" + "zz" * 32)


def test_a_nodes_peers_are_the_other_members_of_its_swarm() -> None:
    a, b, c = (NodeInfo(f"{i:064x}", f"mem:{i}") for i in range(3))
    swarms = SwarmMap({0: (a, b), RING_SIZE // 2: (c,)})
    assert swarms.peers_of(a.pubkey) == (b,)
    assert swarms.peers_of(c.pubkey) == ()
    assert swarms.peers_of("f" * 64) == ()
