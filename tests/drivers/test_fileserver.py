"""The file server: mapping round trips, persistence, and every forgery refused by code."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.link import MemoryNetwork, Transport
from p2psync.clock import TEST_EPOCH_MS, Clock
from p2psync.envelope import MAX_TIMESTAMP_MS
from p2psync.errors import DecodeError, RpcError
from p2psync.fileserver.client import FileServerClient, open_fileserver_client
from p2psync.fileserver.rules import MAX_LISTED_REVOCATIONS
from p2psync.fileserver.server import (
    MAPPING_KEY_REFILL_S,
    MAPPING_REFILL_S,
    MAPPINGS_BURST,
    MAPPINGS_PER_KEY,
    FileServer,
)
from p2psync.fileserver.store import MappingStore
from p2psync.identity import Identity
from p2psync.mapping import (
    PAIRING_WINDOW_MS,
    DeviceMapping,
    Revocation,
    create_mapping,
    revoke_pairing,
)
from p2psync.rpc import Connection, RpcServer, open_rpc
from p2psync.websocket import WebSocketTransport
from p2psync.wire import Fields

PRIMARY = Identity.from_label("fileserver/primary")
SECONDARY = Identity.from_label("fileserver/secondary")
THIRD = Identity.from_label("fileserver/third")
OTHER = Identity.from_label("fileserver/other")


@asynccontextmanager
async def running(
    db_path: Path | str,
    clock: Clock,
    transport: Transport | None = None,
    **options: Any,
) -> AsyncIterator[tuple[FileServer, FileServerClient]]:
    transport = transport or MemoryNetwork()
    address = "mem:files" if isinstance(transport, MemoryNetwork) else "127.0.0.1:0"
    server = FileServer(db_path, clock, **options)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve, transport, address)
        async with open_fileserver_client(transport, url) as client:
            yield server, client
        nursery.cancel_scope.cancel()


async def refused(code: str, call: Awaitable[Any]) -> RpcError:
    with pytest.raises(RpcError) as info:
        await call
    assert info.value.code == code, info.value.message
    return info.value


async def test_put_get_revoke_round_trip(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    clock = Clock(TEST_EPOCH_MS)
    async with running(tmp_path / "files.sqlite3", clock) as (_, client):
        alone = await client.get_mappings(PRIMARY.session_id)
        assert alone.primary == PRIMARY.session_id and alone.secondaries == ()
        mapping = create_mapping(PRIMARY, SECONDARY, clock.now_ms())
        await client.put_mapping(mapping)
        await trio.sleep(3600)
        await client.put_mapping(mapping)  # re-publishing what is stored is always fine
        for device in (PRIMARY, SECONDARY):
            devices = await client.get_mappings(device.session_id)
            assert devices.devices == (PRIMARY.session_id, SECONDARY.session_id)
            assert devices.mappings == (mapping,)
        await trio.sleep(1)
        await client.put_mapping(create_mapping(PRIMARY, THIRD, clock.now_ms()))
        devices = await client.get_mappings(THIRD.session_id)
        assert devices.secondaries == (SECONDARY.session_id, THIRD.session_id)

        await trio.sleep(1)
        await client.revoke_mapping(revoke_pairing(PRIMARY, SECONDARY.session_id, clock.now_ms()))
        assert (await client.get_mappings(SECONDARY.session_id)).devices == (SECONDARY.session_id,)
        assert (await client.get_mappings(PRIMARY.session_id)).secondaries == (THIRD.session_id,)


async def test_round_trip_over_websocket(tmp_path: Path) -> None:
    clock = Clock()
    async with running(tmp_path / "files.sqlite3", clock, WebSocketTransport(plain=True)) as (
        _,
        client,
    ):
        await client.put_mapping(create_mapping(PRIMARY, SECONDARY, clock.now_ms()))
        devices = await client.get_mappings(SECONDARY.session_id)
        assert devices.primary == PRIMARY.session_id
        await client.revoke_mapping(revoke_pairing(PRIMARY, SECONDARY.session_id, clock.now_ms()))
        assert (await client.get_mappings(PRIMARY.session_id)).secondaries == ()


async def test_restart_keeps_mappings_and_revocations(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    clock = Clock(TEST_EPOCH_MS)
    db = tmp_path / "files.sqlite3"
    network = MemoryNetwork()
    kept = create_mapping(PRIMARY, SECONDARY, clock.now_ms())
    revoked = create_mapping(OTHER, THIRD, clock.now_ms())
    async with running(db, clock, network) as (_, client):
        await client.put_mapping(kept)
        await client.put_mapping(revoked)
        await trio.sleep(1)
        await client.revoke_mapping(revoke_pairing(OTHER, THIRD.session_id, clock.now_ms()))
    await trio.sleep(1)
    async with running(db, clock, network) as (_, client):
        assert (await client.get_mappings(SECONDARY.session_id)).mappings == (kept,)
        assert (await client.get_mappings(OTHER.session_id)).secondaries == ()
        await refused("unauthorized", client.put_mapping(revoked))


async def test_half_signed_forged_and_mismatched_mappings_are_unauthorized(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = Clock(TEST_EPOCH_MS)
    async with running(":memory:", clock) as (server, client):
        good = create_mapping(PRIMARY, SECONDARY, clock.now_ms())
        await refused("unauthorized", client.put_mapping(replace(good, primary_sig=bytes(64))))
        await refused("unauthorized", client.put_mapping(replace(good, secondary_sig=bytes(64))))
        unsigned = replace(good, primary_sig=b"")
        forged = replace(unsigned, primary_sig=OTHER.sign(unsigned.signed_bytes()))
        await refused("unauthorized", client.put_mapping(forged))
        mismatched = replace(good, secondary_key=OTHER.ed25519_public)
        error = await refused("unauthorized", client.put_mapping(mismatched))
        assert "does not belong" in error.message
        forged_revocation = replace(
            revoke_pairing(OTHER, SECONDARY.session_id, clock.now_ms()),
            primary=PRIMARY.session_id,
            primary_key=PRIMARY.ed25519_public,
        )
        await client.put_mapping(good)
        await refused("unauthorized", client.revoke_mapping(forged_revocation))
        assert (await client.get_mappings(PRIMARY.session_id)).secondaries == (
            SECONDARY.session_id,
        )
        assert "internal" not in server.rpc.stats.errors


async def test_replayed_mapping_after_revocation_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = Clock(TEST_EPOCH_MS)
    async with running(":memory:", clock) as (_, client):
        old = create_mapping(PRIMARY, SECONDARY, clock.now_ms())
        await client.put_mapping(old)
        await trio.sleep(1)
        old_revocation = revoke_pairing(PRIMARY, SECONDARY.session_id, clock.now_ms())
        await client.revoke_mapping(old_revocation)
        await trio.sleep(1)
        error = await refused("unauthorized", client.put_mapping(old))
        assert "revoked" in error.message
        # A fresh pairing works again, and replaying the old revocation does not undo it.
        await client.put_mapping(create_mapping(PRIMARY, SECONDARY, clock.now_ms()))
        await client.revoke_mapping(Revocation.from_bytes(old_revocation.to_bytes()))
        assert (await client.get_mappings(SECONDARY.session_id)).primary == PRIMARY.session_id
        await refused("unauthorized", client.put_mapping(old))
        await trio.sleep(PAIRING_WINDOW_MS / 1000)
        await refused("clock_skew", client.put_mapping(old))
        await refused("clock_skew", client.revoke_mapping(old_revocation))


async def test_freshness_ownership_and_limits(autojump_clock: trio.testing.MockClock) -> None:
    clock = Clock(TEST_EPOCH_MS)
    async with running(":memory:", clock, max_secondaries=1) as (_, client):
        now = clock.now_ms()
        # A mapping carries the time of the secondary's request: usable for the pairing
        # window (the user compares codes), and never from more than 60 s in the future.
        await refused(
            "clock_skew",
            client.put_mapping(create_mapping(PRIMARY, SECONDARY, now - PAIRING_WINDOW_MS - 1)),
        )
        await refused(
            "clock_skew", client.put_mapping(create_mapping(PRIMARY, SECONDARY, now + 60_001))
        )
        await client.put_mapping(create_mapping(PRIMARY, SECONDARY, now - PAIRING_WINDOW_MS))
        # v1.5.0's limit, configured: one secondary per primary.
        error = await refused("conflict", client.put_mapping(create_mapping(PRIMARY, THIRD, now)))
        assert "limit" in error.message
        # A secondary belongs to one primary; no device is both primary and secondary.
        await refused("conflict", client.put_mapping(create_mapping(OTHER, SECONDARY, now)))
        await refused("conflict", client.put_mapping(create_mapping(SECONDARY, THIRD, now)))
        await refused("conflict", client.put_mapping(create_mapping(OTHER, PRIMARY, now)))
        # An older mapping of the same pair does not replace a newer one.
        await client.put_mapping(create_mapping(PRIMARY, SECONDARY, now))
        await refused("conflict", client.put_mapping(create_mapping(PRIMARY, SECONDARY, now - 1)))
        await refused(
            "not_found", client.revoke_mapping(revoke_pairing(OTHER, THIRD.session_id, now))
        )
        await refused(
            "clock_skew",
            client.revoke_mapping(revoke_pairing(PRIMARY, SECONDARY.session_id, now + 90_000)),
        )


async def test_mappings_are_rationed_per_primary_and_in_total(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Keys cost nothing: one connection putting a fresh pair's mapping each time grew
    the file by 1.75 MB a second, for good. A primary gets its share, and all of them
    together the server's. Nobody else spends a primary's share: not with a forgery, and
    not by putting again the mapping anyone can read (which a review's replays did)."""
    clock = Clock(TEST_EPOCH_MS)
    async with running(":memory:", clock, max_secondaries=MAPPINGS_PER_KEY + 1) as (_, client):
        first = create_mapping(PRIMARY, Identity.from_label("fileserver/s0"), clock.now_ms())
        await client.put_mapping(first)
        for _ in range(MAPPINGS_PER_KEY + 1):  # the stored mapping, put again: no change
            await client.put_mapping(first)
        for n in range(1, MAPPINGS_PER_KEY):
            await client.put_mapping(
                create_mapping(PRIMARY, Identity.from_label(f"fileserver/s{n}"), clock.now_ms())
            )
        spare = Identity.from_label("fileserver/spare")
        await refused_until_refilled(client, clock, PRIMARY, spare, MAPPING_KEY_REFILL_S)

        half_signed = create_mapping(OTHER, THIRD, clock.now_ms())
        for _ in range(MAPPINGS_PER_KEY + 1):  # signed by another key than OTHER's
            forged = replace(half_signed, primary_sig=bytes(64))
            await refused("unauthorized", client.put_mapping(forged))
        await client.put_mapping(half_signed)

        await trio.sleep(MAPPINGS_BURST * MAPPING_REFILL_S)  # the total full again
        for n in range(MAPPINGS_BURST):
            stranger = Identity.from_label(f"fileserver/stranger-{n}")
            await client.put_mapping(
                create_mapping(stranger, Identity.from_label(f"fileserver/t{n}"), clock.now_ms())
            )
        late = Identity.from_label("fileserver/late")
        await refused_until_refilled(client, clock, late, SECONDARY, MAPPING_REFILL_S)


