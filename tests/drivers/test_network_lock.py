"""One ``network up`` per directory: a second one on a directory in use is refused at
once, before it touches the running network's keys, stores or ``network.json``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trio

from p2psync.launcher import NETWORK_LOCK, network_up
from p2psync.network import make_transport
from p2psync.process_lock import InUse, ProcessLock


async def test_a_second_network_on_a_directory_in_use_is_refused_and_touches_nothing(
    tmp_path: Path,
) -> None:
    described = tmp_path / "network.json"
    described.write_text('{"the running network": true}\n')
    with (
        ProcessLock(tmp_path / NETWORK_LOCK),  # as the running `network up` holds it
        pytest.raises(InUse, match=r"a network is already running in .*; one at a time"),
    ):
        await network_up(make_transport("tcp"), tmp_path, 1, 0)
    assert described.read_text() == '{"the running network": true}\n'
    left = sorted(path.name for path in await trio.Path(tmp_path).iterdir())
    assert left == ["network.json", NETWORK_LOCK]


def test_the_lock_is_seen_across_processes_and_freed_when_its_holder_dies(
    tmp_path: Path,
) -> None:
    """Held by another process, the lock is seen and refused, the refusal naming the
    holder; killed with SIGKILL, that process leaves it free. A probe only asks
    (``F_OFD_GETLK``): it never holds the lock for a moment in which a process starting
    just then would be refused."""
    path = tmp_path / "lock"
    assert not ProcessLock.held(path)
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from p2psync.process_lock import ProcessLock;"
            f" lock = ProcessLock({str(path)!r}); print('held', flush=True); sys.stdin.read()",
            *("device", "inbox", "--wait", "600"),  # its command, as a refusal shows it
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
            assert ProcessLock.held(path)
            with pytest.raises(InUse, match=rf"process {holder.pid} \(device inbox\)$"):
                ProcessLock(path)
        finally:
            holder.kill()
            holder.wait()
    assert not ProcessLock.held(path)
    with ProcessLock(path):
        assert ProcessLock.held(path)  # seen from this process too (another open file)
        for _ in range(3):
            assert ProcessLock.held(path)
    assert not ProcessLock.held(path)
    with ProcessLock(path):
        pass
