"""``p2psync device ...``: a messenger device for a person at a terminal, against a running
``p2psync network up`` (its ``network.json``). Parsing and printing only; the work is
:class:`p2psync.device.Device`.

A typical session, with two terminals and one network::

    p2psync device init --data alice --mode linked
    p2psync device init --data tablet --mode linked
    p2psync device name --data alice --network net/network.json Alice   # friends see "Alice (05…)"
    p2psync device pair --data tablet --network net/network.json --primary 05…   # shows a code
    p2psync device accept --data alice --network net/network.json --code '123 456'
    p2psync device contacts --data alice --network net/network.json --add 05… --text hi
    p2psync device send --data alice --network net/network.json 05… 'hello'
    p2psync device inbox --data bob --network net/network.json --wait 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
import unicodedata
from collections.abc import Awaitable, Callable, Iterator
from contextlib import aclosing, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, cast

import trio

from .cli_control import CONTROL_SOCKET, forward, say, serve_control
from .cli_device_parser import DEFAULT_TIMEOUT_S
from .device import (
    Contact,
    Device,
    DeviceError,
    HistoryItem,
    NetworkAccess,
    PairingError,
    PairingOffer,
    Whoami,
    create_device,
    describe_device,
    describe_pairing_address,
    device_in_use,
    open_device,
)
from .device.content import REFUSED_NAME_CATEGORIES
from .device.friends import friends_among
from .device.pairing import DEVICE_PREFIX_CHARS, REASK_S, is_code
from .device.pairing_address import read_primary
from .device.values import TRANSIENT
from .errors import DecodeError, RpcError
from .stops import Terminated, sigterm_admitted, sigterm_deferred
from .swarm.access import MailboxAccess, is_current

logger = logging.getLogger(__name__)

#: Exit status after SIGTERM, as a shell reports a process it ended (128 + 15).
EXIT_TERMINATED = 143
#: How long a device command stopped by Ctrl-C or SIGTERM (or whose work failed) still
#: gives its device to leave (queue the sync copies its siblings lack, store what it can
#: of them, say goodbye): short, so every command stops within 2 s; what is not stored by
#: then is in the outbox and goes first on the device's next start. ``--timeout`` ends
#: the command without a leave: it comes when the network is not answering.
STOP_LEAVING_S = 1.5


def _when(timestamp_ms: int) -> str:
    return datetime.fromtimestamp(timestamp_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _short(session_id: str) -> str:
    return f"{session_id[:10]}…{session_id[-4:]}"


def _named(name: str, user: str) -> str:
    """A user as a line shows them: the display name beside the id, never instead of it,
    so a friend who picks another's name still reads as someone else. (Names were
    checked when they arrived: no control or format characters reach the terminal.)"""
    return f"{name} ({user})" if name else user


def _name_of(device: Device, user: str) -> str:
    """The display name of ``user``: a friend's, or the user's own."""
    me = device.whoami()
    if user == me.session_id:
        return me.display_name
    contact = device.friends.contact(user)
    return "" if contact is None else contact.name


def _emit(args: argparse.Namespace, obj: dict[str, Any], *lines: str) -> None:
    """One result: a JSON object per line with ``--json``, else the human lines, each
    with what others wrote in it made harmless for a terminal (:func:`terminal_safe`).
    The lines are given apart, not as one text with newlines: a newline inside a line is
    someone's text and is escaped like any control character, so a message cannot start
    a line that looks like another message."""
    if getattr(args, "json", False):
        say(json.dumps(obj))
    else:
        say("\n".join(terminal_safe(line) for line in lines))


def terminal_safe(text: str) -> str:
    """``text`` with every control, format (bidi overrides among them), separator and
    unassigned character shown as ``\\uXXXX``: a friend's message or a room post is
    attacker-chosen text, and an escape sequence in it could rewrite the line around it
    (the name and id beside it included) or the terminal itself."""
    return "".join(
        f"\\u{ord(char):04x}" if unicodedata.category(char) in REFUSED_NAME_CATEGORIES else char
        for char in text
    )


def _message(item: HistoryItem, name: str) -> dict[str, Any]:
    return {
        "id": item.id.hex(),
        "timestamp_ms": item.timestamp_ms,
        "conversation": item.conversation,
        "name": name,
        "outgoing": item.outgoing,
        "sender": item.sender,
        "device": item.device,
        "text": item.text,
    }


def _print_message(args: argparse.Namespace, device: Device, item: HistoryItem) -> None:
    """One message; ``name`` (in JSON) and the name shown are the conversation's user's."""
    arrow = "→" if item.outgoing else "←"
    name = _name_of(device, item.conversation)
    who = _named(name, _short(item.conversation))
    line = f"{_when(item.timestamp_ms)} {arrow} {who}  {item.text}"
    _emit(args, {"kind": "message", **_message(item, name)}, line)


#: Exit status after Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130


class _Stop:
    """Where Ctrl-C and SIGTERM land: the innermost scope guarded now (the whole
    command, then the work and the leave after it), so that a stop while the device
    works ends the work but not the device; and the exit status of the first stop."""

    def __init__(self) -> None:
        self.code: int | None = None
        self._guarded: list[trio.CancelScope] = []

    def raise_if_stopped(self) -> None:
        """Raise the first stop again once the device is closed, so that the command
        ends as every command does on it: its exit status and one line."""
        if self.code == EXIT_INTERRUPTED:
            raise KeyboardInterrupt
        if self.code == EXIT_TERMINATED:
            raise Terminated

    @contextmanager
    def guard(self) -> Iterator[None]:
        with trio.CancelScope() as scope:
            self._guarded.append(scope)
            try:
                yield
            finally:
                self._guarded.remove(scope)

    async def receive(
        self, otherwise: trio.CancelScope, *, task_status: trio.TaskStatus[None]
    ) -> None:
        """Until cancelled, turn each signal into cancelling the innermost guarded scope
        (``otherwise`` when none is): a second stop cuts short what the first left
        running (the leave). Delivered here rather than as a KeyboardInterrupt, which
        could land in any of the device's tasks."""
        codes = {signal.SIGINT: EXIT_INTERRUPTED, signal.SIGTERM: EXIT_TERMINATED}
        with trio.open_signal_receiver(*codes) as signals, sigterm_admitted():
            task_status.started()
            async for signum in signals:
                if self.code is None:
                    self.code = codes[signal.Signals(signum)]
                (self._guarded[-1] if self._guarded else otherwise).cancel()