async def refused_until_refilled(
    client: FileServerClient, clock: Clock, primary: Identity, secondary: Identity, wait_s: float
) -> None:
    """``primary``'s mapping of ``secondary`` is refused now and stored ``wait_s`` later."""
    await refused(
        "rate_limited", client.put_mapping(create_mapping(primary, secondary, clock.now_ms()))
    )
    await trio.sleep(wait_s)
    await client.put_mapping(create_mapping(primary, secondary, clock.now_ms()))


@pytest.mark.parametrize("huge", [MAX_TIMESTAMP_MS + 1, 2**63, 2**64 - 1])
async def test_records_dated_past_year_9999_are_bad_requests(
    autojump_clock: trio.testing.MockClock, huge: int
) -> None:
    """Times are range-checked when a record is decoded, before anything else looks at
    them (from 2**63 on, a store of one would overflow SQLite's integers)."""
    clock = Clock(TEST_EPOCH_MS)
    async with running(":memory:", clock) as (server, client):
        await refused("bad_request", client.put_mapping(create_mapping(PRIMARY, SECONDARY, huge)))
        await client.put_mapping(create_mapping(PRIMARY, SECONDARY, clock.now_ms()))
        revocation = revoke_pairing(PRIMARY, SECONDARY.session_id, huge)
        await refused("bad_request", client.revoke_mapping(revocation))
        assert (await client.get_mappings(SECONDARY.session_id)).primary == PRIMARY.session_id
        assert "internal" not in server.rpc.stats.errors


