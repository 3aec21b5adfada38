"""``p2psync device migrate --to linked`` from the terminal: separate processes of the real
console script against a network on loopback sockets, as a person moving a ``mapped``
account with two devices and a friend would run it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p2psync.network import open_local_network

from .test_cli_device import ok, pair_by_cli, run


@pytest.mark.slow
async def test_a_mapped_account_moves_to_linked_from_the_terminal(tmp_path: Path) -> None:
    async with open_local_network(3, relays=0, transport="tcp", data_dir=tmp_path / "net") as net:
        network = tmp_path / "network.json"
        network.write_text(json.dumps(net.description()))

        def where(name: str) -> list[str]:
            return ["--data", str(tmp_path / name), "--network", str(network), "--timeout", "120"]

        ids = {}
        for name, mode in (("phone", "mapped"), ("desktop", "mapped"), ("bob", "mapped")):
            out = await ok("init", "--data", str(tmp_path / name), "--mode", mode)
            ids[name] = out.split()[-1]
        alice, desktop, bob = ids["phone"], ids["desktop"], ids["bob"]
        await pair_by_cli(where, "phone", "desktop", alice)
        await ok("contacts", *where("bob"), "--add", alice, "--text", "hi, Bob here")
        await ok("contacts", *where("phone"), "--accept", bob)
        assert f"friend    {alice}" in await ok("contacts", *where("bob"))
        await ok("send", *where("bob"), alice, "before the move")
        assert "before the move" in await ok("inbox", *where("desktop"))

        code, _, err = await run("migrate", *where("desktop"), "--to", "linked")
        assert code == 1 and err.strip() == (
            "p2psync: error: only the primary device can move the account"
            " (it holds the account's key)"
        )
        moved = await ok("migrate", *where("phone"), "--to", "linked")
        assert f"moved user {alice} to linked mode; told 1 friend" in moved
        assert f"device {desktop} gets the account's key" in moved
        code, _, err = await run("migrate", *where("phone"), "--to", "linked")
        assert code == 1 and err.strip() == (
            "p2psync: error: this account was moved to linked mode already"
        )

        # The desktop switches when it next reads its swarm; the friend on its next read.
        await ok("inbox", *where("desktop"))
        me = json.loads(await ok("whoami", "--data", str(tmp_path / "desktop"), "--json"))
        assert (me["user"], me["device"], me["mode"]) == (alice, desktop, "linked")
        [line] = [x for x in (await ok("contacts", *where("bob"), "--json")).splitlines()]
        assert json.loads(line)["devices"] == [alice]

        await ok("send", *where("bob"), alice, "after the move")
        assert "after the move" in await ok("inbox", *where("desktop"))
        assert "after the move" in await ok("inbox", *where("phone"))
        history = await ok("inbox", *where("desktop"), "--all")
        assert "before the move" in history and "after the move" in history

        await ok("init", "--data", str(tmp_path / "carol"), "--mode", "linked")
        code, _, err = await run("migrate", *where("carol"), "--to", "linked")
        assert code == 1 and err.strip() == (
            "p2psync: error: this device is linked already: there is nothing to move"
        )
