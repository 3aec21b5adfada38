"""``p2psync demo`` runs the whole paired-device story and exits 0."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

MODES = ("mapped", "linked")


@dataclass(frozen=True)
class DemoRun:
    returncode: int
    stdout: str
    stderr: str
    summary: Path


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DemoRun]:
    """``p2psync demo`` in both modes, side by side: each spends most of its half minute
    waiting on its network's timers, so together they take about the time of one. Output
    goes to files, so neither waits on a pipe the test is not reading yet."""
    started = []
    for mode in MODES:
        folder = tmp_path_factory.mktemp(f"demo-{mode}")
        out, err = (folder / "stdout").open("w"), (folder / "stderr").open("w")
        command = [sys.executable, "-m", "p2psync", "demo", "--mode", mode]
        process = subprocess.Popen(
            [*command, "--json", str(folder / "demo.json")], stdout=out, stderr=err
        )
        started.append((mode, process, folder, out, err))
    runs = {}
    try:
        for mode, process, folder, out, err in started:
            process.wait(timeout=240)
            out.close()
            err.close()
            runs[mode] = DemoRun(
                process.returncode,
                (folder / "stdout").read_text(),
                (folder / "stderr").read_text(),
                folder / "demo.json",
            )
    finally:
        for _, process, _, out, err in started:
            if process.poll() is None:
                process.kill()
                process.wait()
            out.close()
            err.close()
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_the_demo_tells_the_whole_story(demo_runs: dict[str, DemoRun], mode: str) -> None:
    result = demo_runs[mode]
    assert result.returncode == 0, result.stderr
    for step in ("Pairing", "Friends", "Live", "Offline", "Away past the TTL", "Public chat"):
        assert step in result.stdout
    figures = json.loads(result.summary.read_text())
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
