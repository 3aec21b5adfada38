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

Answering a request costs the primary a signature and a stored message (the challenge),
and anyone can seal requests to it, so it answers a requester key at most
:data:`REQUESTS_PER_KEY` times at once and then once per :data:`REQUEST_KEY_REFILL_S`,
and all requesters together at most :data:`REQUESTS_BURST` times, then once per
:data:`REQUEST_REFILL_S`; a request beyond that is refused before any of that work. An
honest new device makes one request per attempt, so it passes while another key floods.
A ``linked`` request is sealed by a key made for it alone, so there the total is what a
flood of fresh keys runs into: while one lasts, honest requests are refused as well, and
the new device, hearing no challenge within the pairing window, asks the user to try again.
"""

from __future__ import annotations

import hashlib

CODE_DIGITS = 6
REQUESTS_PER_KEY = 3
REQUEST_KEY_REFILL_S = 600.0
REQUESTS_BURST = 10
REQUEST_REFILL_S = 60.0
_PERSON = b"p2psync-paircode"


def pairing_code(request_id: bytes, nonce: bytes) -> str:
    digest = hashlib.blake2b(request_id + nonce, digest_size=8, person=_PERSON).digest()
    number = int.from_bytes(digest, "big") % 10**CODE_DIGITS
    text = f"{number:0{CODE_DIGITS}d}"
    return f"{text[:3]} {text[3:]}"
