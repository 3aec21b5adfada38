"""No server can tell where a user's devices are, or that one account has two: the
two-device story on devices with addresses of their own, every server watched."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import trio
import trio.testing

from benchmarks.audit import ServerAudit
from p2psync.clock import TEST_EPOCH_MS, Clock
from p2psync.device import Device, open_device
from p2psync.identity import Identity
from p2psync.network import open_local_network
from tests.drivers.device.helpers import QUIET, befriend, is_friend, pair, texts
from tests.drivers.swarm.helpers import wait_until

HOSTS = {"phone": "alice-phone", "desktop": "alice-desktop", "bob": "bob-laptop"}


@pytest.mark.parametrize("route", ["onion", "direct"])
async def test_servers_never_see_a_device_address_when_requests_go_by_onion(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, route: str
) -> None:
    """With onion requests no service node, file server or open group server receives a
    request from Alice's phone's or desktop's address, so none can tie the two to her
    account; with direct connections (the check can fail) they do, and one can."""
    audit = ServerAudit()
    async with open_local_network(
        4, relays=6, clock=Clock(TEST_EPOCH_MS), node_config=QUIET
    ) as network:
        audit.watch(network)

        def device(label: str) -> AbstractAsyncContextManager[Device]:
            return open_device(
                tmp_path / label,
                network.access(rpc_route=route, host=HOSTS[label]),
                mode="linked",
                name=label,
                seed=Identity.from_label(f"audit/{label}").seed,
            )

        async with device("phone") as phone, device("desktop") as desktop, device("bob") as bob:
            await pair(phone, desktop)
            await befriend(bob, phone)
            await wait_until(lambda: is_friend(desktop, bob.session_id))
            await bob.send(phone.session_id, "live")
            await wait_until(lambda: all(texts(d, bob.session_id) for d in (phone, desktop)))
            await desktop.set_online(False)
            await phone.send(bob.session_id, "while the desktop is away")
            await phone.flush()
            await desktop.set_online(True)
            await wait_until(lambda: len(texts(desktop, bob.session_id)) == 2)
            await phone.rooms.create("lobby")
            await desktop.rooms.post("lobby", "from the desktop")
            account = phone.session_id
    alice = {HOSTS["phone"], HOSTS["desktop"]}
    if route == "onion":
        assert audit.requests_from(alice) == 0
        # Not vacuous: the servers did serve Alice's account, and only ever as exits
        # relayed it (each relay runs on host ``relayN``), or the open group server asked
        # the file server who her devices are.
        served = [o.address for o in audit.observations if account in o.accounts]
        assert served and {a for a in served if not a.startswith("relay")} <= {"opengroup"}
    else:
        assert audit.requests_from(alice) > 0
        assert audit.accounts_seen_from_two(alice) > 0