class _Stopped(Exception):
    """The device has left after a stop: close it without leaving again."""


async def _leave_promptly(device: Device) -> None:
    """Store the sync copies the device owes and say goodbye, in at most
    :data:`STOP_LEAVING_S` and without waiting for siblings to take them directly."""
    with trio.move_on_after(STOP_LEAVING_S):
        await device.set_online(False, promptly=True)


#: The commands a ``run`` holding the device does for other terminals
#: (:mod:`p2psync.cli_control`); ``run`` itself, and what reads no network, are not. It
#: does those that change who the user is or which devices it has one at a time.
HANDED_TO_RUN = frozenset(
    {"name", "pair", "accept", "send", "inbox", "devices", "migrate", "rooms", "contacts"}
)
ONE_AT_A_TIME = frozenset({"name", "pair", "accept", "devices", "migrate"})


@dataclass(frozen=True)
class _Work:
    work: Callable[[Device], Awaitable[None]]
    gave_up: str


#: While ``run`` does a command handed to it: where :func:`_run` leaves that command's
#: work, for the running device to do (see :func:`_perform`), instead of opening one.
_handed: ContextVar[list[_Work] | None] = ContextVar("handed", default=None)


def _run(
    args: argparse.Namespace,
    work: Callable[[Device], Awaitable[None]],
    *,
    online: bool = True,
    gave_up: str = "is the network running?",
) -> int:
    """Open the device, run ``work`` on it and leave, within ``--timeout`` (past it,
    the error says what the command waited for: ``gave_up``). If a ``run`` holds the
    device, it does the work instead (:func:`_hand_to_run`).

    Ctrl-C and SIGTERM (130, 143) while the device opens end the command. Once it is
    open they stop the work, or the leave that follows it (Ctrl-C right after ``send``
    says ``sent``), but not the device: it then leaves promptly while its own tasks
    still run, for a leave without them would queue the sync copies it owes and never
    store them; and it closes without leaving again, whether that leave finished or
    not, so the command ends within :data:`STOP_LEAVING_S` and a little. A failure of
    the work leaves promptly too."""
    handed = _handed.get()
    if handed is not None:  # this is that run, doing it
        handed.append(_Work(work, gave_up))
        return 0
    status = _hand_to_run(args)
    if status is not None:
        return status
    stop = _Stop()

    async def main() -> None:
        network = NetworkAccess.from_file(args.network)
        with trio.fail_after(args.timeout):
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(stop.receive, nursery.cancel_scope)
                    with stop.guard():
                        async with open_device(Path(args.data), network, online=online) as device:
                            try:
                                with stop.guard():
                                    await work(device)
                                    await device.set_online(False)
                            except Exception:
                                await _leave_promptly(device)
                                raise
                            if stop.code is not None:
                                await _leave_promptly(device)
                                raise _Stopped
                    nursery.cancel_scope.cancel()
            except* _Stopped:
                pass

    try:
        with sigterm_deferred():  # until the receiver is open
            trio.run(main)
    except trio.TooSlowError:
        raise TimeoutError(f"gave up after {args.timeout:g} s ({gave_up})") from None
    stop.raise_if_stopped()
    return 0


