"""What the swarm alone gives a device that was away: everything within the TTL, nothing
older (the gap the sync layer closes); and an outbox that survives a crash."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from p2psync.device import DeviceConfig
from p2psync.network import LocalNetwork

from ..swarm.helpers import wait_until
from .helpers import befriend, device, open_world, texts

HOUR_S = 3600


@pytest.mark.parametrize("mode", ["linked", "mapped"])
async def test_offline_23_hours_gets_everything_25_hours_misses_what_expired(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, mode: str
) -> None:
    async with open_world() as network, device(network, tmp_path, "bob", mode) as bob:
        users = {}
        for label in ("alice", "carol"):
            async with device(network, tmp_path, label, mode) as friend:
                await befriend(friend, bob)
                users[label] = friend.session_id
        # Both went offline (closed); Bob writes to each, then stays quiet himself.
        for user in users.values():
            await bob.send(user, "first")
        await bob.flush()
        await trio.sleep(2 * HOUR_S)
        for user in users.values():
            await bob.send(user, "second")
        await bob.flush()
        await bob.set_online(False)

        await trio.sleep(21 * HOUR_S)  # 23 h after "first": still in the swarm
        async with device(network, tmp_path, "alice") as alice:
            await wait_until(lambda: len(alice.history(bob.session_id)) == 2)
            assert texts(alice, bob.session_id) == [(False, "first"), (False, "second")]

        await trio.sleep(2 * HOUR_S)  # 25 h after "first": it expired unread
        async with device(network, tmp_path, "carol") as carol:
            await wait_until(lambda: len(carol.history(bob.session_id)) == 1)
            await trio.sleep(60)
            assert texts(carol, bob.session_id) == [(False, "second")]


async def test_nothing_accepted_by_send_is_lost(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_world() as network, device(network, tmp_path, "bob", "linked") as bob:
        async with device(network, tmp_path, "alice", "linked") as alice:
            await befriend(alice, bob)
            handles = list(network.nodes)
            for handle in handles:
                await network.stop_node(handle)
            # The swarm is down: send still accepts, then the device dies before storing.
            message_id = await alice.send(bob.session_id, "written during the outage")
            with trio.move_on_after(30) as waiting:
                await alice.flush()
            assert waiting.cancelled_caught  # still in the outbox
        for handle in handles:
            await network.start_node(handle)
        async with device(network, tmp_path, "alice") as alice:
            with trio.fail_after(300):
                await alice.flush()
        await wait_until(lambda: len(bob.history(alice.session_id)) == 1)
        [item] = bob.history(alice.session_id)
        assert (item.id, item.text) == (message_id, "written during the outage")


async def test_subscription_receives_like_polling(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    pushed = DeviceConfig(receive="subscribe")
    async with (
        open_world() as network,
        device(network, tmp_path, "bob", "linked", config=pushed) as bob,
        device(network, tmp_path, "alice", "linked", config=pushed) as alice,
    ):
        await befriend(alice, bob)
        started = trio.current_time()
        await alice.send(bob.session_id, "pushed")
        await wait_until(lambda: len(bob.history(alice.session_id)) == 1)
        # A push, not the 60 s catch-up, brought it.
        assert trio.current_time() - started < 5


async def test_incoming_stream_yields_new_messages_in_arrival_order(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with (
        open_world() as network,
        device(network, tmp_path, "bob", "linked") as bob,
        device(network, tmp_path, "alice", "linked") as alice,
    ):
        await befriend(alice, bob)
        await alice.send(bob.session_id, "before")
        await wait_until(lambda: len(bob.history()) == 1)
        stream = bob.incoming()
        for text in ("one", "two"):
            await alice.send(bob.session_id, text)
            await trio.sleep(1)
        with trio.fail_after(60):
            received = [(await anext(stream)).text, (await anext(stream)).text]
        await stream.aclose()
        assert received == ["one", "two"]


@pytest.mark.parametrize(("count", "size", "requests"), [(40, 20, 1), (12, 15_000, 3)])
async def test_a_backlog_for_one_friend_goes_out_in_batches_and_arrives_whole(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, count: int, size: int, requests: int
) -> None:
    """Messages written offline to one friend reach the swarm as ``store_batch``
    requests, not a request each (large ones in more of them: a batch fits one frame),
    and every one of them arrives."""
    async with open_world() as network, device(network, tmp_path, "bob", "linked") as bob:
        async with device(network, tmp_path, "alice", "linked") as alice:
            await befriend(alice, bob)
            await alice.set_online(False)
            written = [f"{i:03} " + "x" * size for i in range(count)]
            for text in written:
                await alice.send(bob.session_id, text)
                await trio.sleep(0.01)
            batches = _observe_stores_for(network, bob.session_id)
            await alice.set_online(True)
            with trio.fail_after(300):
                await alice.flush()
        assert len(batches) == requests and sum(batches) == count
        await wait_until(lambda: len(bob.history(alice.session_id)) == count)
        assert texts(bob, alice.session_id) == [(False, text) for text in written]


async def test_a_backlog_goes_out_a_copy_at_a_time_to_nodes_that_take_no_batches(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Nodes of a version without ``store_batch`` refuse it for good (``bad_request``):
    the outbox then stores each copy with ``store``, and nothing is dropped."""
    async with open_world() as network, device(network, tmp_path, "bob", "linked") as bob:
        async with device(network, tmp_path, "alice", "linked") as alice:
            await befriend(alice, bob)
            await alice.set_online(False)
            for i in range(5):
                await alice.send(bob.session_id, f"written offline {i}")
            for node in network.running_nodes():
                del node.rpc.methods["store_batch"]
            singles = _observe_stores_for(network, bob.session_id, method="store")
            await alice.set_online(True)
            with trio.fail_after(300):
                await alice.flush()
        assert singles == [1] * 5
        await wait_until(lambda: len(bob.history(alice.session_id)) == 5)


