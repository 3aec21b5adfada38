"""The outbox's fan-out rule: which copies an entry becomes, for each mode, with direct
sync on and off, and the device lists it asks for."""

from __future__ import annotations

from p2psync.device.content import ContactRecord, SyncSent, Text
from p2psync.device.fanout import CopyTo, Sender, Sent, fan_out, last_known_devices
from p2psync.device.friends import ContactState
from p2psync.device.inbound import NeedDevicesOf
from p2psync.device.modes import RULES, Mode
from p2psync.device.rows import Contact

ALICE, PHONE, LAPTOP = "05" + "a1" * 32, "05" + "a2" * 32, "05" + "a3" * 32
BOB, BOB_TABLET = "05" + "b1" * 32, "05" + "b2" * 32
MESSAGE_ID = b"m" * 32
TEXT = Text(ALICE, "hello")


def sender(mode: Mode, *, direct_sync: bool, device: str = PHONE) -> Sender:
    user = ALICE if mode is Mode.LINKED else device
    return Sender(user, device, RULES[mode], has_siblings=True, direct_sync=direct_sync)


def decide(
    sent: Sent, who: Sender, known: dict[str, tuple[str, ...]]
) -> tuple[list[str], list[CopyTo]]:
    """Run the rule as the driver does: answer each question from ``known``; the users
    asked about, and the copies."""
    asked: list[str] = []
    devices: dict[str, tuple[str, ...]] = {}
    while isinstance(plan := fan_out(sent, who, devices), NeedDevicesOf):
        assert plan.user not in devices, "it asked twice for one list"
        asked.append(plan.user)
        devices[plan.user] = known[plan.user]
    return asked, plan


def test_a_mapped_recipients_other_devices_get_the_text_with_its_id() -> None:
    who = sender(Mode.LINKED, direct_sync=True)
    sent = Sent(BOB, MESSAGE_ID, 1_000, TEXT)
    asked, copies = decide(sent, who, {BOB: (BOB, BOB_TABLET)})
    assert asked == [BOB]
    assert copies == [CopyTo(BOB_TABLET, Text(ALICE, "hello", id=MESSAGE_ID))]


def test_with_direct_sync_a_text_has_no_sync_copy() -> None:
    for mode in Mode:
        who = sender(mode, direct_sync=True)
        asked, copies = decide(Sent(BOB, MESSAGE_ID, 1_000, TEXT), who, {BOB: (BOB,)})
        assert (asked, copies) == ([BOB], [])


def test_without_direct_sync_a_linked_text_leaves_one_sync_copy_in_the_account() -> None:
    who = sender(Mode.LINKED, direct_sync=False)
    asked, copies = decide(Sent(BOB, MESSAGE_ID, 1_000, TEXT), who, {BOB: (BOB,), ALICE: (ALICE,)})
    assert asked == [BOB, ALICE]
    assert copies == [CopyTo(ALICE, SyncSent(MESSAGE_ID, BOB, 1_000, "hello"))]


def test_without_direct_sync_a_mapped_text_goes_to_each_other_device_of_the_user() -> None:
    who = sender(Mode.MAPPED, direct_sync=False)
    mine = (PHONE, LAPTOP)
    asked, copies = decide(Sent(BOB, MESSAGE_ID, 1_000, TEXT), who, {BOB: (BOB,), PHONE: mine})
    assert asked == [BOB, PHONE]
    assert copies == [CopyTo(LAPTOP, SyncSent(MESSAGE_ID, BOB, 1_000, "hello"))]


def test_what_goes_to_a_friend_other_than_text_has_no_sync_copy() -> None:
    record = ContactRecord(BOB, ContactState.FRIEND, (BOB,), "")
    who = sender(Mode.MAPPED, direct_sync=False)
    asked, copies = decide(Sent(BOB, None, 1_000, record), who, {BOB: (BOB, BOB_TABLET)})
    assert asked == [BOB]
    assert copies == [CopyTo(BOB_TABLET, record)]


def test_what_goes_to_the_own_account_reaches_every_sibling_and_asks_no_friend() -> None:
    record = ContactRecord(BOB, ContactState.FRIEND, (BOB,), "")
    who = sender(Mode.MAPPED, direct_sync=True)
    asked, copies = decide(Sent(PHONE, None, 1_000, record), who, {PHONE: (PHONE, LAPTOP)})
    assert asked == [PHONE]
    assert copies == [CopyTo(LAPTOP, record)]


def test_without_the_file_server_the_last_known_devices_serve() -> None:
    siblings = {LAPTOP: "laptop"}
    friend = Contact(BOB, ContactState.FRIEND, (BOB, BOB_TABLET))
    assert last_known_devices(
        ALICE, user_id=ALICE, device_id=PHONE, siblings=siblings, contact=None
    ) == (ALICE, PHONE, LAPTOP)
    assert last_known_devices(
        BOB, user_id=ALICE, device_id=PHONE, siblings=siblings, contact=friend
    ) == (BOB, BOB_TABLET)
    assert last_known_devices(
        BOB, user_id=ALICE, device_id=PHONE, siblings=siblings, contact=None
    ) == (BOB,)
