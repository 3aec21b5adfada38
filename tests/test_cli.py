"""The command line: clear one-line errors, and ``network up`` as real processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from p2psync.clock import Clock
from p2psync.identity import Identity
from p2psync.rpc import open_rpc
from p2psync.swarm.client import Message, open_swarm_client
from p2psync.swarm.registry import RegistryDirectory
from p2psync.websocket import WebSocketTransport

P2PSYNC = [sys.executable, "-m", "p2psync"]


@pytest.mark.parametrize(
    "args",
    [
        ["network", "up", "--nodes", "0", "--data", "x"],
        ["network", "up", "--nodes", "many", "--data", "x"],
        ["node", "--data", "x"],
        ["bench", "throughput", "--clients", "-1"],
        ["frobnicate"],
    ],
)
def test_bad_arguments_exit_non_zero_with_one_line(args: list[str], tmp_path: Path) -> None:
    result = subprocess.run(
        [*P2PSYNC, *args], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert result.returncode != 0
    assert "error" in result.stderr.strip().splitlines()[-1]


def test_a_file_where_a_data_directory_should_be(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    result = subprocess.run(
        [*P2PSYNC, "registry", "--data", str(tmp_path / "file")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == f"p2psync: error: --data {tmp_path / 'file'} exists and is not a directory"
    )


@pytest.mark.slow
async def test_network_up_runs_processes_until_interrupted(tmp_path: Path) -> None:
    process = await trio.lowlevel.open_process(
        [*P2PSYNC, "network", "up", "--nodes", "2", "--relays", "2", "--data", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    try:
        line = b""
        with trio.fail_after(120):
            while b"\n" not in line:
                chunk = await process.stdout.receive_some(1024)
                assert chunk, "network up exited early"
                line += chunk
        assert line.decode().strip() == f"ready {tmp_path / 'network.json'}"
        description = json.loads((tmp_path / "network.json").read_text())
        assert set(description) >= {"registry", "fileserver", "opengroup", "nodes", "relays"}
        assert len(description["nodes"]) == 2 and len(description["relays"]) == 2
        transport = WebSocketTransport()
        alice = Identity.from_label("alice")
        clock = Clock()
        directory = RegistryDirectory(transport, description["registry"], clock)
        delivered = trio.Event()
        received: list[Message] = []

        async def deliver(batch: list[Message]) -> None:
            received.extend(batch)
            delivered.set()

        async with open_swarm_client(transport, directory, clock) as swarm:
            digest, _ = await swarm.store(alice.session_id, 0, b"over real processes")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: swarm.poll(alice, 0, deliver, interval_s=0.2))
                with trio.fail_after(30):
                    await delivered.wait()
                nursery.cancel_scope.cancel()
            assert [m.hash for m in received] == [digest]
        process.send_signal(signal.SIGINT)
        with trio.fail_after(60):
            code = await process.wait()
        assert code == 130
        for node in description["nodes"]:
            with pytest.raises(OSError):
                async with open_rpc(transport, node["url"]):
                    pass
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            with trio.move_on_after(30):
                await process.wait()
            process.kill()
            await process.wait()