def _observe_stores_for(
    network: LocalNetwork, owner: str, method: str = "store_batch"
) -> list[int]:
    """From now on, per ``method`` request any node answers, how many of its stores are
    for ``owner`` (requests with none are left out)."""
    seen: list[int] = []

    def observe(called: str, peer: str, params: Mapping[str, Any]) -> None:
        if called != method:
            return
        stores = params["stores"] if method == "store_batch" else [params]
        mine = sum(1 for store in stores if store["pubkey"] == owner)
        if mine:
            seen.append(mine)

    for node in network.running_nodes():
        node.rpc.observe(observe)
    return seen


async def test_a_device_back_after_its_last_message_expired_sends_no_dead_cursor(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Back after a day away, with every message it read expired and swept, a device reads
    its swarm from the start instead of after a hash no member holds, so no node asks its
    peers about that hash (lookups a server could time against the device's return), and
    what arrived while it was away is filed."""
    async with open_world() as network, device(network, tmp_path, "bob", "linked") as bob:
        async with device(network, tmp_path, "alice", "linked") as alice:
            await befriend(alice, bob)
            await alice.send(bob.session_id, "before the day away")
            await wait_until(lambda: len(bob.history(alice.session_id)) == 1)
            await bob.set_online(False)
            await alice.set_online(False)  # nobody's device idles through the day
            await trio.sleep(26 * HOUR_S)  # what Bob read expired over an hour ago, swept
            await alice.set_online(True)
            await alice.send(bob.session_id, "while he was away")
            await alice.flush()
            lookups: list[str] = []
            for node in network.running_nodes():
                node.rpc.observe(
                    lambda method, peer, params: (
                        lookups.append(method) if method == "lookup" else None
                    )
                )
            await bob.set_online(True)
            await wait_until(lambda: len(bob.history(alice.session_id)) == 2)
            await trio.sleep(60)
        assert lookups == []
        assert texts(bob, alice.session_id)[-1] == (False, "while he was away")
