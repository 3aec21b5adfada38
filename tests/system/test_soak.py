"""``p2psync bench soak``: its bounded-memory pieces, its command line, and one short run
on real processes (no faults: those are :mod:`tests.test_faults`'s job)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from benchmarks.faults import AckLedger, LatencySample
from benchmarks.faults.load import Tickets
from benchmarks.soak import run_soak
from p2psync.identity import Identity

from .service_logs import log_tails


def test_latency_sample_keeps_its_bound_and_its_quantiles() -> None:
    sample = LatencySample(capacity=1_000)
    for i in range(100_000):
        sample.add((i % 1_000) / 1_000)
    assert sample.count == 100_000
    assert len(sample) == 1_000
    p50, p99 = sample.quantile_ms(0.5), sample.quantile_ms(0.99)
    assert p50 is not None and 400 <= p50 <= 600
    assert p99 is not None and p99 >= 950
    assert LatencySample().quantile_ms(0.5) is None


def test_tickets_end_a_bounded_burst() -> None:
    tickets = Tickets(2)
    assert [tickets.take() for _ in range(3)] == [True, True, False]
    assert all(Tickets(None).take() for _ in range(10))


async def test_ledger_wakes_waiters_by_progress_and_counts_each_hash_once() -> None:
    owner = Identity.from_label("soak-test/owner")
    ledger = AckLedger([owner])
    woke: list[int] = []

    async def wait(count: int) -> None:
        await ledger.reached(count)
        woke.append(count)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait, 2)
        nursery.start_soon(wait, 3)
        await trio.testing.wait_all_tasks_blocked()
        ledger.record(owner, b"a" * 32)
        ledger.record(owner, b"a" * 32)
        ledger.record(owner, b"b" * 32)
        await trio.testing.wait_all_tasks_blocked()
        assert woke == [2]
        ledger.record(owner, b"c" * 32)
    assert woke == [2, 3] and ledger.count == 3


@pytest.mark.parametrize("minutes", ["0", "-1", "soon"])
def test_bad_minutes_exit_non_zero_with_one_line(minutes: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "p2psync", "bench", "soak", "--minutes", minutes],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "error" in result.stderr.strip().splitlines()[-1]


def _why_not_converged(figures: dict[str, Any], data_dir: Path) -> str:
    """The members the audit could not read, and the end of every service's log."""
    return f"{figures['unreachable_reasons']!r}\n{log_tails(data_dir)}"


def test_a_short_soak_reports_what_it_held_and_lost_nothing(tmp_path: Path) -> None:
    figures = run_soak(
        minutes=0.05, nodes=2, clients=1, data_dir=tmp_path, json_path=str(tmp_path / "s.json")
    )
    assert figures["stores"] > 0 and figures["retrieves"] > 0
    assert figures["acknowledged"] == figures["stores"]
    assert figures["lost"] == 0, _why_not_converged(figures, tmp_path)
    assert figures["converged"], _why_not_converged(figures, tmp_path)
    assert all(kib > 0 for kib in figures["peak_rss_kib"].values())
    assert (tmp_path / "s.json").exists()
