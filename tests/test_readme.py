"""The README's library example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_library_example_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"## Library\n\n```python\n(.*?)```", readme, re.S)
    assert example is not None, "the README has no library example"
    result = subprocess.run(
        [sys.executable, "-c", example.group(1)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "'hello Bob' from 05" in result.stdout
