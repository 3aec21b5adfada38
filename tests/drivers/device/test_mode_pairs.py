"""Every pair of modes (issue 16: "Tests cover every pair of modes"): a user of one mode
and a user of the other (or the same), two devices each. The friend request, sent from
the sender's second device, reaches both of the receiver's devices; a message from any
device reaches all four (the other user's two and the sender's sibling); a public-chat
post from either user's second device reads as the user's."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import trio.testing

from p2psync.device import Device

from ..swarm.helpers import wait_until
from .helpers import device, is_friend, open_world, pair

MODES = ("mapped", "linked")


def conversation(of: Device, other: str) -> set[tuple[bool, str]]:
    return {(item.outgoing, item.text) for item in of.history(other)}


@pytest.mark.parametrize(("sender_mode", "receiver_mode"), list(itertools.product(MODES, MODES)))
async def test_two_users_of_any_two_modes_befriend_talk_and_post_as_themselves(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, sender_mode: str, receiver_mode: str
) -> None:
    async with (
        open_world() as network,
        device(network, tmp_path, "ann-phone", sender_mode) as ann_phone,
        device(network, tmp_path, "ann-desktop", sender_mode) as ann_desktop,
        device(network, tmp_path, "rex-phone", receiver_mode) as rex_phone,
        device(network, tmp_path, "rex-desktop", receiver_mode) as rex_desktop,
    ):
        await pair(ann_phone, ann_desktop)
        await pair(rex_phone, rex_desktop)
        ann, rex = ann_phone.session_id, rex_phone.session_id
        anns, rexs = (ann_phone, ann_desktop), (rex_phone, rex_desktop)
        everyone = (*anns, *rexs)

        await ann_desktop.friends.request(rex, "Ann, from my second device")
        for d in rexs:
            await wait_until(lambda d=d: d.friends.contact(ann) is not None)  # type: ignore[misc]
            contact = d.friends.contact(ann)
            assert contact is not None and contact.state == "pending"
            assert contact.note == "Ann, from my second device"
        await rex_desktop.friends.accept(ann)
        for d, other in [*((d, rex) for d in anns), *((d, ann) for d in rexs)]:
            await wait_until(lambda d=d, other=other: is_friend(d, other))  # type: ignore[misc]

        # One message from each of the four devices; each user's two devices end with all
        # four, their own as sent.
        sent = [(d, f"from {d.whoami().name}") for d in everyone]
        for d, text in sent:
            await d.send(rex if d in anns else ann, text)
        for d in everyone:
            own, other = (anns, rex) if d in anns else (rexs, ann)
            expected = {(sender in own, text) for sender, text in sent}
            await wait_until(lambda d=d, other=other: len(d.history(other)) == 4)  # type: ignore[misc]
            assert conversation(d, other) == expected, d.whoami().name

        # Public chat: each user's second device posts; every device reads the user.
        await ann_phone.rooms.create("lobby")
        await ann_desktop.rooms.post("lobby", "Ann's desktop")
        await rex_desktop.rooms.post("lobby", "Rex's desktop")
        for d in everyone:
            posts = await d.rooms.messages("lobby")
            assert [(p.user, p.body) for p in posts] == [
                (ann, b"Ann's desktop"),
                (rex, b"Rex's desktop"),
            ]
        assert not any(d.rejections for d in everyone)
