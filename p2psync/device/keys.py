"""Keys a device derives rather than stores, each for one purpose (domain-separated by
BLAKE2b personalisation, so no derived key can stand in for another).

* The overlay key: a device is reached on the overlay by a key derived from its device
  seed, so its overlay identity says nothing about its Session id.
* The siblings' secret: what siblings find each other's introsets by (DESIGN.md §6). In
  ``linked`` mode it derives from the shared account seed; in ``mapped`` mode the primary
  makes one and hands it over in the pairing grant.
* Pairing nonces: the primary's part of a pairing code (:mod:`p2psync.device.pairing`).
* Choice seeds: swarm member choice, poll jitter and relay choice are drawn from
  generators seeded by these, so a simulation with given device seeds repeats exactly,
  while nobody without the device seed can predict a device's choices (nor learn anything
  about the seed from them).
"""

from __future__ import annotations

import hashlib

from overlay.keys import KeyPair

_OVERLAY = b"p2psync-overlay"
_SIBLINGS = b"p2psync-siblings"
_CHOICE = b"p2psync-choice"
_PAIRING = b"p2psync-pairnonc"


def overlay_seed(device_seed: bytes) -> bytes:
    return hashlib.blake2b(device_seed, digest_size=32, person=_OVERLAY).digest()


def overlay_public(device_seed: bytes) -> bytes:
    return KeyPair.from_seed(overlay_seed(device_seed)).public


def siblings_secret(account_seed: bytes) -> bytes:
    return hashlib.blake2b(account_seed, digest_size=32, person=_SIBLINGS).digest()


def pairing_nonce(identity_seed: bytes, request_id: bytes) -> bytes:
    """The primary's contribution to a pairing code: a keyed hash of the request, so it is
    fixed only once the request is, unknowable without the seed, and the same on every
    device of a ``linked`` account (any of them may answer and accept)."""
    return hashlib.blake2b(request_id, digest_size=32, key=identity_seed, person=_PAIRING).digest()


def choice_seed(device_seed: bytes, purpose: bytes) -> int:
    """A seed for the random choices made for ``purpose`` (at most 16 bytes)."""
    digest = hashlib.blake2b(device_seed, digest_size=16, person=_CHOICE, salt=purpose)
    return int.from_bytes(digest.digest(), "big")
