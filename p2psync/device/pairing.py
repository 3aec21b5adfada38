"""The short code a user compares on both screens while pairing.

A code taken from the new device's request alone could be ground out: whoever sees the
request (a storage node of the primary's swarm) re-seals requests of its own until one
shows the same six digits, about a million tries. So the primary adds a nonce the
requester cannot know in advance: a keyed hash of the request id under the primary's
seed (:func:`p2psync.device.keys.pairing_nonce`: the same on every device of a ``linked``
account), sent back signed as soon as the request arrives (``pair_challenge``); both
screens then show a code from the request id *and* that nonce. A request stored by
anyone else gets its own nonce and so, with odds of one in a million, another code, and
no amount of work beforehand changes that. The new device believes only a challenge
signed by the device it asked.

Six digits, grouped in threes to read aloud.
"""

from __future__ import annotations

import hashlib

CODE_DIGITS = 6
_PERSON = b"p2psync-paircode"


def pairing_code(request_id: bytes, nonce: bytes) -> str:
    digest = hashlib.blake2b(request_id + nonce, digest_size=8, person=_PERSON).digest()
    number = int.from_bytes(digest, "big") % 10**CODE_DIGITS
    text = f"{number:0{CODE_DIGITS}d}"
    return f"{text[:3]} {text[3:]}"
