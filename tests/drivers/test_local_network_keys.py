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


@pytest.mark.parametrize("transport", ["memory", "tcp"])
async def test_server_keys_repeat_only_on_the_emulated_network(
    tmp_path: Path, transport: str
) -> None:
    seen = []
    for run in ("first", "second"):
        directory = tmp_path / run / "net"
        async with open_local_network(1, relays=0, transport=transport, data_dir=directory) as net:
            seen.append(keys_of(net))
    assert len(seen[0]) == 4  # ledger, file server, open group, node
    if transport == "memory":
        assert seen[0] == seen[1]
    else:
        assert not seen[0] & seen[1]


async def test_emulated_networks_without_a_data_directory_repeat_their_keys() -> None:
    """So that a test's swarms (which nodes keep which account) are the same every run."""
    seen = []
    for _ in range(2):
        async with open_local_network(2, relays=0) as net:
            seen.append(keys_of(net))
    assert len(seen[0]) == 5
    assert seen[0] == seen[1]