async def test_default_allows_four_secondaries(autojump_clock: trio.testing.MockClock) -> None:
    clock = Clock(TEST_EPOCH_MS)
    devices = [Identity.from_label(f"fileserver/device/{i}") for i in range(5)]
    async with running(":memory:", clock) as (_, client):
        for device in devices[:4]:
            await client.put_mapping(create_mapping(PRIMARY, device, clock.now_ms()))
        await refused(
            "conflict", client.put_mapping(create_mapping(PRIMARY, devices[4], clock.now_ms()))
        )
        assert len((await client.get_mappings(devices[0].session_id)).secondaries) == 4


async def test_malformed_params_are_bad_request(autojump_clock: trio.testing.MockClock) -> None:
    clock = Clock(TEST_EPOCH_MS)
    async with running(":memory:", clock) as (server, client):
        cases: list[tuple[str, dict[str, Any]]] = [
            ("put_mapping", {}),
            ("put_mapping", {"mapping": "text"}),
            ("put_mapping", {"mapping": b"\xa0"}),
            ("put_mapping", {"mapping": b"x" * 5000}),
            ("put_mapping", {"mapping": create_mapping(PRIMARY, SECONDARY, 1).to_bytes(), "x": 1}),
            ("get_mappings", {"session_id": "05" + "AB" * 32}),
            ("get_mappings", {"session_id": 5}),
            ("revoke_mapping", {"revocation": b""}),
        ]
        for method, params in cases:
            await refused("bad_request", client.rpc.call(method, params))
        assert set(server.rpc.stats.errors) == {"bad_request"}


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.text(max_size=70)
    | st.binary(max_size=300),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=8,
)
_FIELDS = st.sampled_from(["mapping", "session_id", "revocation", "x"])


