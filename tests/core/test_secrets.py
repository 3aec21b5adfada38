"""Secrets stay where they belong: out of reprs (so out of logs and tracebacks) and out of
reach of other local users."""

from __future__ import annotations

import stat
from pathlib import Path

from nacl.bindings import crypto_sign_ed25519_sk_to_curve25519

from overlay.introset import rendezvous_keys
from overlay.keys import KeyPair
from overlay.onion import HopKeys
from p2psync.database import open_database
from p2psync.device.content import PairGrant
from p2psync.device.rows import Pairing
from p2psync.identity import Identity

SEED = bytes(range(32))


def test_key_reprs_show_no_secret() -> None:
    keys = KeyPair.from_seed(SEED)
    hop = HopKeys.derive(SEED)
    rendezvous = rendezvous_keys(SEED, keys.public, 0)
    sign_secret = SEED + keys.public  # libsodium's Ed25519 secret key: seed, then public key
    x25519_secret = crypto_sign_ed25519_sk_to_curve25519(sign_secret)
    grant = PairGrant(b"id", None, SEED, x25519_secret, (), ())
    pairing = Pairing(b"id", False, "peer", "name", 0, "waiting", rendezvous.encryption_key)
    layer_ends = (hop.owner_side(), hop.relay_side())  # hold the hop's keys and tag keys
    text = repr((keys, hop, layer_ends, rendezvous, Identity(SEED), grant, pairing))
    secrets = [SEED, sign_secret, x25519_secret, rendezvous.encryption_key]
    secrets += [hop.forward_key, hop.backward_key, hop.build_stream_key]
    secrets += [hop.forward_tag_key, hop.backward_tag_key]
    for secret in secrets:
        assert repr(secret) not in text and secret.hex() not in text


def test_hop_keys_are_separate_per_use_and_direction() -> None:
    """A tag key equal to a layer key, or the same in both directions, would let one
    direction's tags, or the AEAD, be matched against the other's."""
    hop = HopKeys.derive(SEED)
    keys = [hop.forward_key, hop.forward_tag_key, hop.backward_key, hop.backward_tag_key]
    keys += [hop.build_stream_key]
    assert len(set(keys)) == len(keys) and all(len(key) == 32 for key in keys)
    assert HopKeys.derive(bytes(32)).forward_tag_key != hop.forward_tag_key


def test_new_databases_are_private(tmp_path: Path) -> None:
    path = tmp_path / "device.sqlite3"
    db = open_database(path, "CREATE TABLE t (x INTEGER);")
    db.execute("INSERT INTO t VALUES (1)")
    for file in tmp_path.iterdir():
        assert stat.S_IMODE(file.stat().st_mode) & 0o077 == 0, file
    db.close()


def test_choice_seeds_come_from_the_secret_seed_one_per_purpose() -> None:
    from p2psync.device.keys import choice_seed, overlay_public

    relays, swarm = choice_seed(SEED, b"relays"), choice_seed(SEED, b"swarm")
    assert relays != swarm
    public = overlay_public(SEED)
    assert relays.to_bytes(16, "big") not in public + SEED
    assert choice_seed(bytes(32), b"relays") != relays
