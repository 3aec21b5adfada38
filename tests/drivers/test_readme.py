"""The README's library example runs as written."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path
from typing import get_type_hints

from p2psync.device import Device

ROOT = Path(__file__).resolve().parents[2]


def test_readme_library_example_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"## Library\n\n```python\n(.*?)```", readme, re.S)
    assert example is not None, "the README has no library example"
    result = subprocess.run(
        [sys.executable, "-c", example.group(1)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "'hello Bob' from 05" in result.stdout


def test_ci_runs_exactly_the_readme_test_command() -> None:
    """``.ci/run`` runs the README's install-and-test line as written, and that line
    installs the ``lab`` extra the demo and benchmark tests import."""
    setup = re.search(r"## Set up\n\n```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert setup is not None, "the README has no set-up commands"
    lines = setup.group(1).splitlines()
    test_line = lines[lines.index("# install and run the tests") + 1]
    assert "'.[lab,dev]'" in test_line
    assert "-m pytest tests/core tests/drivers &&" in test_line
    assert test_line.endswith("-m pytest tests/system")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci[-1] == test_line


def test_every_file_the_readme_links_to_is_in_the_repository() -> None:
    """The README is self-contained: what it cites ships with it (no ``../`` outside)."""
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)\)", readme)
    local = [t for t in targets if not re.match(r"[a-z]+://", t)]
    assert local, "the README links to no file of its own"
    for target in local:
        path = (ROOT / target).resolve()
        assert path.is_relative_to(ROOT.resolve()), f"{target} is outside the repository"
        assert path.exists(), f"{target} does not exist"


def test_the_readme_lists_every_public_name_of_device_and_marks_its_coroutines() -> None:
    """The Library section names each public name of ``Device`` in backticks, and those
    of its groups (``friends``, ``pairing``, ``rooms``) as ``group.name``, and writes
    *await* before exactly the coroutines (so a reader knows which calls to await)."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("What a `Device` offers") : readme.index("Other entry points")]
    groups = {n: t for n, t in get_type_hints(Device).items() if not n.startswith("_")}
    assert set(groups) == {"friends", "pairing", "rooms"}
    names = {n: getattr(Device, n) for n in dir(Device) if not n.startswith("_")}
    for group, kind in groups.items():
        names[group] = kind
        names |= {f"{group}.{n}": getattr(kind, n) for n in dir(kind) if not n.startswith("_")}
    assert len({n for n in names if "." not in n}) == 21, "Device's own surface changed"
    mentioned = set(re.findall(r"`([\w.]+)", section))
    assert set(names) <= mentioned, f"not in the README: {sorted(set(names) - mentioned)}"
    awaited = set(re.findall(r"\*await\*\s+`([\w.]+)", section))
    assert awaited == {n for n, value in names.items() if inspect.iscoroutinefunction(value)}
