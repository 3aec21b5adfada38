"""The emulated link simulations run on: messages arrive after the link's latency and in
order, the receiver wakes once per arrival, a closed or cut link ends the way a TCP one
does, and a full link holds its sender back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio
import trio.testing

from overlay.link import Link, LinkClosed, LinkProfile, MemoryNetwork

#: What a link holds in flight before its sender waits.
CAPACITY = 256


@asynccontextmanager
async def link_pair(network: MemoryNetwork) -> AsyncIterator[tuple[Link, Link]]:
    """A client's link to a server, and the server's end of it."""
    accepted: trio.MemorySendChannel[Link]
    accepted, accepting = trio.open_memory_channel[Link](1)

    async def hold(link: Link) -> None:
        await accepted.send(link)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await nursery.start(network.serve, hold, "mem:server")
        async with network.connect("mem:server", local="client") as client:
            yield client, await accepting.receive()
        nursery.cancel_scope.cancel()


async def test_messages_arrive_after_the_latency_in_order_despite_jitter(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork(seed=1, default_profile=LinkProfile(latency_ms=50, jitter_ms=40))
    async with link_pair(network) as (client, server):
        sent_at = []
        for number in range(20):
            sent_at.append(trio.current_time())
            client.send_nowait(b"%d" % number)
            await trio.sleep(0.005)
        for number in range(20):
            assert await server.receive() == b"%d" % number
            assert trio.current_time() - sent_at[number] >= 0.050


async def test_a_message_not_yet_arrived_is_not_received_without_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork(seed=1, default_profile=LinkProfile(latency_ms=30))
    async with link_pair(network) as (client, server):
        client.send_nowait(b"on its way")
        with pytest.raises(trio.WouldBlock):
            server.receive_nowait()
        await trio.sleep(0.030)
        assert server.receive_nowait() == b"on its way"


class _Steps(trio.abc.Instrument):
    """Scheduling rounds of the task named ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name == self.name:
            self.steps += 1


