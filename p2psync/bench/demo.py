"""``p2psync demo``: a narrated run on the embedded local network.

This first version shows the storage layer (the paired-device scenario of DESIGN.md §8
replaces it as the device and sync layers land): a swarm of service nodes on loopback
sockets, a message stored through one node and read back from every member, a node
crash and its repair, and a summary of what is stored where.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import trio
from rich.console import Console
from rich.table import Table

from ..identity import Identity
from ..network import LocalNetwork, open_local_network, wait_until
from ..swarm.client import open_swarm_client


def run_demo(*, transport: str = "tcp", seed: int = 1, json_path: str | None = None) -> int:
    console = Console()
    started = time.perf_counter()

    def say(text: str) -> None:
        console.print(f"[dim]{time.perf_counter() - started:6.2f}s[/]  {text}")

    async def main() -> dict[str, Any]:
        alice = Identity.from_label(f"demo-{seed}-alice")
        async with open_local_network(6, transport=transport, seed=seed) as network:
            say(f"embedded network up: registry, file server, open group, 6 nodes ({transport})")
            async with open_swarm_client(
                network.transport, network.directory(), network.clock, seed=seed
            ) as swarm:
                nodes = await swarm.swarm_nodes(alice.session_id)
                say(f"alice [cyan]{alice.session_id[:14]}…[/] belongs to a swarm of {len(nodes)}")
                digest, _ = await swarm.store(alice.session_id, 0, b"hello alice")
                say(f"stored one message, id [green]{digest.hex()[:16]}…[/]")
                await _until_replicated(network, alice, digest)
                say("replicated to every member of the swarm")
                for node in nodes:
                    got, _, _ = await swarm.retrieve(alice, 0, None, node)
                    assert [m.data for m in got] == [b"hello alice"]
                say("read back from each member with a signed retrieve")
                victim = network.nodes[0]
                await network.stop_node(victim)
                say(f"node {victim.identity.ed25519_public.hex()[:8]} crashed")
                later, _ = await swarm.store(alice.session_id, 0, b"while it was down")
                await network.start_node(victim)
                restarted = victim.node
                assert restarted is not None
                with trio.fail_after(60):
                    await wait_until(
                        lambda: restarted.store.get(alice.session_id, 0, later) is not None
                    )
                say("it restarted from its SQLite file and repaired what it missed")
                return _summary(network)

    summary = trio.run(main)
    table = Table(title="what is stored where")
    table.add_column("node")
    table.add_column("swarm", justify="right")
    table.add_column("messages", justify="right")
    table.add_column("bytes", justify="right")
    for row in summary["nodes"]:
        table.add_row(
            row["node"][:12], f"{row['swarm']:x}"[:6], str(row["messages"]), str(row["bytes"])
        )
    console.print(table)
    if json_path:
        Path(json_path).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


async def _until_replicated(network: LocalNetwork, owner: Identity, digest: bytes) -> None:
    nodes = network.running_nodes()
    with trio.fail_after(60):
        await wait_until(lambda: all(n.store.get(owner.session_id, 0, digest) for n in nodes))


def _summary(network: LocalNetwork) -> dict[str, Any]:
    rows = []
    for node in network.running_nodes():
        messages, size = node.store.stats()
        rows.append(
            {"node": node.pubkey, "swarm": node.swarm_id or 0, "messages": messages, "bytes": size}
        )
    return {"nodes": rows}
