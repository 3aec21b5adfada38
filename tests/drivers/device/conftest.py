"""Fixtures of the device driver tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from overlay.endpoint import Endpoint, open_endpoint

#: Each device's sibling-sync endpoint (the last one it opened), by the device's overlay key.
SyncEndpoints = dict[bytes, Endpoint]


@pytest.fixture
def sync_endpoints(monkeypatch: pytest.MonkeyPatch) -> SyncEndpoints:
    """Record the endpoint each device opens for sibling sync: what a relay on its
    paths or an endpoint that knows its intro deals with."""
    opened: SyncEndpoints = {}

    @asynccontextmanager
    async def recording(*args: Any, **kwargs: Any) -> AsyncIterator[Endpoint]:
        async with open_endpoint(*args, **kwargs) as endpoint:
            opened[endpoint.public_key] = endpoint
            yield endpoint

    monkeypatch.setattr("p2psync.device.siblings.open_endpoint", recording)
    return opened
