"""After a friend moved a ``mapped`` account to ``linked``, what its retired devices had
sent before the move is still in the friend's swarm; the friend's next run reads it again
and must neither refuse nor warn of it (issue 16: one "is not a device of" line per
retired device on the friend's next ``inbox``)."""

from __future__ import annotations

from pathlib import Path

import trio.testing

from ..swarm.helpers import wait_until
from .helpers import befriend, device, open_world, pair


async def test_a_friend_reading_pre_move_messages_again_warns_of_nothing(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with (
        open_world() as network,
        device(network, tmp_path, "phone", "mapped") as phone,
        device(network, tmp_path, "desktop", "mapped") as desktop,
    ):
        await pair(phone, desktop)
        async with device(network, tmp_path, "bob", "linked") as bob:
            await befriend(desktop, bob)
            sent = await desktop.send(bob.session_id, "from the desktop, before the move")
            await wait_until(lambda: any(i.id == sent for i in bob.history(phone.session_id)))
            assert await phone.migrate("linked") == (desktop.whoami().device_id,)
            await phone.flush()
            await wait_until(
                lambda: bob.friends.contact(phone.session_id).devices == (phone.session_id,)  # type: ignore[union-attr]
            )
            assert not bob.rejections
        async with device(network, tmp_path, "bob") as bob:
            await bob.sync_now()
            await bob.flush()
            assert [i.text for i in bob.history(phone.session_id)] == [
                "from the desktop, before the move"
            ]
            assert not bob.rejections, bob.rejections
