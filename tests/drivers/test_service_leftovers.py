"""A service of a network of hosts is not started while its uid still has processes:
one of them could trace it before it forbids itself namespaces."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from p2psync.launcher import Service, StartError, run_service
from p2psync.service_users import SERVICE_UID_BASE


async def test_a_service_whose_uid_still_has_processes_is_not_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = []

    def leftovers(uid: int) -> list[int]:
        asked.append(uid)
        return [4242, 4243]

    monkeypatch.setattr("p2psync.launcher.end_every_process_of", leftovers)
    service = Service("node-0", ("node",), tmp_path / "node-0", uid=SERVICE_UID_BASE)
    async with trio.open_nursery() as nursery:
        with pytest.raises(StartError, match=r"node-0: .* could not be ended: 4242 4243"):
            await nursery.start(run_service, service)
    assert asked == [SERVICE_UID_BASE]
    assert not (tmp_path / "node-0.log").exists(), "nothing started"
