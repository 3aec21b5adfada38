"""Device mappings: the v1.5.0 "pairing authorisation" that links a secondary device to a
primary, and the primary's revocation of it (DESIGN.md §3, §5).

Pairing takes two signatures, in order. The secondary signs a *request* naming the primary
it wants to join (it knows only the primary's Session id); the primary countersigns a
*grant* that covers the whole request, its own Ed25519 key and the secondary's signature.
A :class:`DeviceMapping` is the granted request. Each signature carries its own
domain-separation prefix, so no signature made for one purpose (a request, a grant, a
revocation, a swarm ``auth``, an envelope) can be passed off as another.

Nobody has to trust the file server that stores these records: :meth:`DeviceMapping.verify`
checks both signatures and that each Ed25519 key converts to the X25519 key inside its
Session id, and :func:`device_set` checks that a server's answer is consistent. A server
can still *omit* records; to stop it from un-revoking a device it once reported revoked,
answers carry the primary's signed revocations and readers keep those they have seen and
apply them to every later answer (:func:`device_set`'s ``revocations``).

Decoders are strict (:mod:`p2psync.wire`): they return frozen dataclasses or raise
:class:`~p2psync.errors.DecodeError`. Decoding checks structure only; ``verify()`` checks
authority and raises :class:`AuthorisationError` (a ``DecodeError`` too), so a server can
answer ``bad_request`` for garbage and ``unauthorized`` for a well-formed forgery.

Wire formats (canonical CBOR maps, ``ts`` in epoch ms, keys 32 bytes, signatures 64):

* request:    ``{"v": 1, "primary": sid, "secondary": sid, "secondary_key": key, "ts": uint,
  "secondary_sig": sig}``
* mapping:    the request's fields plus ``"primary_key": key, "primary_sig": sig``
* revocation: ``{"v": 1, "primary": sid, "primary_key": key, "secondary": sid, "ts": uint,
  "sig": sig}``
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from .envelope import MAX_TIMESTAMP_MS
from .errors import DecodeError, RpcError
from .identity import (
    KEY_BYTES,
    SIGNATURE_BYTES,
    Identity,
    ed25519_matches_session_id,
    session_id_key,
    verify,
)
from .wire import Fields, decode_cbor, encode_cbor

RECORD_VERSION = 1
#: A record is about 400 bytes; anything much larger is not one.
MAX_RECORD_BYTES = 1024
#: How long a signed pairing request stays usable: the user compares a short code on both
#: screens and accepts, which takes minutes, not the 60 s allowed for other clock skew.
PAIRING_WINDOW_MS = 10 * 60_000

REQUEST_DOMAIN = b"p2psync-pairing-request/1:"
GRANT_DOMAIN = b"p2psync-pairing-grant/1:"
REVOCATION_DOMAIN = b"p2psync-pairing-revocation/1:"

_SESSION_ID_CHARS = 66


class AuthorisationError(DecodeError):
    """A well-formed record whose signatures or keys do not authorise what it claims."""


class Signed(Protocol):
    def verify(self) -> None: ...


def check_authorised(record: Signed) -> None:
    """What a server answers a record whose signatures or keys do not authorise what it
    claims (:class:`AuthorisationError`): ``unauthorized``, its reason in one line."""
    try:
        record.verify()
    except AuthorisationError as exc:
        raise RpcError("unauthorized", str(exc)) from None


def _session_id(fields: Fields, name: str) -> str:
    value = fields.text(name, max_len=_SESSION_ID_CHARS)
    session_id_key(value)
    return value


def _check_version(fields: Fields, what: str) -> None:
    version = fields.uint("v")
    if version != RECORD_VERSION:
        raise DecodeError(f"unsupported {what} version {version}")


def _check_key(key: bytes, session_id: str, role: str) -> None:
    if not ed25519_matches_session_id(key, session_id):
        raise AuthorisationError(f"the {role} Ed25519 key does not belong to {session_id[:12]}…")


# --- pairing request ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PairingRequest:
    """The secondary's signed wish to become a device of ``primary``."""

    primary: str
    secondary: str
    secondary_key: bytes
    timestamp_ms: int
    secondary_sig: bytes

    def _signed_fields(self) -> dict[str, Any]:
        return {
            "v": RECORD_VERSION,
            "primary": self.primary,
            "secondary": self.secondary,
            "secondary_key": self.secondary_key,
            "ts": self.timestamp_ms,
        }

    def signed_bytes(self) -> bytes:
        return REQUEST_DOMAIN + encode_cbor(self._signed_fields())

    def to_bytes(self) -> bytes:
        return encode_cbor({**self._signed_fields(), "secondary_sig": self.secondary_sig})

    @classmethod
    def from_bytes(cls, data: bytes) -> PairingRequest:
        """Strict structural decode; call :meth:`verify` before trusting it."""
        fields = Fields(decode_cbor(data, max_bytes=MAX_RECORD_BYTES), "pairing request")
        fields.only("v", "primary", "secondary", "secondary_key", "ts", "secondary_sig")
        _check_version(fields, "pairing request")
        return cls(
            primary=_session_id(fields, "primary"),
            secondary=_session_id(fields, "secondary"),
            secondary_key=fields.blob("secondary_key", size=KEY_BYTES),
            timestamp_ms=fields.uint("ts", maximum=MAX_TIMESTAMP_MS),
            secondary_sig=fields.blob("secondary_sig", size=SIGNATURE_BYTES),
        )

    def verify(self) -> None:
        """Raise :class:`AuthorisationError` unless the secondary really signed this."""
        if self.primary == self.secondary:
            raise AuthorisationError("a device cannot be its own secondary")
        _check_key(self.secondary_key, self.secondary, "secondary")
        if not verify(self.secondary_key, self.signed_bytes(), self.secondary_sig):
            raise AuthorisationError("the secondary's signature does not verify")


