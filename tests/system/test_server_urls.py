"""A server's url names its key: ``--print-url`` tells it before the server starts, and
the server, started on the same data and address, announces exactly that url; with
``--plain-links`` it serves plaintext. Real processes on loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio

from p2psync.launcher import Running, Service, run_service
from p2psync.rpc import open_rpc
from p2psync.websocket import WebSocketTransport

P2PSYNC = [sys.executable, "-m", "p2psync"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.parametrize("plain", [False, True], ids=["tls", "plain"])
async def test_the_printed_url_is_the_one_the_registry_announces(
    tmp_path: Path, plain: bool
) -> None:
    args = ("registry", *(["--plain-links"] if plain else []))
    service = Service("registry", args, tmp_path / "registry")  # its log beside, in tmp_path
    port = _free_port()
    result = await trio.run_process([*service.command(port), "--print-url"], capture_stdout=True)
    printed = result.stdout.decode().strip()
    assert printed.startswith("ws://" if plain else "wss://")
    async with trio.open_nursery() as nursery:
        running: Running = await nursery.start(partial(run_service, service, port))
        assert running.url == printed
        async with open_rpc(WebSocketTransport(plain=plain), printed) as client:  # it answers
            await client.call("list", {})
        nursery.cancel_scope.cancel()


def test_a_relays_printed_address_pins_its_key(tmp_path: Path) -> None:
    argv = [*P2PSYNC, "relay", "--data", str(tmp_path), "--listen", "127.0.0.1:7001"]
    registry = "wss://127.0.0.1:1/" + "ab" * 32
    printed = subprocess.run(
        [*argv, "--registry", registry, "--print-url"], capture_output=True, text=True, check=True
    ).stdout.strip()
    address, _, key = printed.partition("#")
    assert address == "127.0.0.1:7001" and len(bytes.fromhex(key)) == 32
    assert (tmp_path / "relay.key").exists()


def test_a_printed_url_needs_a_port(tmp_path: Path) -> None:
    result = subprocess.run(
        [*P2PSYNC, "fileserver", "--data", str(tmp_path), "--print-url"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "p2psync: error: the announced url names the port: give --listen HOST:PORT"
    )
