"""Without the ``lab`` extra (rich, matplotlib), the library works and ``p2psync demo`` and
``p2psync bench ...`` say in one line what to install, exiting 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from benchmarks import LAB_MISSING as LAB_MISSING_HERE
from p2psync.cli import LAB_MISSING

EXPECTED = "p2psync: the demo and benchmarks need the lab extra: pip install -e '.[lab]'"


@pytest.mark.parametrize(
    ("missing", "args"),
    [
        ("rich", ["demo"]),
        ("matplotlib", ["bench", "storage", "--quick"]),
        ("rich", ["bench", "soak", "--minutes", "1"]),
        ("benchmarks", ["bench", "overlay", "--quick"]),
    ],
)
def test_the_lab_commands_name_the_extra_they_need(missing: str, args: list[str]) -> None:
    # A module set to None in sys.modules cannot be imported, as if not installed.
    code = (
        f"import sys; sys.modules[{missing!r}] = None; "
        f"from p2psync.cli import main; sys.exit(main({args!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip() == LAB_MISSING == EXPECTED


def test_the_library_runs_without_the_lab() -> None:
    code = (
        "import sys\n"
        "for name in ('rich', 'matplotlib', 'benchmarks'): sys.modules[name] = None\n"
        "import p2psync\n"
        "from p2psync.cli import main\n"
        "sys.exit(main(['device', '--help']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("missing", ["rich", "matplotlib"])
def test_the_labs_own_entry_points_name_the_extra_they_need(missing: str) -> None:
    """``python -m benchmarks.faults`` ended in a traceback (no module named rich); and
    the package itself imports without the extra, as the tests of its rich-free modules
    need (a check at import ended a whole pytest run)."""
    hidden = f"import runpy, sys; sys.modules[{missing!r}] = None; "
    imported = subprocess.run(
        [sys.executable, "-c", hidden + "import benchmarks.link_tap"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert imported.returncode == 0, imported.stderr
    run = "sys.argv = ['faults']; runpy.run_module('benchmarks.faults', run_name='__main__')"
    result = subprocess.run(
        [sys.executable, "-c", hidden + run], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == LAB_MISSING_HERE
