"""Keeping one session per sibling (:class:`~p2psync.sync.sessions.SiblingSessions`),
against a stand-in endpoint: what a device waiting to leave is told, and when; how
often the side that does not dial says hello; which side keeps the session alive."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from itertools import pairwise

import trio
import trio.testing

from overlay.introset import Intro
from overlay.session import NotPublished, SessionError
from p2psync.sync.presence import HELLO_DELAY_S, HELLO_TRIES, MOVED_CHECK_S, REDIAL_MAX_S
from p2psync.sync.sessions import SiblingSessions

OWN_KEY, SIBLING_KEY = b"\x01" * 32, b"\x02" * 32  # the lower key dials
HERE, THERE = Intro(b"\x04" * 32, b"\x04" * 16, 1), Intro(b"\x05" * 32, b"\x05" * 16, 2)


class _Session:
    """A session that opens and ends as the test says."""

    def __init__(self, peer: bytes) -> None:
        self.peer = peer

    def abort(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def leave(self) -> None:
        pass


class _Endpoint:
    """Connects at once, or fails with ``failure``; opens no sessions to us; finds the
    sibling's introset naming ``published``."""

    def __init__(self, *, public_key: bytes = OWN_KEY, failure: SessionError | None = None) -> None:
        self.public_key = public_key
        self.failure = failure
        #: When each connect was asked for (trio time).
        self.connects: list[float] = []
        #: Whose sessions the endpoint takes (set by ``accept_only``).
        self.admits: Callable[[bytes], bool] = lambda peer: True
        self.published = [HERE]

    def accept_only(self, admits: Callable[[bytes], bool]) -> None:
        self.admits = admits

    async def publish(self, shared_secret: bytes) -> int:
        return 1

    async def lookup(self, shared_secret: bytes, owner: bytes) -> list[Intro]:
        return list(self.published)

    @asynccontextmanager
    async def connect(
        self, peer: bytes, *, shared_secret: bytes, intros: list[Intro] | None = None
    ) -> AsyncIterator[_Session]:
        self.connects.append(trio.current_time())
        if self.failure is not None:
            raise self.failure
        yield _Session(peer)

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
    assert endpoint.admits(SIBLING_KEY) and not endpoint.admits(HELLO_SIDE)


async def _run(
    endpoint: _Endpoint, seconds: float, *, leaving_at: float | None = None
) -> list[bool]:
    """Run one device's sibling sessions on ``endpoint`` for ``seconds`` (told it is
    leaving at ``leaving_at``), every session lasting 5 s; what ``carry`` was told of
    each: whether this side keeps it alive."""
    keepers: list[bool] = []

    async def carry(sibling: str, session: object, first: bytes | None, keeper: bool) -> None:
        keepers.append(keeper)
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
        if leaving_at is not None:
            await trio.sleep(leaving_at)
            sessions.leaving()
            seconds -= leaving_at
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()
    return keepers


HELLO_SIDE = b"\x03" * 32  # above SIBLING_KEY: this side says hello


async def test_hellos_go_on_while_the_dialer_s_introset_does_not_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The dialer redials a sibling that is away only every REDIAL_MAX_S, so hellos must
    outlast a dead intro in its introset (noticed within a path ping, then republished):
    they go on, doubling their waits, HELLO_TRIES times."""
    endpoint = _Endpoint(public_key=HELLO_SIDE, failure=SessionError("handshake timed out"))
    await _run(endpoint, REDIAL_MAX_S)
    start = trio.current_time() - REDIAL_MAX_S
    waits = [HELLO_DELAY_S * 2**n for n in range(HELLO_TRIES)]
    expected = [start + sum(waits[: n + 1]) for n in range(HELLO_TRIES)]
    assert endpoint.connects == expected
    assert expected[-1] - expected[0] > 2 * 120 + 3  # a phone's path pings, and a time-out


async def test_one_hello_when_the_dialer_has_no_introset_or_the_device_is_leaving(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No introset: the dialer is away, and dials us when it is back. Leaving: the
    device needs only to know it tried."""
    away = _Endpoint(public_key=HELLO_SIDE, failure=NotPublished("peer has no live introset"))
    await _run(away, REDIAL_MAX_S)
    assert len(away.connects) == 1
    leaving = _Endpoint(public_key=HELLO_SIDE, failure=SessionError("handshake timed out"))
    await _run(leaving, REDIAL_MAX_S, leaving_at=0.5)
    assert len(leaving.connects) == 1
    answered = _Endpoint(public_key=HELLO_SIDE)
    await _run(answered, REDIAL_MAX_S)
    assert len(answered.connects) == 1


async def test_the_dialing_side_keeps_the_session_alive_and_the_other_listens(
    autojump_clock: trio.testing.MockClock,
) -> None:
    assert set(await _run(_Endpoint(public_key=OWN_KEY), 4)) == {True}
    assert set(await _run(_Endpoint(public_key=HELLO_SIDE), 4)) == {False}


async def test_a_dialer_backing_off_dials_at_once_when_the_sibling_moves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The sibling's introset was found and its intro did not answer, dial after dial,
    so the waits grew (511 s after the tenth); then it republished elsewhere (it retired
    a path whose intro delivered nothing). The dialer, looking it up every
    MOVED_CHECK_S while it waits, dials within that and backs off from the start: it
    waited out the rest of its 512 s before."""
    endpoint = _Endpoint(failure=SessionError("handshake timed out"))
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_run, endpoint, 700)
        await trio.sleep(600)
        endpoint.published = [THERE]
    after = [t - start for t in endpoint.connects if t - start > 600]
    assert after and after[0] <= 600 + MOVED_CHECK_S
    assert [b - a for a, b in pairwise(after[:3])] == [1, 2]
