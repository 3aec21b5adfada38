"""Helpers shared by the swarm tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from p2psync.clock import TEST_EPOCH_MS, Clock
from p2psync.identity import Identity
from p2psync.network import LocalNetwork, open_local_network
from p2psync.network import wait_until as network_wait_until
from p2psync.swarm.client import SwarmClient, open_swarm_client
from p2psync.swarm.node import StorageNode
from p2psync.swarm.node_config import NodeConfig


async def wait_until(condition: Callable[[], bool], *, limit_s: float = 600) -> None:
    """Wait in virtual time until ``condition`` holds; fail the test after ``limit_s``."""
    with trio.fail_after(limit_s):
        await network_wait_until(condition, poll_s=0.5)


def swarm_of(network: LocalNetwork, owner: Identity) -> list[StorageNode]:
    nodes = network.running_nodes()
    swarm = nodes[0].swarms.swarm_for_key(owner.x25519_public)
    return [n for n in nodes if n.swarm_id == swarm]


def holders(network: LocalNetwork, owner: Identity, digest: bytes, namespace: int = 0) -> int:
    return sum(
        1
        for node in network.running_nodes()
        if (row := node.store.get(owner.session_id, namespace, digest)) is not None
        and row.data is not None
    )


@asynccontextmanager
async def open_test_swarm(
    nodes: int = 6, config: NodeConfig | None = None
) -> AsyncIterator[tuple[LocalNetwork, SwarmClient]]:
    """An in-memory network at the test epoch, with a swarm client on it."""
    async with (
        open_local_network(
            nodes, relays=0, clock=Clock(TEST_EPOCH_MS), node_config=config
        ) as network,
        open_swarm_client(network.transport, network.directory(), network.clock, seed=1) as swarm,
    ):
        yield network, swarm
