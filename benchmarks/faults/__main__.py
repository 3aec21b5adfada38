"""``python -m benchmarks.faults [--nodes N] [--relays M] [--json FILE]``: every fault once, on a
fresh multi-process network, and a table of what each showed.

It stops as the ``p2psync`` commands do: Ctrl-C exits 130 and SIGTERM 143, each with one
line and with every process of the network ended, and ``--json`` is checked before the
run."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from p2psync.cli import exit_status, output_file, run_stoppable
from p2psync.identity import Identity
from p2psync.swarm.client import open_swarm_client

from .. import LAB_MISSING, lab_installed
from .cluster import open_cluster
from .ledger import AckLedger
from .scenarios import FaultReport, node_crash_during_burst, registry_outage, relay_crash

OWNERS = 8


async def run_faults(data_dir: Path, nodes: int, relays: int) -> list[FaultReport]:
    from rich.console import Console

    console = Console(stderr=True)
    ledger = AckLedger([Identity.from_label(f"faults/owner/{i}") for i in range(OWNERS)])
    async with open_cluster(data_dir, nodes=nodes, relays=relays) as cluster:
        console.print(f"network up: {nodes} nodes, {relays} relays in {data_dir}")
        reports = []
        async with open_swarm_client(
            cluster.transport, cluster.directory(), cluster.clock
        ) as swarm:
            for victim in cluster.nodes[:2]:
                reports.append(await node_crash_during_burst(cluster, swarm, ledger, victim))
                console.print(reports[-1].fault, "done")
            reports.append(await registry_outage(cluster, swarm, ledger))
            console.print(reports[-1].fault, "done")
        if relays >= 4:
            reports.append(await relay_crash(cluster))
            console.print(reports[-1].fault, "done")
    return reports


def print_reports(reports: list[FaultReport]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="faults on a multi-process local network")
    for column in ("fault", "acked", "failed", "lost", "down s", "recovery s", "notes"):
        table.add_column(column, justify="left" if column in ("fault", "notes") else "right")
    for r in reports:
        table.add_row(
            r.fault,
            str(r.acknowledged),
            str(r.failed),
            str(r.lost),
            f"{r.down_s:.2f}",
            "never" if r.recovery_s is None else f"{r.recovery_s:.2f}",
            ", ".join(f"{k}={v}" for k, v in r.notes.items()),
        )
    Console().print(table)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__)
    parser.add_argument("--nodes", type=int, default=3, help="service nodes (default: 3)")
    parser.add_argument("--relays", type=int, default=5, help="relays; 4+ for the relay fault")
    parser.add_argument(
        "--json", type=output_file, metavar="FILE", help="also write the reports as JSON"
    )
    args = parser.parse_args()
    if not lab_installed():
        print(LAB_MISSING, file=sys.stderr)
        return 2
    try:
        with tempfile.TemporaryDirectory(prefix="p2psync-faults-") as directory:
            # SIGTERM unwinds it as Ctrl-C does: the network's processes end on the way out.
            reports = run_stoppable(run_faults, Path(directory), args.nodes, args.relays)
        print_reports(reports)
        if args.json:
            Path(args.json).write_text(
                json.dumps([dataclasses.asdict(r) for r in reports], indent=2) + "\n"
            )
    except BaseException as exc:
        return exit_status(exc, parser.prog)
    return 0


if __name__ == "__main__":
    sys.exit(main())
