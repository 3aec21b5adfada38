"""Keeping one session per sibling (:class:`~p2psync.sync.sessions.SiblingSessions`),
against a stand-in endpoint: what a device waiting to leave is told, and when; when a
sibling whose session ended is dialled again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

from overlay.session import SessionError
from p2psync.sync.presence import HELLO_TRIES, REDIAL_MAX_S
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
    """Connects at once (or fails, if not ``reachable``); opens no sessions to us."""

    def __init__(self, *, sibling_says_goodbye: bool = False, public_key: bytes = OWN_KEY) -> None:
        self.connects = 0
        self._goodbye = sibling_says_goodbye
        self.public_key = public_key
        self.reachable = True

    async def publish(self, shared_secret: bytes) -> int:
        return 1

    @asynccontextmanager
    async def connect(self, peer: bytes, *, shared_secret: bytes) -> AsyncIterator[_Session]:
        self.connects += 1
        if not self.reachable:
            raise SessionError("peer has no live introset")
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


async def _connects_within(seconds: float, endpoint: _Endpoint) -> int:
    """How often ``endpoint``'s device reaches for its sibling in ``seconds`` when every
    session lasts 5 s."""

    async def carry(sibling: str, session: object, first: bytes | None, keeper: bool) -> None:
        await trio.sleep(5)

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
    for seconds, dials in ((REDIAL_MAX_S, 1), (REDIAL_MAX_S + 10, 2)):
        endpoint = _Endpoint(sibling_says_goodbye=True)
        assert await _connects_within(seconds, endpoint) == dials


async def test_a_sibling_that_went_quiet_is_dialled_again_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """It may still be there, behind a path that failed."""
    assert await _connects_within(10, _Endpoint(sibling_says_goodbye=False)) >= 2


async def test_the_side_that_does_not_dial_says_hello_until_it_gets_through(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A few tries: the dialer redials a sibling that is away only every REDIAL_MAX_S, so
    one lost hello would leave the siblings apart that long."""
    for reachable, hellos in ((False, HELLO_TRIES), (True, 1)):
        endpoint = _Endpoint(public_key=b"\x03" * 32)  # above SIBLING_KEY: it says hello
        endpoint.reachable = reachable
        assert await _connects_within(REDIAL_MAX_S, endpoint) == hellos
