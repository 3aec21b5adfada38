"""A device folder another process holds (``inbox --wait``, ``run``, a script): what only
reads it still answers, and what would write it is refused naming the holder."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from p2psync.cli import main
from p2psync.device.device import STORE_FILE
from p2psync.device.store import DeviceStore


def _init(data: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["device", "init", "--data", str(data), "--mode", "linked", "--name", "tab"]) == 0
    return capsys.readouterr().out.split()[-1]


def test_whoami_answers_beside_the_process_that_holds_the_device(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "tablet"
    device_id = _init(data, capsys)
    with closing(DeviceStore(data / STORE_FILE)):  # as a running `inbox --wait` holds it
        assert main(["device", "whoami", "--data", str(data), "--json"]) == 0
        me = json.loads(capsys.readouterr().out)
        assert (me["device"], me["name"], me["mode"]) == (device_id, "tab", "linked")
        reader = DeviceStore(data / STORE_FILE, read_only=True)
        with closing(reader), pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.set_meta("name", b"changed")


def test_a_command_refused_a_held_device_names_the_holder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "tablet"
    data.mkdir()
    with closing(DeviceStore(data / STORE_FILE)):  # before the device is made, even
        status = main(["device", "init", "--data", str(data), "--mode", "mapped"])
    assert status == 1
    err = capsys.readouterr().err
    assert f"the device in {data} is in use by process {os.getpid()}" in err


def test_a_device_folder_and_its_files_are_its_owners_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Made by `init`, the folder is 0700 (others could watch its files change as
    messages come); a store file an earlier version left readable by others is made
    0600 when opened (not when `whoami` only reads it); a link left at the store's name
    is not followed, nor a pipe waited on."""
    data = tmp_path / "tablet"
    _init(data, capsys)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    store = data / STORE_FILE
    store.chmod(0o644)
    assert main(["device", "whoami", "--data", str(data)]) == 0
    assert stat.S_IMODE(store.stat().st_mode) == 0o644  # only read
    DeviceStore(store).close()
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    elsewhere = tmp_path / "phone"
    elsewhere.mkdir()
    (elsewhere / STORE_FILE).symlink_to(tmp_path / "planted.sqlite3")
    with pytest.raises(OSError):
        DeviceStore(elsewhere / STORE_FILE).close()
    assert not (tmp_path / "planted.sqlite3").exists()
    piped = tmp_path / "piped"
    piped.mkdir()
    os.mkfifo(piped / STORE_FILE)  # opened, it would wait for a writer for ever
    opening = (
        f"from p2psync.device.store import DeviceStore; DeviceStore({str(piped / STORE_FILE)!r})"
    )
    ran = subprocess.run([sys.executable, "-c", opening], capture_output=True, timeout=30)
    assert ran.returncode == 1 and b"is not a file" in ran.stderr
