"""The deployment files: ``compose.yaml`` is valid YAML with the network ``network up``
runs, every command line in it and in ``docs/deploy.md`` parses, and each container
listens (so announces itself) on the address the compose network gives it. Docker itself
is not run here."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from p2psync.cli import build_parser
from p2psync.identity import Identity

yaml = pytest.importorskip("yaml", reason="PyYAML reads compose.yaml")

ROOT = Path(__file__).resolve().parents[2]
LEDGER = "ab" * 32
#: What the guide's ``YOUR_DEVICE_ID`` stands for: a device id, as ``whoami`` prints one.
DEVICE_ID = Identity.from_label("deploy/room-creator").session_id
NODES = [f"node-{i}" for i in range(6)]
RELAYS = [f"relay-{i}" for i in range(6)]


def _compose() -> dict[str, Any]:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(compose, dict)
    return compose


def _parses(argv: list[str]) -> Any:
    """``argv`` (after ``p2psync``) as the command line parses it (argparse exits on
    anything it refuses, which fails the test)."""
    return build_parser().parse_args(argv)


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_compose_runs_the_network_network_up_runs() -> None:
    services = _compose()["services"]
    assert set(services) == {"admit", "registry", "fileserver", "opengroup", *NODES, *RELAYS}
    assert services["admit"]["profiles"] == ["admit"]


def test_every_container_listens_on_its_own_address_and_its_command_parses() -> None:
    compose = _compose()
    (subnet,) = [entry["subnet"] for entry in compose["networks"]["p2psync"]["ipam"]["config"]]
    prefix = subnet.removesuffix("0/24")
    addresses = set()
    for name, service in compose["services"].items():
        if name == "admit":
            continue
        argv = [LEDGER if arg == "${P2PSYNC_LEDGER:-}" else arg for arg in service["command"]]
        args = _parses(argv)
        assert args.command == name.split("-")[0]
        assert args.data == f"/data/{name}"
        address = service["networks"]["p2psync"]["ipv4_address"]
        assert address.startswith(prefix)
        assert args.listen == f"{address}:7000"
        addresses.add(address)
        if args.command in ("registry", "node", "relay"):
            assert args.ledger == LEDGER, f"{name} is told the ledger's key"
        if args.command in ("node", "relay"):
            # The registry's url names its key: the admission step prints it (below).
            assert args.registry == "${P2PSYNC_REGISTRY:-}"
        if args.command == "opengroup":
            assert args.fileserver == "${P2PSYNC_FILESERVER:-}"
        if args.command == "relay":
            # An exit hands onion requests only to listed nodes and the servers it is given.
            assert args.exit_server == ["${P2PSYNC_FILESERVER:-}", "${P2PSYNC_OPENGROUP:-}"]
    assert len(addresses) == len(compose["services"]) - 1


def test_the_admission_step_admits_every_node_and_relay_the_compose_file_runs() -> None:
    script = _compose()["services"]["admit"]["command"][0]
    lines = [line.strip() for line in script.splitlines() if "p2psync ledger" in line]
    loop = re.search(r"for n in ([\d ]+);", script)
    assert loop is not None
    nodes, relays = set(), set()
    for n in loop.group(1).split():
        for line in lines:
            argv = shlex.split(line.replace("$$n", n))
            assert argv[0] == "p2psync"
            args = _parses(argv[1:])
            assert (args.command, args.ledger_command, args.data) == (
                "ledger",
                "register",
                "/data/ledger",
            )
            if args.node_data:
                nodes.add(args.node_data)
            else:
                relays.add(args.relay_data)
    assert nodes == {f"/data/{name}" for name in NODES}
    assert relays == {f"/data/{name}" for name in RELAYS}


def test_the_admission_step_prints_the_pinned_urls_of_the_servers_others_are_told() -> None:
    """Links are TLS pinned to each server's key, so nodes, relays and the open group
    server are told urls naming the keys, which the admission step makes and prints for
    the same directory and address as the server's own container."""
    services = _compose()["services"]
    script = services["admit"]["command"][0]
    for name, variable in (
        ("registry", "P2PSYNC_REGISTRY"),
        ("fileserver", "P2PSYNC_FILESERVER"),
        ("opengroup", "P2PSYNC_OPENGROUP"),
    ):
        (line,) = [line.strip() for line in script.splitlines() if f"{variable}=" in line]
        command = re.search(r"\$\$\((p2psync [^)]*)\)", line)
        assert command is not None, line
        args = _parses(shlex.split(command.group(1))[1:])
        served = _parses([LEDGER if a.startswith("${") else a for a in services[name]["command"]])
        assert (args.command, args.print_url) == (name, True)
        assert (args.data, args.listen) == (served.data, served.listen)


def test_the_image_installs_the_package_with_p2psync_as_entrypoint() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text().splitlines()
    assert "FROM python:3.11-slim" in dockerfile
    assert 'ENTRYPOINT ["p2psync"]' in dockerfile
    assert any(line.startswith("RUN pip install") and " ." in line for line in dockerfile)


def test_every_p2psync_command_in_the_deploy_guide_parses() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)
    commands = [
        line.split("#")[0].strip()
        for block in blocks
        for line in block.splitlines()
        if line.startswith("p2psync ")
    ]
    assert len(commands) >= 7
    for command in commands:
        filled = command.replace("LEDGER_KEY", LEDGER).replace("YOUR_DEVICE_ID", DEVICE_ID)
        _parses(shlex.split(filled)[1:])
