"""The short code a user compares on both screens while pairing.

Both devices derive it from the pairing request's message id (the hash of the sealed
request as stored in the primary's swarm), which covers the new device's key: a request
injected by anyone else has another id and so, with odds of one in a million, another
code. Six digits, grouped in threes to read aloud.
"""

from __future__ import annotations

import hashlib

CODE_DIGITS = 6
_PERSON = b"p2psync-paircode"


def pairing_code(request_id: bytes) -> str:
    digest = hashlib.blake2b(request_id, digest_size=8, person=_PERSON).digest()
    number = int.from_bytes(digest, "big") % 10**CODE_DIGITS
    text = f"{number:0{CODE_DIGITS}d}"
    return f"{text[:3]} {text[3:]}"