def sign_pairing_request(
    secondary: Identity, primary_session_id: str, timestamp_ms: int
) -> PairingRequest:
    """Step one of pairing, on the new (secondary) device."""
    session_id_key(primary_session_id)
    if primary_session_id == secondary.session_id:
        raise ValueError("a device cannot pair with itself")
    unsigned = PairingRequest(
        primary_session_id, secondary.session_id, secondary.ed25519_public, timestamp_ms, b""
    )
    return replace(unsigned, secondary_sig=secondary.sign(unsigned.signed_bytes()))


# --- device mapping -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceMapping:
    """A granted pairing: ``secondary`` is a device of the user whose primary is ``primary``."""

    primary: str
    primary_key: bytes
    secondary: str
    secondary_key: bytes
    timestamp_ms: int
    secondary_sig: bytes
    primary_sig: bytes

    @property
    def request(self) -> PairingRequest:
        return PairingRequest(
            self.primary, self.secondary, self.secondary_key, self.timestamp_ms, self.secondary_sig
        )

    def _granted_fields(self) -> dict[str, Any]:
        return {
            **self.request._signed_fields(),
            "primary_key": self.primary_key,
            "secondary_sig": self.secondary_sig,
        }

    def signed_bytes(self) -> bytes:
        """What the primary signs: the request, its signature and the primary's key."""
        return GRANT_DOMAIN + encode_cbor(self._granted_fields())

    def to_bytes(self) -> bytes:
        return encode_cbor({**self._granted_fields(), "primary_sig": self.primary_sig})

    @classmethod
    def from_bytes(cls, data: bytes) -> DeviceMapping:
        """Strict structural decode; call :meth:`verify` before trusting it."""
        fields = Fields(decode_cbor(data, max_bytes=MAX_RECORD_BYTES), "mapping")
        fields.only(
            "v",
            "primary",
            "primary_key",
            "secondary",
            "secondary_key",
            "ts",
            "secondary_sig",
            "primary_sig",
        )
        _check_version(fields, "mapping")
        return cls(
            primary=_session_id(fields, "primary"),
            primary_key=fields.blob("primary_key", size=KEY_BYTES),
            secondary=_session_id(fields, "secondary"),
            secondary_key=fields.blob("secondary_key", size=KEY_BYTES),
            timestamp_ms=fields.uint("ts", maximum=MAX_TIMESTAMP_MS),
            secondary_sig=fields.blob("secondary_sig", size=SIGNATURE_BYTES),
            primary_sig=fields.blob("primary_sig", size=SIGNATURE_BYTES),
        )

    def verify(self) -> None:
        """Raise :class:`AuthorisationError` unless both devices signed this mapping and
        each Ed25519 key belongs to its Session id."""
        self.request.verify()
        _check_key(self.primary_key, self.primary, "primary")
        if not verify(self.primary_key, self.signed_bytes(), self.primary_sig):
            raise AuthorisationError("the primary's signature does not verify")


def grant_pairing(primary: Identity, request: PairingRequest) -> DeviceMapping:
    """Step two of pairing, on the primary: verify the request, then countersign it.

    The request comes from another device, so a bad one raises :class:`DecodeError`
    (:class:`AuthorisationError` if it is well formed but not genuinely signed)."""
    if request.primary != primary.session_id:
        raise AuthorisationError("the pairing request names another primary")
    request.verify()
    unsigned = DeviceMapping(
        request.primary,
        primary.ed25519_public,
        request.secondary,
        request.secondary_key,
        request.timestamp_ms,
        request.secondary_sig,
        b"",
    )
    return replace(unsigned, primary_sig=primary.sign(unsigned.signed_bytes()))


def create_mapping(primary: Identity, secondary: Identity, timestamp_ms: int) -> DeviceMapping:
    """Both steps at once, for tests and simulations that hold both identities."""
    return grant_pairing(primary, sign_pairing_request(secondary, primary.session_id, timestamp_ms))