def run_with_server(test: Callable[[FileServer, FileServerClient], Awaitable[None]]) -> None:
    async def main() -> None:
        async with running(":memory:", Clock(TEST_EPOCH_MS)) as (server, client):
            await test(server, client)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@settings(max_examples=150, deadline=None)
@given(
    method=st.sampled_from(["put_mapping", "get_mappings", "revoke_mapping"]),
    params=st.dictionaries(_FIELDS, _values, max_size=3),
)
def test_garbage_params_get_bad_request_and_server_keeps_serving(
    method: str, params: dict[str, Any]
) -> None:
    async def check(server: FileServer, client: FileServerClient) -> None:
        await refused("bad_request", client.rpc.call(method, params))
        assert (await client.get_mappings(PRIMARY.session_id)).primary == PRIMARY.session_id

    run_with_server(check)


@settings(max_examples=60, deadline=None)
@given(
    st.builds(
        DeviceMapping,
        primary=st.just(PRIMARY.session_id),
        primary_key=st.binary(min_size=32, max_size=32),
        secondary=st.just(SECONDARY.session_id),
        secondary_key=st.sampled_from([SECONDARY.ed25519_public, bytes(32)]),
        timestamp_ms=st.just(TEST_EPOCH_MS),
        secondary_sig=st.binary(min_size=64, max_size=64),
        primary_sig=st.binary(min_size=64, max_size=64),
    )
)
def test_well_formed_forgeries_are_unauthorized(mapping: DeviceMapping) -> None:
    async def check(server: FileServer, client: FileServerClient) -> None:
        await refused("unauthorized", client.put_mapping(mapping))
        assert (await client.get_mappings(PRIMARY.session_id)).secondaries == ()

    run_with_server(check)


