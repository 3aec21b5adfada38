"""Attacks on pairing, mappings, open groups and inboxes: each refused with a clear reason,
and the device goes on working."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.constants import INTROSET_LIFETIME_MS
from p2psync.clock import TEST_EPOCH_MS, Clock
from p2psync.device import open_device
from p2psync.device import store as device_store
from p2psync.device.content import (
    ContactRecord,
    DeviceRevoked,
    FriendRequest,
    HistoryRecord,
    PairChallenge,
    PairGrant,
    PairRequest,
    SiblingRecord,
    SyncSent,
    Text,
    decode_content,
    encode_content,
)
from p2psync.device.device import STORE_FILE, Device, PairingError
from p2psync.device.friends import ContactState
from p2psync.device.inbound import MAX_AHEAD_MS, PENDING_MESSAGES
from p2psync.device.keys import overlay_public
from p2psync.device.modes import Mode
from p2psync.device.pairing import (
    ANSWERS_PER_LISTING,
    DEVICE_PREFIX_CHARS,
    MAX_HELD_REQUESTS,
    REASK_S,
    REQUESTS_BURST,
    REQUESTS_PER_KEY,
    pairing_code,
)
from p2psync.device.store import DeviceStore
from p2psync.envelope import MAX_TIMESTAMP_MS, Envelope, open_envelope, seal_envelope
from p2psync.errors import DecodeError, RpcError
from p2psync.fileserver.client import CALL_TIMEOUT_S, open_fileserver_client
from p2psync.identity import Identity, session_id_key
from p2psync.mapping import (
    PAIRING_WINDOW_MS,
    create_mapping,
    revoke_pairing,
    sign_pairing_request,
)
from p2psync.network import LocalNetwork, open_local_network
from p2psync.opengroup.client import open_opengroup_client
from p2psync.opengroup.posts import sign_post
from p2psync.swarm.access import DAY_MS, sign_access
from p2psync.swarm.client import SwarmClient, open_swarm_client
from p2psync.swarm.constants import (
    MAX_STORE_BATCH,
    NAMESPACE_CONTROL,
    NAMESPACE_MESSAGES,
    NAMESPACE_SYNC,
)
from p2psync.swarm.messages import StoreBatchReply
from p2psync.wire import Fields

from ..swarm.helpers import wait_until
from .conftest import SyncEndpoints
from .helpers import (
    QUIET,
    accept_pairing,
    befriend,
    device,
    open_world,
    pair,
    siblings_and_friend,
    start_pairing,
    stored_kinds,
    texts,
    three_mapped_devices,
)

MALLORY = Identity.from_label("mallory")


async def inject(
    swarm: SwarmClient,
    sender: Identity,
    recipient: str,
    namespace: int,
    content: object,
    timestamp_ms: int | None = None,
) -> None:
    """Store a record as an attacker would: correctly sealed, signed by the attacker, dated
    now unless told otherwise."""
    kind, body = encode_content(content)  # type: ignore[arg-type]
    when = swarm.clock.now_ms() if timestamp_ms is None else timestamp_ms
    data = seal_envelope(sender, session_id_key(recipient), kind, body, when)
    await swarm.store(recipient, namespace, data)


async def ask_to_pair(swarm: SwarmClient, stranger: Identity, target: Device) -> None:
    """A stranger's pairing request, from a key of its own (as a linked device's is)."""
    now = swarm.clock.now_ms()
    request = PairRequest(Mode.LINKED, stranger.session_id, bytes(32), "tablet", now, None)
    await inject(swarm, stranger, target.session_id, NAMESPACE_CONTROL, request)


async def refusal(target: Device, count: int = 1) -> str:
    await wait_until(lambda: len(target.rejections) >= count)
    return target.rejections[count - 1].reason


async def test_a_forged_pairing_challenge_or_grant_is_refused(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with (
        open_world() as network,
        device(network, tmp_path, "phone", "mapped") as phone,
        device(network, tmp_path, "tablet", "mapped") as tablet,
        open_swarm_client(network.transport, network.directory(), network.clock) as swarm,
    ):
        ticket = await tablet.pairing.request(phone.session_id)
        # Mallory tries to change the code the tablet shows.
        challenge = PairChallenge(ticket.request_id, b"\7" * 32)
        await inject(swarm, MALLORY, tablet.whoami().device_id, NAMESPACE_CONTROL, challenge)
        assert "challenge not signed by the device pairing was asked of" in await refusal(tablet)
        # Mallory answers first, with a genuine mapping of her own.
        forged = create_mapping(MALLORY, Identity.from_label("mallory-2"), network.clock.now_ms())
        grant = PairGrant(ticket.request_id, forged.to_bytes(), None, bytes(32), (), ())
        await inject(swarm, MALLORY, tablet.whoami().device_id, NAMESPACE_CONTROL, grant)
        assert "grant not signed by the device pairing was asked of" in await refusal(tablet, 2)
        # A grant for a request the tablet never made.
        await inject(
            swarm,
            MALLORY,
            tablet.whoami().device_id,
            NAMESPACE_CONTROL,
            replace(grant, request_id=b"\1" * 32),
        )
        assert "no request of this device" in await refusal(tablet, 3)
        assert not tablet.whoami().paired
        # The genuine grant still works.
        await wait_until(lambda: bool(phone.pairing.requests()))
        await phone.pairing.accept(ticket.code)
        with trio.fail_after(60):
            await tablet.pairing.wait_paired()


async def test_a_mapping_signed_by_one_side_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        open_world() as network,
        open_fileserver_client(network.transport, network.fileserver_url) as client,
    ):
        genuine = create_mapping(MALLORY, Identity.from_label("victim"), network.clock.now_ms())
        for one_sided, who in (
            (replace(genuine, primary_sig=bytes(64)), "primary"),
            (replace(genuine, secondary_sig=bytes(64)), "secondary"),
        ):
            with pytest.raises(RpcError) as refused:
                await client.put_mapping(one_sided)
            assert refused.value.code == "unauthorized"
            assert f"the {who}'s signature does not verify" in refused.value.message
        assert (await client.get_mappings(MALLORY.session_id)).secondaries == ()


@pytest.mark.parametrize("mode", ["mapped", "linked"])
async def test_a_replayed_pairing_request_is_refused(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, mode: str
) -> None:
    async with (
        open_world() as network,
        open_swarm_client(network.transport, network.directory(), network.clock) as swarm,
    ):
        async with (
            device(network, tmp_path, "phone", mode) as phone,
            device(network, tmp_path, "tablet", mode) as tablet,
        ):
            ticket = await tablet.pairing.request(phone.session_id)
            # A storage node keeps a copy of the request as it passes.
            [captured] = {
                row.data
                for node in network.running_nodes()
                if (row := node.store.get(phone.session_id, NAMESPACE_CONTROL, ticket.request_id))
            }
            assert captured is not None
            await wait_until(lambda: bool(phone.pairing.requests()))
            await phone.pairing.accept(ticket.code)
            await tablet.pairing.wait_paired()
            # Later traffic moves the phone's read position past the request.
            async with device(network, tmp_path, "laptop", mode) as laptop:
                await laptop.pairing.request(phone.session_id)
                await wait_until(lambda: len(phone.pairing.requests()) == 1)
        # Once the request expired from the swarm, the copy is stored again.
        await trio.sleep(PAIRING_WINDOW_MS / 1000 + 700)
        async with device(network, tmp_path, "phone") as phone:
            await swarm.store(phone.session_id, NAMESPACE_CONTROL, captured)
            assert "replayed pairing request" in await refusal(phone)
            assert phone.pairing.requests() == []


async def test_a_revoked_device_gets_nothing_more_over_direct_sync(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """The primary revokes the desktop while their sibling session is up: the session
    ends at once, and what the user sends next reaches Bob and never the desktop (the
    primary's running sync kept the revoked device's session until something else
    restarted it: a device that ignored its revocation got every new message pushed)."""
    async with (
        open_world(relays=8) as network,
        siblings_and_friend(network, tmp_path, "mapped") as (phone, desktop, bob),
    ):
        desktop_id = desktop.whoami().device_id
        await wait_until(lambda: phone.sync_status().connected_siblings == {desktop_id})
        await phone.pairing.revoke(desktop_id)
        await phone.send(bob.session_id, "after the revocation")
        await wait_until(lambda: texts(bob, phone.session_id) == [(False, "after the revocation")])
        assert phone.sync_status().connected_siblings == frozenset()
        await trio.sleep(60)
        assert texts(desktop, bob.session_id) == []


async def test_a_revoked_device_no_longer_finds_its_former_siblings(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, sync_endpoints: SyncEndpoints
) -> None:
    """Siblings find each other's introsets by their secret, and a revoked device knows
    it: with it, a device ignoring its revocation would go on seeing when each sibling
    is online. The primary makes the devices still paired a new one; once what was
    published under the old one expires, the old secret finds nobody, while the phone
    and the tablet meet directly by the new one."""
    async with (
        open_world(relays=8) as network,
        three_mapped_devices(network, tmp_path) as (phone, desktop, tablet),
    ):
        siblings = {desktop.whoami().device_id, tablet.whoami().device_id}
        await wait_until(lambda: phone.sync_status().connected_siblings == siblings)
        with closing(DeviceStore(tmp_path / "desktop" / STORE_FILE, read_only=True)) as store:
            old_secret = store.get_meta("secret")
        assert old_secret is not None
        tablet_key = overlay_public(Identity.from_label("device/tablet").seed)
        phone_key = overlay_public(Identity.from_label("device/phone").seed)
        assert await sync_endpoints[tablet_key].lookup(old_secret, phone_key)

        await phone.pairing.revoke(desktop.whoami().device_id)
        await trio.sleep(INTROSET_LIFETIME_MS / 1000 + 60)
        assert phone.sync_status().connected_siblings == {tablet.whoami().device_id}
        for owner in (phone_key, tablet_key):
            assert await sync_endpoints[tablet_key].lookup(old_secret, owner) == []


async def test_a_stolen_secondary_leaves_nobody_of_the_thiefs_among_the_siblings(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Before Alice revokes her stolen desktop, the thief signs with its key a sibling
    record naming a device of the thief's, and one naming the phone under the thief's
    overlay key, into the phone's and the tablet's swarms. Only the primary pairs a
    mapped device: both are refused, the phone's key stays the one the tablet knows, and
    the revocation leaves no sibling of the thief's behind (one was given every sent
    message's sync copy, the siblings' new secret and, at a move to linked, the
    account's key, and could not be revoked: the file server had no mapping of it)."""
    async with (
        open_world() as network,
        three_mapped_devices(network, tmp_path) as (phone, desktop, tablet),
        open_swarm_client(network.transport, network.directory(), network.clock) as swarm,
    ):
        phone_id, tablet_id = phone.whoami().device_id, tablet.whoami().device_id
        thiefs = Identity.from_label("thief's device")
        planted = SiblingRecord(thiefs.session_id, overlay_public(thiefs.seed), "desktop")
        hijack = SiblingRecord(phone_id, overlay_public(thiefs.seed), "phone")
        for owner in (phone_id, tablet_id):
            for record in (planted, hijack):
                await inject(
                    swarm, Identity.from_label("device/desktop"), owner, NAMESPACE_SYNC, record
                )
        assert "cannot pair one" in await refusal(tablet, 2)
        assert "cannot pair one" in await refusal(phone)  # the other names the phone itself
        await phone.pairing.revoke(desktop.whoami().device_id)
        await wait_until(lambda: set(tablet.siblings()) == {phone_id})
        assert set(phone.siblings()) == {tablet_id}
        with closing(DeviceStore(tmp_path / "tablet" / STORE_FILE, read_only=True)) as store:
            phone_key = store.sibling_overlay_keys()[phone_id]
        assert phone_key == overlay_public(Identity.from_label("device/phone").seed)


