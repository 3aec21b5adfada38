"""Per-hop cryptography of a path: build records and symmetric onion layers.

Keys are agreed once per hop at build time (X25519 between an ephemeral key of the builder
and the hop's long-term key) and split with keyed BLAKE2b into direction-separated keys and
nonce prefixes. Every layer is XChaCha20-Poly1305 with a nonce = prefix ‖ 64-bit counter; a
counter is never reused and a hop accepts only counters above the last one it saw (links are
ordered, so this is also replay protection).

Layer geometry: hop ``i`` (1-based) of a path owns the first ``layer_bytes(i)`` bytes of a
cell body; peeling its layer leaves ``layer_bytes(i+1)`` bytes, which it pads back to a full
body. A hop therefore learns its distance from the path's owner (from its record), never the
length of the path.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import nacl.bindings as sodium

from .constants import (
    BUILD_FRAME_BYTES,
    BUILD_FRAMES,
    BUILD_RECORD_PLAINTEXT_BYTES,
    CELL_BODY_BYTES,
    LAYER_OVERHEAD_BYTES,
    MAX_HOPS,
    PATH_ID_BYTES,
)
from .keys import kdf

_encrypt = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt
_decrypt = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt
_COUNTER = struct.Struct(">Q")
_RECORD = struct.Struct(">16s16s32sQHB")


class LayerError(ValueError):
    """A layer or record that does not authenticate: tampered, misrouted or replayed."""


def layer_bytes(hop_index: int) -> int:
    """Bytes of the body that hop ``hop_index`` (1-based) decrypts on the way out."""
    return CELL_BODY_BYTES - LAYER_OVERHEAD_BYTES * (hop_index - 1)


@dataclass(frozen=True, repr=False)
class HopKeys:
    """Symmetric keys of one hop, both ends derive them from the same ECDH secret."""

    forward_key: bytes
    forward_prefix: bytes
    backward_key: bytes
    backward_prefix: bytes
    build_stream_key: bytes

    def __repr__(self) -> str:
        return "HopKeys(...)"  # all secret

    @classmethod
    def derive(cls, shared: bytes) -> HopKeys:
        return cls(
            forward_key=kdf(shared, b"p2ps-hop-fwd-key"),
            forward_prefix=kdf(shared, b"p2ps-hop-fwd-non", 16),
            backward_key=kdf(shared, b"p2ps-hop-bck-key"),
            backward_prefix=kdf(shared, b"p2ps-hop-bck-non", 16),
            build_stream_key=kdf(shared, b"p2ps-hop-build"),
        )


def seal_layer(key: bytes, prefix: bytes, counter: int, plaintext: bytes) -> bytes:
    """counter ‖ AEAD(plaintext): ``len(plaintext) + LAYER_OVERHEAD_BYTES`` bytes."""
    ctr = _COUNTER.pack(counter)
    return ctr + _encrypt(plaintext, None, prefix + ctr, key)


def open_layer(key: bytes, prefix: bytes, data: bytes) -> tuple[int, bytes]:
    """(counter, plaintext) of a sealed layer, or :class:`LayerError`."""
    ctr = data[:8]
    try:
        plaintext = _decrypt(data[8:], None, prefix + ctr, key)
    except Exception:
        raise LayerError("layer does not authenticate") from None
    return _COUNTER.unpack(ctr)[0], plaintext


def pad_body(data: bytes) -> bytes:
    """Fill a body to full size with random bytes (zeros would show where layers end)."""
    return data + os.urandom(CELL_BODY_BYTES - len(data))


# --- build records ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildRecord:
    """What one hop learns when a path is built through it.

    ``upstream_id`` labels cells between the previous hop and this one, ``downstream_id``
    cells between this hop and the next (for the terminal hop: its intro id, under which
    other relays hand it cells for this path's owner). ``next_hop`` is the next relay's
    Ed25519 key, or all zeros at the terminal.
    """

    upstream_id: bytes
    downstream_id: bytes
    next_hop: bytes
    expiry_ms: int
    hop_index: int

    @property
    def terminal(self) -> bool:
        return self.next_hop == bytes(32)

    def encode(self) -> bytes:
        packed = _RECORD.pack(
            self.upstream_id,
            self.downstream_id,
            self.next_hop,
            self.expiry_ms,
            self.hop_index,
            1,
        )
        return packed + bytes(BUILD_RECORD_PLAINTEXT_BYTES - len(packed))

    @classmethod
    def decode(cls, data: bytes) -> BuildRecord:
        if len(data) != BUILD_RECORD_PLAINTEXT_BYTES:
            raise LayerError("build record has the wrong size")
        up, down, next_hop, expiry_ms, hop_index, version = _RECORD.unpack_from(data)
        if version != 1 or not 1 <= hop_index <= MAX_HOPS:
            raise LayerError("build record has a bad version or hop index")
        return cls(up, down, next_hop, expiry_ms, hop_index)


def _record_key_nonce(shared: bytes, ephemeral: bytes) -> tuple[bytes, bytes]:
    return kdf(shared, b"p2ps-record-key"), kdf(ephemeral, b"p2ps-record-non", 24)


def _keystream(key: bytes, size: int) -> bytes:
    # XChaCha20 keystream: the AEAD's ciphertext of zeros without its tag.
    return bytes(_encrypt(bytes(size), None, bytes(24), key)[:size])


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


_REST_BYTES = (BUILD_FRAMES - 1) * BUILD_FRAME_BYTES


def seal_build_frames(
    records: list[BuildRecord], hop_x25519_keys: list[bytes]
) -> tuple[bytes, list[HopKeys]]:
    """The build body (always ``BUILD_FRAMES`` frames) and the builder's per-hop keys.

    Each hop pops the first frame and XORs the rest with a keystream of its own, so the
    frames for later hops are different bytes on every link; this side pre-applies the
    inverse of those streams.
    """
    hops = len(records)
    if not 1 <= hops <= MAX_HOPS or hops != len(hop_x25519_keys):
        raise ValueError("one record per hop, 1..MAX_HOPS hops")
    frames: list[bytes] = []
    keys: list[HopKeys] = []
    for record, hop_key in zip(records, hop_x25519_keys, strict=True):
        secret = os.urandom(32)
        ephemeral = bytes(sodium.crypto_scalarmult_base(secret))
        shared = bytes(sodium.crypto_scalarmult(secret, hop_key))
        key, nonce = _record_key_nonce(shared, ephemeral)
        frames.append(ephemeral + _encrypt(record.encode(), None, nonce, key))
        keys.append(HopKeys.derive(shared))
    frames += [os.urandom(BUILD_FRAME_BYTES) for _ in range(BUILD_FRAMES - hops)]
    streams = [_keystream(k.build_stream_key, _REST_BYTES) for k in keys]
    for position in range(1, hops):
        frame = frames[position]
        for hop in range(1, position + 1):  # hop (1-based) XORs it at slot position - hop
            slot = position - hop
            stream = streams[hop - 1][slot * BUILD_FRAME_BYTES : (slot + 1) * BUILD_FRAME_BYTES]
            frame = _xor(frame, stream)
        frames[position] = frame
    return b"".join(frames), keys


def open_build_frame(
    body: bytes, x25519_secret_dh: object
) -> tuple[bytes, BuildRecord, HopKeys, bytes]:
    """(ephemeral key, record, keys, body for the next hop) from a build body.

    ``x25519_secret_dh`` is the hop's ``KeyPair.dh``. Raises :class:`LayerError`.
    """
    assert callable(x25519_secret_dh)
    if len(body) < BUILD_FRAMES * BUILD_FRAME_BYTES:
        raise LayerError("build body too short")
    ephemeral = body[:32]
    try:
        shared: bytes = x25519_secret_dh(ephemeral)
    except Exception:
        raise LayerError("bad ephemeral key in build frame") from None
    key, nonce = _record_key_nonce(shared, ephemeral)
    try:
        plaintext = _decrypt(body[32:BUILD_FRAME_BYTES], None, nonce, key)
    except Exception:
        raise LayerError("build record does not authenticate") from None
    record = BuildRecord.decode(plaintext)
    keys = HopKeys.derive(shared)
    rest = body[BUILD_FRAME_BYTES : BUILD_FRAMES * BUILD_FRAME_BYTES]
    rest = _xor(rest, _keystream(keys.build_stream_key, _REST_BYTES))
    return ephemeral, record, keys, pad_body(rest + os.urandom(BUILD_FRAME_BYTES))


def new_path_id() -> bytes:
    return os.urandom(PATH_ID_BYTES)
