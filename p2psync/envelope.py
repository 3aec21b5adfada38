"""Message envelopes: sign, then seal (DESIGN.md §3).

The inner CBOR map is signed by the sender's Ed25519 key and the signature covers the
recipient's X25519 key too, so a recipient cannot re-seal a signed message to somebody else
and pass it off as sent to them (surreptitious forwarding). The sealed box hides the sender
from the storage nodes; only the recipient learns who signed.

The signed text starts with a domain prefix of its own, so no signature made for another
purpose (a mapping, a post, an auth token) can ever pass for an envelope's. Before sealing,
the inner map is padded (``pad``: zero bytes, outside the signature) to a size bucket, so
what storage nodes and observers see tells them the bucket, not the message's length:
multiples of 256 bytes up to 2 KiB, then powers of two, capped at what a swarm stores.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .errors import DecodeError
from .identity import (
    KEY_BYTES,
    SIGNATURE_BYTES,
    Identity,
    message_hash,
    seal,
    session_id_of,
    verify,
)
from .swarm.access import MailboxAccess, is_signed_by_owner
from .wire import Fields, decode_cbor, encode_cbor

ENVELOPE_VERSION = 1
#: Body cap: leaves room for the envelope, signature, padding field and sealed-box overhead
#: inside the swarm's 76 800-byte message limit.
MAX_BODY_BYTES = 75_000
MAX_KIND_CHARS = 32
SIGNATURE_DOMAIN = b"p2psync-envelope/1:"
#: Padded inner sizes: 256-byte steps up to 2 KiB, then powers of two, then the cap (the
#: swarm's message limit less the sealed box's 48 bytes).
PAD_STEP_BYTES = 256
PAD_STEPS_UP_TO = 2048
MAX_INNER_BYTES = 76_800 - 48
#: The latest time any signed record of ours may carry (epoch ms, the last of year 9999):
#: far beyond any honest clock and well inside SQLite's signed 64-bit integers, so a
#: record claiming more is refused when it is decoded instead of overflowing whatever
#: stores it later (an envelope dated 2**64 - 1 once stopped a device's inbox for good).
MAX_TIMESTAMP_MS = 253_402_300_799_999


@dataclass(frozen=True, slots=True)
class Envelope:
    """A verified message: what ``kind`` of payload, from which device key, when, and the
    sender's access to its own mailbox (for storing a reply there: :mod:`.swarm.access`)."""

    kind: str
    sender: bytes
    timestamp_ms: int
    body: bytes
    access: MailboxAccess | None = None


def _signed_part(envelope: Envelope, recipient_x25519: bytes) -> bytes:
    return SIGNATURE_DOMAIN + encode_cbor(
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
    sender: Identity,
    recipient_x25519: bytes,
    kind: str,
    body: bytes,
    timestamp_ms: int,
    access: MailboxAccess | None = None,
) -> bytes:
    """The bytes to store in the recipient's swarm; their hash is the message id.
    ``access``: the sender's own (:func:`~.swarm.access.sign_access`), outside the
    signature, as it signs itself."""
    if len(body) > MAX_BODY_BYTES:
        raise ValueError(f"message body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
    if len(kind) > MAX_KIND_CHARS:
        raise ValueError("envelope kind too long")
    envelope = Envelope(kind, sender.ed25519_public, timestamp_ms, body)
    signature = sender.sign(_signed_part(envelope, recipient_x25519))
    fields: dict[str, Any] = {
        "v": ENVELOPE_VERSION,
        "kind": kind,
        "from": sender.ed25519_public,
        "ts": timestamp_ms,
        "body": body,
        "sig": signature,
    }
    if access is not None:  # its key is the sender's, so only its expiry and signature
        if access.ed25519 != sender.ed25519_public:
            raise ValueError("an envelope carries its sender's own access")
        fields["access"] = [access.expiry_ms, access.signature]
    inner = encode_cbor({**fields, "pad": bytes(_pad_length(len(encode_cbor(fields))))})
    return seal(recipient_x25519, inner)


def _pad_length(unpadded: int) -> int:
    """How many zero bytes make a map of ``unpadded`` bytes, plus its ``pad`` entry, land
    exactly on a bucket. The entry costs its key (4 bytes), a length header that grows with
    the pad (1, 2, 3 or 5 bytes), and the pad; where no length fits, the next bucket."""
    target = padded_size(unpadded + 5)
    while True:
        for header in (1, 2, 3, 5):
            length = target - unpadded - 4 - header
            if length >= 0 and _cbor_header_bytes(length) == header:
                return length
        target = padded_size(target + 1)


def _cbor_header_bytes(length: int) -> int:
    return 1 if length < 24 else 2 if length < 256 else 3 if length < 65_536 else 5


def padded_size(size: int) -> int:
    """The bucket an inner envelope of ``size`` bytes is padded to."""
    if size <= PAD_STEPS_UP_TO:
        return -(-size // PAD_STEP_BYTES) * PAD_STEP_BYTES
    bucket = PAD_STEPS_UP_TO
    while bucket < size:
        bucket *= 2
    return max(size, min(bucket, MAX_INNER_BYTES))


def open_envelope(recipient: Identity, data: bytes) -> Envelope:
    """Unseal and verify, or raise :class:`DecodeError` saying what was wrong."""
    fields = Fields(decode_cbor(recipient.unseal(data)), "envelope")
    fields.only("v", "kind", "from", "ts", "body", "sig", "pad", "access")
    fields.blob("pad", max_len=MAX_INNER_BYTES)
    if fields.uint("v") != ENVELOPE_VERSION:
        raise DecodeError(f"unsupported envelope version {fields.uint('v')}")
    envelope = Envelope(
        kind=fields.text("kind", max_len=MAX_KIND_CHARS),
        sender=fields.blob("from", size=KEY_BYTES),
        timestamp_ms=fields.uint("ts", maximum=MAX_TIMESTAMP_MS),
        body=fields.blob("body", max_len=MAX_BODY_BYTES),
    )
    signature = fields.blob("sig", size=SIGNATURE_BYTES)
    if not verify(envelope.sender, _signed_part(envelope, recipient.x25519_public), signature):
        raise DecodeError("envelope signature does not verify")
    if not fields.has("access"):
        return envelope
    return replace(envelope, access=_sender_access(fields, envelope.sender))


def _sender_access(fields: Fields, sender: bytes) -> MailboxAccess:
    """The envelope's ``[expiry, signature]``: the sender's access to its own mailbox,
    checked as a node checks it."""
    items = fields.items("access", max_len=2)
    expiry, signature = [*items, None, None][:2]
    if (
        type(expiry) is not int
        or not 0 <= expiry <= MAX_TIMESTAMP_MS
        or not isinstance(signature, bytes)
        or len(signature) != SIGNATURE_BYTES
    ):
        raise DecodeError("envelope.access must be [expiry, 64-byte signature]")
    access = MailboxAccess(sender, expiry, signature)
    owner = session_id_of(sender)
    if owner is None or not is_signed_by_owner(access, owner):
        raise DecodeError("the envelope's access is not its sender's")
    return access


__all__ = ["MAX_TIMESTAMP_MS", "Envelope", "message_hash", "open_envelope", "seal_envelope"]
