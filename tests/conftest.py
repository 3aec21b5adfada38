"""Shared fixtures. Clock fixtures are plain ``def`` as pytest-trio requires."""

from __future__ import annotations

import pytest
import trio
import trio.testing


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    """Virtual time that jumps whenever every task is blocked: days pass in milliseconds."""
    return trio.testing.MockClock(autojump_threshold=0)
