"""What a device does, step by step, when it goes online or offline: a pure core.

Going offline owes the siblings something: every message they have not acknowledged
must be in the swarm as a sync copy before the device stops, or a sibling that comes
back while this device stays away (a phone lost, a process that exits right after
``send``) never gets it. So leaving is three stages:

1. *attempt*: siblings that are online get a few seconds to take what they lack
   directly (left out when a person stopped the program: ``promptly``). This may be
   cut short;
2. *settle*: queue a sync copy of whatever is still unacknowledged in the durable
   outbox. Quick and synchronous, it runs even when the attempt was cut short: the
   driver runs it in a ``finally``;
3. *then*: give the outbox time to store them, say goodbye, and stop, noting durably
   that the run ended well. Cut short before it stopped, the device is
   :attr:`Phase.SETTLED`: it still runs, and leaving again skips the attempt (a
   caller gives a stopped leave a last short budget) but queues again what was sent
   since (queueing what is queued already does nothing).

The note that a run is under way is set before a device starts and cleared only once it
has stopped, so a device killed at any point finds it on its next start and queues what
it owed before anything else.

:data:`TRANSITIONS` is the whole rule; :class:`OnlineSwitch` keeps the phase.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum


class Phase(Enum):
    OFFLINE = "offline"
    #: Running, and leaving owes the siblings their copies.
    ONLINE = "online"
    #: Running, the copies queued: a leave was cut short (in its attempt or after).
    SETTLED = "settled"


class Step(Enum):
    #: Give siblings online a few seconds to take what they lack directly.
    DELIVER_DIRECTLY = "deliver directly"
    #: Queue a sync copy of every message a sibling has not acknowledged.
    QUEUE_OWED_COPIES = "queue owed copies"
    #: Note, durably, that a run is under way: a crash leaves the note behind.
    NOTE_RUNNING = "note running"
    #: Start receiving, sending and syncing with siblings.
    START = "start"
    #: Give the outbox a while to store what is queued.
    FLUSH = "flush"
    #: Tell the siblings in session that this device is going (so they need not wait
    #: for its acknowledgements).
    SAY_GOODBYE = "say goodbye"
    #: Stop running, and note, durably and in the same step, that the run ended well.
    STOP = "stop"


@dataclass(frozen=True)
class Plan:
    """Steps in three stages: ``attempt`` may be cut short, ``settle`` runs even so
    (and leaves the device in phase :attr:`after_settle`), ``then`` runs after and ends
    in phase :attr:`ends` (None: the phase stays)."""

    attempt: tuple[Step, ...] = ()
    settle: tuple[Step, ...] = ()
    after_settle: Phase | None = None
    then: tuple[Step, ...] = ()
    ends: Phase | None = None


#: The last stage of every leave.
LEAVE_THEN = (Step.FLUSH, Step.SAY_GOODBYE, Step.STOP)

#: (phase, wanted online?) -> what to do. Wanting what already is does nothing.
TRANSITIONS: dict[tuple[Phase, bool], Plan] = {
    (Phase.OFFLINE, True): Plan(settle=(Step.NOTE_RUNNING,), then=(Step.START,), ends=Phase.ONLINE),
    (Phase.ONLINE, False): Plan(
        attempt=(Step.DELIVER_DIRECTLY,),
        settle=(Step.QUEUE_OWED_COPIES,),
        after_settle=Phase.SETTLED,
        then=LEAVE_THEN,
        ends=Phase.OFFLINE,
    ),
    (Phase.SETTLED, False): Plan(
        settle=(Step.QUEUE_OWED_COPIES,),
        after_settle=Phase.SETTLED,
        then=LEAVE_THEN,
        ends=Phase.OFFLINE,
    ),
    (Phase.SETTLED, True): Plan(after_settle=Phase.ONLINE),
    (Phase.OFFLINE, False): Plan(),
    (Phase.ONLINE, True): Plan(),
}


def plan(
    phase: Phase, online: bool, *, promptly: bool = False, noted_running: bool = False
) -> Plan:
    """What going ``online`` (or not) from ``phase`` takes. ``promptly``: a person stopped
    the program, so no time for siblings to take messages directly. ``noted_running``:
    the durable note says a run is under way; found so by a device that is offline, its
    last run ended before it finished leaving (killed, crashed, a leave cut short), and
    it may owe its siblings' copies: it queues them first (what is queued already is
    not queued twice)."""
    chosen = TRANSITIONS[phase, online]
    if promptly:
        chosen = replace(chosen, attempt=())
    if phase is Phase.OFFLINE and online and noted_running:
        chosen = replace(chosen, settle=(Step.QUEUE_OWED_COPIES, *chosen.settle))
    return chosen


class OnlineSwitch:
    """The device's phase, moved on as its driver finishes each plan's stages."""

    def __init__(self) -> None:
        self.phase = Phase.OFFLINE

    def plan(self, online: bool, *, promptly: bool = False, noted_running: bool = False) -> Plan:
        return plan(self.phase, online, promptly=promptly, noted_running=noted_running)

    def reached(self, phase: Phase | None) -> None:
        """A stage that ends at ``phase`` (None: stays) has run."""
        if phase is not None:
            self.phase = phase
