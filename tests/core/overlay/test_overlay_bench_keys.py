"""The overlay's protocol cores stay sans-I/O, and the benchmark reports the §9 keys."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SANS_IO = [
    "cells",
    "onion",
    "path",
    "payloads",
    "session",
    "dht",
    "introset",
    "contact",
    "keys",
    "endpoint_core",
]


@pytest.mark.parametrize("module", SANS_IO)
def test_overlay_cores_do_not_import_io(module: str) -> None:
    tree = ast.parse((ROOT / "overlay" / f"{module}.py").read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            assert node.module not in {"link", "endpoint", "relay", "clock", "tasks"}
    assert not imported & {"trio", "socket", "asyncio", "selectors", "p2psync"}


def test_overlay_bench_reports_the_design_keys() -> None:
    from benchmarks.overlay_bench import run_overlay_bench

    figures = run_overlay_bench(quick=True, rounds=256, builds=3)
    assert set(figures) == {
        "hops",
        "messages_per_s",
        "cpu_us_per_message",
        "floor_cpu_us_per_message",
        "ratio",
        "rtt_p50_ms",
        "rtt_p99_ms",
        "path_build_ms_p50",
    }
    assert figures["hops"] == 3 and figures["ratio"] > 0
