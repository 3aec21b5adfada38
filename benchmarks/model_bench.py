"""``p2psync bench storage --scale`` and ``--trace``: the trace-level storage model
(:mod:`p2psync.sim.model`) at scale, with progress bars and a table; meanwhile, in a
worker process, every strategy runs on real devices on a small seeded trace, and the
model's error there is printed and reported beside each figure."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from p2psync.sim.model import (
    FIGURES,
    STRATEGIES,
    TOLERANCE,
    VALIDATED,
    VALIDATION,
    ModelConfig,
    run_model,
    validate_model,
)
from p2psync.sim.runner import run_scenario
from p2psync.sim.scenario import Scenario, build_trace, load_trace

Measured = dict[str, dict[str, Any] | str]
#: How often the wait for the validation run looks for a stop noted meanwhile.
STOP_CHECK_S = 0.2


def measure_strategies(scenario: Scenario, sync_copy_ttl_ms: int | None = None) -> Measured:
    """Every strategy on ``scenario`` on real devices (in a worker process): its figures,
    or why the run gave none (one failing leaves the others to validate against).
    ``sync_copy_ttl_ms``: p2p's (None: the TTL)."""
    measured: Measured = {}
    for name in STRATEGIES:
        ttl = sync_copy_ttl_ms if name == "p2p" else None
        try:
            measured[name] = run_scenario(scenario, name, sync_copy_ttl_ms=ttl)
        except Exception as exc:  # reported beside the figures it leaves unvalidated
            measured[name] = f"{type(exc).__name__}: {exc}"
    return measured


def _send_measured(
    measure: Callable[[Scenario, int | None], Measured],
    scenario: Scenario,
    sync_copy_ttl_ms: int | None,
    results: Connection,
) -> None:
    """The validation worker process: ``measure(scenario, sync_copy_ttl_ms)``, sent on
    ``results``."""
    results.send(measure(scenario, sync_copy_ttl_ms))


