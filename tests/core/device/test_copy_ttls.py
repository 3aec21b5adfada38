"""How long each kind of stored copy lives, and the settings that choose it."""

from __future__ import annotations

import pytest

from p2psync.device import DeviceConfig
from p2psync.device.content import PAIRING_WINDOW_MS, copy_ttl_ms
from p2psync.swarm.constants import (
    DEFAULT_TTL_MS,
    MAX_TTL_MS,
    MIN_TTL_MS,
    NAMESPACE_CONTROL,
    NAMESPACE_MESSAGES,
    NAMESPACE_SYNC,
)

HOUR_MS = 3_600_000


def test_only_a_sent_messages_sync_copy_takes_the_sync_copy_ttl() -> None:
    six = 6 * HOUR_MS
    assert copy_ttl_ms("sync_sent", NAMESPACE_SYNC, DEFAULT_TTL_MS, six) == six
    assert copy_ttl_ms("sync_sent", NAMESPACE_SYNC, DEFAULT_TTL_MS) == DEFAULT_TTL_MS
    assert copy_ttl_ms("text", NAMESPACE_MESSAGES, DEFAULT_TTL_MS, six) == DEFAULT_TTL_MS
    assert copy_ttl_ms("sync_contact", NAMESPACE_SYNC, DEFAULT_TTL_MS, six) == DEFAULT_TTL_MS
    assert copy_ttl_ms("sync_linked", NAMESPACE_SYNC, DEFAULT_TTL_MS, six) == MAX_TTL_MS
    assert copy_ttl_ms("sync_secret", NAMESPACE_SYNC, DEFAULT_TTL_MS, six) == MAX_TTL_MS
    assert copy_ttl_ms("pair_grant", NAMESPACE_CONTROL, DEFAULT_TTL_MS, six) == PAIRING_WINDOW_MS


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"sync_copy_ttl_ms": HOUR_MS, "direct_sync": False}, "needs direct_sync"),
        ({"sync_copy_ttl_ms": MIN_TTL_MS - 1}, "sync_copy_ttl_ms must be an int in"),
        ({"sync_copy_ttl_ms": DEFAULT_TTL_MS + 1}, "sync_copy_ttl_ms must be an int in"),
        ({"sync_copy_ttl_ms": 6 * 3.6e6}, "sync_copy_ttl_ms must be an int in"),
        ({"ttl_ms": MAX_TTL_MS + 1}, "ttl_ms must be an int in"),
        ({"ttl_ms": MIN_TTL_MS - 1}, "ttl_ms must be an int in"),
        ({"ttl_ms": float(DEFAULT_TTL_MS)}, "ttl_ms must be an int in"),
    ],
)
def test_copy_ttls_a_swarm_would_refuse_are_refused_at_once(
    settings: dict[str, object], error: str
) -> None:
    """A setting the nodes would answer ``bad_ttl`` to (or that, without direct sync,
    nothing would make good once the copy expired) fails when the device is configured,
    not at every store."""
    with pytest.raises(ValueError, match=error):
        DeviceConfig(**settings)  # type: ignore[arg-type]
    assert DeviceConfig(sync_copy_ttl_ms=MIN_TTL_MS).sync_copy_ttl_ms == MIN_TTL_MS


def test_the_model_and_the_device_runner_refuse_what_devices_refuse() -> None:
    from p2psync.sim.model import ModelConfig
    from p2psync.sim.runner import run_scenario
    from p2psync.sim.scenario import Scenario

    for bad in (-HOUR_MS, 0, DEFAULT_TTL_MS + 1, 6 * 3.6e6):
        with pytest.raises(ValueError, match="sync_copy_ttl_ms must be an int in"):
            ModelConfig(sync_copy_ttl_ms=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="sync_copy_ttl_ms must be an int in"):
            run_scenario(Scenario(users=2, days=1.0), "p2p", sync_copy_ttl_ms=bad)  # type: ignore[arg-type]