# --- revocation -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Revocation:
    """The primary withdraws ``secondary``. Every mapping of that pair timestamped at or
    before ``timestamp_ms`` is void, so replaying one cannot re-create it."""

    primary: str
    primary_key: bytes
    secondary: str
    timestamp_ms: int
    sig: bytes

    def _signed_fields(self) -> dict[str, Any]:
        return {
            "v": RECORD_VERSION,
            "primary": self.primary,
            "primary_key": self.primary_key,
            "secondary": self.secondary,
            "ts": self.timestamp_ms,
        }

    def signed_bytes(self) -> bytes:
        return REVOCATION_DOMAIN + encode_cbor(self._signed_fields())

    def to_bytes(self) -> bytes:
        return encode_cbor({**self._signed_fields(), "sig": self.sig})

    @classmethod
    def from_bytes(cls, data: bytes) -> Revocation:
        """Strict structural decode; call :meth:`verify` before trusting it."""
        fields = Fields(decode_cbor(data, max_bytes=MAX_RECORD_BYTES), "revocation")
        fields.only("v", "primary", "primary_key", "secondary", "ts", "sig")
        _check_version(fields, "revocation")
        return cls(
            primary=_session_id(fields, "primary"),
            primary_key=fields.blob("primary_key", size=KEY_BYTES),
            secondary=_session_id(fields, "secondary"),
            timestamp_ms=fields.uint("ts", maximum=MAX_TIMESTAMP_MS),
            sig=fields.blob("sig", size=SIGNATURE_BYTES),
        )

    def verify(self) -> None:
        """Raise :class:`AuthorisationError` unless the primary signed this revocation."""
        _check_key(self.primary_key, self.primary, "primary")
        if not verify(self.primary_key, self.signed_bytes(), self.sig):
            raise AuthorisationError("the primary's revocation signature does not verify")


def revoke_pairing(primary: Identity, secondary_session_id: str, timestamp_ms: int) -> Revocation:
    """Sign a revocation of ``secondary_session_id`` as a device of ``primary``."""
    session_id_key(secondary_session_id)
    unsigned = Revocation(
        primary.session_id, primary.ed25519_public, secondary_session_id, timestamp_ms, b""
    )
    return replace(unsigned, sig=primary.sign(unsigned.signed_bytes()))


# --- what a user's devices are ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceSet:
    """A user's devices as the file server lists them, each mapping verified."""

    primary: str
    secondaries: tuple[str, ...]
    mappings: tuple[DeviceMapping, ...]
    #: The primary's verified revocations known to this answer (the server's and the
    #: reader's own), newest per secondary: what a reader keeps for later answers.
    revocations: tuple[Revocation, ...] = ()

    @property
    def devices(self) -> tuple[str, ...]:
        """Every device id, primary first: where a v1.5.0 sender fans a message out to."""
        return (self.primary, *self.secondaries)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self.devices


def device_set(
    queried: str,
    primary: str,
    secondaries: Iterable[str],
    mappings: Iterable[DeviceMapping],
    revocations: Iterable[Revocation] = (),
) -> DeviceSet:
    """Build a :class:`DeviceSet` from a server's answer without trusting the server.

    Every mapping must verify and link ``primary`` to exactly the listed secondaries, and
    the queried id must be one of the devices; otherwise :class:`DecodeError` (or
    :class:`AuthorisationError` for a forged mapping). ``revocations`` (the server's and
    any the reader kept; other primaries' are ignored) must verify too, and a listed
    secondary whose mapping was signed at or before its revocation is left out: a server
    that re-lists a revoked device does not get it messages from a reader that knows."""
    listed = tuple(secondaries)
    checked = tuple(mappings)
    for mapping in checked:
        mapping.verify()
        if mapping.primary != primary:
            raise DecodeError("a listed mapping belongs to another primary")
    if sorted(listed) != sorted(m.secondary for m in checked) or len(set(listed)) != len(listed):
        raise DecodeError("the listed secondaries do not match the mappings")
    if queried != primary and queried not in listed:
        raise DecodeError("the answer does not include the device asked about")
    newest: dict[str, Revocation] = {}
    for revocation in revocations:
        if revocation.primary != primary:
            continue
        revocation.verify()
        known = newest.get(revocation.secondary)
        if known is None or known.timestamp_ms < revocation.timestamp_ms:
            newest[revocation.secondary] = revocation
    live = tuple(
        m
        for m in checked
        if m.secondary not in newest or m.timestamp_ms > newest[m.secondary].timestamp_ms
    )
    kept = tuple(newest[s] for s in sorted(newest))
    live_ids = {m.secondary for m in live}
    return DeviceSet(primary, tuple(s for s in listed if s in live_ids), live, kept)


__all__ = [
    "PAIRING_WINDOW_MS",
    "AuthorisationError",
    "DeviceMapping",
    "DeviceSet",
    "PairingRequest",
    "Revocation",
    "create_mapping",
    "device_set",
    "grant_pairing",
    "revoke_pairing",
    "sign_pairing_request",
]
