"""One ``network up`` per directory: a second one on a directory in use is refused at
once, before it touches the running network's keys, stores or ``network.json``."""

from __future__ import annotations

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
