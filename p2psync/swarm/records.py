"""The node-to-node wire form of a stored row, validated on the way in: a tombstone or a
proven expiry is taken only with the owner's signed request (:mod:`.proof`), and no time
may lie further ahead of the receiver's clock than an honest member's could."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import DecodeError
from ..identity import message_hash, session_id_key
from .constants import CLOCK_SKEW_MS, MAX_DATA_BYTES, MAX_NAMESPACE, MAX_TTL_MS
from .proof import OwnerProof
from .rows import RowSummary, StoredMessage

ROW_FIELDS = 8
#: How far a replicated row's timestamp may lie ahead of the receiver's clock: the member
#: that accepted the store allowed its client ``CLOCK_SKEW_MS``, and the two members'
#: clocks may differ by as much again. With expiry at most timestamp + the maximum TTL,
#: no peer can plant a row that outlives the protocol's limits.
PEER_SKEW_MS = 2 * CLOCK_SKEW_MS


def row_to_wire(row: StoredMessage, proofs: Mapping[bytes, int] | None = None) -> list[Any]:
    """The row as a list; with ``proofs``, its proof as its index there (a batch sends
    each proof once: a delete of 1 000 hashes is 1 000 tombstones with one proof)."""
    proof: bytes | int | None = row.proof
    if row.proof is not None and proofs is not None:
        proof = proofs[row.proof]
    wire = [
        row.pubkey,
        row.namespace,
        row.hash,
        row.timestamp_ms,
        row.expiry_ms,
        row.data,
        row.order_ms,
        proof,
    ]
    return [*wire, True] if row.vouched else wire


class ProofChecks:
    """The proofs of one batch, each decoded once and its signature checked once per
    owner, however many of the batch's rows it explains."""

    def __init__(self, proofs: Sequence[object] = ()) -> None:
        self._proofs = proofs
        self._decoded: dict[bytes, OwnerProof] = {}
        self._signed: dict[tuple[bytes, str], bool] = {}

    def blob(self, proof: object) -> object:
        """A row's proof field: its proof itself, or the index of one of the batch's."""
        if isinstance(proof, int) and not isinstance(proof, bool):
            if not 0 <= proof < len(self._proofs):
                raise DecodeError("a row's proof index names no proof of its batch")
            return self._proofs[proof]
        return proof

    def proves(self, blob: bytes, row: StoredMessage) -> bool:
        proof = self._decoded.get(blob)
        if proof is None:
            proof = self._decoded[blob] = OwnerProof.decode(blob)
        if not proof.explains(row):
            return False
        signed = self._signed.get((blob, row.pubkey))
        if signed is None:
            signed = self._signed[(blob, row.pubkey)] = proof.signed_by(row.pubkey)
        return signed


def row_from_wire(value: object, now_ms: int, checks: ProofChecks | None = None) -> StoredMessage:
    """A row from another node: shape, sizes, hash, times against ``now_ms`` (the
    receiver's clock) and proof all checked; ``checks``: its batch's proofs."""
    if not isinstance(value, list) or len(value) not in (ROW_FIELDS, ROW_FIELDS + 1):
        raise DecodeError(f"a row is a list of {ROW_FIELDS} fields, and true if vouched for")
    checks = checks or ProofChecks()
    pubkey, namespace, digest, timestamp, expiry, data, order, proof = value[:ROW_FIELDS]
    vouched = len(value) > ROW_FIELDS and value[ROW_FIELDS] is True
    if len(value) > ROW_FIELDS and not vouched:
        raise DecodeError("a row's ninth field, if any, is true")
    proof = checks.blob(proof)
    _check_key(pubkey, namespace, digest, timestamp, expiry, order)
    if timestamp > now_ms + PEER_SKEW_MS:
        raise DecodeError("row timestamp is ahead of this node's clock")
    if data is not None:
        if not isinstance(data, bytes) or len(data) > MAX_DATA_BYTES:
            raise DecodeError("row data must be bytes within the size limit")
        if message_hash(data) != digest:
            raise DecodeError("row hash does not match its data")
    if proof is not None and not isinstance(proof, bytes):
        raise DecodeError("an owner proof is a byte string")
    row = StoredMessage(pubkey, namespace, digest, timestamp, expiry, data, order, proof, vouched)
    if proof is None:
        if data is None:
            raise DecodeError("a tombstone needs the owner's signed delete")
    elif not checks.proves(proof, row):
        raise DecodeError("row proof is not the owner's signed request for this change")
    return row


def summary_to_wire(row: RowSummary) -> list[Any]:
    return list(row)


def summary_from_wire(value: object) -> RowSummary:
    """A peer's repair listing entry, checked like a row; its data and proof are checked
    when the row itself is fetched."""
    if not isinstance(value, list) or len(value) != len(RowSummary._fields):
        raise DecodeError(f"a listing item is a list of {len(RowSummary._fields)} fields")
    pubkey, namespace, digest, timestamp, expiry, deleted, proven = value
    _check_key(pubkey, namespace, digest, timestamp, expiry, 0)
    if not (isinstance(deleted, bool) and isinstance(proven, bool)):
        raise DecodeError("a listing item ends in deleted and proven flags")
    return RowSummary(pubkey, namespace, digest, timestamp, expiry, deleted, proven)


def _check_key(
    pubkey: object,
    namespace: object,
    digest: object,
    timestamp: object,
    expiry: object,
    order: object,
) -> None:
    if not isinstance(pubkey, str):
        raise DecodeError("row pubkey must be text")
    session_id_key(pubkey)
    if isinstance(namespace, bool) or not isinstance(namespace, int):
        raise DecodeError("row namespace must be an integer")
    if not 0 <= namespace <= MAX_NAMESPACE:
        raise DecodeError("row namespace out of range")
    if not isinstance(digest, bytes) or len(digest) != 32:
        raise DecodeError("row hash must be 32 bytes")
    for number in (timestamp, expiry, order):
        if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number < 2**63:
            raise DecodeError("row timestamp, expiry and order must be non-negative integers")
    if expiry > timestamp + MAX_TTL_MS:  # type: ignore[operator]
        raise DecodeError("row expiry is beyond the maximum TTL")
