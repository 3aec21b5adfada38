"""``p2psync network up``: a local network as separate processes, until Ctrl-C.

Children are this same program (``python -m p2psync registry|fileserver|opengroup|node``)
with their own data directories under ``DIR``. The network's ledger lives in
``DIR/ledger`` and admits each node before it first starts (its registration is kept in the
node's directory, so a restart keeps its place); every process is told the ledger's key.
Each prints ``ready <url>`` once it
listens; the launcher then checks that every one answers an RPC, writes
``DIR/network.json`` and prints ``ready DIR/network.json``. A child's log goes to
``DIR/<name>.log``. Cancelling the launcher (Ctrl-C) terminates every child, and waits
for it, before returning.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from overlay.link import Transport

from .clock import Clock
from .rpc import open_rpc
from .services import admit_node, open_ledger
from .swarm.registry import Snapshot, read_listing
from .swarm.ring import NodeInfo, SwarmMap

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
STOP_GRACE_S = 5.0
VIEW_POLL_S = 0.5


@dataclass
class Child:
    name: str
    process: trio.Process
    url: str = ""


async def _read_ready_line(child: Child) -> str:
    assert child.process.stdout is not None
    buffer = b""
    while b"\n" not in buffer:
        chunk = await child.process.stdout.receive_some(4096)
        if not chunk:
            raise RuntimeError(f"{child.name} exited before it was ready (see its log)")
        buffer += chunk
    line = buffer.split(b"\n", 1)[0].decode(errors="replace").strip()
    if not line.startswith("ready "):
        raise RuntimeError(f"{child.name} said {line!r} instead of 'ready <url>'")
    return line.removeprefix("ready ")


async def _stop(child: Child) -> None:
    if child.process.returncode is not None:
        return
    child.process.terminate()
    with trio.move_on_after(STOP_GRACE_S) as waiting:
        await child.process.wait()
    if waiting.cancelled_caught:
        child.process.kill()
        await child.process.wait()


class Launcher:
    """Starts children and guarantees they are all stopped on exit."""

    def __init__(self, data_dir: Path, nursery: trio.Nursery) -> None:
        self.data_dir = data_dir
        self.children: list[Child] = []
        self._nursery = nursery

    def data_dir_of(self, name: str) -> Path:
        """The data directory of child ``name``, made if new."""
        path = self.data_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    async def start(self, name: str, *args: str) -> str:
        self.data_dir_of(name)
        log = (self.data_dir / f"{name}.log").open("ab")
        command = [
            sys.executable,
            "-m",
            "p2psync",
            *args,
            "--data",
            str(self.data_dir / name),
            "--exit-with-stdin",
        ]
        # The child's stdin stays open as long as this process lives (see
        # services.exit_when_stdin_closes), so no child outlives its launcher.
        process = await trio.lowlevel.open_process(
            command, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.PIPE
        )
        log.close()
        child = Child(name, process)
        self.children.append(child)
        with trio.move_on_after(START_TIMEOUT_S):
            child.url = await _read_ready_line(child)
        if not child.url:
            raise RuntimeError(
                f"{name} did not say it was ready within {START_TIMEOUT_S:g} s "
                f"(see {self.data_dir / name}.log)"
            )
        self._nursery.start_soon(self._watch, child)
        return child.url

    async def start_many(
        self, names: Sequence[str], args: Sequence[str], on_ready: Callable[[str, str], None]
    ) -> None:
        """Start ``names`` side by side, each with ``args``; ``on_ready(name, url)`` as each
        comes up. Nodes need no order: each announces itself, and one contacted by a node
        it has not listed yet re-reads the registry."""

        async def one(name: str) -> None:
            on_ready(name, await self.start(name, *args))

        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(one, name)

    async def _watch(self, child: Child) -> None:
        code = await child.process.wait()
        logger.warning("%s exited with code %s (log: %s.log)", child.name, code, child.name)

    async def stop_all(self) -> None:
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for child in self.children:
                    nursery.start_soon(_stop, child)


async def network_up(
    transport: Transport,
    data_dir: Path,
    nodes: int,
    relays: int,
    *,
    on_progress: Callable[[str], None] = lambda message: None,
    task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the network until cancelled; ``task_status.started(path of network.json)``."""
    if nodes < 1:
        raise ValueError("a network needs at least one service node")
    ledger = open_ledger(data_dir / "ledger")
    ledger_args = ("--ledger", ledger.public_key.hex())
    path = data_dir / "network.json"
    path.unlink(missing_ok=True)  # a description of a network that is gone misleads
    async with trio.open_nursery() as nursery:
        launcher = Launcher(data_dir, nursery)
        try:
            registry = await launcher.start("registry", "registry", *ledger_args)
            on_progress(f"registry {registry}")
            fileserver = await launcher.start("fileserver", "fileserver")
            on_progress(f"file server {fileserver}")
            opengroup = await launcher.start("opengroup", "opengroup", "--fileserver", fileserver)
            on_progress(f"open group {opengroup}")
            names = [f"node-{index}" for index in range(nodes)]
            for name in names:
                admit_node(ledger, launcher.data_dir_of(name))
            await launcher.start_many(
                names,
                ("node", "--registry", registry, *ledger_args),
                lambda name, url: on_progress(f"{name} {url}"),
            )
            await launcher.start_many(
                [f"relay-{index}" for index in range(relays)],
                ("relay", "--registry", registry, *ledger_args),
                lambda name, address: on_progress(f"{name} {address}"),
            )
            description = await _describe(
                transport, registry, fileserver, opengroup, nodes, relays, ledger.public_key
            )
            path.write_text(json.dumps(description, indent=2) + "\n")
            task_status.started(path)
            await trio.sleep_forever()
        finally:
            path.unlink(missing_ok=True)
            await launcher.stop_all()
            nursery.cancel_scope.cancel()


