"""Identities: an Ed25519 seed, its X25519 twin, and the Session id that names it.

All crypto is libsodium through PyNaCl. The Session id is ``"05" + hex(X25519 public key)``
where the X25519 key is the Ed25519 key converted by libsodium, so anyone holding a
Session id and an Ed25519 key can check that they belong together
(:func:`ed25519_matches_session_id`) — which is what swarm ``auth`` relies on.
"""

from __future__ import annotations

import functools
import hashlib
import hmac

import nacl.bindings
import nacl.exceptions
import nacl.public
import nacl.signing
import nacl.utils

from overlay.keys import verify as overlay_verify

from .errors import DecodeError

SEED_BYTES = 32
KEY_BYTES = 32
SIGNATURE_BYTES = 64
SESSION_ID_PREFIX = "05"
SESSION_ID_CHARS = 66


class Identity:
    """A key pair with both faces: Ed25519 for signatures, X25519 for sealed boxes.

    The seed is the only secret; everything else is derived from it, so persisting or
    handing over an identity (``linked`` pairing) means moving 32 bytes.
    """

    __slots__ = ("_box_key", "_signing_key", "ed25519_public", "x25519_public")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_BYTES:
            raise ValueError("an identity seed is 32 bytes")
        self._signing_key = nacl.signing.SigningKey(seed)
        self.ed25519_public: bytes = bytes(self._signing_key.verify_key)
        self._box_key = self._signing_key.to_curve25519_private_key()
        self.x25519_public: bytes = bytes(self._box_key.public_key)

    @classmethod
    def generate(cls) -> Identity:
        return cls(nacl.utils.random(SEED_BYTES))

    @classmethod
    def from_label(cls, label: str) -> Identity:
        """A deterministic identity for tests, simulations and demos (never for users)."""
        return cls(hashlib.blake2b(label.encode(), digest_size=SEED_BYTES).digest())

    @property
    def seed(self) -> bytes:
        return bytes(self._signing_key)

    @property
    def session_id(self) -> str:
        return SESSION_ID_PREFIX + self.x25519_public.hex()

    def sign(self, message: bytes) -> bytes:
        return self._signing_key.sign(message).signature

    def unseal(self, ciphertext: bytes) -> bytes:
        """Open a sealed box addressed to this identity; :class:`DecodeError` if it is not."""
        try:
            return nacl.public.SealedBox(self._box_key).decrypt(ciphertext)
        except (nacl.exceptions.CryptoError, ValueError, TypeError):
            raise DecodeError("sealed box does not open with this key") from None

    def __repr__(self) -> str:
        return f"Identity({self.session_id[:12]}…)"


def seal(recipient_x25519: bytes, plaintext: bytes) -> bytes:
    """Anonymous sealed box: only the recipient can open it, and it names no sender.
    :class:`DecodeError` for a key of small order (see :func:`sealable_key`)."""
    try:
        return nacl.public.SealedBox(nacl.public.PublicKey(recipient_x25519)).encrypt(plaintext)
    except nacl.exceptions.RuntimeError:
        raise DecodeError("nothing can be sealed to a point of small order") from None


def verify(ed25519_public: bytes, message: bytes, signature: bytes) -> bool:
    """True only for a valid signature; malformed keys or signatures are simply invalid."""
    return overlay_verify(ed25519_public, message, signature)


def session_id_key(session_id: str) -> bytes:
    """The X25519 public key inside a Session id, or :class:`DecodeError`."""
    if (
        not isinstance(session_id, str)
        or len(session_id) != SESSION_ID_CHARS
        or not session_id.startswith(SESSION_ID_PREFIX)
    ):
        raise DecodeError("a session id is '05' followed by 64 lowercase hex digits")
    try:
        key = bytes.fromhex(session_id[2:])
    except ValueError:
        raise DecodeError("a session id is '05' followed by 64 lowercase hex digits") from None
    if session_id[2:] != key.hex():
        raise DecodeError("a session id is '05' followed by 64 lowercase hex digits")
    return key


#: Any scalar does: clamped, it is a multiple of 8, so a point of small order gives zero.
_PROBE_SCALAR = bytes(32)


def sealable_key(session_id: str) -> bytes:
    """The X25519 key of a Session id that messages can be sealed to, or
    :class:`DecodeError`. A well-formed id may hold a point of small order (all zeros,
    say): every key exchange with it gives zero, so nothing sealed to it would be secret,
    and libsodium refuses. For ids a device will write to (contacts, devices, a primary to
    pair with), checked where they come in rather than on the first send."""
    key = session_id_key(session_id)
    try:
        nacl.bindings.crypto_scalarmult(_PROBE_SCALAR, key)
    except nacl.exceptions.RuntimeError:
        raise DecodeError("its key is a point of small order, which no one holds") from None
    return key


def ed25519_to_x25519(ed25519_public: bytes) -> bytes | None:
    """libsodium's Ed25519 → X25519 conversion; None for a key that is not a curve point."""
    if not isinstance(ed25519_public, bytes):
        return None
    return _x25519_of(ed25519_public)


@functools.lru_cache(maxsize=4096)
def _x25519_of(ed25519_public: bytes) -> bytes | None:
    """Remembered for the keys seen last: a conversion (a point decompression) costs as
    much as checking a signature, and a node converts the same owners' keys on every
    signed request (``retrieve``: 48 µs of its 100 or so)."""
    try:
        return bytes(nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(ed25519_public))
    except (nacl.exceptions.RuntimeError, nacl.exceptions.CryptoError, ValueError):
        return None


def session_id_of(ed25519_public: bytes) -> str | None:
    """The Session id of whoever holds ``ed25519_public``; None for a key that is not a
    curve point."""
    converted = ed25519_to_x25519(ed25519_public)
    return None if converted is None else SESSION_ID_PREFIX + converted.hex()


def ed25519_matches_session_id(ed25519_public: bytes, session_id: str) -> bool:
    converted = ed25519_to_x25519(ed25519_public)
    return converted is not None and hmac.compare_digest(converted, session_id_key(session_id))


def message_hash(stored_data: bytes) -> bytes:
    """The message id: BLAKE2b-256 of the stored ciphertext, the dedupe key everywhere."""
    return hashlib.blake2b(stored_data, digest_size=32).digest()
