"""Pairing addresses (:mod:`p2psync.device.pairing_address`): the user's id and its
mailbox access in one string, and what a new device refuses to read as one."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2psync.clock import TEST_EPOCH_MS
from p2psync.device.pairing_address import pairing_address, read_primary
from p2psync.errors import DecodeError
from p2psync.identity import Identity
from p2psync.swarm.access import MailboxAccess, access_text, sign_access

OWNER = Identity.from_label("pairing-address/owner")


def _address_of(key: bytes, expiry_ms: int, signature: bytes) -> str:
    raw = key + expiry_ms.to_bytes(8, "big") + signature
    return "pair:" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_an_address_reads_back_as_its_owner_and_access() -> None:
    access = sign_access(OWNER, TEST_EPOCH_MS)
    address = pairing_address(access)
    assert len(address) == 144 and address.startswith("pair:")
    assert read_primary(address) == (OWNER.session_id, access)


def test_a_session_id_reads_as_itself_with_no_access() -> None:
    assert read_primary(OWNER.session_id) == (OWNER.session_id, None)


def test_an_address_signed_by_another_key_is_refused() -> None:
    """A mistyped or forged address: the key and the signature do not match, so the new
    device says so rather than asking a stranger's mailbox."""
    other = sign_access(Identity.from_label("pairing-address/other"), TEST_EPOCH_MS)
    forged = _address_of(OWNER.ed25519_public, other.expiry_ms, other.signature)
    with pytest.raises(DecodeError, match="signature is not its key's"):
        read_primary(forged)


def test_an_expiry_past_what_any_decoder_takes_is_refused() -> None:
    """Signed by the owner, but 2**63 does not fit the stores' and nodes' integers."""
    expiry_ms = 2**63
    signature = OWNER.sign(access_text(OWNER.session_id, expiry_ms))
    with pytest.raises(DecodeError, match="out of range"):
        read_primary(_address_of(OWNER.ed25519_public, expiry_ms, signature))


def test_a_key_that_is_no_curve_point_is_refused() -> None:
    access = sign_access(OWNER, TEST_EPOCH_MS)
    bad_key = bytes([2]) + bytes(31)  # y = 2: no point of the curve has it
    with pytest.raises(DecodeError, match="not a curve point"):
        read_primary(_address_of(bad_key, access.expiry_ms, access.signature))


@pytest.mark.parametrize(
    "respell",
    [
        lambda a: a + "=",  # padded: the same bytes
        lambda a: a[:70] + "\n" + a[70:],  # a character base64 decoders skip
        lambda a: a + "A",
        lambda a: a[:-1] + "!",
    ],
)
def test_only_the_one_spelling_the_primary_shows_is_an_address(
    respell: Callable[[str], str],
) -> None:
    """base64 decoders take padding and skip characters outside the alphabet, so other
    strings would read as the same bytes: only the one spelling the primary shows is
    taken, as anything else may be a mistyped one."""
    address = pairing_address(sign_access(OWNER, TEST_EPOCH_MS))
    with pytest.raises(DecodeError, match="base64url"):
        read_primary(respell(address))


@given(st.text(max_size=200))
def test_any_text_reads_as_an_id_or_address_or_is_refused_with_a_decode_error(text: str) -> None:
    try:
        user, access = read_primary(text)
    except DecodeError:
        return
    assert access is None or isinstance(access, MailboxAccess)
    assert user.startswith("05") and len(user) == 66
