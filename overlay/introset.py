"""Introsets: how an endpoint says "reach me through these intro relays", readable only
by its siblings.

Two siblings share a 32-byte secret. From it and the *owner's* endpoint key (siblings know
each other's) both derive, per time epoch, a blinded Ed25519 signing key (whose public key
is the DHT location) and a symmetric key that encrypts the introset body. A storing relay
sees a random-looking key, an expiry and ciphertext; the signature by the blinded key lets
it refuse forgeries, and only holders of the secret can sign, find or read it. Inside, the
owner signs the body with its own endpoint key, so one sibling cannot pose as another.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass, field

import nacl.bindings as sodium

from .constants import INTROSET_LIFETIME_MS, INTROSET_MAX_BYTES, RENDEZVOUS_EPOCH_MS
from .keys import KeyPair, verify

_HEAD = struct.Struct(">32sQ24sH")
#: The owner's endpoint key signs other things too (contacts, sessions); its signature
#: over an introset body is under its own prefix, so it can never pass for one of those.
BODY_DOMAIN = b"p2psync-introset-body/1:"
_INTRO = struct.Struct(">32s16sQ")


class IntrosetError(ValueError):
    """An introset that does not decode, verify or decrypt."""


@dataclass(frozen=True)
class Intro:
    """One way in: the relay ``relay`` hands cells for intro id ``intro_id`` to the owner."""

    relay: bytes
    intro_id: bytes
    expiry_ms: int


@dataclass(frozen=True)
class RendezvousKeys:
    signing: KeyPair
    encryption_key: bytes = field(repr=False)

    @property
    def location(self) -> bytes:
        return self.signing.public


def epoch_of(now_ms: int) -> int:
    return now_ms // RENDEZVOUS_EPOCH_MS


def rendezvous_keys(shared_secret: bytes, owner: bytes, epoch: int) -> RendezvousKeys:
    """The blinded key and the introset key of ``owner``'s introset in ``epoch``."""
    if len(shared_secret) != 32:
        raise ValueError("a sibling secret is 32 bytes")
    data = owner + epoch.to_bytes(8, "big")

    def derive(person: bytes) -> bytes:
        return hashlib.blake2b(data, digest_size=32, key=shared_secret, person=person).digest()

    return RendezvousKeys(KeyPair.from_seed(derive(b"p2ps-rdv-blind")), derive(b"p2ps-rdv-enc"))


def seal_introset(
    rendezvous: RendezvousKeys, owner: KeyPair, intros: list[Intro], expiry_ms: int
) -> bytes:
    body = owner.public + bytes((len(intros),))
    body += b"".join(_INTRO.pack(i.relay, i.intro_id, i.expiry_ms) for i in intros)
    body += owner.sign(BODY_DOMAIN + rendezvous.location + body)
    nonce = os.urandom(24)
    ciphertext = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        body, rendezvous.location, nonce, rendezvous.encryption_key
    )
    unsigned = _HEAD.pack(rendezvous.location, expiry_ms, nonce, len(ciphertext)) + ciphertext
    signed = unsigned + rendezvous.signing.sign(unsigned)
    if len(signed) > INTROSET_MAX_BYTES:
        raise ValueError("too many intros for one introset")
    return signed


def verify_introset(data: bytes, now_ms: int) -> tuple[bytes, int]:
    """(location, expiry_ms) of a well-formed, signed, live introset; what a relay checks."""
    if not _HEAD.size + 64 < len(data) <= INTROSET_MAX_BYTES:
        raise IntrosetError("introset has a bad size")
    location, expiry_ms, _nonce, size = _HEAD.unpack_from(data)
    if _HEAD.size + size + 64 != len(data):
        raise IntrosetError("introset length mismatch")
    if not now_ms < expiry_ms <= now_ms + INTROSET_LIFETIME_MS + RENDEZVOUS_EPOCH_MS // 24:
        raise IntrosetError("introset expired or expires too late")
    if not verify(location, data[:-64], data[-64:]):
        raise IntrosetError("introset signature does not verify")
    return location, expiry_ms


def open_introset(
    data: bytes, rendezvous: RendezvousKeys, owner: bytes, now_ms: int
) -> list[Intro]:
    """The live intros of ``owner``, or :class:`IntrosetError`."""
    location, _expiry = verify_introset(data, now_ms)
    if location != rendezvous.location:
        raise IntrosetError("introset is for another key")
    _loc, _exp, nonce, size = _HEAD.unpack_from(data)
    try:
        body = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
            data[_HEAD.size : _HEAD.size + size], location, nonce, rendezvous.encryption_key
        )
    except Exception:
        raise IntrosetError("introset does not decrypt") from None
    count = body[32] if len(body) > 33 else -1
    if body[:32] != owner or len(body) != 33 + count * _INTRO.size + 64:
        raise IntrosetError("introset is not from the expected owner")
    if not verify(owner, BODY_DOMAIN + location + body[:-64], body[-64:]):
        raise IntrosetError("introset body signature does not verify")
    intros = [Intro(*_INTRO.unpack_from(body, 33 + k * _INTRO.size)) for k in range(count)]
    return [i for i in intros if i.expiry_ms > now_ms]
