"""Keeping one session per sibling (:class:`~p2psync.sync.sessions.SiblingSessions`),
against a stand-in endpoint: what a device waiting to leave is told, and when; when a
sibling whose session ended is dialled again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

from p2psync.sync.presence import REDIAL_MAX_S
from p2psync.sync.sessions import SiblingSessions

OWN_KEY, SIBLING_KEY = b"\x01" * 32, b"\x02" * 32  # the lower key dials


class _Session:
    """A session that opens and ends as the test says."""

    def __init__(self, peer: bytes, *, left: bool = False) -> None:
        self.peer = peer
        self.peer_left = left

    def abort(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def leave(self) -> None:
        pass


class _Endpoint:
    """Connects at once; opens no sessions to us."""

    public_key = OWN_KEY

    def __init__(self, *, sibling_says_goodbye: bool = False) -> None:
        self.connects = 0
        self._goodbye = sibling_says_goodbye

    async def publish(self, shared_secret: bytes) -> int:
        return 1

    @asynccontextmanager
    async def connect(self, peer: bytes, *, shared_secret: bytes) -> AsyncIterator[_Session]:
        self.connects += 1
        yield _Session(peer, left=self._goodbye)

    async def sessions(self) -> AsyncIterator[_Session]:
        await trio.sleep_forever()
        yield _Session(b"")  # never


async def test_a_device_waiting_to_leave_is_told_once_a_sibling_s_session_is_gone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Each change of who is in session is told after it is made: the session coming up
    (the sibling counts as tried and in session) and, once it ended, its being gone. A
    device waiting to leave (``presence.may_leave``) otherwise slept on, owing a sibling
    it saw in session, until its leaving budget ran out."""
    seen: list[tuple[set[str], set[str]]] = []
    told_twice = trio.Event()

    def changed() -> None:
        seen.append((keeper.serving, set(keeper.tried)))
        if len(seen) == 2:
            told_twice.set()

    async def carry(sibling: str, session: object, first: bytes | None, keeper: bool) -> None:
        await trio.sleep(5)  # the session carries records for a while, then ends

    endpoint = _Endpoint()
    keeper = SiblingSessions(
        endpoint,  # type: ignore[arg-type]
        b"secret",
        {"desktop": SIBLING_KEY},
        carry,  # type: ignore[arg-type]
        changed,
    )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper.run)
        with trio.move_on_after(60):  # virtual time: the session lasts 5 s
            await told_twice.wait()
        nursery.cancel_scope.cancel()
    assert seen[:2] == [({"desktop"}, {"desktop"}), (set(), {"desktop"})]


async def _dials_within(seconds: float, *, sibling_says_goodbye: bool) -> int:
    """How often the dialing side dials in ``seconds`` when every session lasts 5 s."""

    async def carry(sibling: str, session: object, first: bytes | None, keeper: bool) -> None:
        await trio.sleep(5)

    endpoint = _Endpoint(sibling_says_goodbye=sibling_says_goodbye)
    sessions = SiblingSessions(
        endpoint,  # type: ignore[arg-type]
        b"secret",
        {"desktop": SIBLING_KEY},
        carry,  # type: ignore[arg-type]
        lambda: None,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sessions.run)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()
    return endpoint.connects


async def test_a_sibling_that_said_goodbye_is_dialled_again_only_after_the_cap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """It went offline on purpose and dials us when it is back: a dial sooner would find
    its introset of minutes ago and time out on its dead intros."""
    assert await _dials_within(REDIAL_MAX_S, sibling_says_goodbye=True) == 1
    assert await _dials_within(REDIAL_MAX_S + 10, sibling_says_goodbye=True) == 2


async def test_a_sibling_that_went_quiet_is_dialled_again_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """It may still be there, behind a path that failed."""
    assert await _dials_within(10, sibling_says_goodbye=False) >= 2
