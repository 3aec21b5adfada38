"""``p2psync demo`` runs the whole paired-device story and exits 0."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["mapped", "linked"])
def test_the_demo_tells_the_whole_story(tmp_path: Path, mode: str) -> None:
    summary = tmp_path / "demo.json"
    result = subprocess.run(
        [sys.executable, "-m", "p2psync", "demo", "--mode", mode, "--json", str(summary)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    for step in ("Pairing", "Friends", "Live", "Offline", "Away past the TTL", "Public chat"):
        assert step in result.stdout
    figures = json.loads(summary.read_text())
    assert figures["mode"] == mode
    assert figures["identical_histories"] is True
    assert len(figures["public_chat_users"]) == 1
    assert [d["messages"] for d in figures["devices"]] == [5, 5, 5]
    # What the network could learn about Alice's two devices: in ``mapped`` mode the file
    # server lists both and her messages sit under two keys (the seed document's design);
    # in ``linked`` mode neither. In both, no stored message, cell or introset shows a key.
    privacy = figures["privacy"]
    linked_as = 2 if mode == "mapped" else 1
    assert privacy["fileserver_devices_listed"] == privacy["alice_swarm_keys"] == linked_as
    assert privacy["stored_items"] > 0 and privacy["stored_items_showing_a_key"] == 0
    assert privacy["relay_cells"] > 100 and len(privacy["relay_cell_sizes"]) == 1
    assert privacy["relay_cells_showing_a_key"] == 0
    assert privacy["introsets"] > 0 and privacy["introsets_showing_a_key"] == 0
    # Devices reach every server by onion requests from addresses of their own: no
    # server answered a request from either of Alice's devices' addresses.
    assert privacy["server_requests"] > 0
    assert privacy["device_addresses_seen_by_servers"] == 0
    # The registry's listing: read from each of Alice's devices once, as it starts (30
    # reads when every later read went to the registry too); later reads go to service
    # nodes through the devices' paths.
    assert privacy["registry_reads_from_devices"] == 2
    assert privacy["servers_seeing_alice_from_two_addresses"] == 0
    # Every link is TLS pinned to its server's key: an observer of the devices' wires
    # read no account, device or node key (tests/system/test_link_audit.py shows the same
    # tap reading them on plain links).
    assert privacy["link_plaintext_keys"] == 0
