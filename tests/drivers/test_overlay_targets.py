"""The §6 overlay targets of ``p2psync bench overlay``, on the memory network under virtual
time: the quick run's figure path (the same code, the same counts), 30 ms on every link.

With CPU free in virtual time, what the figures show is the links' latency and the
protocol's own waits, so they must keep to relations the real code produces: no delivery
beats the links it crosses, the distribution is ordered, and nothing but the links is
left for the §6 allowances to cover. No wall-clock speed is asserted here.
"""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from benchmarks.overlay_bench import (
    QUICK_DELIVERIES,
    QUICK_INTROSET_ROUNDS,
    SEND_INTERVAL_MS,
    TARGET_NODES,
    TARGET_RELAYS,
)
from benchmarks.overlay_targets import HOPS, measure_targets
from overlay.link import LinkProfile, MemoryNetwork
from p2psync.clock import TEST_EPOCH_MS, Clock
from p2psync.network import open_local_network

LINK_MS = 30.0


async def test_quick_targets_keep_to_the_links_latency_in_virtual_time(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    links = MemoryNetwork(seed=7, default_profile=LinkProfile(latency_ms=LINK_MS))
    with trio.fail_after(3600):  # virtual: the run takes under a minute of it
        async with open_local_network(
            TARGET_NODES, relays=TARGET_RELAYS, transport=links, clock=Clock(TEST_EPOCH_MS)
        ) as network:
            sections = await measure_targets(
                network,
                tmp_path,
                transport="memory",
                link_ms=LINK_MS,
                messages=QUICK_DELIVERIES,
                interval_ms=SEND_INTERVAL_MS,
                introset_rounds=QUICK_INTROSET_ROUNDS,
            )

    delivery = sections["sibling_delivery"]
    assert delivery["messages"] == QUICK_DELIVERIES
    # Both devices' 3-hop paths are crossed, whatever else the route adds.
    assert delivery["floor_ms"] >= 2 * HOPS * LINK_MS
    assert delivery["floor_ms"] <= delivery["min_ms"]
    assert delivery["min_ms"] <= delivery["p50_ms"] <= delivery["p90_ms"]
    assert delivery["p90_ms"] <= delivery["p99_ms"] <= delivery["max_ms"]
    # With CPU free only the links are left, and the §6 allowances are on top of them: a
    # push that waited on a timer or a retransmission would show here.
    assert delivery["met"]

    introset = sections["introset"]
    assert introset["rounds"] == QUICK_INTROSET_ROUNDS
    # A publish and a lookup each go out over a 3-hop path and back.
    assert introset["floor_ms"] >= 2 * 2 * HOPS * LINK_MS
    assert introset["publish_lookup_ms_p50"] >= introset["floor_ms"]
    assert introset["publish_lookup_ms_p50"] <= introset["publish_lookup_ms_p99"]
    # Each round's total is its publish plus its lookup, so no part's median exceeds it.
    assert introset["publish_ms_p50"] <= introset["publish_lookup_ms_p50"]
    assert introset["lookup_ms_p50"] <= introset["publish_lookup_ms_p50"]
