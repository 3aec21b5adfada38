"""``p2psync demo`` runs the whole paired-device story and exits 0."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["mapped", "linked"])
def test_the_demo_tells_the_whole_story(tmp_path: Path, mode: str) -> None:
    summary = tmp_path / "demo.json"
    result = subprocess.run(
        [sys.executable, "-m", "p2psync", "demo", "--mode", mode, "--json", str(summary)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    for step in ("Pairing", "Friends", "Live", "Offline", "Away past the TTL", "Public chat"):
        assert step in result.stdout
    figures = json.loads(summary.read_text())
    assert figures["mode"] == mode
    assert figures["identical_histories"] is True
    assert len(figures["public_chat_users"]) == 1
    assert [d["messages"] for d in figures["devices"]] == [5, 5, 5]