def _hand_to_run(args: argparse.Namespace) -> int | None:
    """Have the ``run`` holding the device do this command (its exit status, after its
    output), or None if no run holds it (or this command is not one it does)."""
    data, argv = Path(args.data), getattr(args, "command_line", None)
    if argv is None or args.device_command not in HANDED_TO_RUN:
        return None
    if not (data / CONTROL_SOCKET).exists() or not device_in_use(data):
        return None
    stop = _Stop()
    network = os.path.abspath(args.network)

    async def main() -> int | None:
        async with trio.open_nursery() as nursery:
            await nursery.start(stop.receive, nursery.cancel_scope)
            status = await forward(data, argv, network)
            nursery.cancel_scope.cancel()
            return status
        return None  # stopped (closing the connection stopped the work there)

    with sigterm_deferred():  # until the receiver is open
        status = trio.run(main)
    stop.raise_if_stopped()
    return status


@dataclass(frozen=True)
class _Running:
    """What a ``run`` does handed commands with (:func:`_perform`)."""

    device: Device
    data: Path
    network: str  # the network file it runs on, absolute
    one_at_a_time: trio.Lock


async def _perform(running: _Running, argv: list[str], network: str | None) -> int:
    """Do a command handed to this ``run`` from another terminal, as the command would
    have done it (:func:`_run` gives its work back rather than open the device; the
    device stays online after it): its exit status."""
    from .cli import build_parser, explain  # the command line's module imports this one

    try:
        args = build_parser().parse_args(argv)
    except SystemExit:  # the terminal parsed the same line: only another version fails
        say("p2psync: error: the running device cannot read this command line", err=True)
        return 2
    if getattr(args, "device_command", None) not in HANDED_TO_RUN:
        say("p2psync: error: the running device does not do this command", err=True)
        return 2
    if network != running.network:
        say(
            f"p2psync: error: the device runs on {running.network}, not {network}:"
            " stop its `run` to use another network",
            err=True,
        )
        return 1
    args.data = str(running.data)  # the terminal's path may be relative to another directory
    handed: list[_Work] = []
    token = _handed.set(handed)
    try:
        status = int(args.run(args))
        timeout = getattr(args, "timeout", DEFAULT_TIMEOUT_S)
        turn = running.one_at_a_time if args.device_command in ONE_AT_A_TIME else None
        for work in handed:
            try:
                with trio.fail_after(timeout):
                    async with turn or contextlib.nullcontext():
                        await work.work(running.device)
            except trio.TooSlowError:
                raise TimeoutError(f"gave up after {timeout:g} s ({work.gave_up})") from None
    except Exception as exc:
        explained = explain(exc)
        if explained is None:
            logger.exception("a command handed to this run failed")
            explained = (1, f"p2psync: error: the running device failed: {exc!r}")
        status, line = explained
        say(line, err=True)
    finally:
        _handed.reset(token)
    return status


def _cmd_init(args: argparse.Namespace) -> int:
    _, device_id = create_device(Path(args.data), args.mode, args.name)
    say(f"created {args.mode} device {args.name!r}: {device_id}")
    return 0


def _whoami_of(me: Whoami) -> dict[str, Any]:
    return {
        "user": me.session_id,
        "device": me.device_id,
        "mode": me.mode,
        "name": me.name,
        "display_name": me.display_name,
        "revoked_at_ms": me.revoked_at_ms,
    }


def _revoked_line(revoked_at_ms: int | None) -> list[str]:
    """The line a device unpaired by its primary shows first (none while it belongs)."""
    if revoked_at_ms is None:
        return []
    return [
        f"this device was unpaired by its primary on {_when(revoked_at_ms)} UTC: it keeps"
        " its history but no longer sends as the user"
    ]


