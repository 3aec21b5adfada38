"""Running a device and stopping it: the driver of :mod:`.online_switch`'s steps.

The switch decides which steps going online or offline takes, in which stages; this
runs them: the attempt (which a stop may cut short), what settles in a ``finally``, and
what follows, one switch at a time. While online, three tasks run under one cancel
scope: the outbox, the receiver and the sibling handler.
"""

from __future__ import annotations

import trio

from .online_flag import OnlineFlag
from .online_switch import OnlineSwitch, Step
from .outbox import Outbox
from .receiver import Receiver
from .siblings import SiblingHandler
from .store import DeviceStore

#: How long a device going offline gives its outbox (the sync copies it just queued
#: among it) before it says goodbye; what is not stored by then stays in the outbox and
#: goes first on its next start.
LEAVING_S = 30.0
#: Set from before the device starts until it has stopped: found set when it goes
#: online, the last run ended before it finished leaving (a crash, a kill, a leave cut
#: short), so it may still owe its siblings' sync copies.
#: Read once when the device opens: ``sync_status().last_run_left``.
ONLINE_META = "online"


class Runner:
    """Whether the device runs, and the steps that start and stop it."""

    def __init__(
        self,
        store: DeviceStore,
        online_flag: OnlineFlag,
        siblings: SiblingHandler,
        outbox: Outbox,
        receiver: Receiver,
        nursery: trio.Nursery,
    ) -> None:
        self._store = store
        self._online_flag = online_flag
        self._siblings = siblings
        self._outbox = outbox
        self._receiver = receiver
        self._nursery = nursery
        self._online_scope: trio.CancelScope | None = None
        #: Where going online or offline stands (what leaving still owes the siblings).
        self._switch = OnlineSwitch()
        #: One switch at a time: going offline takes a while (the copies it stores first),
        #: and coming back meanwhile must wait for it rather than find the device online.
        self._switching = trio.Lock()
        noted = store.get_meta(ONLINE_META)
        #: Whether the run before this one finished leaving (None: there was none), read
        #: before this run goes online (which sets the note again).
        self.last_run_left = None if noted is None else noted != b"1"

    @property
    def online(self) -> bool:
        return self._online_flag.online

    async def set_online(self, online: bool, *, promptly: bool = False) -> None:
        """:meth:`Device.set_online`."""
        async with self._switching:
            noted_running = self._store.get_meta(ONLINE_META) == b"1"
            plan = self._switch.plan(online, promptly=promptly, noted_running=noted_running)
            try:
                for step in plan.attempt:
                    await self._attempt(step)
            finally:
                # Even when a stop cuts the attempt short: the copies are then in the
                # durable outbox, which goes first on the next start.
                for step in plan.settle:
                    self._settle(step)
                self._switch.reached(plan.after_settle)
            for step in plan.then:
                await self._take(step)
            self._switch.reached(plan.ends)

    async def _attempt(self, step: Step) -> None:
        match step:
            case Step.DELIVER_DIRECTLY:
                await self._siblings.deliver_before_leaving()
            case _:
                raise AssertionError(f"{step} is not an attempt")

    def _settle(self, step: Step) -> None:
        """The steps that run even when the attempt was cut short: no checkpoint."""
        match step:
            case Step.QUEUE_OWED_COPIES:
                self._siblings.store_owed_copies()
            case Step.NOTE_RUNNING:
                self._store.set_meta(ONLINE_META, b"1")
            case _:
                raise AssertionError(f"{step} cannot settle")

    async def _take(self, step: Step) -> None:
        match step:
            case Step.START:
                self._online_scope = await self._nursery.start(self._run_online)
            case Step.FLUSH:
                with trio.move_on_after(LEAVING_S):
                    await self._outbox.flush()
            case Step.SAY_GOODBYE:
                await self._siblings.leave()
            case Step.STOP:
                assert self._online_scope is not None
                self._online_scope.cancel()
                # Not cut short itself, so the phase never says online while the device
                # is still stopping: its tasks end at their next checkpoint, and their
                # shielded clean-ups are bounded (a WebSocket close waits 10 s at most).
                with trio.CancelScope(shield=True):
                    await self._online_flag.wait_offline()
                self._store.set_meta(ONLINE_META, b"0")
            case _:
                raise AssertionError(f"{step} is not a step to take")

    async def _run_online(self, *, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            self._online_flag.set(True)
            task_status.started(scope)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._outbox.run, self._receiver.retry_deferred)
                    nursery.start_soon(self._receiver.run)
                    nursery.start_soon(self._siblings.run, self._receiver.sync_now)
            finally:
                self._online_flag.set(False)
