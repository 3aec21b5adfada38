"""The owner's word for a destructive change: the signed ``delete`` or ``expire`` request
itself, kept with the rows it changed and shipped with them to the other swarm members.

Why: tombstones and shortened expiries used to travel between members on the sending
node's word, so one malicious member could delete any message swarm-wide (it only had to
replicate a tombstone, and tombstones win every merge). A member now takes a tombstone or
a shorter expiry only together with the owner's signature over the request that caused
it, checked exactly as the node that served the request checked it (DESIGN.md §4
``auth``), except for freshness: a replica or a repair may carry it days later, and
replaying it changes nothing, since the message is already deleted or shortened.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import DecodeError
from ..identity import ed25519_matches_session_id, verify
from ..wire import decode_cbor, encode_cbor
from .auth import ClientAuth, auth_text
from .constants import MAX_HASHES_PER_REQUEST, MAX_NAMESPACE
from .rows import StoredMessage

METHODS = ("delete", "expire")
_FIELDS = 7


@dataclass(frozen=True)
class OwnerProof:
    """One signed client request; ``expiry_ms`` is set for ``expire`` only."""

    method: str
    namespace: int
    timestamp_ms: int
    hashes: tuple[bytes, ...]
    expiry_ms: int | None
    ed25519: bytes
    signature: bytes

    def encode(self) -> bytes:
        return encode_cbor(
            [
                self.method,
                self.namespace,
                self.timestamp_ms,
                list(self.hashes),
                self.expiry_ms,
                self.ed25519,
                self.signature,
            ]
        )

    @classmethod
    def decode(cls, blob: object) -> OwnerProof:
        """Strict: shape and sizes checked, so a hostile peer gets a clear refusal."""
        if not isinstance(blob, bytes):
            raise DecodeError("an owner proof is a byte string")
        value = decode_cbor(blob)
        if not isinstance(value, list) or len(value) != _FIELDS:
            raise DecodeError(f"an owner proof is a list of {_FIELDS} fields")
        method, namespace, timestamp, hashes, expiry, ed25519, signature = value
        if method not in METHODS:
            raise DecodeError("an owner proof is a delete or an expire")
        for number in (namespace, timestamp) + (() if expiry is None else (expiry,)):
            if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number < 2**63:
                raise DecodeError("owner proof numbers must be non-negative integers")
        if namespace > MAX_NAMESPACE:
            raise DecodeError("owner proof namespace out of range")
        if (expiry is None) != (method == "delete"):
            raise DecodeError("an expire proof, and only one, names an expiry")
        if (
            not isinstance(hashes, list)
            or not 0 < len(hashes) <= MAX_HASHES_PER_REQUEST
            or not all(isinstance(h, bytes) and len(h) == 32 for h in hashes)
        ):
            raise DecodeError("owner proof hashes must be 1 to 1000 32-byte strings")
        if not (isinstance(ed25519, bytes) and len(ed25519) == 32):
            raise DecodeError("owner proof key must be 32 bytes")
        if not (isinstance(signature, bytes) and len(signature) == 64):
            raise DecodeError("owner proof signature must be 64 bytes")
        return cls(method, namespace, timestamp, tuple(hashes), expiry, ed25519, signature)

    def proves(self, row: StoredMessage) -> bool:
        """Whether the owner of ``row`` signed this request and it explains the row: a
        tombstone needs a delete naming it, a live row an expire to exactly its expiry."""
        return self.explains(row) and self.signed_by(row.pubkey)

    def explains(self, row: StoredMessage) -> bool:
        """Whether this request, if ``row``'s owner signed it, explains the row."""
        if row.hash not in self.hashes or row.namespace != self.namespace:
            return False
        if row.deleted != (self.method == "delete"):
            return False
        return row.deleted or row.expiry_ms == self.expiry_ms

    def signed_by(self, owner: str) -> bool:
        """Whether ``owner`` (a session id) signed this request: the costly half of
        :meth:`proves`, the same for every row of one request."""
        if not ed25519_matches_session_id(self.ed25519, owner):
            return False
        text = auth_text(
            self.method, owner, self.namespace, self.timestamp_ms, self.hashes, self.expiry_ms
        )
        return verify(self.ed25519, text, self.signature)


def proof_from_request(
    method: str,
    namespace: int,
    hashes: Sequence[bytes],
    auth: ClientAuth,
    expiry_ms: int | None = None,
) -> OwnerProof:
    """The proof of a request whose ``auth`` the serving node has already checked."""
    return OwnerProof(
        method, namespace, auth.timestamp_ms, tuple(hashes), expiry_ms, auth.ed25519, auth.signature
    )