def _cmd_whoami(args: argparse.Namespace) -> int:
    data = Path(args.data)
    if args.pairing_address:
        return _print_pairing_address(args, data)
    running = _running(data)
    me = _whoami_of(describe_device(data)) if running is None else running["whoami"]
    _emit(
        args,
        me,
        f"user {_named(me['display_name'], me['user'])}",
        f"device {me['device']} ({me['name']!r}, {me['mode']})",
        *_revoked_line(me.get("revoked_at_ms")),
    )
    return 0


def _print_pairing_address(args: argparse.Namespace, data: Path) -> int:
    """The address alone, asked for by name (whoever holds it may fill the user's
    reserve, so ``whoami``, run to find one's id to share, does not show it)."""
    address = describe_pairing_address(data, int(time.time() * 1000))
    if address is None:
        raise PairingError(
            "this device pairs no devices: a mapped secondary's primary does, and a device"
            " its primary unpaired no longer acts for the user"
        )
    _emit(args, {"pairing_address": address}, address)
    return 0


def _cmd_name(args: argparse.Namespace) -> int:
    """Set the user's display name; siblings and friends learn it."""

    async def work(device: Device) -> None:
        await device.set_display_name(args.name)
        await device.flush()
        say(f"display name set: {_named(args.name, device.session_id)}")

    return _run(args, work)


#: The most ``pair --primary -`` reads of its stdin: an address is 144 characters.
MAX_PRIMARY_CHARS = 1024


def _cmd_pair(args: argparse.Namespace) -> int:
    given = args.primary
    if given == "-":
        given = sys.stdin.readline(MAX_PRIMARY_CHARS).strip() if sys.stdin else ""
        if getattr(args, "command_line", None) is not None:  # for a `run` it is handed to
            args.command_line = _primary_given(args.command_line, given)
    try:
        primary, access = read_primary(given)
    except DecodeError as exc:
        raise PairingError(f"neither a pairing address nor a session id on stdin ({exc})") from None

    async def work(device: Device) -> None:
        me = device.whoami().device_id
        refusal = device.pairing.refusal(primary)
        if refusal is not None:
            raise PairingError(refusal)
        if access is not None and not is_current(access, int(time.time() * 1000)):
            say(f"{_stale(access)}: asking as a stranger would", err=True)
        say(f"asked {primary[:12]}… to pair; waiting for it to answer")
        say(
            "if it lists too many requests, answer this device there with:"
            f" p2psync device accept --answer {me[:DEVICE_PREFIX_CHARS]} ..."
        )
        ticket = await device.pairing.request(given)
        say(f"pairing code: {ticket.code}")
        say("check that the primary shows the same code, then accept it there:")
        say(f"  p2psync device accept --code '{ticket.code}' ...")
        await device.pairing.wait_paired()
        say(f"paired: this device now acts for user {device.session_id}")

    waited_for = (
        f"{primary[:12]}… did not answer, or did not accept: it answers while online"
        " (`p2psync device run` or `device accept --wait S` there; if many asked at once,"
        " when `device accept` there lists them), on a running network"
    )
    return _run(args, work, gave_up=waited_for)


def _primary_given(argv: list[str], primary: str) -> list[str]:
    """``pair``'s command line with the primary read from standard input in place of
    ``-`` (``--primary -``, ``--primary=-`` or an abbreviation: ``pair`` has no other
    option starting ``--p``)."""
    given = list(argv)
    for n, word in enumerate(given):
        if word == "-" and n > 0 and given[n - 1].startswith("--p"):
            given[n] = primary
        elif word.startswith("--p") and word.endswith("=-"):
            given[n] = word[:-1] + primary
    return given


def _stale(access: MailboxAccess) -> str:
    """Why a pairing address no longer counts at the nodes."""
    if access.expiry_ms <= int(time.time() * 1000):
        when = f"stopped counting on {_when(access.expiry_ms)} UTC"
    else:
        when = "is dated further ahead than a device signs (a clock far off?)"
    return (
        f"this pairing address {when} (`device whoami --pairing-address` on the primary"
        " prints the current one)"
    )


def _shown_code(device: Device, code: str) -> str | None:
    """``code`` as the waiting request it names shows it ("123 456" for "123456"), or
    None if no request shows it."""
    return next((o.code for o in device.pairing.requests() if is_code(o.code, code)), None)


#: How long ``accept --answer`` waits at least for the named device's request: it asks
#: again every :data:`~p2psync.device.pairing.REASK_S` while unanswered.
ANSWER_WAIT_S = 2 * REASK_S