async def test_a_stolen_secondary_adds_no_key_of_the_thiefs_to_a_friends_devices(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Before its revocation the stolen desktop tells the phone, in a contact record,
    that Bob has a device the thief holds: the file server does not list it, so it is
    left out, and what that key signs as Bob afterwards is refused (it was filed as
    Bob's, for good)."""
    thiefs = Identity.from_label("thief's device")
    async with (
        open_world() as network,
        siblings_and_friend(network, tmp_path, "mapped") as (phone, desktop, bob),
        open_swarm_client(network.transport, network.directory(), network.clock) as swarm,
    ):
        phone_id = phone.whoami().device_id
        planted = ContactRecord(
            bob.session_id, ContactState.FRIEND, (bob.session_id, thiefs.session_id)
        )
        stolen = Identity.from_label("device/desktop")
        await inject(swarm, stolen, phone_id, NAMESPACE_SYNC, planted)
        await phone.sync_now()
        contact = phone.friends.contact(bob.session_id)
        assert contact is not None and thiefs.session_id not in contact.devices
        await phone.pairing.revoke(desktop.whoami().device_id)
        lure = Text(bob.session_id, "Bob here: new number, send the code to me")
        await inject(swarm, thiefs, phone_id, NAMESPACE_MESSAGES, lure)
        assert "is not a device of" in await refusal(phone)
        assert texts(phone, bob.session_id) == []


async def test_a_device_or_friend_that_came_after_a_revocation_holds_it_too(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """The desktop is revoked, then the file server turns malicious and lists it again.
    A tablet paired afterwards holds the revocation from its grant, and Carol, a friend
    made afterwards, from the tablet's acceptance: what the revoked desktop signs as
    Alice is refused by both, and nothing sent to or by them reaches the desktop's swarm
    (they trusted the file server alone: the desktop read Carol's messages to Alice and
    the tablet's sent ones, and Carol filed the desktop's as Alice's)."""
    stolen = Identity.from_label("device/desktop")
    async with (
        open_world() as network,
        device(network, tmp_path, "phone", "mapped") as phone,
        device(network, tmp_path, "desktop", "mapped") as desktop,
        open_swarm_client(network.transport, network.directory(), network.clock) as swarm,
    ):
        await pair(phone, desktop)
        await phone.pairing.revoke(desktop.whoami().device_id)
        await wait_until(lambda: desktop.whoami().revoked_at_ms is not None)
        with sqlite3.connect(network.data_dir / "fileserver.sqlite3") as files:
            files.execute("UPDATE mappings SET active = 1, revoked_at = NULL, revocation = NULL")
        namespaces = (NAMESPACE_MESSAGES, NAMESPACE_SYNC)
        readable = {ns: stored_kinds(network, stolen, ns) for ns in namespaces}
        # Carol's request goes to the devices the file server lists: a stranger has
        # nothing else to go by (docs/security.md, finding 6). Nothing after it does.
        readable[NAMESPACE_MESSAGES] = sorted([*readable[NAMESPACE_MESSAGES], "friend_request"])
        async with (
            device(network, tmp_path, "tablet", "mapped") as tablet,
            device(network, tmp_path, "carol", "mapped") as carol,
        ):
            await pair(phone, tablet)
            await befriend(carol, tablet)
            await tablet.send(carol.session_id, "the door code is 4711")
            await carol.send(phone.session_id, "here is my address")
            await wait_until(lambda: len(tablet.history(carol.session_id)) == 2)
            await tablet.flush()
            await carol.flush()
            assert {ns: stored_kinds(network, stolen, ns) for ns in namespaces} == readable
            alice = phone.session_id
            forged = SyncSent(b"\1" * 32, carol.session_id, network.clock.now_ms(), "forged")
            await inject(swarm, stolen, tablet.whoami().device_id, NAMESPACE_SYNC, forged)
            lure = Text(alice, "wire 500")
            await inject(swarm, stolen, carol.session_id, NAMESPACE_MESSAGES, lure)
            assert "is not a device of" in await refusal(tablet)
            assert "is not a device of" in await refusal(carol)
            assert sorted(text for _, text in texts(carol, alice)) == [
                "here is my address",
                "the door code is 4711",
            ]


async def test_a_sibling_without_a_mapping_is_unpaired_all_the_same(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A sibling the file server has no mapping of (one a stolen secondary planted
    before siblings were taken from the primary alone) is revoked here and at the other
    siblings: the file server's ``not_found`` is no reason to keep it."""
    thiefs = Identity.from_label("thief's device")
    async with open_world() as network:
        async with (
            device(network, tmp_path, "phone", "mapped") as phone,
            device(network, tmp_path, "tablet", "mapped") as tablet,
        ):
            await pair(phone, tablet)
        for name in ("phone", "tablet"):
            with closing(DeviceStore(tmp_path / name / STORE_FILE)) as store:
                store.add_sibling(thiefs.session_id, "desktop", overlay_public(thiefs.seed))
        async with (
            device(network, tmp_path, "phone") as phone,
            device(network, tmp_path, "tablet") as tablet,
        ):
            await phone.pairing.revoke(thiefs.session_id)
            assert thiefs.session_id not in phone.siblings()
            await wait_until(lambda: thiefs.session_id not in tablet.siblings())


async def test_a_device_that_dated_its_request_ahead_is_revoked_at_once(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A new device's clock runs 55 s ahead (within the skew a request may have), so the
    mapping it is granted by is dated ahead too: the user, who accepted the wrong
    device, revokes it at once (a revocation dated before the mapping was refused, as of
    an earlier pairing, for a minute)."""
    async with open_world() as network:
        ahead = replace(network.access(), clock=Clock(TEST_EPOCH_MS + 55_000))
        async with (
            device(network, tmp_path, "phone", "mapped") as phone,
            open_device(
                tmp_path / "intruder",
                ahead,
                mode="mapped",
                name="intruder",
                seed=Identity.from_label("device/intruder").seed,
            ) as intruder,
        ):
            await pair(phone, intruder)
            await phone.pairing.revoke(intruder.whoami().device_id)
            assert phone.siblings() == {}
            await wait_until(lambda: intruder.whoami().revoked_at_ms is not None)


async def test_a_post_from_an_unmapped_key_is_refused(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with (
        open_world() as network,
        device(network, tmp_path, "phone", "mapped") as phone,
        device(network, tmp_path, "tablet", "mapped") as tablet,
        open_opengroup_client(network.transport, network.opengroup_url) as room,
    ):
        await pair(phone, tablet)
        await phone.rooms.create("lobby")
        claim = sign_post(
            MALLORY, "lobby", b"I am Alice", network.clock.now_ms(), primary=phone.session_id
        )
        with pytest.raises(RpcError) as refused:
            await room.post(claim)
        assert refused.value.code == "unauthorized"
        assert "not a device of the claimed primary" in refused.value.message
        # A revoked device is unmapped too: its posts are no longer taken as Alice's.
        await phone.pairing.revoke(tablet.whoami().device_id)
        with pytest.raises(RpcError) as refused:
            await tablet.rooms.post("lobby", "still me?")
        assert refused.value.code == "unauthorized"
        posts, _ = await room.messages("lobby")
        assert posts == []


async def test_strangers_and_misplaced_records_are_refused(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with (
        open_world() as network,
        device(network, tmp_path, "alice", "mapped") as alice,
        device(network, tmp_path, "bob", "mapped") as bob,
        open_swarm_client(network.transport, network.directory(), network.clock) as swarm,
    ):
        await befriend(alice, bob)
        mallory = MALLORY.session_id
        hostile = [
            (NAMESPACE_MESSAGES, Text(mallory, "buy now"), "not a friend"),
            (NAMESPACE_MESSAGES, Text(bob.session_id, "I am Bob"), "is not a device of"),
            (NAMESPACE_SYNC, SyncSent(b"\0" * 32, bob.session_id, 1, "fake"), "is not a device of"),
            (
                NAMESPACE_SYNC,
                ContactRecord(mallory, ContactState.FRIEND, (mallory,)),
                "is not a device of",
            ),
            (
                NAMESPACE_MESSAGES,
                ContactRecord(mallory, ContactState.FRIEND, (mallory,)),
                "does not belong",
            ),
            # Mallory's own valid revocation, from a stranger; and Bob's, forged by Mallory.
            (
                NAMESPACE_MESSAGES,
                DeviceRevoked(revoke_pairing(MALLORY, bob.session_id, 1).to_bytes()),
                "not a friend",
            ),
            (
                NAMESPACE_MESSAGES,
                DeviceRevoked(
                    replace(
                        revoke_pairing(MALLORY, alice.session_id, 1), primary=bob.session_id
                    ).to_bytes()
                ),
                "does not belong to",
            ),
        ]
        for namespace, content, _ in hostile:
            await inject(swarm, MALLORY, alice.session_id, namespace, content)
        await swarm.store(alice.session_id, NAMESPACE_MESSAGES, b"\x00garbage")
        await wait_until(lambda: len(alice.rejections) == len(hostile) + 1)
        reasons = sorted(r.reason for r in alice.rejections)
        for _, _, expected in hostile:
            assert any(expected in reason for reason in reasons), expected
        assert any("sealed box does not open" in reason for reason in reasons)
        assert alice.history() == [] and [c.user for c in alice.friends.contacts()] == [
            bob.session_id
        ]
        # Alice is unharmed: Bob still gets through.
        await bob.send(alice.session_id, "still here")
        await wait_until(lambda: len(alice.history()) == 1)


KINDS = [
    "text",
    "friend_request",
    "friend_accept",
    "device_revoked",
    "account_linked",
    "sync_sent",
    "sync_linked",
    "sync_contact",
    "sync_sibling",
    "pair_request",
    "pair_grant",
    "other",
]
cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=70) | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=20,
)


@settings(derandomize=True, max_examples=300, deadline=None)
@given(kind=st.sampled_from(KINDS), value=cbor_values, raw=st.binary(max_size=64))
def test_content_decoding_refuses_garbage_with_decode_error(
    kind: str, value: object, raw: bytes
) -> None:
    from p2psync.wire import encode_cbor

    for body in (encode_cbor(value), raw):
        try:
            decoded = decode_content(kind, body)
        except DecodeError:
            continue
        # Whatever decodes re-encodes to the same kind.
        assert encode_content(decoded)[0] == kind


async def test_two_requests_showing_one_code_are_both_refused(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An attacker who saw the request can grind out one of its own with the same six
    # digits; the primary must not pick one of the two.
    for side in ("joiner", "pairer"):  # the new devices' tickets, and the primary's list
        monkeypatch.setattr(f"p2psync.device.{side}.pairing_code", lambda *_: "123 456")
    async with (
        open_world() as network,
        device(network, tmp_path, "phone", "linked") as phone,
        device(network, tmp_path, "tablet", "linked") as tablet,
        device(network, tmp_path, "mallory", "linked") as mallory,
    ):
        ticket = await tablet.pairing.request(phone.session_id)
        await mallory.pairing.request(phone.session_id)
        await wait_until(lambda: len(phone.pairing.requests()) == 2)
        with pytest.raises(PairingError, match="2 pairing requests show code 123 456"):
            await phone.pairing.accept(ticket.code)
        assert phone.pairing.requests() == []
        await trio.sleep(60)
        assert not tablet.whoami().paired and not mallory.whoami().paired


def test_the_code_comes_from_the_primarys_nonce_too_so_it_cannot_be_ground_in_advance() -> None:
    request_id = bytes(range(32))
    codes = [pairing_code(request_id, bytes([n]) * 32) for n in range(50)]
    assert len(set(codes)) > 45  # a new nonce, a new code: nothing to aim at beforehand
    assert all(len(code) == 7 and code[3] == " " for code in codes)
    assert pairing_code(request_id, bytes(32)) == pairing_code(request_id, bytes(32))


YEAR_MS = 365 * 86_400_000


@pytest.mark.parametrize("dated", ["2**64-1", "2**63", "year 10000", "1000 years on", "an hour on"])
async def test_a_friends_poisoned_date_is_refused_and_the_inbox_goes_on(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, dated: str
) -> None:
    """A message dated 2**64 - 1 once overflowed the history's SQLite integer, left the
    read position behind it and so stopped the inbox on every start. Dates beyond 64 bits
    signed are refused when the envelope is decoded, far-future ones when filed; either way
    the device counts it, moves past it, and does not meet it again after a restart."""
    async with (
        open_world() as network,
        device(network, tmp_path, "bob", "linked") as bob,
        open_swarm_client(network.transport, network.directory(), network.clock) as swarm,
    ):
        now = network.clock.now_ms()
        timestamp_ms = {
            "2**64-1": 2**64 - 1,
            "2**63": 2**63,
            "year 10000": MAX_TIMESTAMP_MS + 1,
            "1000 years on": now + 1000 * YEAR_MS,
            "an hour on": now + MAX_AHEAD_MS + 60_000,
        }[dated]
        async with device(network, tmp_path, "alice", "linked") as alice:
            await befriend(alice, bob)
            poison = Text(bob.session_id, "poison")
            await inject(
                swarm,
                Identity.from_label("device/bob"),
                alice.session_id,
                NAMESPACE_MESSAGES,
                poison,
                timestamp_ms,
            )
            reason = await refusal(alice)
            assert "ts must be an integer" in reason or "ahead of this device's clock" in reason
            await bob.send(alice.session_id, "after the poison")
            await wait_until(lambda: texts(alice, bob.session_id) == [(False, "after the poison")])
            assert alice.rejected == 1
        # After a restart the inbox goes on; a swarm member that got the poison late may
        # hand it out again (reads go in each member's own arrival order): refused again.
        async with device(network, tmp_path, "alice") as alice:
            await bob.send(alice.session_id, "after a restart")
            await wait_until(lambda: len(alice.history()) == 2)
            assert texts(alice, bob.session_id)[-1] == (False, "after a restart")
            assert all(r.reason == reason for r in alice.rejections)
            assert alice.rejected == len(alice.rejections) <= 1


def test_dates_past_year_9999_do_not_decode() -> None:
    alice = Identity.from_label("alice")
    for timestamp_ms in (MAX_TIMESTAMP_MS + 1, 2**63, 2**64 - 1):
        kind, body = encode_content(Text(MALLORY.session_id, "x"))
        data = seal_envelope(MALLORY, alice.x25519_public, kind, body, timestamp_ms)
        with pytest.raises(DecodeError, match="ts must be an integer"):
            open_envelope(alice, data)
        record = HistoryRecord(
            timestamp_ms, alice.session_id, False, alice.session_id, alice.session_id, "x"
        )
        with pytest.raises(DecodeError, match="ts must be an integer"):
            HistoryRecord.from_bytes(record.to_bytes())


async def test_a_flood_of_pairing_requests_gets_few_answers_and_pairing_still_works(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Answering a pairing request costs the primary a signature and a stored challenge:
    one requester key gets ``REQUESTS_PER_KEY`` answers, the rest are dropped unanswered,
    and an honest new device pairs right after. (Each request of its own attempt: one
    attempt asked again is answered once, and the rest cost nothing.)"""
    flood = 20
    async with (
        open_world() as network,
        device(network, tmp_path, "phone", "linked") as phone,
        open_swarm_client(network.transport, network.directory(), network.clock) as swarm,
    ):
        for n in range(flood):
            began = swarm.clock.now_ms() - n
            request = PairRequest(Mode.LINKED, MALLORY.session_id, bytes(32), "x", began, None)
            await inject(swarm, MALLORY, phone.session_id, NAMESPACE_CONTROL, request)
        await wait_until(lambda: phone.rejected == flood - REQUESTS_PER_KEY)
        assert all("too many pairing requests" in r.reason for r in phone.rejections)
        answers = stored_kinds(network, MALLORY, NAMESPACE_CONTROL)
        assert answers == ["pair_challenge"] * REQUESTS_PER_KEY
        async with device(network, tmp_path, "tablet", "linked") as tablet:
            ticket = await tablet.pairing.request(phone.session_id)
            await wait_until(lambda: ticket.code in [o.code for o in phone.pairing.requests()])
            await phone.pairing.accept(ticket.code)
            with trio.fail_after(60):
                await tablet.pairing.wait_paired()


@asynccontextmanager
async def flooded_pairing(
    tmp_path: Path, mode: str
) -> AsyncIterator[tuple[LocalNetwork, Device, SwarmClient, Device, trio.Nursery]]:
    """A phone (the primary) and a tablet in ``mode``, and a swarm client strangers store
    their requests with; the nursery is for the tablet's pairing."""
    async with (
        open_world() as network,
        device(network, tmp_path, "phone", mode) as phone,
        open_swarm_client(network.transport, network.directory(), network.clock) as swarm,
        device(network, tmp_path, "tablet", mode) as tablet,
        trio.open_nursery() as nursery,
    ):
        yield network, phone, swarm, tablet, nursery


async def test_strangers_spending_the_answer_budget_leave_a_new_device_to_the_users_listing(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Strangers' requests from fresh keys spend the primary's total of answers (each key
    within its own share): a new device asking after them is held unanswered, not
    dropped, and the user's listing answers it among the last few to arrive; what is held
    is bounded, and only what the budget or the user's listing allowed was answered."""
    strangers = [Identity.from_label(f"stranger/{n}") for n in range(MAX_HELD_REQUESTS + 20)]

    async with flooded_pairing(tmp_path, "linked") as (network, phone, swarm, tablet, nursery):
        for key in strangers[: REQUESTS_BURST + 3]:
            await ask_to_pair(swarm, key, phone)
        await wait_until(lambda: phone.pairing.held() == 3)
        assert len(phone.pairing.requests()) == REQUESTS_BURST

        tickets = start_pairing(nursery, tablet, phone)
        await wait_until(lambda: phone.pairing.held() == 4)
        for key in strangers[REQUESTS_BURST + 3 : REQUESTS_BURST + 5]:  # strangers go on
            await ask_to_pair(swarm, key, phone)
        await wait_until(lambda: phone.pairing.held() == 6)
        assert not tickets  # held: the tablet heard nothing

        assert await phone.pairing.answer_held() == ANSWERS_PER_LISTING
        await wait_until(lambda: bool(tickets))
        assert tickets[0].code in [o.code for o in phone.pairing.requests()]
        await accept_pairing(phone, tablet, tickets[0].code)
        assert phone.pairing.held() == 1

        for key in strangers[REQUESTS_BURST + 5 :]:
            await ask_to_pair(swarm, key, phone)
        await wait_until(lambda: phone.pairing.held() == MAX_HELD_REQUESTS)
        challenged = [k for k in strangers if stored_kinds(network, k, NAMESPACE_CONTROL)]
        assert len(challenged) == REQUESTS_BURST + ANSWERS_PER_LISTING - 1  # and the tablet


async def test_a_new_device_the_user_names_is_answered_whatever_strangers_push(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Strangers spend the answer budget and then, after the new device asked, push its
    held request out with more than are kept: the user names the device by the start of
    its id (its `pair` shows it), and the next request it makes (it asks again while
    unanswered) is answered, spending nothing on the strangers'."""
    strangers = [Identity.from_label(f"stranger/{n}") for n in range(REQUESTS_BURST + 80)]
    async with flooded_pairing(tmp_path, "linked") as (network, phone, swarm, tablet, nursery):
        for key in strangers[:REQUESTS_BURST]:
            await ask_to_pair(swarm, key, phone)
        await wait_until(lambda: len(phone.pairing.requests()) == REQUESTS_BURST)
        tickets = start_pairing(nursery, tablet, phone)
        await wait_until(lambda: phone.pairing.held() == 1)
        for key in strangers[REQUESTS_BURST:]:
            await ask_to_pair(swarm, key, phone)
        await wait_until(lambda: phone.pairing.held() == MAX_HELD_REQUESTS)
        with pytest.raises(PairingError, match="first 10 or more characters"):
            await phone.pairing.answer_device("05ab")
        named = tablet.whoami().device_id[:DEVICE_PREFIX_CHARS]
        with trio.fail_after(2 * REASK_S + 10):
            await phone.pairing.answer_device(named)
        await wait_until(lambda: bool(tickets))
        await accept_pairing(phone, tablet, tickets[0].code)
        challenged = [k for k in strangers if stored_kinds(network, k, NAMESPACE_CONTROL)]
        assert len(challenged) == REQUESTS_BURST


async def test_a_mapped_device_past_its_own_share_is_answered_once_the_user_names_it(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A mapped new device asks by its own key: asking again while strangers hold the
    primary's answers spends that key's share, and its next requests are dropped; once
    strangers also pushed its held ones out, the user naming it is what answers it. (The
    primary is away while it all arrives, so it reads it in the order it was stored.)"""

    async def mapped_asks(swarm: SwarmClient, stranger: Identity, target: Device) -> None:
        now = swarm.clock.now_ms()
        signed = sign_pairing_request(stranger, target.session_id, now).to_bytes()
        request = PairRequest(Mode.MAPPED, stranger.session_id, bytes(32), "tablet", now, signed)
        await inject(swarm, stranger, target.session_id, NAMESPACE_CONTROL, request)

    strangers = [Identity.from_label(f"stranger/{n}") for n in range(REQUESTS_BURST + 70)]
    async with flooded_pairing(tmp_path, "mapped") as (_network, phone, swarm, tablet, nursery):
        await phone.set_online(False, promptly=True)
        for key in strangers[:REQUESTS_BURST]:  # they will spend the answers
            await mapped_asks(swarm, key, phone)
        await trio.sleep(REASK_S)  # every member holds them before what comes next
        tickets = start_pairing(nursery, tablet, phone)
        # It asks 1 + REQUESTS_PER_KEY times: held, held, held, dropped.
        await trio.sleep(REQUESTS_PER_KEY * REASK_S + REASK_S / 2)
        for key in strangers[REQUESTS_BURST:]:  # and they will push its held ones out
            await mapped_asks(swarm, key, phone)
        await trio.sleep(REASK_S / 4)
        await phone.set_online(True)
        await wait_until(lambda: any("from one key" in r.reason for r in phone.rejections))
        await wait_until(lambda: phone.pairing.held() == MAX_HELD_REQUESTS)
        assert not tickets
        with trio.fail_after(2 * REASK_S + 10):
            await phone.pairing.answer_device(tablet.whoami().device_id[:DEVICE_PREFIX_CHARS])
        await wait_until(lambda: bool(tickets))
        await accept_pairing(phone, tablet, tickets[0].code)


async def test_a_held_request_that_cannot_be_answered_costs_only_itself(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A stranger whose own mailbox is full (no challenge can be stored for it) holds a
    request after the new device's: the user's listing answers the new device anyway."""
    quota = 64 * 1024
    config = replace(QUIET, owner_quota_bytes=quota)
    poisoned = Identity.from_label("stranger/mailbox-full")
    async with (
        open_local_network(6, clock=Clock(TEST_EPOCH_MS), node_config=config) as network,
        device(network, tmp_path, "phone", "linked") as phone,
        open_swarm_client(network.transport, network.directory(), network.clock) as swarm,
        device(network, tmp_path, "tablet", "linked") as tablet,
        trio.open_nursery() as nursery,
    ):
        for n in range(REQUESTS_BURST):
            await ask_to_pair(swarm, Identity.from_label(f"stranger/{n}"), phone)
        await wait_until(lambda: len(phone.pairing.requests()) == REQUESTS_BURST)
        with pytest.raises(RpcError, match="without its access"):
            for n in range(quota // 1024 + 1):
                await swarm.store(poisoned.session_id, NAMESPACE_CONTROL, n.to_bytes(1024, "big"))
        tickets = start_pairing(nursery, tablet, phone)
        await wait_until(lambda: phone.pairing.held() == 1)
        await ask_to_pair(swarm, poisoned, phone)
        await wait_until(lambda: phone.pairing.held() == 2)
        assert await phone.pairing.answer_held() == 1  # the tablet's, after the poisoned one
        await wait_until(lambda: bool(tickets))
        assert tickets[0].code in [o.code for o in phone.pairing.requests()]
        assert phone.pairing.held() == 1


#: An owner's quota small enough for a stranger to fill in a few hundred stores.
SMALL_QUOTA = 256 * 1024


async def fill_as_a_stranger(swarm: SwarmClient, owner: str, namespace: int) -> None:
    """Store junk for ``owner`` (on a network of :data:`SMALL_QUOTA`) until its swarm
    takes no more from a stranger."""
    with pytest.raises(RpcError, match="without its access"):
        for n in range(SMALL_QUOTA // 1024 + 1):
            await swarm.store(owner, namespace, n.to_bytes(1024, "big"))


@pytest.mark.parametrize("mode", ["linked", "mapped"])
async def test_a_strangers_flood_of_a_mailbox_does_not_hold_up_a_friends_mail(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, mode: str
) -> None:
    """Mallory stores junk for Bob (no account needed) until his swarm refuses her; Alice,
    his friend, still reaches him at once: his acceptance carried his access, her store
    shows it, and the last quarter of his quota is kept for such stores (finding 32:
    before, her message waited until Mallory's junk expired, days later)."""
    config = replace(QUIET, owner_quota_bytes=SMALL_QUOTA)
    async with (
        open_local_network(6, clock=Clock(TEST_EPOCH_MS), node_config=config) as network,
        device(network, tmp_path, "alice", mode) as alice,
        device(network, tmp_path, "bob", mode) as bob,
        open_swarm_client(network.transport, network.directory(), network.clock) as mallory,
    ):
        await befriend(alice, bob)
        await fill_as_a_stranger(mallory, bob.session_id, NAMESPACE_MESSAGES)
        await alice.send(bob.session_id, "still reaches you")
        await wait_until(lambda: (False, "still reaches you") in texts(bob, alice.session_id))
        await bob.send(alice.session_id, "and back")  # Alice's mailbox was never full
        await wait_until(lambda: (False, "and back") in texts(alice, bob.session_id))


async def test_a_new_device_whose_mailbox_a_stranger_filled_is_still_answered(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Mallory fills a new ``mapped`` tablet's mailbox (its id is on its screen) before
    it asks to pair; the primary's answers still get there: the request carried the
    tablet's access, and the primary shows it (it stored them as a stranger's, refused
    while the flood held). A ``linked`` device asks from a key made for the attempt,
    which nobody knows to fill."""
    config = replace(QUIET, owner_quota_bytes=SMALL_QUOTA)
    async with (
        open_local_network(6, clock=Clock(TEST_EPOCH_MS), node_config=config) as network,
        device(network, tmp_path, "phone", "mapped") as phone,
        device(network, tmp_path, "tablet", "mapped") as tablet,
        open_swarm_client(network.transport, network.directory(), network.clock) as mallory,
    ):
        await fill_as_a_stranger(mallory, tablet.whoami().device_id, NAMESPACE_CONTROL)
        await pair(phone, tablet)


@pytest.mark.parametrize("mode", ["linked", "mapped"])
async def test_a_new_device_given_the_pairing_address_pairs_while_a_stranger_floods_the_primary(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, mode: str
) -> None:
    """Mallory fills the phone's mailbox (the user's id is public) as far as a stranger
    may: a tablet asking by the user's id alone is refused, as a stranger's store is, and
    told of the pairing address. Given that, its requests show the phone's access, fill
    the reserve, and it pairs. The address is the user's: a ``linked`` tablet shows the
    same one once paired, a ``mapped`` secondary none (it pairs nobody)."""
    config = replace(QUIET, owner_quota_bytes=SMALL_QUOTA)
    async with (
        open_local_network(6, clock=Clock(TEST_EPOCH_MS), node_config=config) as network,
        device(network, tmp_path, "phone", mode) as phone,
        device(network, tmp_path, "tablet", mode) as tablet,
        open_swarm_client(network.transport, network.directory(), network.clock) as mallory,
    ):
        await fill_as_a_stranger(mallory, phone.session_id, NAMESPACE_CONTROL)
        with pytest.raises(PairingError, match=r"without its access.*pairing address"):
            await tablet.pairing.request(phone.session_id)
        address = phone.pairing.address()
        assert address is not None and address.startswith("pair:")
        assert phone.pairing.refusal(address) == "a device cannot pair with itself"
        assert tablet.pairing.refusal(address) is None
        ticket = await tablet.pairing.request(address)
        await wait_until(lambda: bool(phone.pairing.requests()))
        assert [o.code for o in phone.pairing.requests()] == [ticket.code]
        await accept_pairing(phone, tablet, ticket.code)
        assert tablet.session_id == phone.session_id
        assert tablet.pairing.address() == (address if mode == "linked" else None)


async def test_an_access_dated_further_ahead_than_a_device_signs_is_not_kept(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A sender whose clock ran 60 days fast once: its access, kept as the one expiring
    last, stood in place of its current ones for two months and counted at no node, so
    its friends stored for it as strangers (a review's finding). Now one that would not
    count is not kept; a current one is."""
    async with (
        open_world() as network,
        device(network, tmp_path, "alice", "linked") as alice,
        open_swarm_client(network.transport, network.directory(), network.clock) as swarm,
    ):
        now_ms = swarm.clock.now_ms()
        senders = {}
        for label, signed_at_ms in (("ahead", now_ms + 60 * DAY_MS), ("current", now_ms)):
            sender = senders[label] = Identity.from_label(f"access-dates/{label}")
            kind, body = encode_content(FriendRequest(sender.session_id, (), "hi"))
            access = sign_access(sender, signed_at_ms)
            recipient = session_id_key(alice.session_id)
            data = seal_envelope(sender, recipient, kind, body, now_ms, access)
            await swarm.store(alice.session_id, NAMESPACE_MESSAGES, data)
        await wait_until(lambda: all(alice.friends.contact(s.session_id) for s in senders.values()))
        with closing(DeviceStore(tmp_path / "alice" / STORE_FILE, read_only=True)) as store:
            assert store.access_to(senders["ahead"].session_id) is None
            assert store.access_to(senders["current"].session_id) is not None


async def test_a_record_that_trips_an_unforeseen_error_is_refused_not_fatal(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever a record makes go wrong, it costs that record only: refused, counted, read
    past; the inbox goes on (stands in for the next overflow nobody has found yet)."""

    def fragile(recipient: Identity, data: bytes) -> Envelope:
        envelope = open_envelope(recipient, data)
        if b"boom" in envelope.body:
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        return envelope

    monkeypatch.setattr("p2psync.device.receiver.open_envelope", fragile)
    async with (
        open_world() as network,
        device(network, tmp_path, "alice", "linked") as alice,
        device(network, tmp_path, "bob", "linked") as bob,
    ):
        await befriend(alice, bob)
        await bob.send(alice.session_id, "boom")
        await bob.send(alice.session_id, "still here")
        await wait_until(lambda: texts(alice, bob.session_id) == [(False, "still here")])
        assert alice.rejected == 1
        assert "unexpected OverflowError" in alice.rejections[0].reason


async def test_one_member_refusing_every_store_for_good_has_no_copy_dropped(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A member of Bob's swarm answers every store, and each store of every batch, with a
    refusal for good. Its word alone drops nothing: a second member is asked, stores the
    copy, and every message reaches Bob, sent online and written offline alike."""
    async with open_world() as network, device(network, tmp_path, "bob", "linked") as bob:
        async with device(network, tmp_path, "alice", "linked") as alice:
            await befriend(alice, bob)
            hostile = next(node for node in network.running_nodes() if node.owns(bob.session_id))
            refused: list[str] = []

            def refuse_store(params: Fields, connection: object) -> None:
                refused.append("store")
                raise RpcError("bad_request", "refused for good, or so it says")

            def refuse_each_store(params: Fields, connection: object) -> dict[str, Any]:
                stores = params.items("stores", max_len=MAX_STORE_BATCH)
                refused.append("store_batch")
                return StoreBatchReply.wire([RpcError("too_large", "so it says")] * len(stores))

            hostile.rpc.methods["store"] = refuse_store
            hostile.rpc.methods["store_batch"] = refuse_each_store
            # A request each, to members at random: the liar is asked first in some (a
            # run that never asks it first, and so shows nothing, is (5/6) ** 61 of runs,
            # once in 65 000).
            for i in range(60):
                await alice.send(bob.session_id, f"online {i}")
                with trio.fail_after(60):
                    await alice.flush()
            await alice.set_online(False)
            for i in range(8):
                await alice.send(bob.session_id, f"written offline {i}")
            await alice.set_online(True)
            with trio.fail_after(300):
                await alice.flush()
            await wait_until(lambda: len(bob.history(alice.session_id)) == 68)
        assert refused, "the hostile member was asked"


async def test_a_full_mailbox_holds_up_mail_to_its_owner_alone(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A stranger keeps Bob's mailbox full: Alice's copy to Bob waits (it is refused as a
    passing limit, not for good), her later message to Carol does not wait behind it, her
    status says one message waits and why, and Bob has his once the mailbox takes mail
    again."""
    async with (
        open_world() as network,
        device(network, tmp_path, "bob", "linked") as bob,
        device(network, tmp_path, "carol", "linked") as carol,
        device(network, tmp_path, "alice", "linked") as alice,
    ):
        await befriend(alice, bob)
        await befriend(alice, carol)
        honest = {
            node.url: (node.rpc.methods["store"], node.rpc.methods["store_batch"])
            for node in network.running_nodes()
        }

        def full_for_bob(url: str, method: int) -> Any:
            def handler(params: Fields, connection: Any) -> Any:
                owners = (
                    [Fields(s, "store").raw("pubkey") for s in params.items("stores", max_len=64)]
                    if method
                    else [params.raw("pubkey")]
                )
                if bob.session_id in owners:
                    raise RpcError("rate_limited", "this owner's mailbox is full: later")
                return honest[url][method](params, connection)

            return handler

        for node in network.running_nodes():
            node.rpc.methods["store"] = full_for_bob(node.url, 0)
            node.rpc.methods["store_batch"] = full_for_bob(node.url, 1)
        await alice.send(bob.session_id, "to bob, first")
        await alice.send(carol.session_id, "to carol, after")
        await wait_until(lambda: len(carol.history(alice.session_id)) == 1, limit_s=120)
        assert bob.history(alice.session_id) == []
        waiting = alice.sync_status()
        assert waiting.unsent == 1
        assert waiting.last_send_error is not None and "mailbox is full" in waiting.last_send_error
        for node in network.running_nodes():
            node.rpc.methods["store"], node.rpc.methods["store_batch"] = honest[node.url]
        await wait_until(lambda: len(bob.history(alice.session_id)) == 1)
        assert texts(bob, alice.session_id) == [(False, "to bob, first")]
        await wait_until(lambda: alice.sync_status().last_send_error is None)
        assert alice.sync_status().unsent == 0


async def test_a_file_server_that_never_answers_holds_the_inbox_for_a_deadline_only(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Stranger records that make a device ask the file server who a key belongs to
    (a friend request signed by a key that is not its claimed user's), while the file
    server holds every such question unanswered: each question gives up after the
    client's deadline, and the device leaves the file server alone for a while after, so
    a friend's message stored after them is filed within one deadline (without the
    deadline, the receive loop waited for good: nothing after the first was ever
    filed)."""
    async with (
        open_world() as network,
        device(network, tmp_path, "alice", "linked") as alice,
        device(network, tmp_path, "bob", "linked") as bob,
        open_swarm_client(network.transport, network.directory(), network.clock) as swarm,
    ):
        await befriend(alice, bob)

        async def never(params: Fields, conn: Any) -> object:
            await trio.sleep_forever()

        network.servers()[network.fileserver_url].add_method("get_mappings", never)
        for n in range(3):
            claimed = Identity.from_label(f"claimed {n}").session_id
            await inject(
                swarm, MALLORY, bob.session_id, NAMESPACE_MESSAGES, FriendRequest(claimed, (), "hi")
            )
        began = trio.current_time()
        await alice.send(bob.session_id, "after the strangers")
        await wait_until(lambda: texts(bob, alice.session_id) == [(False, "after the strangers")])
        # One question waits out its deadline; the next ones, asked moments after the
        # file server failed, are not put to it (each waited 20 s in turn before).
        assert trio.current_time() - began < 2 * CALL_TIMEOUT_S


async def test_strangers_records_waiting_never_push_out_a_friends(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the file server is down, Alice's text from a tablet Bob has not seen yet
    waits to be checked, and so does every stranger's friend request naming a key of its
    own choosing; past the bound of what waits, strangers' records push out strangers'
    only, and Alice's text is filed once the file server answers (with one share for
    all, the strangers pushed it out: it was never filed)."""
    monkeypatch.setattr(device_store, "DEFERRED_RECORDS", 3)
    async with (
        open_world() as network,
        device(network, tmp_path, "alice", "mapped") as alice,
        device(network, tmp_path, "bob", "mapped") as bob,
        open_swarm_client(network.transport, network.directory(), network.clock) as swarm,
        open_fileserver_client(network.transport, network.fileserver_url) as fileserver,
    ):
        await befriend(alice, bob)
        tablet = Identity.from_label("alice's new tablet")
        now = network.clock.now_ms()
        await fileserver.put_mapping(
            create_mapping(Identity.from_label("device/alice"), tablet, now)
        )
        file_server = network.servers()[network.fileserver_url]
        answer = file_server.methods["get_mappings"]
        down = True

        async def flaky(params: Fields, conn: Any) -> object:
            if down:
                raise RpcError("unavailable", "down for the test")
            return await answer(params, conn)

        file_server.add_method("get_mappings", flaky)
        await inject(
            swarm, tablet, bob.session_id, NAMESPACE_MESSAGES, Text(alice.session_id, "hi")
        )
        for n in range(5):
            claimed = Identity.from_label(f"claimed {n}").session_id
            stranger = Identity.from_label(f"stranger {n}")
            await inject(
                swarm,
                stranger,
                bob.session_id,
                NAMESPACE_MESSAGES,
                FriendRequest(claimed, (), "hi"),
            )
        await wait_until(lambda: any(r.kind == "deferred records" for r in bob.rejections))
        down = False
        await wait_until(lambda: texts(bob, alice.session_id) == [(False, "hi")])


async def test_a_friend_naming_her_text_after_the_users_message_replaces_nothing(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A mapped device files a text under the id its sender gives (the fan-out copies'
    one id). Mallory read the id of what Alice sent her (the hash of her copy) and sends
    Alice's desktop, offline then, a text under it: the desktop files it first, and
    Alice's own message, when it comes, takes its place (it used to be ignored, and
    re-sync, which compares ids, never noticed)."""
    async with (
        open_world(relays=8) as network,
        device(network, tmp_path, "phone", "mapped") as phone,
        device(network, tmp_path, "desktop", "mapped") as desktop,
        device(network, tmp_path, "mallory", "linked") as mallory,
        open_swarm_client(network.transport, network.directory(), network.clock) as swarm,
    ):
        await pair(phone, desktop)
        await befriend(mallory, phone)
        await wait_until(
            lambda: (
                (c := desktop.friends.contact(mallory.session_id)) is not None
                and c.state == ContactState.FRIEND
            )
        )
        await desktop.set_online(False)
        sent = await phone.send(mallory.session_id, "I owe you 10 EUR")
        await wait_until(lambda: [i.id for i in mallory.history(phone.session_id)] == [sent])
        forged = Text(mallory.session_id, "you owe ME 1000 EUR", sent)
        her_key = Identity.from_label("device/mallory")  # the helper's key for her device
        assert her_key.session_id == mallory.session_id
        target = desktop.whoami().device_id
        await inject(swarm, her_key, target, NAMESPACE_MESSAGES, forged)
        await desktop.set_online(True)
        said = [(True, "I owe you 10 EUR")]
        await wait_until(lambda: texts(desktop, mallory.session_id) == said)
        await refusal(desktop)
        assert (
            desktop.rejections[-1].reason == "a friend's message under the id of one this user sent"
        )


async def test_a_requesters_messages_past_the_few_filed_wait_for_the_users_answer(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A stranger asks to be friends and sends 12 messages: 10 are filed while the
    request waits (what a free key can make a device keep is bounded), and the other 2
    once the user accepts."""
    stranger = Identity.from_label("hostile/requester")
    user = stranger.session_id
    async with (
        open_world() as network,
        device(network, tmp_path, "alice", "linked") as alice,
        open_swarm_client(network.transport, network.directory(), network.clock) as swarm,
    ):
        to_alice = partial(inject, swarm, stranger, alice.session_id, NAMESPACE_MESSAGES)
        await to_alice(FriendRequest(user, (user,), "hi"))
        await wait_until(lambda: alice.friends.contacts() != [])  # the texts come after it
        for n in range(12):
            await to_alice(Text(user, f"m{n}"))
        await wait_until(lambda: len(texts(alice, user)) == PENDING_MESSAGES)
        await trio.sleep(120)  # retry passes: still waiting
        assert len(texts(alice, user)) == PENDING_MESSAGES
        await alice.friends.accept(user)
        every = sorted(f"m{n}" for n in range(12))
        await wait_until(lambda: sorted(text for _, text in texts(alice, user)) == every)
