"""The link pump that relays and endpoints share: what is sent before the link is up goes
first and in order, later sends go inline, and a pump whose link is gone refuses sends."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from overlay.link import Link, LinkClosed, LinkPump, MemoryNetwork, TcpTransport, Transport


async def echo(link: Link) -> None:
    async for message in link:
        await link.send(b"echo:" + message)


@pytest.mark.parametrize(
    "transport", [MemoryNetwork(seed=1), TcpTransport(plain=True)], ids=["memory", "tcp"]
)
async def test_a_pump_sends_queued_then_later_messages_in_order_and_ends_with_its_link(
    transport: Transport,
) -> None:
    received: list[bytes] = []
    drops: list[None] = []
    all_three = trio.Event()

    def receive(message: bytes) -> None:
        received.append(message)
        if len(received) == 3:
            all_three.set()

    pump = LinkPump()
    pump.send_nowait(b"queued 1")
    pump.send_nowait(b"queued 2")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(
                transport.serve, echo, "mem:echo" if transport.simulated else "127.0.0.1:0"
            )
            async with transport.connect(address) as link:
                nursery.start_soon(pump.run, link, receive, lambda: drops.append(None))
                await trio.testing.wait_all_tasks_blocked()
                pump.send_nowait(b"later")
                await all_three.wait()
            assert received == [b"echo:queued 1", b"echo:queued 2", b"echo:later"]
            assert drops == []
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(LinkClosed):
                pump.send_nowait(b"too late")
            nursery.cancel_scope.cancel()


class _HeldLink(Link):
    """A link whose sends wait until the test lets each one through."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.through = trio.Semaphore(0)
        self._closed = trio.Event()

    async def send(self, message: bytes) -> None:
        await self.through.acquire()
        self.sent.append(message)

    async def receive(self) -> bytes:
        await self._closed.wait()
        raise LinkClosed("closed")

    async def aclose(self) -> None:
        self._closed.set()


async def test_written_returns_once_what_was_sent_is_on_the_link_or_the_link_is_gone() -> None:
    """What a router going away waits for before cancelling the writer (a session's
    goodbye still queued then was never sent): every message sent before the call
    written, whatever is sent meanwhile (on a busy link there is always more), or the
    link gone."""
    pump, link = LinkPump(), _HeldLink()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump.run, link, lambda message: None, lambda: None)
            await trio.testing.wait_all_tasks_blocked()
            await pump.written()  # nothing sent yet
            for message in (b"one", b"two", b"goodbye"):
                pump.send_nowait(message)
            done = trio.Event()

            async def wait_written() -> None:
                await pump.written()
                done.set()

            nursery.start_soon(wait_written)
            await trio.testing.wait_all_tasks_blocked()
            pump.send_nowait(b"sent after the wait began")  # not waited for
            for _ in range(2):
                link.through.release()
                await trio.testing.wait_all_tasks_blocked()
                assert not done.is_set()
            link.through.release()
            await done.wait()
            assert link.sent == [b"one", b"two", b"goodbye"]
            pump.send_nowait(b"never let through")
            await link.aclose()  # the link goes: nothing more will be written
            await pump.written()
            nursery.cancel_scope.cancel()
