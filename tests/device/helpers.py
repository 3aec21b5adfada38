"""An embedded network under virtual time, and devices on it, for the device tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from p2psync.clock import TEST_EPOCH_MS, Clock
from p2psync.device import Device, open_device
from p2psync.identity import Identity
from p2psync.network import LocalNetwork, open_local_network
from p2psync.swarm.node import NodeConfig

#: Maintenance that comes round rarely, so that days of virtual time stay fast.
QUIET = NodeConfig(
    sweep_interval_s=600,
    registry_refresh_s=150,
    repair_interval_s=6 * 3600,
    announce_interval_s=150,
)


@asynccontextmanager
async def open_world(nodes: int = 6) -> AsyncIterator[LocalNetwork]:
    async with open_local_network(nodes, clock=Clock(TEST_EPOCH_MS), node_config=QUIET) as network:
        yield network


def device(
    network: LocalNetwork, root: Path, label: str, mode: str | None = None, **options: Any
) -> AbstractAsyncContextManager[Device]:
    """The device ``label`` under ``root``, with a key derived from the label; opening it
    again (``mode`` may then be left out) finds its state as it was left."""
    return open_device(
        root / label,
        network.access(),
        mode=mode,
        name=label,
        seed=Identity.from_label(f"device/{label}").seed,
        **options,
    )
