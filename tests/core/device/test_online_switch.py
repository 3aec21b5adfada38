"""Going online and offline: whatever the order of switches and wherever a leave is cut
short, a device stops only once every copy its siblings are owed is queued, never
starts twice, says by its phase whether it runs, and keeps a durable note whenever it
might be killed owing copies."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from p2psync.device.online_switch import TRANSITIONS, OnlineSwitch, Phase, Plan, Step, plan


def test_every_phase_and_wish_has_a_plan() -> None:
    assert set(TRANSITIONS) == {(phase, online) for phase in Phase for online in (True, False)}


def test_leaving_tries_directly_queues_then_stops_and_notes_it_left() -> None:
    leave = plan(Phase.ONLINE, False)
    assert leave.attempt == (Step.DELIVER_DIRECTLY,)
    assert leave.settle == (Step.QUEUE_OWED_COPIES,)
    assert leave.then == (Step.FLUSH, Step.SAY_GOODBYE, Step.STOP)
    assert plan(Phase.ONLINE, False, promptly=True).attempt == ()


def test_a_device_whose_last_run_was_killed_queues_its_copies_before_starting() -> None:
    back = plan(Phase.OFFLINE, True, noted_running=True)
    assert back.settle == (Step.QUEUE_OWED_COPIES, Step.NOTE_RUNNING)
    assert back.then == (Step.START,)
    assert plan(Phase.OFFLINE, True).settle == (Step.NOTE_RUNNING,)


def test_a_leave_cut_short_resumes_without_the_attempt_but_queues_what_came_since() -> None:
    again = plan(Phase.SETTLED, False)
    assert again.attempt == () and again.settle == (Step.QUEUE_OWED_COPIES,)
    back = plan(Phase.SETTLED, True)
    assert back == Plan(after_settle=Phase.ONLINE), "still running, still noted running"
    assert plan(Phase.ONLINE, False).attempt == (Step.DELIVER_DIRECTLY,)


@pytest.mark.parametrize(("phase", "online"), [(Phase.OFFLINE, False), (Phase.ONLINE, True)])
def test_wanting_what_already_is_does_nothing(phase: Phase, online: bool) -> None:
    assert plan(phase, online) == Plan()


class Switching(RuleBasedStateMachine):
    """A device driven as its driver does, each stage possibly cut short: ``running``,
    ``owes`` (it sent since its copies were last queued) and the durable ``note``."""

    def __init__(self) -> None:
        super().__init__()
        self.switch = OnlineSwitch()
        self.running = False
        self.owes = False
        self.note = False
        self.killed_with_debt = False

    def _run(self, online: bool, promptly: bool, cut_at: int) -> None:
        """Run the plan as the driver does, cut short at ``cut_at``: -1 in the attempt,
        ``k`` before the k-th step of ``then``, past its end not at all."""
        steps = self.switch.plan(online, promptly=promptly, noted_running=self.note)
        # The attempt, cut short or not, is followed by settle (the driver's finally).
        for step in steps.settle:
            self._do(step)
        self.switch.reached(steps.after_settle)
        if cut_at < 0 and steps.attempt:
            return
        for index, step in enumerate(steps.then):
            if index == cut_at:
                return
            self._do(step)
        self.switch.reached(steps.ends)

    def _do(self, step: Step) -> None:
        if step is Step.QUEUE_OWED_COPIES:
            self.owes = self.killed_with_debt = False
        elif step is Step.NOTE_RUNNING:
            self.note = True
        elif step is Step.START:
            assert not self.running, "started twice"
            self.running = True
        elif step is Step.STOP:
            assert not self.owes, "stopped owing the siblings copies nobody queued"
            self.running = self.note = False

    @rule(promptly=st.booleans(), cut_at=st.integers(-1, 5))
    def go_offline(self, promptly: bool, cut_at: int) -> None:
        self._run(False, promptly, cut_at)

    @rule(cut_at=st.integers(-1, 2))
    def go_online(self, cut_at: int) -> None:
        self._run(True, False, cut_at)

    @rule()
    def send(self) -> None:
        if self.running:
            self.owes = True

    @rule()
    def killed(self) -> None:
        """Killed outright: nothing runs, the note stays as it was; a new switch (a new
        process) starts offline."""
        self.killed_with_debt = self.killed_with_debt or self.owes
        assert not self.owes or self.note, "killed owing copies with nothing to say so"
        self.switch = OnlineSwitch()
        self.running = False
        self.owes = False

    @invariant()
    def a_device_back_online_has_paid_what_a_killed_run_owed(self) -> None:
        if self.running:
            assert not self.killed_with_debt

    @invariant()
    def the_phase_says_whether_it_runs(self) -> None:
        assert self.running == (self.switch.phase is not Phase.OFFLINE)


TestSwitching = Switching.TestCase
TestSwitching.settings = settings(max_examples=300, stateful_step_count=30, deadline=None)
