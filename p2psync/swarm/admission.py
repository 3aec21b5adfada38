"""Admission: which service nodes belong to the network, and where each sits on the ring.

On the network this emulates, a service node is admitted by locking a stake on the
ledger, not by saying so; anyone may run a node, but only a staked one is listed, and
Sybils cost real money. Here the network's **ledger** is an Ed25519 key (the admission
authority) that signs a :class:`Registration` for each node it admits: the node's key, its
stake and the ledger height at which it was admitted. Every reader (registry, nodes,
clients) is configured with the ledger's public key and lists a node only with a
registration that verifies under it.

A node's swarm position is the hash of the ledger's signature over its registration: data
chosen by the ledger after the node picked its key, which the node can neither predict
nor grind (Ed25519 signatures are deterministic under a secret key it does not hold), so
nobody can place a run of keys into one swarm to own it.

Pure but for a ledger opened on a state file (:meth:`Ledger.open`), which keeps its height
there so that heights only ever grow across restarts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import DecodeError
from ..identity import KEY_BYTES, SIGNATURE_BYTES, Identity, verify
from ..whole_file import replace_file
from ..wire import Fields, decode_cbor, encode_cbor

REGISTRATION_DOMAIN = b"p2psync-registration/1:"
#: The stake a registration must lock (in the ledger's smallest unit; the real network
#: asks 15 000 coins of a full node).
MIN_STAKE = 15_000
#: Far more than any real ledger, and well inside SQLite's signed 64 bits.
MAX_STAKE = 10**15
MAX_HEIGHT = 2**48
MAX_REGISTRATION_BYTES = 256


@dataclass(frozen=True, slots=True)
class Registration:
    """The ledger's word that ``node`` (Ed25519 key, hex) staked ``stake`` at ``height``."""

    node: str
    stake: int
    height: int
    signature: bytes

    def signed_bytes(self) -> bytes:
        return REGISTRATION_DOMAIN + encode_cbor(
            {"node": self.node, "stake": self.stake, "height": self.height}
        )

    @property
    def position(self) -> int:
        """The node's place on the ring: 64 bits of the ledger's signature."""
        digest = hashlib.blake2b(self.signature, digest_size=8, person=b"p2psync-ring")
        return int.from_bytes(digest.digest(), "big")

    def encode(self) -> bytes:
        return encode_cbor(
            {"node": self.node, "stake": self.stake, "height": self.height, "sig": self.signature}
        )

    @classmethod
    def decode(cls, data: bytes) -> Registration:
        """Shape and ranges only; :meth:`check` says whether the ledger signed it."""
        if len(data) > MAX_REGISTRATION_BYTES:
            raise DecodeError("a registration is at most 256 bytes")
        fields = Fields(decode_cbor(data), "registration").only("node", "stake", "height", "sig")
        node = fields.text("node", max_len=2 * KEY_BYTES)
        if len(node) != 2 * KEY_BYTES or node != node.lower():
            raise DecodeError("registration.node must be a lowercase hex key")
        try:
            bytes.fromhex(node)
        except ValueError:
            raise DecodeError("registration.node must be a lowercase hex key") from None
        return cls(
            node,
            fields.uint("stake", maximum=MAX_STAKE),
            fields.uint("height", maximum=MAX_HEIGHT),
            fields.blob("sig", size=SIGNATURE_BYTES),
        )

    def check(self, ledger_key: bytes, node: str) -> None:
        """:class:`DecodeError` unless the ledger signed this registration for ``node``
        with at least the minimum stake."""
        if self.node != node:
            raise DecodeError("the registration is for another node")
        if self.stake < MIN_STAKE:
            raise DecodeError(f"a registration must stake at least {MIN_STAKE}")
        if not verify(ledger_key, self.signed_bytes(), self.signature):
            raise DecodeError("the registration is not signed by this network's ledger")


def checked_registration(data: bytes, ledger_key: bytes, node: str) -> Registration:
    """Decode and check in one step: what every reader does with a node's registration."""
    registration = Registration.decode(data)
    registration.check(ledger_key, node)
    return registration


class Ledger:
    """The admission authority: it registers nodes, one height each, in order."""

    def __init__(self, identity: Identity, height: int = 0, path: Path | None = None) -> None:
        self._identity = identity
        self.height = height
        self._path = path

    @property
    def public_key(self) -> bytes:
        return self._identity.ed25519_public

    @classmethod
    def open(cls, identity: Identity, state: Path) -> Ledger:
        """The ledger of ``identity`` whose height is kept in the file ``state``."""
        height = json.loads(state.read_text())["height"] if state.exists() else 0
        return cls(identity, int(height), state)

    def register(self, node: str, stake: int = MIN_STAKE) -> Registration:
        """Admit ``node`` at the next height."""
        self.height += 1
        unsigned = Registration(node, stake, self.height, b"")
        registration = Registration(
            node, stake, self.height, self._identity.sign(unsigned.signed_bytes())
        )
        if self._path is not None:
            replace_file(self._path, json.dumps({"height": self.height}).encode())
        return registration


__all__ = [
    "MIN_STAKE",
    "Ledger",
    "Registration",
    "checked_registration",
]
