"""Per-hop cryptography of a path: build records and symmetric onion layers.

Keys are agreed once per hop at build time (X25519 between an ephemeral key of the builder
and the hop's long-term key) and split with keyed BLAKE2b into direction-separated keys,
nonce prefixes and counter-tag keys. Every layer is XChaCha20-Poly1305 with a nonce =
prefix ‖ 64-bit counter. Both ends of a hop count the cells of each direction and keep the
count to themselves: a layer starts with an 8-byte *tag* of its counter (keyed BLAKE2b under
that hop's tag key), not the counter. Tags of one cell on different links come from
independent keys, so colluding relays cannot match a cell across links by them, and a link
shows no count advancing. The receiving end expects the next counter's tag, so a replay or
reordering is refused, and a cell lost on the way is recognised by the next one's tag and
breaks the path (:class:`PathBroken`).

Layer geometry: hop ``i`` (1-based) of a path owns the first ``layer_bytes(i)`` bytes of a
cell body; peeling its layer leaves ``layer_bytes(i+1)`` bytes, which it pads back to a full
body. A hop therefore learns its distance from the path's owner (from its record), never the
length of the path.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections import deque
from dataclasses import dataclass

import nacl.bindings as sodium

from .constants import (
    BUILD_FRAME_BYTES,
    BUILD_FRAMES,
    BUILD_RECORD_PLAINTEXT_BYTES,
    CELL_BODY_BYTES,
    CLOCK_SKEW_ALLOWANCE_MS,
    LAYER_GAP_WINDOW,
    LAYER_OVERHEAD_BYTES,
    MAX_HOPS,
    MAX_PATH_LIFETIME_MS,
    PATH_ID_BYTES,
)
from .keys import kdf

_encrypt = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt
_decrypt = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt
_COUNTER = struct.Struct(">Q")
_TAG_BYTES = 8
_RECORD = struct.Struct(">16s16s32sQHB")


class LayerError(ValueError):
    """A layer or record that does not authenticate: tampered, misrouted or replayed."""


class ReplayedLayer(LayerError):
    """A layer whose tag is neither the expected counter's nor one a little ahead: a
    replay of an earlier cell, or junk. Dropped; the path is unaffected."""


class PathBroken(LayerError):
    """A layer sealed under a counter past the expected one: cells of this path were lost
    or withheld on the way, and the path must be given up.

    A hop that skipped ahead instead would tell whoever sits later on the path which cells
    went missing, so a relay early on the path could mark it with a pattern of drops (a
    watermark) for a colluding relay later on to read. Failing the path makes a drop cost
    the whole path, visibly to its owner, who builds another; and an ordered link loses a
    cell only when something is wrong with it anyway."""


class RecordError(LayerError):
    """A build record that authenticates but holds a value out of range (version, hop
    index, expiry): refused as malformed, since its builder made it so."""


def layer_bytes(hop_index: int) -> int:
    """Bytes of the body that hop ``hop_index`` (1-based) decrypts on the way out."""
    return CELL_BODY_BYTES - LAYER_OVERHEAD_BYTES * (hop_index - 1)


def counter_tag(tag_key: bytes, counter: int) -> bytes:
    """What a layer shows of its counter: unlinkable to it without the hop's tag key."""
    return hashlib.blake2b(_COUNTER.pack(counter), digest_size=_TAG_BYTES, key=tag_key).digest()


def seal_layer(key: bytes, prefix: bytes, tag_key: bytes, counter: int, plaintext: bytes) -> bytes:
    """tag ‖ AEAD(plaintext): ``len(plaintext) + LAYER_OVERHEAD_BYTES`` bytes."""
    nonce = prefix + _COUNTER.pack(counter)
    return counter_tag(tag_key, counter) + _encrypt(plaintext, None, nonce, key)


def open_layer(key: bytes, prefix: bytes, counter: int, data: bytes) -> bytes:
    """The plaintext of a layer sealed under ``counter`` (whose tag the caller matched),
    or :class:`LayerError`."""
    try:
        return bytes(_decrypt(data[_TAG_BYTES:], None, prefix + _COUNTER.pack(counter), key))
    except Exception:
        raise LayerError("layer does not authenticate") from None


class LayerSealer:
    """The sending end of one direction of one hop: seals under counters 1, 2, 3, …"""

    def __init__(self, key: bytes, prefix: bytes, tag_key: bytes) -> None:
        self._key, self._prefix, self._tag_key = key, prefix, tag_key
        self._next = 1

    def __repr__(self) -> str:
        return "LayerSealer(...)"  # holds secrets

    def seal(self, plaintext: bytes) -> bytes:
        counter = self._next
        self._next += 1
        return seal_layer(self._key, self._prefix, self._tag_key, counter, plaintext)