async def test_client_refuses_a_lying_server(autojump_clock: trio.testing.MockClock) -> None:
    """A file server that lists a secondary without a valid mapping is caught client-side."""
    mapping = create_mapping(OTHER, SECONDARY, TEST_EPOCH_MS)

    async def lying(params: Fields, conn: Connection) -> Any:
        return {
            "primary": PRIMARY.session_id,
            "secondaries": [SECONDARY.session_id],
            "mappings": [mapping.to_bytes()],
        }

    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(RpcServer({"get_mappings": lying}).serve, network, "mem:liar")
        async with open_rpc(network, url) as rpc:
            with pytest.raises(DecodeError):
                await FileServerClient(rpc).get_mappings(SECONDARY.session_id)
        nursery.cancel_scope.cancel()


async def test_a_server_cannot_unrevoke_a_device_for_a_reader_that_saw_the_revocation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Answers carry the primary's signed revocations; a reader that kept one drops the
    device from a later answer that lists it again without it (a rolled-back or malicious
    server). Another primary's revocation does not apply; a tampered one is refused."""
    mapping = create_mapping(PRIMARY, SECONDARY, TEST_EPOCH_MS)
    revocation = revoke_pairing(PRIMARY, SECONDARY.session_id, TEST_EPOCH_MS + 1)
    unrelated = revoke_pairing(OTHER, SECONDARY.session_id, TEST_EPOCH_MS + 2)
    revoked = {"secondaries": [], "mappings": [], "revocations": [revocation.to_bytes()]}
    rolled_back = {
        "secondaries": [SECONDARY.session_id],
        "mappings": [mapping.to_bytes()],
        "revocations": [unrelated.to_bytes()],
    }
    answers = [revoked, rolled_back, rolled_back, rolled_back]

    async def serve(params: Fields, conn: Connection) -> Any:
        return {"primary": PRIMARY.session_id, **answers.pop(0)}

    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(RpcServer({"get_mappings": serve}).serve, network, "mem:rb")
        async with open_rpc(network, url) as rpc:
            client = FileServerClient(rpc)
            kept = (await client.get_mappings(PRIMARY.session_id)).revocations
            assert kept == (revocation,)
            assert (await client.get_mappings(PRIMARY.session_id)).secondaries == (
                SECONDARY.session_id,
            )  # a reader that never saw the revocation is fooled: the limit of omission
            again = await client.get_mappings(PRIMARY.session_id, kept)
            assert again.devices == (PRIMARY.session_id,) and again.revocations == kept
            tampered = replace(revocation, timestamp_ms=revocation.timestamp_ms + 1)
            with pytest.raises(DecodeError):
                await client.get_mappings(PRIMARY.session_id, [tampered])
        nursery.cancel_scope.cancel()


def test_a_primary_that_revoked_more_than_a_reply_lists_has_its_newest_listed() -> None:
    """Past ``MAX_LISTED_REVOCATIONS`` the newest are listed: they are the ones a reader
    may not know yet (the oldest were listed before, and all 44 newest were left out)."""
    store = MappingStore(":memory:")
    primary = Identity.from_label("fileserver/many-revocations")
    now_ms = TEST_EPOCH_MS
    revoked = []
    for n in range(MAX_LISTED_REVOCATIONS + 44):
        secondary = Identity.from_label(f"fileserver/revoked-{n}")
        store.put(create_mapping(primary, secondary, now_ms), now_ms)
        store.revoke(revoke_pairing(primary, secondary.session_id, now_ms + 1000), now_ms + 1000)
        revoked.append(secondary.session_id)
        now_ms += 2000
    listed = [Revocation.from_bytes(r).secondary for r in store.lookup(primary.session_id)[3]]
    assert listed == revoked[-MAX_LISTED_REVOCATIONS:]
    store.close()
