"""Which swarm a key belongs to (DESIGN.md §4): the swarm whose id is nearest the key's
ring position, with wrap-around, the smaller id of two as near."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