async def _until_views_agree(transport: Transport, nodes: Sequence[NodeInfo]) -> None:
    """Wait until every node answers and places itself in the swarm the registry listing
    implies: a node started early learns of later ones within seconds (a node that is
    contacted by an unknown one re-reads the registry), and only then is the network
    ready to keep every message on every member."""
    expected = SwarmMap.build(nodes)
    disagreeing: list[str] = []
    for _ in range(int(START_TIMEOUT_S / VIEW_POLL_S)):
        disagreeing = []
        for node in nodes:
            async with open_rpc(transport, node.url) as client:
                info = await client.call("info", {})
            swarm = info.get("swarm") if isinstance(info, dict) else None
            if swarm != expected.swarm_of_node(node.pubkey):
                disagreeing.append(node.url)
        if not disagreeing:
            return
        await trio.sleep(VIEW_POLL_S)
    raise RuntimeError(
        f"{len(disagreeing)} node(s) did not place themselves in the swarms of the "
        f"registry's listing in time: {', '.join(disagreeing)}"
    )


async def _describe(
    transport: Transport,
    registry: str,
    fileserver: str,
    opengroup: str,
    nodes: int,
    relays: int,
    ledger: bytes,
) -> dict[str, Any]:
    """Ask every process to answer, and the registry for the nodes it lists (a node
    announces itself before it prints ``ready``, so all are listed by now)."""
    with trio.fail_after(START_TIMEOUT_S):
        listing = Snapshot.from_announcements(
            {"announcements": await read_listing(transport, registry)},
            Clock().now_ms(),
            ledger=ledger,
        )
        if len(listing.nodes) < nodes or len(listing.relays) < relays:
            raise RuntimeError("the registry does not list every node and relay")
        await _until_views_agree(transport, listing.nodes)
        async with open_rpc(transport, opengroup) as client:
            await client.call("list_rooms", {})
        async with open_rpc(transport, fileserver) as client:
            await client.call("get_mappings", {"session_id": "05" + "00" * 32})
    return {
        "ledger": ledger.hex(),
        "registry": registry,
        "fileserver": fileserver,
        "opengroup": opengroup,
        "nodes": [node.to_wire() for node in listing.nodes],
        "relays": [{"pubkey": r.pubkey, "address": r.url} for r in listing.relays],
    }