def _cmd_accept(args: argparse.Namespace) -> int:
    code = args.code or args.decline

    def waiting(device: Device) -> bool:
        if code is None:
            return bool(device.pairing.requests() or device.pairing.held())
        return _shown_code(device, code) is not None

    async def work(device: Device) -> None:
        await device.sync_now()
        if args.answer:
            with trio.move_on_after(max(args.wait, ANSWER_WAIT_S)):
                await device.pairing.answer_device(args.answer)
            if not any(o.device.startswith(args.answer) for o in device.pairing.requests()):
                raise PairingError(
                    f"no pairing request from a device {args.answer}… came (its `pair` asks"
                    f" again every {REASK_S:g} s while it runs)"
                )
        with trio.move_on_after(args.wait):
            await device.wait_for(waiting)
        if code is None:
            if not args.answer:  # the user is looking: answer what waits past the budget
                await device.pairing.answer_held()
            offers = device.pairing.requests()
            if not offers:
                raise PairingError(
                    "no pairing request is waiting (a new device asks with "
                    "`p2psync device pair`; --wait S waits for one)"
                )
            for offer in offers:
                _emit(
                    args,
                    {
                        "code": offer.code,
                        "name": offer.name,
                        "device": offer.device,
                        "timestamp_ms": offer.timestamp_ms,
                    },
                    f"code {offer.code}  {offer.name!r}  {offer.device}  "
                    f"{_when(offer.timestamp_ms)}",
                )
            if not args.json:
                say("accept one with: p2psync device accept --code CODE ...")
                if held := device.pairing.held():
                    say(f"{held} more wait unanswered (too many at once): list again for more")
            return
        shown = _shown_code(device, code) or code
        if args.decline:
            await device.pairing.decline(code)
            _emit(args, {"declined": shown}, f"declined the pairing request with code {shown}")
        else:
            paired = await device.pairing.accept(code)
            _emit(args, {"paired": paired, "code": shown}, f"paired device {paired}")

    return _run(args, work)


def _cmd_send(args: argparse.Namespace) -> int:
    async def work(device: Device) -> None:
        contact = device.friends.contact(args.user)
        if contact is not None and contact.state == "requested":
            # Their acceptance may be waiting in the swarm; if it cannot be read now,
            # the send says why it cannot go.
            with contextlib.suppress(*TRANSIENT):
                await device.sync_now()
        message_id = await device.send(args.user, args.text)
        # Kept from here on: a later run delivers it if this one is cut short.
        say(f"accepted {message_id.hex()}; storing it in the swarm")
        await device.flush()
        say(f"sent {message_id.hex()}")
        # Leaving the device above stored the sync copies its siblings had not
        # acknowledged, so they have the message without this device coming back.

    return _run(args, work)


def _print_friend_request(args: argparse.Namespace, contact: Contact) -> None:
    _emit(
        args,
        {
            "kind": "friend_request",
            "user": contact.user,
            "name": contact.name,
            "note": contact.note,
        },
        f"friend request from {_named(contact.name, contact.user)}: {contact.note!r}"
        f" (accept: `p2psync device contacts --accept {contact.user} ...`)",
    )


async def _watch_requests(args: argparse.Namespace, device: Device) -> None:
    """For ``run``: a line for each friend request and pairing request as it arrives (they
    are answered with ``contacts`` and ``accept`` from another terminal, which hand the
    work to this run: :mod:`p2psync.cli_control`)."""
    shown_friends: set[str] = set()
    shown_pairings: set[str] = set()
    told_held = False  # since requests were last held here

    def new(device: Device) -> tuple[list[Contact], list[PairingOffer], bool]:
        friends = device.friends.contacts()
        offers = device.pairing.requests()
        return (
            [c for c in friends if c.state == "pending" and c.user not in shown_friends],
            [o for o in offers if o.code not in shown_pairings],
            bool(device.pairing.held()) != told_held,
        )

    while True:
        await device.wait_for(lambda device: any(new(device)))
        friends, offers, held_changed = new(device)
        if held_changed:
            told_held = not told_held
            if told_held:  # answered by the user's listing only, never by this run
                _emit(
                    args,
                    {"kind": "pairing_held"},
                    "too many pairing requests at once: the newest wait unanswered until"
                    " `p2psync device accept` lists them",
                )
        for contact in friends:
            shown_friends.add(contact.user)
            _print_friend_request(args, contact)
        for offer in offers:
            shown_pairings.add(offer.code)
            _emit(
                args,
                {"kind": "pairing_request", "code": offer.code, "name": offer.name},
                f"pairing request from a device named {offer.name!r}, code {offer.code}"
                f" (answer in another terminal: `p2psync device accept --code '{offer.code}' ...`)",
            )


