"""Signed relay contacts: what a relay directory is made of.

A contact binds a relay's Ed25519 public key to a transport address until an expiry, signed
by that key. Whoever hands a directory to a relay or an endpoint (the p2psync registry, a
test) hands raw contacts; :func:`verified_directory` keeps only the ones that verify.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .constants import CONTACT_LIFETIME_MS
from .keys import KeyPair, verify, x25519_of

_DOMAIN = b"p2psync-overlay-contact-v1"
_HEAD = struct.Struct(">32sQH")


class ContactError(ValueError):
    """A contact that does not decode or verify."""


@dataclass(frozen=True)
class Contact:
    pubkey: bytes
    address: str
    expiry_ms: int
    signature: bytes

    @property
    def x25519(self) -> bytes:
        return x25519_of(self.pubkey)

    def _signed_part(self) -> bytes:
        address = self.address.encode()
        return _DOMAIN + _HEAD.pack(self.pubkey, self.expiry_ms, len(address)) + address

    def encode(self) -> bytes:
        return self._signed_part()[len(_DOMAIN) :] + self.signature

    @classmethod
    def decode(cls, data: bytes) -> Contact:
        if len(data) < _HEAD.size + 64:
            raise ContactError("contact too short")
        pubkey, expiry_ms, size = _HEAD.unpack_from(data)
        if len(data) != _HEAD.size + size + 64:
            raise ContactError("contact has the wrong length")
        try:
            address = data[_HEAD.size : _HEAD.size + size].decode()
        except UnicodeDecodeError:
            raise ContactError("contact address is not UTF-8") from None
        return cls(pubkey, address, expiry_ms, data[-64:])

    def verify(self, now_ms: int) -> None:
        """Raise :class:`ContactError` unless signed by its own key and unexpired."""
        if self.expiry_ms <= now_ms:
            raise ContactError("contact expired")
        if not verify(self.pubkey, self._signed_part(), self.signature):
            raise ContactError("contact signature does not verify")
        try:
            x25519_of(self.pubkey)
        except ValueError:
            raise ContactError("contact key is not a valid Ed25519 key") from None


def make_contact(
    keys: KeyPair, address: str, now_ms: int, lifetime_ms: int = CONTACT_LIFETIME_MS
) -> Contact:
    unsigned = Contact(keys.public, address, now_ms + lifetime_ms, b"")
    return Contact(keys.public, address, unsigned.expiry_ms, keys.sign(unsigned._signed_part()))


def verified_directory(contacts: list[Contact], now_ms: int) -> dict[bytes, Contact]:
    """Pubkey → contact, for the contacts that verify (the rest are silently left out)."""
    directory: dict[bytes, Contact] = {}
    for contact in contacts:
        try:
            contact.verify(now_ms)
        except ContactError:
            continue
        directory[contact.pubkey] = contact
    return directory
