"""Moving a ``mapped`` account to ``linked`` mode (``Device.migrate``) on an in-process
network in virtual time: a primary, its secondary and a friend of either mode; history and
contacts kept on both devices, the friend's messages reach both devices through the
account's one swarm and none goes to the old secondary key, the secondary's messages
arrive as the account's, strangers see one device on the file server, a forged statement
is refused, and moving twice or from ``linked`` says so."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
import trio
import trio.testing

from p2psync.device import Device, DeviceError, PairingError
from p2psync.device.content import AccountLinked, Content, Text, encode_content
from p2psync.device.migration import sign_linked_statement
from p2psync.envelope import seal_envelope
from p2psync.fileserver.client import open_fileserver_client
from p2psync.identity import Identity, session_id_key
from p2psync.network import LocalNetwork
from p2psync.swarm.client import open_swarm_client
from p2psync.swarm.constants import MAX_TTL_MS, NAMESPACE_MESSAGES
from tests.drivers.swarm.helpers import wait_until

from .helpers import device, open_world, pair, siblings_and_friend, stored_messages

DAY_MS = 86_400_000


def ids(device: Device, conversation: str) -> set[bytes]:
    return {item.id for item in device.history(conversation)}


async def listed_devices(network: LocalNetwork, user: str) -> tuple[str, ...]:
    """What a stranger learns of ``user``'s devices from the file server."""
    async with open_fileserver_client(network.transport, network.fileserver_url) as files:
        return (await files.get_mappings(user)).devices


#: The desktop's own key (``device(…, "desktop", …)``), which the move retires.
OLD_DESKTOP_KEY = Identity.from_label("device/desktop")


async def store_as(network: LocalNetwork, signer: Identity, to: str, content: Content) -> None:
    """Store ``content`` for ``to`` signed by ``signer``, dated now, as its outbox would."""
    kind, body = encode_content(content)
    data = seal_envelope(signer, session_id_key(to), kind, body, network.clock.now_ms())
    async with open_swarm_client(network.transport, network.directory(), network.clock) as swarm:
        await swarm.store(to, NAMESPACE_MESSAGES, data)


async def send_forged_statement(network: LocalNetwork, account: str, to: str) -> None:
    """What the old secondary key could try: speak for the account it no longer is."""
    mallory = Identity.from_label("mallory").session_id
    forged = replace(
        sign_linked_statement(OLD_DESKTOP_KEY, [mallory], network.clock.now_ms()), account=account
    )
    await store_as(network, OLD_DESKTOP_KEY, to, AccountLinked(forged.to_bytes()))