async def _watch_revocation(args: argparse.Namespace, device: Device) -> None:
    """For ``run``: a line once the user's primary unpairs this device."""
    await device.wait_for(lambda device: device.whoami().revoked_at_ms is not None)
    revoked_at_ms = device.whoami().revoked_at_ms
    _emit(args, {"kind": "revoked", "at_ms": revoked_at_ms}, *_revoked_line(revoked_at_ms))


def _news(device: Device, items: list[HistoryItem]) -> list[HistoryItem]:
    """What of ``items`` (unread) is news here: not what this device sent itself, in an
    earlier command (what it sends while ``run`` is up, ``run`` shows as it goes)."""
    me = device.whoami().device_id
    return [item for item in items if not (item.outgoing and item.device == me)]


def _print_in_time_order(
    args: argparse.Namespace, device: Device, items: list[HistoryItem]
) -> None:
    """What is new comes in arrival order; it is shown in time order, as the history."""
    for item in sorted(items, key=lambda item: (item.timestamp_ms, item.id)):
        _print_message(args, device, item)


def _print_unread(args: argparse.Namespace, device: Device) -> None:
    items = device.unread()
    _print_in_time_order(args, device, _news(device, items))
    if items:
        device.mark_read(items[-1])


def _cmd_inbox(args: argparse.Namespace) -> int:
    async def work(device: Device) -> None:
        await device.sync_now()
        await trio.sleep(args.wait)
        if args.all:
            _print_in_time_order(args, device, device.history())
        else:
            _print_unread(args, device)
            if _handed.get() is None:  # not a run's device, which stays online
                # A sibling whose session came up meanwhile hands its news over
                # directly while this device leaves: shown now, not at the next inbox.
                await device.set_online(False)
                _print_unread(args, device)
        for contact in device.friends.contacts():
            if contact.state == "pending":
                _print_friend_request(args, contact)

    args.timeout += args.wait  # the wait asked for, then as long as any command
    return _run(args, work)


def _how_it_syncs(direct: bool, starting: bool, siblings: int) -> str:
    if not siblings:
        return "(none yet: it has no other device to sync with)"
    if direct:
        return "directly over the overlay, falling back to the swarm"
    if starting:
        return "through the swarm while it starts (its overlay endpoint is coming up)"
    return "through the swarm only (direct sync off or too few relays)"


def _status_of(device: Device) -> dict[str, Any]:
    """What ``status`` reports, as its ``--json`` object."""
    me, status = device.whoami(), device.sync_status()
    return {
        "user": me.session_id,
        "display_name": me.display_name,
        "device": me.device_id,
        "mode": me.mode,
        "direct_sync": status.syncs_directly,
        "starting": status.starting,
        # Everything dated before the watermark is here: the last time the history
        # was known complete, i.e. the last sync that finished.
        "last_sync_ms": status.complete_until or None,
        "siblings": sorted(device.siblings()),
        "connected_siblings": sorted(status.connected_siblings),
        "unacknowledged": status.unacknowledged,
        "unsent": status.unsent,
        "last_send_error": status.last_send_error,
        "last_run_left": status.last_run_left,
        "revoked_at_ms": me.revoked_at_ms,
    }


def _unsent_line(status: dict[str, Any]) -> str:
    """What waits to be stored, and why. A running ``device run``'s status file written by
    an older version has neither key."""
    error = status.get("last_send_error")
    waiting = f"messages not yet stored in their swarms: {status.get('unsent', 0)}"
    return waiting if error is None else f"{waiting} (last try: {error})"


def _status_lines(status: dict[str, Any]) -> list[str]:
    synced_ms = status["last_sync_ms"]
    last_run = {
        None: "this was its first run",
        True: "its last run ended by leaving (owed sync copies queued, goodbye said)",
        False: "its last run ended before it finished leaving (killed, crashed or cut "
        "short): owed sync copies were queued again on this start",
    }[status["last_run_left"]]
    return [
        f"user {_named(status.get('display_name', ''), status['user'])}"
        f" (device {_short(status['device'])}, {status['mode']})",
        *_revoked_line(status["revoked_at_ms"]),
        "syncs with its siblings "
        + _how_it_syncs(status["direct_sync"], status["starting"], len(status["siblings"])),
        f"siblings: {len(status['siblings'])}, "
        f"connected directly now: {len(status['connected_siblings'])}",
        "history known complete up to (its last whole-history sync with a sibling): "
        + ("never" if synced_ms is None else _when(synced_ms)),
        f"messages a sibling has not acknowledged yet: {status['unacknowledged']}",
        _unsent_line(status),
        last_run,
    ]


