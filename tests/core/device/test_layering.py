"""The device's cores stay sans-I/O, by the architecture test's own check (its list is
another engineer's file; these are the modules this package adds to it)."""

from __future__ import annotations

import pytest

from tests.core.test_architecture import test_protocol_cores_are_sans_io as check_sans_io

DEVICE_CORES = [
    "p2psync/device/friends.py",
    "p2psync/device/pairing.py",
    "p2psync/device/modes.py",
    "p2psync/device/inbound.py",
]


@pytest.mark.parametrize("module", DEVICE_CORES)
def test_the_device_cores_are_sans_io(module: str) -> None:
    check_sans_io(module)
