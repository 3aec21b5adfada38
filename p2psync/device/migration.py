"""Moving a ``mapped`` account to ``linked`` mode, decided without I/O (docs/migration.md).

A ``mapped`` account is a primary whose key is the user's and secondaries with keys of
their own, vouched for by countersigned mappings on the file server; a ``linked`` account
is one key that every device holds. The move keeps the primary's key as the account's
and retires the secondaries' keys:

* the primary signs a :class:`LinkedStatement`: "account A is linked from ``ts`` on; these
  device keys are retired", carrying its signed :class:`~p2psync.mapping.Revocation` of
  each secondary, so friends keep those as they keep any revocation (applied to every
  later file server answer) and a file server cannot bring the old keys back for them;
* the file server gets the same revocations, so strangers asking about A see one device;
* each secondary gets the account seed with the statement (``sync_linked``), signed by
  the account key and sealed to the secondary's own key, in the secondary's own swarm:
  the channel the primary already sends it sync records on, never readable by anyone else;
* each friend gets the statement (``account_linked``) and stops fanning out to the old keys.

Histories and contacts stay where they are (every device keeps its store); what one
device holds and another lacks is merged as always, by sync copies and re-sync.

:func:`migration_refusal` says in one line why a device may not start the move, and
:func:`plan_migration` turns the primary's state into typed effects for the driver
(:mod:`.migrator`). What a device does with an arriving statement or hand-over is the
inbound core's (:mod:`.inbound`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from ..envelope import MAX_TIMESTAMP_MS
from ..errors import DecodeError
from ..identity import (
    KEY_BYTES,
    SIGNATURE_BYTES,
    Identity,
    ed25519_matches_session_id,
    session_id_key,
    verify,
)
from ..mapping import MAX_RECORD_BYTES, AuthorisationError, Revocation, revoke_pairing
from ..swarm.constants import CLOCK_SKEW_MS, MAX_TTL_MS
from ..wire import Fields, decode_cbor, encode_cbor
from .modes import Mode

STATEMENT_VERSION = 1
STATEMENT_DOMAIN = b"p2psync-account-linked/1:"
#: The most device keys one statement retires (a primary has at most a few secondaries;
#: the file server lists at most 64, but no honest account has more than this).
MAX_RETIRED = 16
#: A statement is its fixed fields (about 250 bytes) and one revocation per retired key.
MAX_STATEMENT_BYTES = 512 + MAX_RETIRED * MAX_RECORD_BYTES
_SESSION_ID_CHARS = 66


@dataclass(frozen=True, slots=True)
class LinkedStatement:
    """The account's word that it is ``linked`` from ``timestamp_ms`` on, and that the
    device keys in ``retired`` (each with the account's signed revocation) no longer
    stand for it.

    Wire format (canonical CBOR, signed under :data:`STATEMENT_DOMAIN` without ``sig``)::

        {"v": 1, "account": sid, "account_key": key32, "ts": uint,
         "retired": [revocation bytes, at most 16], "sig": sig64}
    """

    account: str
    account_key: bytes
    timestamp_ms: int
    retired: tuple[Revocation, ...]
    sig: bytes

    @property
    def retired_devices(self) -> tuple[str, ...]:
        return tuple(r.secondary for r in self.retired)

    def _signed_fields(self) -> dict[str, Any]:
        return {
            "v": STATEMENT_VERSION,
            "account": self.account,
            "account_key": self.account_key,
            "ts": self.timestamp_ms,
            "retired": [r.to_bytes() for r in self.retired],
        }

    def signed_bytes(self) -> bytes:
        return STATEMENT_DOMAIN + encode_cbor(self._signed_fields())

    def to_bytes(self) -> bytes:
        return encode_cbor({**self._signed_fields(), "sig": self.sig})

    @classmethod
    def from_bytes(cls, data: bytes) -> LinkedStatement:
        """Strict structural decode, every size and integer bounded; call :meth:`verify`
        before trusting it."""
        fields = Fields(decode_cbor(data, max_bytes=MAX_STATEMENT_BYTES), "linked statement")
        fields.only("v", "account", "account_key", "ts", "retired", "sig")
        version = fields.uint("v")
        if version != STATEMENT_VERSION:
            raise DecodeError(f"unsupported linked statement version {version}")
        account = fields.text("account", max_len=_SESSION_ID_CHARS)
        session_id_key(account)
        retired = []
        for record in fields.items("retired", max_len=MAX_RETIRED):
            if not isinstance(record, bytes):
                raise DecodeError("linked statement.retired must hold revocations as bytes")
            retired.append(Revocation.from_bytes(record))
        return cls(
            account,
            fields.blob("account_key", size=KEY_BYTES),
            fields.uint("ts", maximum=MAX_TIMESTAMP_MS),
            tuple(retired),
            fields.blob("sig", size=SIGNATURE_BYTES),
        )

    def verify(self) -> None:
        """Raise :class:`AuthorisationError` unless the account's own key signed this and
        every revocation in it: each retires a distinct key other than the account's,
        and none is dated after the statement."""
        if not ed25519_matches_session_id(self.account_key, self.account):
            raise AuthorisationError("the statement's key does not belong to its account")
        if not verify(self.account_key, self.signed_bytes(), self.sig):
            raise AuthorisationError("the account's signature on the statement does not verify")
        devices = self.retired_devices
        if len(set(devices)) != len(devices) or self.account in devices:
            raise AuthorisationError("a statement retires a key twice, or the account's own")
        for revocation in self.retired:
            if (
                revocation.primary != self.account
                or revocation.primary_key != self.account_key
                or revocation.timestamp_ms > self.timestamp_ms
            ):
                raise AuthorisationError("a retirement in the statement is not the account's")
            revocation.verify()


def awaiting_hand_over(moved: LinkedStatement, device: str, timestamp_ms: int, now_ms: int) -> bool:
    """Whether a record ``device`` signed with its own key, dated ``timestamp_ms`` and
    read at ``now_ms``, still speaks for the account: ``moved`` retired the device, which
    had not read its hand-over yet. That is from the move until the hand-over (stored at
    the move, for at most :data:`MAX_TTL_MS`) would have expired unread; past that the
    device will never switch, and whoever holds its key must not speak for the account
    for ever. The date is the signer's to choose, so what it dates inside the window is
    taken only while such a record could still be in a swarm (stored by the window's
    end, kept at most :data:`MAX_TTL_MS`): a key found years later cannot backdate its
    way in. Siblings and friends apply the same window, so what such a device sends in
    it (a ``send`` run just after the move) is neither lost nor filed twice."""
    window_ends = moved.timestamp_ms + MAX_TTL_MS
    return (
        device in moved.retired_devices
        and moved.timestamp_ms <= timestamp_ms < window_ends
        and now_ms < window_ends + MAX_TTL_MS + CLOCK_SKEW_MS
    )


def sign_linked_statement(
    account: Identity, retired: Iterable[str], timestamp_ms: int
) -> LinkedStatement:
    """The statement retiring ``retired`` (device ids), signed by ``account``."""
    revocations = tuple(
        revoke_pairing(account, device, timestamp_ms) for device in sorted(set(retired))
    )
    if len(revocations) > MAX_RETIRED:
        raise ValueError(f"a statement retires at most {MAX_RETIRED} device keys")
    unsigned = LinkedStatement(
        account.session_id, account.ed25519_public, timestamp_ms, revocations, b""
    )
    return replace(unsigned, sig=account.sign(unsigned.signed_bytes()))


def migration_refusal(mode: Mode, is_primary: bool, moved: bool) -> str | None:
    """Why a device in this state may not move its account to ``linked``, in one line;
    None if it may."""
    if moved:
        return "this account was moved to linked mode already"
    if mode is Mode.LINKED:
        return "this device is linked already: there is nothing to move"
    if not is_primary:
        return "only the primary device can move the account (it holds the account's key)"
    return None


# --- the primary's plan, as typed effects ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class RevokeMapping:
    """Revoke a secondary's mapping on the file server (strangers see one device)."""

    revocation: Revocation


@dataclass(frozen=True, slots=True)
class HandOver:
    """Queue the account seed and the statement for ``device``, in its own swarm."""

    device: str
    statement: bytes


@dataclass(frozen=True, slots=True)
class TellFriend:
    """Queue the statement for the friend ``user``."""

    user: str
    statement: bytes


@dataclass(frozen=True, slots=True)
class BecomeLinked:
    """Act under the ``linked`` rules from now on, keeping the statement."""

    statement: bytes


MigrationEffect = RevokeMapping | HandOver | TellFriend | BecomeLinked


def plan_migration(
    account: Identity, secondaries: Iterable[str], friends: Iterable[str], now_ms: int
) -> list[MigrationEffect]:
    """What moving ``account`` takes, in the order to do it: the file server first (if
    it refuses, nothing has changed), then everything queued and the switch, which the
    driver writes in one transaction."""
    statement = sign_linked_statement(account, secondaries, now_ms)
    data = statement.to_bytes()
    return [
        *(RevokeMapping(r) for r in statement.retired),
        *(HandOver(device, data) for device in statement.retired_devices),
        *(TellFriend(user, data) for user in sorted(set(friends))),
        BecomeLinked(data),
    ]


__all__ = [
    "MAX_RETIRED",
    "MAX_STATEMENT_BYTES",
    "BecomeLinked",
    "HandOver",
    "LinkedStatement",
    "MigrationEffect",
    "RevokeMapping",
    "TellFriend",
    "awaiting_hand_over",
    "migration_refusal",
    "plan_migration",
    "sign_linked_statement",
]