#: Where ``run`` keeps what ``status`` and ``whoami`` report, for those commands to read
#: while it holds the device (they cannot open it beside the run).
RUN_STATUS_FILE = "run-status.json"
#: How often ``run`` looks at how its device syncs (a change is a line on the terminal,
#: and a new run status file).
SYNC_LOOK_S = 1.0


def _running(data: Path) -> dict[str, Any] | None:
    """What a ``run`` holding the device in ``data`` last reported (``pid``, ``whoami``,
    ``status``), or None if no process holds the device (a run that was killed leaves
    its file behind) or the holder has not reported (another command)."""
    if not device_in_use(data):
        return None
    try:
        running = json.loads((data / RUN_STATUS_FILE).read_text())
        pid = int(running["pid"])
        if pid <= 0:
            return None
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return cast(dict[str, Any], running)


def _write_running(data: Path, running: dict[str, Any]) -> None:
    """Replace the run status file whole (a reader never sees half of one)."""
    partial_file = data / f"{RUN_STATUS_FILE}.new"
    partial_file.write_text(json.dumps(running))
    partial_file.replace(data / RUN_STATUS_FILE)


async def _watch_sync(args: argparse.Namespace, device: Device) -> None:
    """Keep the run status file current, and print a line whenever how the device syncs
    changes: directly or through the swarm, and which siblings are connected (stderr,
    beside the messages on stdout; with ``--json`` a ``"kind": "sync"`` object among
    them). Sessions come and go inside the overlay, not as filed records, so this looks
    once a second rather than waiting on the device."""
    data = Path(args.data)
    written: dict[str, Any] | None = None
    shown: dict[str, Any] | None = None
    try:
        while True:
            status = _status_of(device)
            running = {"pid": os.getpid(), "whoami": _whoami_of(device.whoami()), "status": status}
            if running != written:
                _write_running(data, running)
                written = running
            keys = ("direct_sync", "starting", "siblings", "connected_siblings")
            now = {key: status[key] for key in keys}
            if now != shown:
                shown = now
                if args.json:
                    say(json.dumps({"kind": "sync"} | now))
                else:
                    how = _how_it_syncs(now["direct_sync"], now["starting"], len(now["siblings"]))
                    say(
                        f"syncs {how}; siblings connected directly: "
                        f"{len(now['connected_siblings'])} of {len(now['siblings'])}",
                        err=True,
                    )
            await trio.sleep(SYNC_LOOK_S)
    finally:
        (data / RUN_STATUS_FILE).unlink(missing_ok=True)


def _cmd_run(args: argparse.Namespace) -> int:
    """Online until Ctrl-C or SIGTERM: every message as it is filed, one line each, and
    a line whenever how the device syncs changes."""
    network = os.path.abspath(args.network)  # what commands handed to it must name

    async def print_messages(device: Device) -> None:
        backlog = device.unread()
        for item in _news(device, backlog):
            _print_message(args, device, item)
        if backlog:
            device.mark_read(backlog[-1])
        # Closed here, not left to the garbage collector after the run has ended (a
        # Ctrl-C would then print the generator's late finalisation as a traceback).
        arrivals = device.incoming(after_seq=backlog[-1].seq if backlog else None)
        async with aclosing(arrivals):
            async for item in arrivals:
                _print_message(args, device, item)
                device.mark_read(item)

    async def work(device: Device) -> None:
        me = device.whoami()
        say(
            f"online as {_named(me.display_name, me.session_id)} ({me.mode}); Ctrl-C to stop",
            err=True,
        )
        async with trio.open_nursery() as nursery:
            running = _Running(device, Path(args.data), network, trio.Lock())
            nursery.start_soon(serve_control, running.data, partial(_perform, running))
            nursery.start_soon(_watch_sync, args, device)
            nursery.start_soon(print_messages, device)
            nursery.start_soon(_watch_requests, args, device)
            nursery.start_soon(_watch_revocation, args, device)

    args.timeout = math.inf  # until stopped: the command has no --timeout
    return _run(args, work)


def _cmd_status(args: argparse.Namespace) -> int:
    running = _running(Path(args.data))
    if running is not None:  # a `run` holds the device: what it last reported
        lines = _status_lines(running["status"])
        lines.append(f"(as reported by `p2psync device run`, process {running['pid']})")
        _emit(args, running["status"], *lines)
        return 0

    async def work(device: Device) -> None:
        await device.sync_now()
        await trio.sleep(args.wait)
        status = _status_of(device)
        _emit(args, status, *_status_lines(status))

    args.timeout += args.wait  # the wait asked for, then as long as any command
    return _run(args, work)