def run_model_bench(
    users: int = 10_000,
    days: float = 30.0,
    rate: float = 20.0,
    profile: str = "office",
    seed: int = 1,
    json_path: str | None = None,
    trace_path: str | None = None,
    *,
    validation: Scenario | None = VALIDATION,
    sync_copy_ttl_ms: int | None = None,
) -> dict[str, Any]:
    """``p2psync bench storage --scale``: the model on ``users`` users for ``days`` days
    at ``rate`` messages per user per day under churn ``profile`` (or on the trace in
    ``trace_path``), with progress bars and a table; meanwhile, on the other core, every
    strategy runs on real devices on ``validation`` (same profile and seed; ``None``:
    skip), and the model's error there is printed and reported beside each figure.
    Returns (and writes to ``json_path``) the §9 JSON, each figure with ``"source":
    "model"`` and its ``"validation_error"``. ``sync_copy_ttl_ms``: how long p2p's sync
    copies live, in the model and on the devices (None: the TTL)."""
    import json
    import multiprocessing

    from rich.console import Console
    from rich.progress import Progress, TaskID

    from benchmarks.workers import owned_workers

    console = Console(stderr=True)
    scenario = None if trace_path else Scenario(users, days, rate, seed=seed, profile=profile)
    check = None if validation is None else replace(validation, profile=profile, seed=seed)
    validation_report: dict[str, Any] | None = None
    context = multiprocessing.get_context("spawn")
    receiving, sending = context.Pipe(duplex=False)
    measuring = (measure_strategies, check, sync_copy_ttl_ms, sending)
    workers = [] if check is None else [context.Process(target=_send_measured, args=measuring)]
    # A process of our own, not a pool: Ctrl-C and SIGTERM end it at once (a pool's exit
    # waited for its work, over a minute, and SIGTERM left its processes running). Started
    # before the progress bars' thread (see owned_workers); a bad trace file ends it.
    with owned_workers(workers) as stops, Progress(console=console, transient=True) as progress:
        sending.close()  # the worker's end: when the worker dies, recv() says so
        began = time.monotonic()
        if scenario is None:
            assert trace_path is not None
            progress.add_task(f"reading {trace_path}", total=None)
            trace = load_trace(trace_path)

        def checked_progress(task: TaskID) -> Callable[[float], None]:
            def progressed(fraction: float) -> None:
                stops.check()
                progress.update(task, completed=fraction)

            return progressed

        if scenario is not None:
            task = progress.add_task("generating the trace", total=1.0)
            trace = build_trace(scenario, on_progress=checked_progress(task))
        generated = time.monotonic()
        task = progress.add_task(f"modelling {len(trace.sends)} sends", total=1.0)
        config = ModelConfig(sync_copy_ttl_ms=sync_copy_ttl_ms)
        result = run_model(trace, config=config, on_progress=checked_progress(task))
        modelled = time.monotonic()
        if check is not None:
            progress.add_task(f"validating on devices ({check.users} users)", total=None)
            validation_report = {"scenario": check.to_json()}
            while not receiving.poll(STOP_CHECK_S):
                stops.check()
            try:
                measured = receiving.recv()
            except EOFError:  # the model's figures stand, unvalidated
                measured = dict.fromkeys(STRATEGIES, "the validation worker died")
            runs = {name: r for name, r in measured.items() if not isinstance(r, str)}
            validation_report["messages"] = len(build_trace(check).sends)
            validation_report["strategies"] = (
                validate_model(check, runs, config=config) if runs else {}
            )
            validation_report["failed"] = {
                name: r for name, r in measured.items() if isinstance(r, str)
            }
    report = {
        "strategies": {
            name: {
                **{key: figures[key] for key in FIGURES},
                "validation_error": (validation_report or {}).get("strategies", {}).get(name),
            }
            for name, figures in result["strategies"].items()
        },
        "floor_sync_copies_per_message": result["floor_sync_copies_per_message"],
        "floor_byte_hours": result["floor_byte_hours"],
        "scenario": {
            **(scenario.to_json() if scenario is not None else {"trace": trace_path}),
            "messages": len(trace.sends),
            "devices": 2 * trace.users,
            "sync_copy_ttl_ms": config.sync_ttl_ms,
        },
        "validation": validation_report,
    }
    report["seconds"] = {
        "trace": round(generated - began, 1),
        "model": round(modelled - generated, 1),
    }
    _print(report, console)
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _print(report: dict[str, Any], console: Any) -> None:
    """The figures as a table, each with the model's error on the validation trace."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    scenario = report["scenario"]
    validation = report["validation"]
    table = Table(
        title=f"storage per strategy, modelled ({scenario['messages']} messages, "
        f"{scenario['devices']} devices)",
        caption="source: model (trace-level, no devices); ±: its error in copies, byte·h "
        "and peak against real devices on the validation trace",
        box=box.SIMPLE_HEAD,
    )
    for column in ("strategy", "copies", "ns 1", "stored", "peak", "lost", "complete", "±"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for name, r in report["strategies"].items():
        error = r["validation_error"]
        table.add_row(
            name,
            f"{r['copies_per_message']:.2f}",
            f"{r['sync_copies_per_message']:.2f}",
            _scaled(r["byte_hours"], "B·h"),
            _scaled(r["peak_bytes"], "B"),
            str(r["lost"]),
            f"{r['completeness']:.3f}",
            "/".join(f"{100 * error[key]:+.1f}" for key in VALIDATED) + " %" if error else "–",
        )
    Console().print(table)
    console.print(
        f"p2p sync-copy floor on this trace: {report['floor_sync_copies_per_message']:.3f} "
        f"per message; byte·hours floor (the least DESIGN.md §7 lets any design hold, "
        f"sync copies living {report['scenario']['sync_copy_ttl_ms'] / 3.6e6:g} h) "
        f"{_scaled(report['floor_byte_hours'], 'B·h')}; "
        f"trace {report['seconds']['trace']:.0f} s, model "
        f"{report['seconds']['model']:.0f} s"
    )
    if validation is None:
        console.print("not validated (no validation trace asked for)")
        return
    for name, reason in validation["failed"].items():
        console.print(f"{name} not validated: the device run failed: {reason}")
    if validation["strategies"]:
        worst = max(abs(e) for errors in validation["strategies"].values() for e in errors.values())
        console.print(
            f"validated on {validation['scenario']['users']} users × "
            f"{validation['scenario']['days']:g} days on devices "
            f"({validation['messages']} messages): worst error {worst:.1%} "
            f"(tolerance {TOLERANCE:.0%})"
        )


def _scaled(value: float, unit: str) -> str:
    """``value`` with an SI prefix: 231 GB·h rather than 231429200388.0."""
    for prefix in ("", "k", "M", "G", "T"):
        if abs(value) < 1000 or prefix == "T":
            break
        value /= 1000
    return f"{value:.3g} {prefix}{unit}"
