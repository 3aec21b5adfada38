"""The flood phase on real processes: one node flooded for a few seconds (connections
past its limit, clients that never read their replies, oversize frames and stores, a
request-rate flood) while an honest client stores and reads back.

Only what must hold on any machine is asserted: every store the honest client saw
acknowledged comes back, the node still answers, and its memory grew by less than a
generous bound. Latencies depend on the machine and are reported by
``p2psync bench soak --flood-seconds S``, not asserted here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trio

from benchmarks.faults import open_cluster
from benchmarks.faults.flood import AttackPlan, FloodPlan, run_flood
from p2psync.rpc import ServerLimits
from p2psync.websocket import MAX_PENDING_HANDSHAKES

#: Real processes on loopback: cluster start, 1.5 s before, 4 s of flood, 1 s after.
DEADLINE_S = 60.0
#: What the node may grow by. Here it grows by ~18 MiB: ~23 KiB per connection (the
#: table holds 512) and up to ~7 MiB of replies held for the pipeliner that never reads
#: (its outbox plus a page per in-flight slot). Checked to fail: with ``p2psync/rpc.py``
#: as it was before the flood work (a request released its in-flight slot before its
#: reply was queued, so every retrieve the pipeliner sent left a parked task and a
#: ~94 KiB reply behind), this test grew by 55-62 MiB in three runs and failed.
#: (Run against a copy of the tree with the old rpc.py on ``PYTHONPATH``, which wins over
#: the editable install, in the node processes too.) Those figures are for plain links.
RSS_GROWTH_BOUND_KIB = 48 * 1024
#: What TLS adds on the node, measured on real processes (2026-12-04): 18.5 KiB per
#: established connection (400 held: 39.3 KiB each with TLS, 20.8 plain) and 53.5 KiB per
#: connection left inside its TLS handshake (200 that sent a ClientHello and stopped).
#: The connection table and the pending-handshake cap bound both, so TLS may add at most
#: this much: 9.3 + 13.4 MiB.
TLS_GROWTH_KIB = ServerLimits().max_connections * 19 + MAX_PENDING_HANDSHAKES * 54
PLAN = FloodPlan(
    AttackPlan(
        seconds=4.0, seed=7, held=600, churners=2, silent=50, pipeliners=1, oversize=1, rate=1
    ),
    baseline_s=1.5,
    after_s=1.0,
)


@pytest.mark.parametrize("links", ["plain", "tls"])
async def test_a_flooded_node_keeps_its_memory_bounded_and_its_honest_client_served(
    tmp_path: Path, links: str
) -> None:
    bound = RSS_GROWTH_BOUND_KIB + (TLS_GROWTH_KIB if links == "tls" else 0)
    with trio.fail_after(DEADLINE_S):
        async with open_cluster(tmp_path, nodes=1, plain_links=links == "plain") as cluster:
            report = await run_flood(cluster, cluster.nodes[0], PLAN)

    attack = report.attack
    assert attack["pipeline"]["requests"] > 0 and attack["held"]["connections"] > 0, (
        "the flood did not happen"
    )
    assert all(report.honest[phase].stores > 0 for phase in ("before", "during"))
    assert all(not phase.failures for phase in report.honest.values())
    assert report.unretrievable == 0 and report.not_read_back == 0
    assert report.alive_after
    assert report.baseline_kib > 0
    assert cluster.nodes[0].url.startswith("wss://" if links == "tls" else "ws://")
    assert report.peak_kib - report.baseline_kib < bound
    assert report.hwm_kib - report.baseline_kib < bound


def test_a_negative_flood_is_refused_with_one_line() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "p2psync",
            "bench",
            "soak",
            "--minutes",
            "1",
            "--flood-seconds",
            "-1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "--flood-seconds" in result.stderr.strip().splitlines()[-1]
