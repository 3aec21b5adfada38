"""The embedded network's servers serve as keys that nobody outside can derive: from the
data directory's name only on the emulated network (so runs repeat), fresh on sockets."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2psync.network import LocalNetwork, open_local_network


def keys_of(network: LocalNetwork) -> set[bytes]:
    return {network.ledger.public_key, *network.server_keys.values()} | {
        node.identity.ed25519_public for node in network.nodes
    }


@pytest.mark.parametrize("data_dir", ["given", "temporary"])
@pytest.mark.parametrize("transport", ["memory", "tcp"])
async def test_server_keys_repeat_only_on_the_emulated_network(
    tmp_path: Path, transport: str, data_dir: str
) -> None:
    """With a data directory of one name, or with none (a temporary one, named after the
    seed): so that a test's swarms are the same every run."""
    seen = []
    for run in ("first", "second"):
        directory = tmp_path / run / "net" if data_dir == "given" else None
        async with open_local_network(1, relays=0, transport=transport, data_dir=directory) as net:
            seen.append(keys_of(net))
    assert len(seen[0]) == 4  # ledger, file server, open group, node
    if transport == "memory":
        assert seen[0] == seen[1]
    else:
        assert not seen[0] & seen[1]


async def test_emulated_networks_of_two_seeds_have_keys_of_their_own() -> None:
    """So that runs of a benchmark over seeds see as many layouts of the swarms."""
    seen = []
    for seed in (1, 2):
        async with open_local_network(1, relays=0, seed=seed) as net:
            seen.append(keys_of(net))
    assert not seen[0] & seen[1]