class LayerOpener:
    """The receiving end of one direction of one hop: opens the next counter's layer only.

    It matches each cell's tag against the next counter's, one keyed hash a cell as
    sealing costs. The first cell that does not match makes it keep the tags of the
    ``LAYER_GAP_WINDOW`` counters ahead from then on, so telling a lost cell from a replay
    costs a lookup; most paths never see such a cell, and their hops never compute that
    window."""

    def __init__(self, key: bytes, prefix: bytes, tag_key: bytes) -> None:
        self._key, self._prefix, self._tag_key = key, prefix, tag_key
        self._next = 1
        self._expected = counter_tag(tag_key, 1)
        self._ahead: deque[bytes] | None = None  # the counters after the next one

    def __repr__(self) -> str:
        return "LayerOpener(...)"  # holds secrets

    def open(self, data: bytes) -> bytes:
        """The plaintext of the next layer; :class:`PathBroken` if cells before it went
        missing, :class:`ReplayedLayer` for a replay or junk, :class:`LayerError` if it
        does not authenticate (the counter then stays where it was)."""
        tag = data[:_TAG_BYTES]
        if tag != self._expected:
            if self._ahead is None:
                self._ahead = deque(
                    counter_tag(self._tag_key, c)
                    for c in range(self._next + 1, self._next + LAYER_GAP_WINDOW)
                )
            if tag in self._ahead:
                raise PathBroken("cells of this path were lost on the way")
            raise ReplayedLayer("not the next cell of this path")
        plaintext = open_layer(self._key, self._prefix, self._next, data)
        self._next += 1
        if self._ahead is None:
            self._expected = counter_tag(self._tag_key, self._next)
        else:
            self._expected = self._ahead.popleft()
            self._ahead.append(counter_tag(self._tag_key, self._next + LAYER_GAP_WINDOW - 1))
        return plaintext


def pad_body(data: bytes) -> bytes:
    """Fill a body to full size with random bytes (zeros would show where layers end)."""
    return data + os.urandom(CELL_BODY_BYTES - len(data))


@dataclass(frozen=True, repr=False)
class HopKeys:
    """Symmetric keys of one hop, both ends derive them from the same ECDH secret."""

    forward_key: bytes
    forward_prefix: bytes
    forward_tag_key: bytes
    backward_key: bytes
    backward_prefix: bytes
    backward_tag_key: bytes
    build_stream_key: bytes

    def __repr__(self) -> str:
        return "HopKeys(...)"  # all secret

    @classmethod
    def derive(cls, shared: bytes) -> HopKeys:
        return cls(
            forward_key=kdf(shared, b"p2ps-hop-fwd-key"),
            forward_prefix=kdf(shared, b"p2ps-hop-fwd-non", 16),
            forward_tag_key=kdf(shared, b"p2ps-hop-fwd-tag"),
            backward_key=kdf(shared, b"p2ps-hop-bck-key"),
            backward_prefix=kdf(shared, b"p2ps-hop-bck-non", 16),
            backward_tag_key=kdf(shared, b"p2ps-hop-bck-tag"),
            build_stream_key=kdf(shared, b"p2ps-hop-build"),
        )

    def owner_side(self) -> tuple[LayerSealer, LayerOpener]:
        """The path owner's ends: it seals cells outward and opens the replies."""
        return (
            LayerSealer(self.forward_key, self.forward_prefix, self.forward_tag_key),
            LayerOpener(self.backward_key, self.backward_prefix, self.backward_tag_key),
        )

    def relay_side(self) -> tuple[LayerOpener, LayerSealer]:
        """The hop's ends: it opens cells from the owner and seals the replies."""
        return (
            LayerOpener(self.forward_key, self.forward_prefix, self.forward_tag_key),
            LayerSealer(self.backward_key, self.backward_prefix, self.backward_tag_key),
        )


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
    def decode(cls, data: bytes, now_ms: int) -> BuildRecord:
        """Every integer is range-checked here, against the relay's clock for the expiry:
        a hop kept until a far-future expiry (2**64 - 1 fits) would be kept for ever."""
        if len(data) != BUILD_RECORD_PLAINTEXT_BYTES:
            raise LayerError("build record has the wrong size")
        up, down, next_hop, expiry_ms, hop_index, version = _RECORD.unpack_from(data)
        if version != 1 or not 1 <= hop_index <= MAX_HOPS:
            raise RecordError("build record has a bad version or hop index")
        if not now_ms < expiry_ms <= now_ms + MAX_PATH_LIFETIME_MS + CLOCK_SKEW_ALLOWANCE_MS:
            raise RecordError("build record has expired or expires too late")
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
    body: bytes, x25519_secret_dh: object, now_ms: int
) -> tuple[bytes, BuildRecord, HopKeys, bytes]:
    """(ephemeral key, record, keys, body for the next hop) from a build body.

    ``x25519_secret_dh`` is the hop's ``KeyPair.dh``. Raises :class:`LayerError`
    (:class:`RecordError` for a record that opens but is out of range at ``now_ms``).
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
    record = BuildRecord.decode(plaintext, now_ms)
    keys = HopKeys.derive(shared)
    rest = body[BUILD_FRAME_BYTES : BUILD_FRAMES * BUILD_FRAME_BYTES]
    rest = _xor(rest, _keystream(keys.build_stream_key, _REST_BYTES))
    return ephemeral, record, keys, pad_body(rest + os.urandom(BUILD_FRAME_BYTES))


def new_path_id() -> bytes:
    return os.urandom(PATH_ID_BYTES)