def _cmd_devices(args: argparse.Namespace) -> int:
    async def work(device: Device) -> None:
        await device.sync_now()
        if args.revoke:
            await device.pairing.revoke(args.revoke)
            say(f"revoked {args.revoke}")
        me, connected = device.whoami(), device.sync_status().connected_siblings
        _emit(
            args,
            {"device": me.device_id, "name": me.name, "this": True},
            f"{me.device_id}  {me.name!r}  (this device)",
        )
        for sibling, name in device.siblings().items():
            _emit(
                args,
                {
                    "device": sibling,
                    "name": name,
                    "this": False,
                    "connected": sibling in connected,
                },
                f"{sibling}  {name!r}" + ("  connected" if sibling in connected else ""),
            )

    return _run(args, work)


def _cmd_migrate(args: argparse.Namespace) -> int:
    """Move a mapped account to linked mode, on its primary."""

    async def work(device: Device) -> None:
        retired = await device.migrate(args.to)
        await device.flush()
        friends = len(friends_among(device.friends.contacts()))
        told = f"{friends} friend" if friends == 1 else f"{friends} friends"
        say(f"moved user {device.session_id} to {args.to} mode; told {told}")
        for old in retired:
            say(
                f"device {old} gets the account's key when it next comes online"
                " (run any device command there before sending from it)"
            )

    return _run(args, work)


def _cmd_rooms(args: argparse.Namespace) -> int:
    """Public chats: create a room, post to it, or read it (posts show the user, so a
    person's devices read as one)."""

    async def work(device: Device) -> None:
        if args.create:
            room = await device.rooms.create(args.room)
            _emit(
                args,
                {"room": room.name, "created": room.created},
                f"created room {room.name!r}" if room.created else f"{room.name!r} exists",
            )
        if args.post is not None:
            receipt = await device.rooms.post(args.room, args.post)
            _emit(
                args,
                {"room": args.room, "id": receipt.id, "user": receipt.user},
                f"posted #{receipt.id} as {receipt.user}",
            )
        if args.create or args.post is not None:
            return
        try:
            messages = await device.rooms.messages(args.room, args.since)
        except RpcError as exc:
            if exc.code != "not_found":
                raise
            raise DeviceError(f"no room {args.room!r} on this server (--create makes it)") from None
        for message in messages:
            text = message.body.decode(errors="replace")
            _emit(
                args,
                {
                    "id": message.id,
                    "user": message.user,
                    "device": message.device,
                    "timestamp_ms": message.timestamp_ms,
                    "text": text,
                },
                f"#{message.id} {_when(message.timestamp_ms)}"
                f" {_named(_name_of(device, message.user), _short(message.user))}  {text}",
            )

    return _run(args, work, online=False)


def _cmd_contacts(args: argparse.Namespace) -> int:
    if args.text and not args.add:
        raise DeviceError("--text is the note of a friend request: it goes with --add")

    async def work(device: Device) -> None:
        await device.sync_now()
        if args.add:
            await device.friends.request(args.add, args.text)
        if args.accept:
            await device.friends.accept(args.accept)
        if args.decline:
            await device.friends.decline(args.decline)
        await device.flush()
        if not args.json:
            me = device.whoami()
            user = _named(me.display_name, me.session_id)
            say(f"user {user}; device {_short(me.device_id)}, {me.mode}")
        for contact in device.friends.contacts():
            devices = ", ".join(_short(d) for d in contact.devices)
            _emit(
                args,
                {
                    "user": contact.user,
                    "name": contact.name,
                    "state": contact.state,
                    "devices": list(contact.devices),
                },
                f"{contact.state:9} {_named(contact.name, contact.user)}  devices: {devices}",
            )

    return _run(args, work)


#: The function each ``device`` command runs, by the name the parser gives it.
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "init": _cmd_init,
    "whoami": _cmd_whoami,
    "name": _cmd_name,
    "pair": _cmd_pair,
    "accept": _cmd_accept,
    "send": _cmd_send,
    "inbox": _cmd_inbox,
    "run": _cmd_run,
    "status": _cmd_status,
    "devices": _cmd_devices,
    "migrate": _cmd_migrate,
    "rooms": _cmd_rooms,
    "contacts": _cmd_contacts,
}
