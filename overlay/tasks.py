"""Nurseries for the background tasks of resource-owning async context managers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


@asynccontextmanager
async def open_task_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery whose tasks are cancelled when the ``async with`` body ends.

    Trio wraps every error leaving a nursery in an ``ExceptionGroup``; a public context
    manager should not, so a group holding a single error is unwrapped to that error.
    """
    try:
        async with trio.open_nursery() as nursery:
            try:
                yield nursery
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
