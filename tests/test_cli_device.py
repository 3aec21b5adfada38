"""``p2psync device ...`` as a person at a terminal uses it: separate processes against a
network on loopback sockets, described by a ``network.json``."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import trio

from p2psync.network import open_local_network

P2PSYNC = [sys.executable, "-m", "p2psync", "device"]


async def run(*args: str) -> tuple[int, str, str]:
    result = await trio.run_process(
        [*P2PSYNC, *args], capture_stdout=True, capture_stderr=True, check=False
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def ok(*args: str) -> str:
    code, out, err = await run(*args)
    assert code == 0, err
    return out


@pytest.mark.slow
async def test_two_people_pair_befriend_and_message_from_the_terminal(tmp_path: Path) -> None:
    async with open_local_network(6, transport="tcp", data_dir=tmp_path / "net") as network:
        description = {
            "registry": network.registry_url,
            "fileserver": network.fileserver_url,
            "opengroup": network.opengroup_url,
        }
        net = tmp_path / "network.json"
        net.write_text(json.dumps(description))

        def where(name: str) -> list[str]:
            return ["--data", str(tmp_path / name), "--network", str(net), "--timeout", "120"]

        ids = {}
        for name in ("phone", "tablet", "bob"):
            out = await ok("init", "--data", str(tmp_path / name), "--mode", "linked")
            ids[name] = out.split()[-1]
        alice = ids["phone"]

        # Pairing: the tablet shows a code, the phone lists the same one and accepts it.
        paired: list[str] = []

        async def pair() -> None:
            paired.append(await ok("pair", *where("tablet"), "--primary", alice))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pair)
            listing = await ok("accept", *where("phone"))
            [code] = re.findall(r"^code (\d{3} \d{3})", listing, re.MULTILINE)
            assert "paired device" in await ok("accept", *where("phone"), "--code", code)
        assert f"pairing code: {code}" in paired[0]
        assert f"acts for user {alice}" in paired[0]

        # Bob asks; the tablet (same user, shared swarm) accepts.
        await ok("contacts", *where("bob"), "--add", alice, "--text", "hi, Bob here")
        pending = await ok("inbox", *where("tablet"), "--wait", "0")
        assert f"friend request from {ids['bob']}: 'hi, Bob here'" in pending
        await ok("contacts", *where("tablet"), "--accept", ids["bob"])
        assert f"friend    {alice}" in await ok("contacts", *where("bob"))

        assert "sent " in await ok("send", *where("bob"), alice, "hello Alice")
        assert "← " in (inbox := await ok("inbox", *where("phone"), "--wait", "0"))
        assert "hello Alice" in inbox

        # Bad input: one line, non-zero.
        code_, _, err = await run("send", *where("bob"), "05" + "ab" * 32, "hi")
        assert code_ == 1 and err.strip().splitlines()[-1].startswith("p2psync: error: ")
        assert "not a friend" in err
        code_, _, err = await run("pair", *where("bob"), "--primary", "not-an-id")
        assert code_ == 1 and "is not a session id" in err
