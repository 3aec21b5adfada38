"""The ports ``network up`` keeps for the next run on a folder: a preference read from a
file of root's own folder, never a reason to fail, and a service's ready line checked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p2psync.launcher import StartError, port_of, read_ports


def test_kept_ports_are_read_as_written_and_anything_else_is_no_preference(
    tmp_path: Path,
) -> None:
    kept = tmp_path / "ports.json"
    kept.write_text('{"registry": 4100, "node-0": true, "node-1": 70000, "node-2": "9"}')
    assert read_ports(kept) == {"registry": 4100}
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 20_000 + "]" * 20_000)
    os.symlink(kept, tmp_path / "link.json")
    (tmp_path / "folder.json").mkdir()
    for hostile in ("missing.json", "nested.json", "link.json", "folder.json"):
        assert read_ports(tmp_path / hostile) == {}


def test_a_ready_line_naming_no_port_fails_the_start() -> None:
    assert port_of("wss://127.0.0.1:4100/" + "ab" * 32) == 4100
    assert port_of("10.77.0.3:9000#" + "ab" * 32) == 9000
    for url in ("garbage", "ws://h:-1", "ws://h:0", "ws://h:65536"):
        with pytest.raises(StartError, match="names no port"):
            port_of(url)
