"""Declining a pairing on the primary: the new device hears it (a signed decline) and
stops waiting at once instead of for its whole pairing window, and can ask again; a
decline signed by anyone but the primary it asked changes nothing (the forged one is
sent to a ``mapped`` device, whose key is known: a ``linked`` request's key is made for
it alone). And a new device that asked again while its primary was away shows the code
the primary lists."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from p2psync.device import Device, PairingError, PairingTicket
from p2psync.device.content import PairDecline
from p2psync.device.pairing import REASK_S
from p2psync.mapping import PAIRING_WINDOW_MS
from p2psync.network import LocalNetwork
from p2psync.swarm.client import SwarmClient, open_swarm_client
from p2psync.swarm.constants import NAMESPACE_CONTROL

from ..swarm.helpers import wait_until
from .helpers import accept_pairing, device, open_world, pair, start_pairing
from .test_hostile import MALLORY, inject, refusal

#: Far less than the pairing window a new device would otherwise wait out.
TOLD_WITHIN_S = 30
assert TOLD_WITHIN_S < PAIRING_WINDOW_MS / 1000 / 4


@pytest.mark.parametrize("mode", ["mapped", "linked"])
async def test_a_declined_device_is_told_at_once_and_can_ask_again(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, mode: str
) -> None:
    async with (
        open_world() as network,
        device(network, tmp_path, "phone", mode) as phone,
        device(network, tmp_path, "tablet", mode) as tablet,
        open_swarm_client(network.transport, network.directory(), network.clock) as swarm,
    ):
        ticket = await tablet.pairing.request(phone.session_id)
        if mode == "mapped":
            # Mallory, who saw the request (a node of the primary's swarm), cannot cut the
            # pairing short: her decline (to the tablet's own key) is refused.
            decline = PairDecline(ticket.request_id)
            await inject(swarm, MALLORY, tablet.whoami().device_id, NAMESPACE_CONTROL, decline)
            assert "decline not signed by the device pairing was asked of" in await refusal(tablet)
            with trio.move_on_after(TOLD_WITHIN_S) as still_waiting:
                await tablet.pairing.wait_paired()
            assert still_waiting.cancelled_caught
        await wait_until(lambda: bool(phone.pairing.requests()))
        await phone.pairing.decline(ticket.code)
        assert phone.pairing.requests() == []
        started = trio.current_time()
        with trio.fail_after(TOLD_WITHIN_S), pytest.raises(PairingError, match="declined"):
            await tablet.pairing.wait_paired()
        assert trio.current_time() - started < TOLD_WITHIN_S
        assert not tablet.whoami().paired and not phone.siblings()
        # The earlier decline says nothing of the next request.
        await pair(phone, tablet)
        assert tablet.whoami().paired and tablet.session_id == phone.session_id


@pytest.mark.parametrize("mode", ["mapped", "linked"])
async def test_a_challenge_that_comes_before_the_request_is_acknowledged_is_taken(
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
    mode: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The primary may answer before the new device's store of its request has been
    acknowledged (the store's answer comes on a slow link, the push to the primary on a
    fast one): the challenge is then for a request the new device must already know,
    or it is refused and the pairing waits out its whole window. Here every store to a
    control namespace returns only after the primary had time to answer."""
    real_store = SwarmClient.store

    async def slow_answer(
        self: SwarmClient, owner: str, namespace: int, *args: Any, **kwargs: Any
    ) -> Any:
        result = await real_store(self, owner, namespace, *args, **kwargs)
        if namespace == NAMESPACE_CONTROL:
            await trio.sleep(TOLD_WITHIN_S)
        return result

    monkeypatch.setattr(SwarmClient, "store", slow_answer)
    async with (
        open_world() as network,
        device(network, tmp_path, "phone", mode) as phone,
        device(network, tmp_path, "tablet", mode) as tablet,
    ):
        with trio.fail_after(PAIRING_WINDOW_MS / 1000 / 2):
            await pair(phone, tablet)
        assert tablet.whoami().paired and tablet.rejected == 0, list(tablet.rejections)


@asynccontextmanager
async def asking_while_away(
    tmp_path: Path, mode: str, away: str
) -> AsyncIterator[tuple[LocalNetwork, Device, Device, list[PairingTicket]]]:
    """A phone (the primary) and a tablet in ``mode``; the one named ``away`` goes
    offline, then the tablet asks the phone to pair (the list gets its ticket)."""
    async with (
        open_world() as network,
        device(network, tmp_path, "phone", mode) as phone,
        device(network, tmp_path, "tablet", mode) as tablet,
        trio.open_nursery() as nursery,
    ):
        await (phone if away == "phone" else tablet).set_online(False, promptly=True)
        yield network, phone, tablet, start_pairing(nursery, tablet, phone)


@pytest.mark.parametrize("mode", ["mapped", "linked"])
async def test_a_new_device_that_asked_again_shows_the_code_the_primary_lists(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, mode: str
) -> None:
    """A primary away for longer than a new device waits before asking again finds two
    requests of one attempt when it comes back and answers both: it lists the one whose
    challenge the new device took, so both screens show one code."""
    async with asking_while_away(tmp_path, mode, "phone") as (_network, phone, tablet, tickets):
        await trio.sleep(REASK_S * 1.5)  # the primary is away: the tablet asks again
        await phone.set_online(True)
        await wait_until(lambda: bool(tickets))
        await wait_until(lambda: bool(phone.pairing.requests()))
        assert [o.code for o in phone.pairing.requests()] == [tickets[0].code]
        await accept_pairing(phone, tablet, tickets[0].code)


@pytest.mark.parametrize("mode", ["mapped", "linked"])
async def test_a_swarm_down_while_a_new_device_waits_only_delays_the_pairing(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, mode: str
) -> None:
    """The swarm is down for a minute while the new device waits (its asking again
    fails): it waits on, and pairs once the swarm and the primary are back."""
    async with asking_while_away(tmp_path, mode, "phone") as (network, phone, _tablet, tickets):
        await trio.sleep(REASK_S / 2)
        nodes = list(network.nodes)
        for node in nodes:
            await network.stop_node(node)
        await trio.sleep(2 * REASK_S)  # the swarm is down: asking again fails, twice
        for node in nodes:
            await network.start_node(node)
        await phone.set_online(True)
        await wait_until(lambda: bool(tickets), limit_s=300)
        await wait_until(lambda: bool(phone.pairing.requests()))
        assert [o.code for o in phone.pairing.requests()] == [tickets[0].code]


@pytest.mark.parametrize("mode", ["mapped", "linked"])
async def test_a_grant_read_with_its_challenge_still_gives_the_ticket(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, mode: str
) -> None:
    """The primary answered and the user accepted while the new device read nothing (the
    challenge and the grant are read together): the ticket comes all the same, and the
    new device is paired."""
    async with asking_while_away(tmp_path, mode, "tablet") as (_network, phone, tablet, tickets):
        await wait_until(lambda: bool(phone.pairing.requests()))
        [offer] = phone.pairing.requests()
        await phone.pairing.accept(offer.code)
        await tablet.set_online(True)
        await wait_until(lambda: bool(tickets))
        assert tickets[0].code == offer.code and tablet.whoami().paired
