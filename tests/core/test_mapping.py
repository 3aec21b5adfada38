"""Device-mapping records: two-step pairing, verification, forgeries, strict decoding."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2psync.clock import TEST_EPOCH_MS
from p2psync.errors import DecodeError
from p2psync.identity import Identity
from p2psync.mapping import (
    AuthorisationError,
    DeviceMapping,
    PairingRequest,
    Revocation,
    create_mapping,
    device_set,
    grant_pairing,
    revoke_pairing,
    sign_pairing_request,
)
from p2psync.wire import decode_cbor, encode_cbor

PRIMARY = Identity.from_label("mapping/primary")
SECONDARY = Identity.from_label("mapping/secondary")
OTHER = Identity.from_label("mapping/other")
TS = TEST_EPOCH_MS


def test_two_step_pairing_equals_create_mapping_and_verifies() -> None:
    request = sign_pairing_request(SECONDARY, PRIMARY.session_id, TS)
    request.verify()
    wire_request = PairingRequest.from_bytes(request.to_bytes())
    assert wire_request == request
    mapping = grant_pairing(PRIMARY, wire_request)
    mapping.verify()
    assert mapping == create_mapping(PRIMARY, SECONDARY, TS)
    assert mapping.primary == PRIMARY.session_id and mapping.secondary == SECONDARY.session_id
    decoded = DeviceMapping.from_bytes(mapping.to_bytes())
    assert decoded == mapping and decoded.to_bytes() == mapping.to_bytes()
    decoded.verify()


def test_mapping_wire_format_is_the_documented_map() -> None:
    fields = decode_cbor(create_mapping(PRIMARY, SECONDARY, TS).to_bytes())
    assert isinstance(fields, dict)
    assert sorted(fields) == sorted(
        [
            "v",
            "primary",
            "primary_key",
            "secondary",
            "secondary_key",
            "ts",
            "secondary_sig",
            "primary_sig",
        ]
    )
    assert fields["v"] == 1 and fields["ts"] == TS
    assert fields["primary_key"] == PRIMARY.ed25519_public


def test_grant_refuses_request_for_another_primary_or_forged() -> None:
    request = sign_pairing_request(SECONDARY, OTHER.session_id, TS)
    with pytest.raises(AuthorisationError):
        grant_pairing(PRIMARY, request)
    forged = replace(sign_pairing_request(SECONDARY, PRIMARY.session_id, TS), timestamp_ms=TS + 1)
    with pytest.raises(AuthorisationError):
        grant_pairing(PRIMARY, forged)
    with pytest.raises(ValueError):
        sign_pairing_request(SECONDARY, SECONDARY.session_id, TS)


def test_mapping_signed_by_only_one_side_is_refused() -> None:
    mapping = create_mapping(PRIMARY, SECONDARY, TS)
    with pytest.raises(AuthorisationError, match="primary"):
        replace(mapping, primary_sig=bytes(64)).verify()
    with pytest.raises(AuthorisationError, match="secondary"):
        replace(mapping, secondary_sig=bytes(64)).verify()


def forged_grant(signer: Identity, *, claimed_key: bytes) -> DeviceMapping:
    """A genuine request for PRIMARY, countersigned by ``signer`` instead of PRIMARY."""
    genuine = create_mapping(PRIMARY, SECONDARY, TS)
    unsigned = replace(genuine, primary_key=claimed_key, primary_sig=b"")
    return replace(unsigned, primary_sig=signer.sign(unsigned.signed_bytes()))


def test_forged_grant_by_another_key_is_refused() -> None:
    with pytest.raises(AuthorisationError, match="signature"):
        forged_grant(OTHER, claimed_key=PRIMARY.ed25519_public).verify()
    with pytest.raises(AuthorisationError, match="does not belong"):
        forged_grant(OTHER, claimed_key=OTHER.ed25519_public).verify()
    forged_grant(PRIMARY, claimed_key=PRIMARY.ed25519_public).verify()


def test_key_not_matching_session_id_is_refused() -> None:
    mapping = create_mapping(PRIMARY, SECONDARY, TS)
    with pytest.raises(AuthorisationError, match="does not belong"):
        replace(mapping, secondary_key=OTHER.ed25519_public).verify()
    with pytest.raises(AuthorisationError, match="does not belong"):
        replace(mapping, primary_key=OTHER.ed25519_public).verify()
    # A key that is not a curve point at all is just as unauthorised.
    with pytest.raises(AuthorisationError):
        replace(mapping, primary_key=b"\xff" * 32).verify()


def test_swapped_roles_do_not_verify() -> None:
    mapping = create_mapping(PRIMARY, SECONDARY, TS)
    swapped = replace(
        mapping,
        primary=mapping.secondary,
        primary_key=mapping.secondary_key,
        secondary=mapping.primary,
        secondary_key=mapping.primary_key,
        primary_sig=mapping.secondary_sig,
        secondary_sig=mapping.primary_sig,
    )
    with pytest.raises(AuthorisationError):
        swapped.verify()


def test_revocation_round_trip_and_forgery() -> None:
    revocation = revoke_pairing(PRIMARY, SECONDARY.session_id, TS + 5)
    revocation.verify()
    assert Revocation.from_bytes(revocation.to_bytes()) == revocation
    by_other = revoke_pairing(OTHER, SECONDARY.session_id, TS + 5)
    with pytest.raises(AuthorisationError):
        replace(by_other, primary=PRIMARY.session_id).verify()
    with pytest.raises(AuthorisationError):
        replace(by_other, primary=PRIMARY.session_id, primary_key=PRIMARY.ed25519_public).verify()
    with pytest.raises(AuthorisationError):
        replace(revocation, timestamp_ms=TS + 6).verify()
    # A mapping's signature is not a revocation's (domain separation).
    mapping = create_mapping(PRIMARY, SECONDARY, TS)
    with pytest.raises(AuthorisationError):
        replace(revocation, sig=mapping.primary_sig).verify()


def test_device_set_checks_the_servers_answer() -> None:
    mapping = create_mapping(PRIMARY, SECONDARY, TS)
    devices = device_set(
        SECONDARY.session_id, PRIMARY.session_id, [SECONDARY.session_id], [mapping]
    )
    assert devices.devices == (PRIMARY.session_id, SECONDARY.session_id)
    assert SECONDARY.session_id in devices
    alone = device_set(OTHER.session_id, OTHER.session_id, [], [])
    assert alone.devices == (OTHER.session_id,)
    with pytest.raises(DecodeError):
        device_set(OTHER.session_id, PRIMARY.session_id, [SECONDARY.session_id], [mapping])
    with pytest.raises(DecodeError):
        device_set(PRIMARY.session_id, PRIMARY.session_id, [OTHER.session_id], [mapping])
    with pytest.raises(DecodeError):
        device_set(OTHER.session_id, OTHER.session_id, [SECONDARY.session_id], [mapping])
    with pytest.raises(AuthorisationError):
        device_set(
            PRIMARY.session_id,
            PRIMARY.session_id,
            [SECONDARY.session_id],
            [replace(mapping, primary_sig=bytes(64))],
        )


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: {**m, "v": 2},
        lambda m: {**m, "extra": 1},
        lambda m: {k: v for k, v in m.items() if k != "ts"},
        lambda m: {**m, "ts": -1},
        lambda m: {**m, "ts": "now"},
        lambda m: {**m, "primary": m["primary"].upper()},
        lambda m: {**m, "primary": "06" + m["primary"][2:]},
        lambda m: {**m, "primary_key": m["primary_key"][:31]},
        lambda m: {**m, "primary_sig": m["primary_sig"] + b"\x00"},
        lambda m: [m],
    ],
)
def test_malformed_mappings_raise_decode_error(mutate: Any) -> None:
    good = decode_cbor(create_mapping(PRIMARY, SECONDARY, TS).to_bytes())
    with pytest.raises(DecodeError):
        DeviceMapping.from_bytes(encode_cbor(mutate(good)))


def test_trailing_data_and_oversize_are_refused() -> None:
    data = create_mapping(PRIMARY, SECONDARY, TS).to_bytes()
    with pytest.raises(DecodeError):
        DeviceMapping.from_bytes(data + b"\x00")
    with pytest.raises(DecodeError):
        DeviceMapping.from_bytes(encode_cbor({"v": 1, "pad": b"x" * 2000}))


_cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.text(max_size=80)
    | st.binary(max_size=80),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)
_MAPPING_FIELDS: dict[str, Any] = cbor2.loads(create_mapping(PRIMARY, SECONDARY, TS).to_bytes())


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=600),
        _cbor_values.map(encode_cbor),
        st.dictionaries(st.sampled_from(sorted(_MAPPING_FIELDS)), _cbor_values).map(
            lambda d: encode_cbor({**_MAPPING_FIELDS, **d})
        ),
    )
)
def test_record_decoders_only_raise_decode_error(data: bytes) -> None:
    for decoder in (DeviceMapping, PairingRequest, Revocation):
        try:
            record = decoder.from_bytes(data)
        except DecodeError:
            continue
        with contextlib.suppress(DecodeError):
            record.verify()
