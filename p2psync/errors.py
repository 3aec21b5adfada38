"""Exceptions, kept in two families as h11 does.

``DecodeError`` means *the peer sent garbage*: the frame is refused, the connection may go
on. ``RpcError`` is a refusal with a stable code that crosses the wire. Misuse of the API by
local code raises ordinary ``TypeError``/``ValueError``/``RuntimeError`` instead.
"""

from __future__ import annotations

from typing import Any


class P2PSyncError(Exception):
    """Base of every error this library raises on purpose."""


class DecodeError(P2PSyncError, ValueError):
    """Bytes from outside did not decode into a valid message."""


#: The stable error codes of DESIGN.md §4, plus the file server's and open groups'.
ERROR_CODES = frozenset(
    {
        "bad_request",
        "wrong_swarm",
        "unauthorized",
        "too_large",
        "bad_ttl",
        "clock_skew",
        "rate_limited",
        "unavailable",
        "not_found",
        "conflict",
        "internal",
    }
)


class RpcError(P2PSyncError):
    """A request refused with a stable ``code``; ``data`` carries extra result fields
    (``wrong_swarm`` names the right swarm's nodes there)."""

    def __init__(self, code: str, message: str, data: dict[str, Any] | None = None) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data or {}

    @classmethod
    def received(cls, code: str, message: str, data: dict[str, Any]) -> RpcError:
        """A refusal another party sent: a code this version does not know reads as
        ``internal``."""
        return cls(code if code in ERROR_CODES else "internal", message, data)


class ConnectionLost(P2PSyncError):
    """The connection to a server closed before the reply arrived."""
