"""Long-term keys of relays and endpoints: an Ed25519 seed, and the X25519 key converted
from it (libsodium), so one 32-byte seed is a whole identity and one public key names it."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

import nacl.bindings as sodium


@dataclass(frozen=True)
class KeyPair:
    """Ed25519 signing key and its X25519 twin, derived from a 32-byte seed. Its repr
    shows the public keys only, so a log line or a traceback never carries a secret."""

    seed: bytes = field(repr=False)
    public: bytes
    x25519_public: bytes
    _sign_secret: bytes = field(repr=False)
    _x25519_secret: bytes = field(repr=False)

    @classmethod
    def from_seed(cls, seed: bytes) -> KeyPair:
        if len(seed) != 32:
            raise ValueError("an identity seed is 32 bytes")
        public, secret = sodium.crypto_sign_seed_keypair(seed)
        return cls(
            seed=seed,
            public=public,
            x25519_public=sodium.crypto_sign_ed25519_pk_to_curve25519(public),
            _sign_secret=secret,
            _x25519_secret=sodium.crypto_sign_ed25519_sk_to_curve25519(secret),
        )

    def sign(self, message: bytes) -> bytes:
        return bytes(sodium.crypto_sign(message, self._sign_secret)[:64])

    def dh(self, peer_x25519_public: bytes) -> bytes:
        """X25519 shared secret with a peer's public key (raises on a low-order point)."""
        return bytes(sodium.crypto_scalarmult(self._x25519_secret, peer_x25519_public))


#: Signatures this process has seen verify, at most this many (oldest forgotten first).
VERIFIED_CACHE_ENTRIES = 16_384
_verified: dict[bytes, None] = {}


def verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """Ed25519 verification that answers instead of raising.

    Announcements, contacts and introsets are re-read far more often than they are
    re-signed, by every reader in the process: each was an Ed25519 verification (a sixth of
    an embedded network's CPU). A signature that verified is remembered under the hash of
    key, signature and message, which it must match byte for byte to be taken again;
    failures are never remembered, so a forger's bytes cost what they cost before."""
    if len(public) != 32 or len(signature) != 64:
        return False
    seen = hashlib.blake2b(public + signature + message, digest_size=32).digest()
    if seen in _verified:
        return True
    try:
        sodium.crypto_sign_open(signature + message, public)
    except Exception:
        return False
    while len(_verified) >= VERIFIED_CACHE_ENTRIES:
        del _verified[next(iter(_verified))]
    _verified[seen] = None
    return True


def cached_verifications() -> int:
    """How many verified signatures :func:`verify` remembers now."""
    return len(_verified)


@functools.lru_cache(maxsize=4096)
def x25519_of(ed25519_public: bytes) -> bytes:
    """The X25519 key that an Ed25519 public key converts to (raises ValueError if invalid)."""
    try:
        return bytes(sodium.crypto_sign_ed25519_pk_to_curve25519(ed25519_public))
    except Exception as exc:
        raise ValueError("not an Ed25519 public key") from exc


def kdf(secret: bytes, purpose: bytes, size: int = 32) -> bytes:
    """Keyed BLAKE2b with a distinct personalisation per purpose, so that no two uses of
    one secret ever share a key (hashlib's BLAKE2b is far cheaper than PyNaCl's)."""
    if len(purpose) > 16:
        raise ValueError("a purpose label is at most 16 bytes")
    if len(secret) > 64:  # BLAKE2b keys are at most 64 bytes: compress longer material
        secret = hashlib.blake2b(secret, digest_size=64, person=purpose).digest()
    return hashlib.blake2b(b"", digest_size=size, key=secret, person=purpose).digest()
