"""Message envelopes: sign, then seal (DESIGN.md §3).

The inner CBOR map is signed by the sender's Ed25519 key and the signature covers the
recipient's X25519 key too, so a recipient cannot re-seal a signed message to somebody else
and pass it off as sent to them (surreptitious forwarding). The sealed box hides the sender
from the storage nodes; only the recipient learns who signed.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import DecodeError
from .identity import KEY_BYTES, SIGNATURE_BYTES, Identity, message_hash, seal, verify
from .wire import Fields, decode_cbor, encode_cbor

ENVELOPE_VERSION = 1
#: Body cap: leaves room for the envelope, signature and sealed-box overhead inside the
#: swarm's 76 800-byte message limit.
MAX_BODY_BYTES = 75_000
MAX_KIND_CHARS = 32


@dataclass(frozen=True, slots=True)
class Envelope:
    """A verified message: what ``kind`` of payload, from which device key, when."""

    kind: str
    sender: bytes
    timestamp_ms: int
    body: bytes


def _signed_part(envelope: Envelope, recipient_x25519: bytes) -> bytes:
    return encode_cbor(
        {
            "v": ENVELOPE_VERSION,
            "kind": envelope.kind,
            "from": envelope.sender,
            "ts": envelope.timestamp_ms,
            "body": envelope.body,
            "to": recipient_x25519,
        }
    )


def seal_envelope(
    sender: Identity, recipient_x25519: bytes, kind: str, body: bytes, timestamp_ms: int
) -> bytes:
    """The bytes to store in the recipient's swarm; their hash is the message id."""
    if len(body) > MAX_BODY_BYTES:
        raise ValueError(f"message body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
    if len(kind) > MAX_KIND_CHARS:
        raise ValueError("envelope kind too long")
    envelope = Envelope(kind, sender.ed25519_public, timestamp_ms, body)
    signature = sender.sign(_signed_part(envelope, recipient_x25519))
    inner = encode_cbor(
        {
            "v": ENVELOPE_VERSION,
            "kind": kind,
            "from": sender.ed25519_public,
            "ts": timestamp_ms,
            "body": body,
            "sig": signature,
        }
    )
    return seal(recipient_x25519, inner)


def open_envelope(recipient: Identity, data: bytes) -> Envelope:
    """Unseal and verify, or raise :class:`DecodeError` saying what was wrong."""
    fields = Fields(decode_cbor(recipient.unseal(data)), "envelope")
    fields.only("v", "kind", "from", "ts", "body", "sig")
    if fields.uint("v") != ENVELOPE_VERSION:
        raise DecodeError(f"unsupported envelope version {fields.uint('v')}")
    envelope = Envelope(
        kind=fields.text("kind", max_len=MAX_KIND_CHARS),
        sender=fields.blob("from", size=KEY_BYTES),
        timestamp_ms=fields.uint("ts"),
        body=fields.blob("body", max_len=MAX_BODY_BYTES),
    )
    signature = fields.blob("sig", size=SIGNATURE_BYTES)
    if not verify(envelope.sender, _signed_part(envelope, recipient.x25519_public), signature):
        raise DecodeError("envelope signature does not verify")
    return envelope


__all__ = ["Envelope", "message_hash", "open_envelope", "seal_envelope"]
