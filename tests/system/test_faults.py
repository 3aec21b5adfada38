"""Fault injection on real processes (issue 6): a service node is killed with SIGKILL in
the middle of a burst of stores and restarted on the same data directory and port.

Nothing acknowledged may be lost, and the swarm must become whole again on its own: every
member, the restarted one included, returns every acknowledged store. Real processes on
loopback take real time, so every wait is for a condition, under ``trio.fail_after``.
"""

from __future__ import annotations

from pathlib import Path

import trio

from benchmarks.faults import (
    AckLedger,
    accepting_node_lost,
    node_crash_during_burst,
    open_cluster,
    registry_outage,
)
from benchmarks.faults.scenarios import CONVERGE_TIMEOUT_S
from p2psync.identity import Identity
from p2psync.swarm.client import open_swarm_client

from .service_logs import log_tails

#: The whole file's budget on a loaded 2-core CI machine (it takes about a third of it).
DEADLINE_S = 40.0


async def test_node_killed_mid_burst_loses_nothing_and_converges(tmp_path: Path) -> None:
    ledger = AckLedger([Identity.from_label(f"test-faults/{i}") for i in range(4)])
    with trio.move_on_after(DEADLINE_S) as deadline:
        async with (
            open_cluster(tmp_path, nodes=3, log_level="info") as cluster,
            open_swarm_client(cluster.transport, cluster.directory(), cluster.clock) as swarm,
        ):
            crash = await node_crash_during_burst(
                cluster, swarm, ledger, cluster.nodes[0], burst=240, concurrency=8
            )
            outage = await registry_outage(cluster, swarm, ledger, burst=60, concurrency=8)
    assert not deadline.cancelled_caught, f"over {DEADLINE_S} s\n{log_tails(tmp_path, 40)}"

    assert crash.notes["acknowledged_while_down"] > 0, "the kill did not land mid-burst"
    assert crash.acknowledged >= 240
    assert crash.lost == 0
    assert crash.converged and crash.recovery_s is not None
    assert cluster.nodes[0].starts == 2

    assert outage.notes["stores_acknowledged_while_down"] == 60
    # The registry is no single point of failure for reading the network: a new client
    # lists it from the nodes, and a node restarted meanwhile from its saved listing.
    assert outage.notes["new_client_bootstraps_while_down"] == "yes"
    assert outage.notes["node_restarted_while_down_serves"] == "yes"
    assert outage.lost == 0 and outage.converged


async def test_the_member_that_acknowledged_dies_for_good_and_nothing_acknowledged_is_lost(
    tmp_path: Path,
) -> None:
    """kill -9 the member every store went to, mid-burst, right after its peers hung for
    1.5 s, and never restart it: what it acknowledged is on another member already
    (quorum of 2), so the two left return all of it. Acknowledging after the local commit
    alone (``--quorum 1``), the stores of those 1.5 s were on the dead member only."""
    ledger = AckLedger([Identity.from_label(f"test-faults/lost/{i}") for i in range(4)])
    # A loss shows only after the scenario's wait for convergence has run out.
    with trio.fail_after(DEADLINE_S + CONVERGE_TIMEOUT_S):
        async with (
            open_cluster(tmp_path, nodes=3) as cluster,
            open_swarm_client(cluster.transport, cluster.directory(), cluster.clock) as swarm,
        ):
            report = await accepting_node_lost(
                cluster, swarm, ledger, cluster.nodes[1], burst=400, concurrency=16
            )
    assert report.acknowledged >= 200
    assert report.notes["members_left"] == 2
    # Only stores already committed on a peer when it hung, their replies on the way.
    assert report.notes["acknowledged_while_peers_hung"] <= 16
    assert report.lost == 0
    assert report.converged
