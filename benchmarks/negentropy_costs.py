"""What Negentropy reconciliation costs on the wire: bytes and round trips for a device that is
in sync, or missing d items in one run (a gap) or scattered, against a sibling holding N items.

    python benchmarks/negentropy_costs.py [--n 100000] [--seed 0] [--frame-size-limit 0] [--json F]

``measure_costs(n, seed)`` returns the same figures as a dict, for ``p2psync bench``.
Goals (DESIGN): in-sync check in <= 1 round trip and <= 400 B; <= 40 B per missing item
beyond the message bodies (Negentropy moves ids only, so every byte counted here is overhead).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from typing import Any

from p2psync.sync.negentropy import ID_SIZE, Negentropy, StorageVector

MISSING_COUNTS = (1, 10, 100, 1000)
IN_SYNC_GOAL_BYTES = 400
PER_MISSING_GOAL_BYTES = 40


def _history(n: int, rng: random.Random) -> list[tuple[int, bytes]]:
    """Message-like items: millisecond timestamps a second to a minute apart, random ids."""
    items = []
    timestamp_ms = 1_700_000_000_000
    for _ in range(n):
        timestamp_ms += rng.randint(1_000, 60_000)
        items.append((timestamp_ms, rng.randbytes(ID_SIZE)))
    return items


def _storage(items: list[tuple[int, bytes]]) -> StorageVector:
    storage = StorageVector()
    for timestamp, id in items:
        storage.insert(timestamp, id)
    storage.seal()
    return storage


def _reconcile(ours: StorageVector, theirs: StorageVector, frame_size_limit: int) -> dict[str, Any]:
    initiator = Negentropy(ours, frame_size_limit)
    responder = Negentropy(theirs, frame_size_limit)
    started = time.perf_counter()
    sent = received = round_trips = 0
    need: list[bytes] = []
    msg: bytes | None = initiator.initiate()
    while msg is not None:
        reply = responder.respond(msg)
        sent += len(msg)
        received += len(reply)
        round_trips += 1
        msg, _, step_need = initiator.process_reply(reply)
        need += step_need
    return {
        "round_trips": round_trips,
        "bytes_sent": sent,
        "bytes_received": received,
        "bytes": sent + received,
        "found": len(need),
        "seconds": time.perf_counter() - started,
    }


def measure_costs(n: int = 100_000, seed: int = 0, frame_size_limit: int = 0) -> dict[str, Any]:
    """Reconcile a device (the initiator) against a sibling holding ``n`` items.

    Cases: ``in-sync``; ``gap`` (d consecutive items missing from the middle) and
    ``scattered`` (d random items missing) for d in 1, 10, 100, 1000. Each case reports
    round trips, bytes each way and in total, and bytes per missing item (all of it, and
    beyond the 32-byte id that has to travel anyway).
    """
    rng = random.Random(seed)
    items = _history(n, rng)
    sibling = _storage(items)
    cases: list[dict[str, Any]] = []

    def run(name: str, missing: set[int]) -> None:
        device = (
            sibling
            if not missing
            else _storage([item for i, item in enumerate(items) if i not in missing])
        )
        result = _reconcile(device, sibling, frame_size_limit)
        if result["found"] != len(missing):
            raise AssertionError(f"{name}: found {result['found']} of {len(missing)} missing")
        d = len(missing)
        result.update(
            case=name,
            missing=d,
            bytes_per_missing=result["bytes"] / d if d else None,
            bytes_per_missing_beyond_id=(result["bytes"] - ID_SIZE * d) / d if d else None,
        )
        cases.append(result)

    run("in-sync", set())
    for d in MISSING_COUNTS:
        if d <= n:
            start = (n - d) // 2
            run("gap", set(range(start, start + d)))
    for d in MISSING_COUNTS:
        if d <= n:
            run("scattered", set(rng.sample(range(n), d)))
    in_sync = cases[0]
    return {
        "n": n,
        "seed": seed,
        "frame_size_limit": frame_size_limit,
        "cases": cases,
        "goals": {
            "in_sync_round_trips_ok": in_sync["round_trips"] <= 1,
            "in_sync_bytes_ok": in_sync["bytes"] <= IN_SYNC_GOAL_BYTES,
            "per_missing_bytes_ok": all(
                c["bytes_per_missing"] <= PER_MISSING_GOAL_BYTES for c in cases if c["missing"]
            ),
        },
    }


def format_table(report: dict[str, Any]) -> str:
    limit = report["frame_size_limit"] or "unlimited"
    lines = [
        f"Negentropy V1 costs: N={report['n']} items, seed {report['seed']}, frame limit {limit}",
        f"{'case':<10} {'missing':>7} {'RTs':>4} {'sent B':>9} {'recv B':>9} {'total B':>9}"
        f" {'B/missing':>10} {'B/miss-id':>10} {'time s':>7}",
    ]
    for c in report["cases"]:
        per = f"{c['bytes_per_missing']:.1f}" if c["missing"] else "-"
        beyond = f"{c['bytes_per_missing_beyond_id']:.1f}" if c["missing"] else "-"
        lines.append(
            f"{c['case']:<10} {c['missing']:>7} {c['round_trips']:>4} {c['bytes_sent']:>9}"
            f" {c['bytes_received']:>9} {c['bytes']:>9} {per:>10} {beyond:>10}"
            f" {c['seconds']:>7.2f}"
        )
    goals = report["goals"]
    lines.append(
        f"goals: in-sync <= 1 RT {'ok' if goals['in_sync_round_trips_ok'] else 'MISSED'}, "
        f"in-sync <= {IN_SYNC_GOAL_BYTES} B {'ok' if goals['in_sync_bytes_ok'] else 'MISSED'}, "
        f"<= {PER_MISSING_GOAL_BYTES} B/missing "
        f"{'ok' if goals['per_missing_bytes_ok'] else 'MISSED'}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="items the sibling holds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frame-size-limit", type=int, default=0, help="0 = unlimited")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    report = measure_costs(args.n, args.seed, args.frame_size_limit)
    print(format_table(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
