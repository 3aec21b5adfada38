"""A pairing address: the user's id and its mailbox access in one string, for a new
device to ask to pair by.

A new device asks by a store in the user's mailbox, and a store that shows no access of
the owner's may not fill the last quarter of the owner's quota (:mod:`~..swarm.access`).
So while a stranger holds the rest full, a request made with the user's id alone is
refused until the flood's rows expire. The primary shows its current access as a
pairing address (``device whoami --pairing-address``). A new device given that instead
of the id shows the access with each request, and the requests land in the reserve.

The address carries the access the primary puts in its envelopes that week: the new
device gets nothing a friend written to that week does not hold. It is a bearer token
all the same (whoever holds it may fill the reserve), so it is shown only when asked
for, and for the user's own device. It stops counting 28 to 35 days after it was shown
(:data:`~..swarm.access.ACCESS_VALIDITY_MS`); a new device then asks as a stranger does.

The form: ``pair:`` then base64url, unpadded, of the Ed25519 key (32 bytes; the user's
id is derived from it), the expiry (8 bytes, big-endian milliseconds) and the signature
(64 bytes): 144 characters, where an id is 66 hex digits. The prefix tells the two apart
at a glance, and keeps an address that would start with ``-`` from reading as an option.
"""

from __future__ import annotations

import base64
import binascii

from ..errors import DecodeError
from ..identity import KEY_BYTES, SIGNATURE_BYTES, sealable_key, session_id_of
from ..swarm.access import MailboxAccess, is_signed_by_owner

_EXPIRY_BYTES = 8
_ADDRESS_BYTES = KEY_BYTES + _EXPIRY_BYTES + SIGNATURE_BYTES
#: The latest expiry any decoder takes (SQLite's and CBOR's signed 64-bit range).
_MAX_EXPIRY_MS = 2**63 - 1
PAIRING_ADDRESS_PREFIX = "pair:"


def pairing_address(access: MailboxAccess) -> str:
    """The address of the mailbox ``access`` is for, showing ``access``."""
    raw = access.ed25519 + access.expiry_ms.to_bytes(_EXPIRY_BYTES, "big") + access.signature
    return _text_of(raw)


def _text_of(raw: bytes) -> str:
    return PAIRING_ADDRESS_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


_NOT_AN_ADDRESS = "a pairing address is 'pair:' and 139 characters of base64url"


def read_primary(text: str) -> tuple[str, MailboxAccess | None]:
    """The user id ``text`` names, a session id or a pairing address, and the access an
    address shows (None for an id); :class:`DecodeError` if it is neither, or an
    address whose signature is not its key's."""
    if not text.startswith(PAIRING_ADDRESS_PREFIX):
        sealable_key(text)
        return text, None
    encoded = text.removeprefix(PAIRING_ADDRESS_PREFIX)
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError):
        raise DecodeError(_NOT_AN_ADDRESS) from None
    if len(raw) != _ADDRESS_BYTES or _text_of(raw) != text:
        raise DecodeError(_NOT_AN_ADDRESS)
    key, rest = raw[:KEY_BYTES], raw[KEY_BYTES:]
    expiry_ms = int.from_bytes(rest[:_EXPIRY_BYTES], "big")
    if expiry_ms > _MAX_EXPIRY_MS:
        raise DecodeError("the pairing address's expiry is out of range")
    access = MailboxAccess(key, expiry_ms, rest[_EXPIRY_BYTES:])
    user = session_id_of(key)
    if user is None:
        raise DecodeError("the pairing address's key is not a curve point")
    sealable_key(user)
    if not is_signed_by_owner(access, user):
        raise DecodeError("the pairing address's signature is not its key's: mistyped?")
    return user, access