@pytest.mark.parametrize("friend_mode", ["mapped", "linked"])
async def test_a_mapped_account_moves_to_linked_keeping_history_and_contacts(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, friend_mode: str
) -> None:
    async with (
        open_world() as network,
        siblings_and_friend(network, tmp_path, "mapped", friend_mode) as (phone, desktop, bob),
    ):
        alice, old_desktop = phone.session_id, desktop.whoami().device_id
        assert set(bob.friends.contact(alice).devices) == {alice, old_desktop}  # type: ignore[union-attr]

        await bob.send(alice, "before the move")
        await desktop.send(bob.session_id, "from the desktop, before")
        await phone.send(bob.session_id, "from the phone, before")
        for d in (phone, desktop):
            await wait_until(lambda d=d: len(d.history(bob.session_id)) == 3)  # type: ignore[misc]
        before = ids(phone, bob.session_id)
        assert ids(desktop, bob.session_id) == before

        # A statement the old desktop key signs for the account is refused.
        await send_forged_statement(network, alice, bob.session_id)
        await wait_until(lambda: len(bob.rejections) == 1)
        assert bob.rejections[0].kind == "account_linked"
        assert set(bob.friends.contact(alice).devices) == {alice, old_desktop}  # type: ignore[union-attr]

        assert await phone.migrate("linked") == (old_desktop,)
        assert phone.whoami().mode == "linked" and phone.session_id == alice
        await phone.flush()
        await wait_until(lambda: desktop.whoami().mode == "linked")
        me = desktop.whoami()
        assert (me.session_id, me.receives_as, me.device_id) == (alice, alice, old_desktop)
        await wait_until(lambda: bob.friends.contact(alice).devices == (alice,))  # type: ignore[union-attr]
        assert await listed_devices(network, alice) == (alice,)  # strangers see it too

        # The friend's message is stored once, for the account, and both devices read it,
        # even from a file server that turns malicious and lists the old key again: the
        # friend keeps the statement's revocations.
        with sqlite3.connect(network.data_dir / "fileserver.sqlite3") as files:
            files.execute("UPDATE mappings SET active = 1, revoked_at = NULL, revocation = NULL")
        network.clock.skip_idle(int(bob.config.mapping_cache_s * 1000) + 1000)
        await bob.flush()
        old_key_copies = stored_messages(network, old_desktop, NAMESPACE_MESSAGES)
        after = await bob.send(alice, "after the move")
        for d in (phone, desktop):
            await wait_until(lambda d=d: after in ids(d, bob.session_id))  # type: ignore[misc]
        await bob.flush()
        assert stored_messages(network, old_desktop, NAMESPACE_MESSAGES) == old_key_copies

        # The desktop now speaks with the account's key: the friend files it as Alice's.
        sent = await desktop.send(bob.session_id, "from the desktop, after")
        await wait_until(lambda: sent in ids(bob, alice))
        [reply] = [i for i in bob.history(alice) if i.id == sent]
        assert (reply.sender, reply.device) == (alice, alice)
        await wait_until(lambda: sent in ids(phone, bob.session_id))

        # History and contacts intact on both devices, and the same on both.
        for d in (phone, desktop):
            assert before | {after, sent} == ids(d, bob.session_id)
            assert [(c.user, c.state) for c in d.friends.contacts()] == [(bob.session_id, "friend")]

        for d in (phone, desktop):
            with pytest.raises(DeviceError, match="moved to linked mode already"):
                await d.migrate("linked")
        assert not phone.rejections and not desktop.rejections
        assert len(bob.rejections) == 1


