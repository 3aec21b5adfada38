"""An id a device writes to must hold a key someone can hold. A well-formed id may name a
point of small order, to which libsodium will not seal: such an id is refused where it
comes in (a contact, a primary to pair with, a device list in a friend's record), with a
reason, not by a crash on the first message sealed to it."""

from __future__ import annotations

import pytest

from p2psync.device.content import FriendRequest, decode_content, encode_content
from p2psync.errors import DecodeError
from p2psync.identity import Identity, seal, sealable_key, session_id_key

#: X25519 public keys of small order: 0, 1, and a point of order 8.
SMALL_ORDER = [
    "00" * 32,
    "01" + "00" * 31,
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
]


@pytest.mark.parametrize("key", SMALL_ORDER)
def test_an_id_of_a_small_order_point_is_refused_before_anything_is_sealed_to_it(
    key: str,
) -> None:
    session_id = "05" + key
    assert session_id_key(session_id) == bytes.fromhex(key)  # well-formed
    with pytest.raises(DecodeError, match="small order"):
        sealable_key(session_id)
    with pytest.raises(DecodeError, match="small order"):
        seal(bytes.fromhex(key), b"anything")


def test_ids_of_real_keys_are_sealable() -> None:
    for label in ("alice", "bob", "carol"):
        identity = Identity.from_label(label)
        assert sealable_key(identity.session_id) == identity.x25519_public


@pytest.mark.parametrize("key", SMALL_ORDER)
def test_a_friends_record_listing_a_small_order_device_does_not_decode(key: str) -> None:
    """A friend's request names the devices to write to; one that cannot be written to
    would fail every send to that friend, so the record is refused as it comes in."""
    friend = Identity.from_label("friend").session_id
    kind, body = encode_content(FriendRequest(friend, (friend, "05" + key), "hi"))
    with pytest.raises(DecodeError, match="small order"):
        decode_content(kind, body)