async def test_a_receiver_wakes_once_for_each_message_that_arrives(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Not when the message is sent, and again when it arrives: simulations spend their
    time carrying messages, each wake a scheduling round."""
    network = MemoryNetwork(seed=1, default_profile=LinkProfile(latency_ms=40))
    received: list[bytes] = []

    async def receiver(link: Link) -> None:
        for _ in range(10):
            received.append(await link.receive())

    async with link_pair(network) as (client, server):
        steps = _Steps("receiver")
        trio.lowlevel.add_instrument(steps)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver, server, name="receiver")
            for number in range(10):
                await trio.sleep(0.1)  # each message alone on the link
                client.send_nowait(b"%d" % number)
        trio.lowlevel.remove_instrument(steps)
    assert received == [b"%d" % n for n in range(10)]
    assert steps.steps == 1 + 10  # its start, then one per arrival


async def test_what_is_in_flight_arrives_after_the_peer_closed_then_the_link_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork(seed=1, default_profile=LinkProfile(latency_ms=20))
    async with link_pair(network) as (client, server):
        client.send_nowait(b"last words")
        await client.aclose()
        assert await server.receive() == b"last words"
        with pytest.raises(LinkClosed):
            await server.receive()
        with pytest.raises(LinkClosed):
            server.send_nowait(b"to no one")
        with pytest.raises(LinkClosed):
            client.send_nowait(b"after closing")


async def wakes_on_close(
    wait: Callable[[], Awaitable[object]], close: Callable[[], Awaitable[None]]
) -> None:
    """``wait``, waiting when ``close`` runs, raises :class:`LinkClosed` at once."""
    ended = trio.Event()

    async def waiter() -> None:
        with pytest.raises(LinkClosed):
            await wait()
        ended.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        await close()
        with trio.fail_after(1):
            await ended.wait()


async def test_closing_a_link_wakes_its_own_waiting_receiver(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with link_pair(MemoryNetwork(seed=1)) as (client, _):
        await wakes_on_close(client.receive, client.aclose)


async def test_a_host_going_down_ends_its_links_both_ways(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork(seed=1, default_profile=LinkProfile(latency_ms=10))
    async with link_pair(network) as (client, server):
        client.send_nowait(b"before")
        network.set_down("mem:server")
        with pytest.raises(LinkClosed):
            await server.receive()
        with pytest.raises(LinkClosed):
            client.send_nowait(b"after")


async def test_a_full_link_refuses_a_send_without_waiting_and_holds_a_waiting_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork(seed=1, default_profile=LinkProfile(latency_ms=10))
    async with link_pair(network) as (client, server):
        for number in range(CAPACITY):
            client.send_nowait(b"%d" % number)
        with pytest.raises(trio.WouldBlock):
            client.send_nowait(b"one too many")
        sent = trio.Event()

        async def send_one_more() -> None:
            await client.send(b"waited")
            sent.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_one_more)
            await trio.sleep(1)
            assert not sent.is_set()  # nothing was taken off the link yet
            assert await server.receive() == b"0"
            await sent.wait()
        received = [await server.receive() for _ in range(CAPACITY)]
        assert received[-1] == b"waited"


async def test_a_sender_waiting_for_room_is_told_when_the_peer_goes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with link_pair(MemoryNetwork(seed=1)) as (client, server):
        for number in range(CAPACITY):
            client.send_nowait(b"%d" % number)
        await wakes_on_close(partial(client.send, b"never taken"), server.aclose)


async def test_sends_go_out_in_the_order_they_began_even_when_one_waits_for_room(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """As on TCP, where a link's writes are in turn: a send that had to wait keeps its
    place, and one begun after it waits behind it."""
    network = MemoryNetwork(seed=1, default_profile=LinkProfile(latency_ms=10))
    async with link_pair(network) as (client, server):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send, b"first")
            await trio.testing.wait_all_tasks_blocked()
            client.send_nowait(b"second")
        assert [await server.receive(), await server.receive()] == [b"first", b"second"]
        for number in range(CAPACITY):
            client.send_nowait(b"%d" % number)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send, b"waited longest")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(client.send, b"waited less")
            await trio.testing.wait_all_tasks_blocked()
            assert await server.receive() == b"0"
            with pytest.raises(trio.WouldBlock):  # the place freed is the first waiter's
                client.send_nowait(b"newcomer")
            assert await server.receive() == b"1"
        received = [await server.receive() for _ in range(CAPACITY)]
        assert received[-2:] == [b"waited longest", b"waited less"]


async def test_two_receivers_on_one_link_are_each_served_and_each_told_of_the_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork(seed=1, default_profile=LinkProfile(latency_ms=10))
    got: list[bytes] = []
    ended: list[str] = []
    both_ended = trio.Event()

    async def read(link: Link, name: str) -> None:
        try:
            while True:
                got.append(await link.receive())
        except LinkClosed:
            ended.append(name)
            if len(ended) == 2:
                both_ended.set()

    async with link_pair(network) as (client, server), trio.open_nursery() as nursery:
        nursery.start_soon(read, server, "one")
        nursery.start_soon(read, server, "two")
        await trio.testing.wait_all_tasks_blocked()
        client.send_nowait(b"a")
        await trio.sleep(1)
        client.send_nowait(b"b")
        await trio.sleep(1)
        await client.aclose()
        with trio.fail_after(1):
            await both_ended.wait()
    assert got == [b"a", b"b"]
    assert sorted(ended) == ["one", "two"]


async def test_a_partition_ends_the_link_between_the_two_hosts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork(seed=1, default_profile=LinkProfile(latency_ms=10))
    async with link_pair(network) as (client, server):
        network.partition("mem:client", "mem:server")
        with pytest.raises(LinkClosed):
            client.send_nowait(b"across the cut")
        with pytest.raises(LinkClosed):  # closed by the sender's side
            await server.receive()
