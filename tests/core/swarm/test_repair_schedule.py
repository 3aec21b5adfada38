"""With whom a node repairs each round, and when the next round comes."""

from __future__ import annotations

import random

from p2psync.swarm.constants import REPLICATION_RETRY_S
from p2psync.swarm.repair import RepairSchedule
from p2psync.swarm.ring import NodeInfo

PEERS = [NodeInfo(f"{n:064x}", f"wss://node{n}") for n in range(4)]
INTERVAL_S = 60.0


def test_everyone_first_then_one_random_peer_a_round() -> None:
    schedule = RepairSchedule(INTERVAL_S, random.Random(1))
    assert schedule.peers(PEERS) == PEERS
    wait = schedule.round_over(set())
    assert 0.8 * INTERVAL_S <= wait <= 1.2 * INTERVAL_S
    picked = set()
    for _ in range(40):
        (peer,) = schedule.peers(PEERS)
        picked.add(peer.pubkey)
        schedule.round_over(set())
    assert len(picked) > 1  # random, not always the same one


def test_everyone_again_when_asked() -> None:
    schedule = RepairSchedule(INTERVAL_S, random.Random(1))
    schedule.peers(PEERS)
    schedule.round_over(set())
    schedule.repair_everyone()
    assert schedule.peers(PEERS) == PEERS
    schedule.round_over(set())
    assert len(schedule.peers(PEERS)) == 1


def test_failed_peers_are_retried_soon_with_back_off_up_to_the_interval() -> None:
    schedule = RepairSchedule(INTERVAL_S, random.Random(1))
    schedule.peers(PEERS)
    waits = []
    for _ in range(8):
        waits.append(schedule.round_over({PEERS[2].pubkey, PEERS[3].pubkey}))
        assert schedule.peers(PEERS) == PEERS[2:]
    assert waits[:3] == [REPLICATION_RETRY_S, 2 * REPLICATION_RETRY_S, 4 * REPLICATION_RETRY_S]
    # Doubling stops at the interval: then rounds come at the interval, jitter and all.
    assert 0.8 * INTERVAL_S <= waits[-1] <= 1.2 * INTERVAL_S
    # A round without failures starts the back-off again.
    schedule.round_over(set())
    assert len(schedule.peers(PEERS)) == 1
    assert schedule.round_over({PEERS[0].pubkey}) == REPLICATION_RETRY_S


def test_a_node_alone_in_its_swarm_repairs_with_nobody() -> None:
    schedule = RepairSchedule(INTERVAL_S, random.Random(1))
    assert schedule.peers([]) == []
    schedule.round_over(set())
    assert schedule.peers([]) == []