async def test_a_secondary_away_longer_than_the_ttl_still_switches(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """The move's records outlive the device's TTL (up to the swarm's longest): the
    desktop, away three days, still finds its hand-over and the friend its statement.
    Meanwhile the file server lists its old key as revoked (the move retired it), which
    does not make the desktop think its primary unpaired it."""
    async with (
        open_world() as network,
        siblings_and_friend(network, tmp_path, "mapped") as (phone, desktop, bob),
    ):
        alice = phone.session_id
        await desktop.set_online(False)
        await bob.set_online(False)
        await phone.migrate("linked")
        await phone.flush()
        network.clock.skip_idle(3 * DAY_MS)
        await desktop.set_display_name("Alice")  # a sync record: its devices looked up
        await desktop.set_online(True)
        await bob.set_online(True)
        await wait_until(lambda: desktop.whoami().mode == "linked")
        await wait_until(lambda: bob.friends.contact(alice).devices == (alice,))  # type: ignore[union-attr]
        assert not desktop.rejections and not bob.rejections
        assert desktop.whoami().revoked_at_ms is None
        await desktop.send(bob.session_id, "after the move")
        await wait_until(lambda: "after the move" in [i.text for i in bob.history(alice)])


@pytest.mark.parametrize("friend_mode", ["mapped", "linked"])
async def test_a_secondary_that_has_not_read_its_hand_over_still_reaches_friends(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, friend_mode: str
) -> None:
    """Between the move and reading its hand-over the desktop still sends under its own
    key (a ``send`` run just after ``migrate``). The friend files that as the account's,
    as the account's own devices file its sync records, until the hand-over would have
    expired unread; after that the retired key is refused."""
    async with (
        open_world() as network,
        siblings_and_friend(network, tmp_path, "mapped", friend_mode) as (phone, desktop, bob),
    ):
        alice, old_desktop = phone.session_id, desktop.whoami().device_id
        await desktop.set_online(False)  # it does not read its hand-over yet
        await phone.migrate("linked")
        await phone.flush()
        await wait_until(lambda: bob.friends.contact(alice).devices == (alice,))  # type: ignore[union-attr]

        await store_as(network, OLD_DESKTOP_KEY, bob.session_id, Text(alice, "just after"))
        await wait_until(lambda: "just after" in [i.text for i in bob.history(alice)])
        [item] = [i for i in bob.history(alice) if i.text == "just after"]
        assert (item.sender, item.device) == (alice, old_desktop)
        assert not bob.rejections

        await network.pass_idle(MAX_TTL_MS)
        await store_as(network, OLD_DESKTOP_KEY, bob.session_id, Text(alice, "too late"))
        await wait_until(lambda: len(bob.rejections) == 1)
        assert "is not a device of" in bob.rejections[0].reason
        assert "too late" not in [i.text for i in bob.history(alice)]


async def test_after_the_move_siblings_meet_by_the_accounts_secret_and_merge_history(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A message only the desktop holds (sent while the phone was away, its sync copy
    expired since) reaches the phone after the move: the siblings find each other on the
    overlay by the secret derived from the account seed, and sync directly."""
    async with (
        open_world(relays=8) as network,
        siblings_and_friend(network, tmp_path, "mapped") as (phone, desktop, bob),
    ):
        old_desktop = desktop.whoami().device_id
        await phone.set_online(False)
        only_here = await desktop.send(bob.session_id, "while the phone was away")
        await desktop.set_online(False)
        network.clock.skip_idle(2 * DAY_MS)  # the desktop's sync copy for the phone expires
        await phone.set_online(True)
        await phone.sync_now()
        assert only_here not in ids(phone, bob.session_id)

        await phone.migrate("linked")
        await phone.flush()
        await desktop.set_online(True)
        await wait_until(lambda: desktop.whoami().mode == "linked")
        await wait_until(lambda: phone.sync_status().connected_siblings == {old_desktop})
        await wait_until(lambda: only_here in ids(phone, bob.session_id))
        assert ids(phone, bob.session_id) == ids(desktop, bob.session_id)
        assert not phone.rejections and not desktop.rejections


async def test_only_a_mapped_primary_moves_and_a_lone_one_moves_at_once(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with (
        open_world() as network,
        device(network, tmp_path, "carol", "linked") as carol,
        device(network, tmp_path, "dave", "mapped") as dave,
        device(network, tmp_path, "dave-tablet", "mapped") as tablet,
        device(network, tmp_path, "erin", "mapped") as erin,
    ):
        with pytest.raises(DeviceError, match="linked already: there is nothing to move"):
            await carol.migrate("linked")
        await pair(dave, tablet)
        with pytest.raises(DeviceError, match="only the primary"):
            await tablet.migrate("linked")
        with pytest.raises(DeviceError, match="linked mode only"):
            await dave.migrate("mapped")
        assert await erin.migrate("linked") == ()
        assert erin.whoami().mode == "linked"
        with pytest.raises(DeviceError, match="already"):
            await erin.migrate("linked")
        # Two moves asked for at once (two terminals beside a run): one moves, the
        # other then finds the account linked, and one statement goes out.
        outcomes: list[object] = []

        async def move() -> None:
            try:
                outcomes.append(await dave.migrate("linked"))
            except DeviceError as exc:
                outcomes.append(str(exc))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(move)
            nursery.start_soon(move)
        assert outcomes[0] == (tablet.whoami().device_id,)
        assert isinstance(outcomes[1], str) and "already" in outcomes[1]


async def test_pairing_across_modes_is_declined_at_once(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A mapped device asking a linked account is told at once (it waited out its whole
    pairing window). A mapped request still waiting when the account moves to linked is
    declined by the move (a grant could only add a sibling the new device refuses)."""
    async with (
        open_world() as network,
        device(network, tmp_path, "phone", "linked") as linked_phone,
        device(network, tmp_path, "tablet", "mapped") as tablet,
    ):
        with trio.fail_after(60), pytest.raises(PairingError, match="this device is mapped"):
            await tablet.pairing.request(linked_phone.session_id)

    async with (
        open_world() as network,
        device(network, tmp_path / "moved", "phone", "mapped") as phone,
        device(network, tmp_path / "moved", "tablet", "mapped") as tablet,
    ):
        ticket = await tablet.pairing.request(phone.session_id)
        await wait_until(lambda: bool(phone.pairing.requests()))
        await phone.migrate("linked")
        with trio.fail_after(60), pytest.raises(PairingError, match="declined"):
            await tablet.pairing.wait_paired()
        assert not phone.pairing.requests()
        with pytest.raises(PairingError, match="no pairing request is waiting"):
            await phone.pairing.accept(ticket.code)
        assert phone.siblings() == {}
