"""What the file server refuses of a mapping or a revocation, decided without I/O.

Signatures are checked before (:meth:`~p2psync.mapping.DeviceMapping.verify`); these are
the rules signatures cannot decide: freshness, revocation, one primary per secondary, no
chains, and the per-primary limit. Each refusal is an :class:`RpcError` with a stable
code (see :mod:`p2psync.fileserver`), checked in the order below, so a request that
breaks several rules is always refused for the same one.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import RpcError
from ..mapping import PAIRING_WINDOW_MS
from ..swarm.constants import CLOCK_SKEW_MS

#: v1.5.0 allowed one secondary per primary; we allow a few, configurable per server.
DEFAULT_MAX_SECONDARIES = 4
#: The most secondaries any answer may list (bounds what a client accepts).
MAX_LISTED_SECONDARIES = 64
MAX_LISTED_REVOCATIONS = 256
SESSION_ID_CHARS = 66


@dataclass(frozen=True, slots=True)
class PairingRow:
    """What the server knows of one (primary, secondary) pair."""

    primary: str
    secondary: str
    timestamp_ms: int
    record: bytes
    active: bool
    revoked_at_ms: int | None


@dataclass(frozen=True, slots=True)
class PairFacts:
    """What the server holds that a new mapping of (primary, secondary) must agree with."""

    #: The pair's own row, if the pair was ever mapped.
    existing: PairingRow | None
    #: The primary the secondary is actively mapped to now, if any.
    secondary_owner: str | None
    #: Whether the secondary is itself the primary of active secondaries.
    secondary_is_primary: bool
    #: Whether the primary is itself an active secondary of another device.
    primary_is_secondary: bool
    #: The primary's active secondaries other than this one.
    other_secondaries: int


def check_skew(timestamp_ms: int, now_ms: int, what: str, *, past_ms: int = CLOCK_SKEW_MS) -> None:
    if not now_ms - past_ms <= timestamp_ms <= now_ms + CLOCK_SKEW_MS:
        raise RpcError(
            "clock_skew", f"{what} timestamp is {timestamp_ms - now_ms:+d} ms from the server clock"
        )


def check_max_secondaries(max_secondaries: int) -> None:
    if not 1 <= max_secondaries <= MAX_LISTED_SECONDARIES:
        raise ValueError(f"max_secondaries must be in [1, {MAX_LISTED_SECONDARIES}]")


def stores_mapping(
    record: bytes,
    primary: str,
    timestamp_ms: int,
    facts: PairFacts,
    *,
    max_secondaries: int,
    now_ms: int,
) -> bool:
    """Whether a verified mapping (its ``record``, signed at ``timestamp_ms``) is stored:
    False for the one stored and active already (putting it again succeeds whatever its
    age, so a device can re-publish its pairing without re-pairing), True for one to
    store, else the refusal. A mapping is signed when the secondary asked, and the user
    may take minutes to compare codes: it may be :data:`PAIRING_WINDOW_MS` old."""
    existing = facts.existing
    if existing is not None and existing.active and existing.record == record:
        return False
    check_skew(timestamp_ms, now_ms, "mapping", past_ms=PAIRING_WINDOW_MS)
    if existing is not None:
        if existing.revoked_at_ms is not None and timestamp_ms <= existing.revoked_at_ms:
            raise RpcError("unauthorized", "this pairing was revoked after it was signed")
        if timestamp_ms <= existing.timestamp_ms:
            raise RpcError("conflict", "a newer mapping of this pair is stored")
    if facts.secondary_owner is not None and facts.secondary_owner != primary:
        raise RpcError("conflict", "the secondary already belongs to another primary")
    if facts.secondary_is_primary:
        raise RpcError("conflict", "the secondary is itself a primary of other devices")
    if facts.primary_is_secondary:
        raise RpcError("conflict", "the primary is itself a secondary of another device")
    if facts.other_secondaries >= max_secondaries:
        raise RpcError(
            "conflict",
            f"the primary already has {facts.other_secondaries} secondaries (the limit)",
        )
    return True


def applies_revocation(timestamp_ms: int, existing: PairingRow | None, now_ms: int) -> bool:
    """Whether a verified revocation signed at ``timestamp_ms`` is applied to the pair's
    row: False for one no newer than the revocation already there (idempotent), True to
    apply, else the refusal (none is applied to a pairing renewed after it)."""
    check_skew(timestamp_ms, now_ms, "revocation")
    if existing is None:
        raise RpcError("not_found", "no such pairing")
    if existing.revoked_at_ms is not None and timestamp_ms <= existing.revoked_at_ms:
        return False
    if existing.timestamp_ms > timestamp_ms:
        raise RpcError("conflict", "the pairing was renewed after this revocation")
    return True
