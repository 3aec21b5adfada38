"""The ``p2psync device ...`` commands as argparse reads them. Light on purpose: every
call of the command line builds this parser, ``--help`` and usage errors included, so it
imports the standard library and constants alone, and a command's function (in
:mod:`.cli_device`, with the device and Trio) is imported once that command runs."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from .arguments import MAX_SECONDS, number_up_to, session_id, whole_number
from .errors import DecodeError
from .wire import INT64_MAX

DEFAULT_TIMEOUT_S = 600.0
#: The open group numbers posts from 1; a cursor is an unsigned 63-bit id on the wire.
MAX_POST_ID = INT64_MAX


def _deferred(name: str) -> Callable[[argparse.Namespace], int]:
    """The ``device`` command ``name``'s function, imported when it runs."""

    def run(args: argparse.Namespace) -> int:
        from .cli_device import COMMANDS

        return COMMANDS[name](args)

    return run


def _device_name(text: str) -> str:
    """A device's name, shown to the user's other devices: held to the display-name rules
    (a longer or stranger one would be refused by the primary it asks to pair)."""
    from .device.content import check_display_name

    try:
        return check_display_name(text)
    except DecodeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _primary(text: str) -> str:
    """A primary to pair with: its pairing address or the user's id, checked at once
    (``-``: read from standard input as the command runs)."""
    from .device.pairing_address import read_primary

    if text == "-":
        return text
    try:
        read_primary(text)
    except DecodeError as exc:
        raise argparse.ArgumentTypeError(
            f"neither a pairing address nor a session id: {text[:80]!r} ({exc})"
        ) from None
    return text


def _directory(text: str) -> str:
    """A ``--data`` directory: not empty (that would be the current directory, silently)
    and not an existing file."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path; name the device's directory")
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} exists and is not a directory")
    return text


def add_device_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``device init|whoami|name|pair|accept|send|inbox|run|status|devices|migrate|rooms|
    contacts``."""
    device = commands.add_parser("device", help="a messenger device at the terminal")
    device.set_defaults(loads=("p2psync.cli_device",))
    device_commands = device.add_subparsers(dest="device_command", required=True)

    def command(
        name: str,
        help_text: str,
        run: Callable[[argparse.Namespace], int],
        *,
        network: bool = True,
        json_output: bool = False,
        wait: float | None = None,
        wait_help: str = "stay online S seconds first",
        timeout: bool = True,
    ) -> argparse.ArgumentParser:
        sub = device_commands.add_parser(name, help=help_text)
        sub.add_argument(
            "--data", required=True, type=_directory, metavar="DIR", help="the device's directory"
        )
        if network:
            sub.add_argument(
                "--network", required=True, metavar="FILE", help="network.json of `network up`"
            )
        if network and timeout:
            sub.add_argument(
                "--timeout",
                type=number_up_to(MAX_SECONDS, positive=True),
                default=DEFAULT_TIMEOUT_S,
                metavar="S",
                help=f"give up after S seconds (default: {DEFAULT_TIMEOUT_S:g})",
            )
        if json_output:
            sub.add_argument("--json", action="store_true", help="one JSON object per line")
        if wait is not None:
            sub.add_argument(
                "--wait",
                type=number_up_to(MAX_SECONDS),
                default=wait,
                metavar="S",
                help=f"{wait_help} (default: {wait:g})",
            )
        sub.set_defaults(run=run)
        return sub

    init = command("init", "create a device (no network needed)", _deferred("init"), network=False)
    init.add_argument(
        "--mode", required=True, choices=["mapped", "linked"], help="multi-device mode"
    )
    init.add_argument(
        "--name",
        default="device",
        type=_device_name,
        help="shown to the user's other devices (default: device)",
    )
    whoami = command(
        "whoami",
        "this device's user id, device id, mode and name",
        _deferred("whoami"),
        network=False,
        json_output=True,
    )
    whoami.add_argument(
        "--pairing-address",
        action="store_true",
        help="print only the address a new device of the user's pairs by (`pair --primary`);"
        " whoever holds it may fill the user's mailbox for four weeks, as a friend may",
    )
    name = command("name", "set the name friends see beside this user's id", _deferred("name"))
    name.add_argument("name", metavar="NAME", help="at most 64 characters, no control characters")
    pair = command(
        "pair", "on a new device: ask the primary to pair, show the code", _deferred("pair")
    )
    pair.add_argument(
        "--primary",
        required=True,
        type=_primary,
        metavar="ADDRESS",
        help="the pairing address `device whoami --pairing-address` prints on the primary,"
        " or - to read it from standard input (kept out of the process list); or the"
        " user's id, which a stranger flooding the user's mailbox can hold up",
    )
    accept = command(
        "accept",
        "on the primary: list pairing requests, or accept or decline one",
        _deferred("accept"),
        json_output=True,
        wait=0.0,
        wait_help="wait up to S seconds for a request (or the one with --code) to arrive",
    )
    decision = accept.add_mutually_exclusive_group()
    decision.add_argument("--code", metavar="CODE", help="accept the request showing this code")
    decision.add_argument("--decline", metavar="CODE", help="decline the request with this code")
    decision.add_argument(
        "--answer",
        metavar="DEVICE",
        help="answer the new device whose id starts with this (as its `pair` shows it),"
        " however many other requests came, then list the requests",
    )
    send = command("send", "send a message to a friend", _deferred("send"))
    send.add_argument("user", type=session_id, metavar="SESSION_ID", help="the friend's id")
    send.add_argument("text", metavar="TEXT", help="the message")
    inbox = command(
        "inbox",
        "receive, then print what is new since the last read, and friend requests",
        _deferred("inbox"),
        json_output=True,
        wait=0.0,
    )
    inbox.add_argument("--all", action="store_true", help="the whole history, not just what is new")
    command(
        "run",
        "stay online, print messages as they arrive, sync with siblings; Ctrl-C stops",
        _deferred("run"),
        json_output=True,
        timeout=False,
    )
    command(
        "status",
        "how this device syncs: siblings, direct sessions, unacknowledged messages",
        _deferred("status"),
        json_output=True,
        wait=3.0,
    )
    devices = command("devices", "this user's devices", _deferred("devices"), json_output=True)
    devices.add_argument(
        "--revoke", type=session_id, metavar="DEVICE_ID", help="on a mapped primary: unpair one"
    )
    migrate = command(
        "migrate",
        "on a mapped primary: move the account to linked mode, keeping history and contacts",
        _deferred("migrate"),
    )
    migrate.add_argument("--to", required=True, choices=["linked"], help="the mode to move to")
    rooms = command(
        "rooms",
        "public chats: read a room, post to it, or create it",
        _deferred("rooms"),
        json_output=True,
    )
    rooms.add_argument("room", metavar="ROOM", help="the room's name")
    room_action = rooms.add_mutually_exclusive_group()
    room_action.add_argument("--create", action="store_true", help="create the room")
    room_action.add_argument("--post", metavar="TEXT", help="post TEXT to the room")
    rooms.add_argument(
        "--since",
        type=whole_number(0, MAX_POST_ID),
        default=0,
        metavar="ID",
        help="read posts after post ID (default: 0)",
    )
    contacts = command(
        "contacts",
        "list contacts; request, accept or decline friends",
        _deferred("contacts"),
        json_output=True,
    )
    action = contacts.add_mutually_exclusive_group()
    action.add_argument(
        "--add", type=session_id, metavar="SESSION_ID", help="send a friend request"
    )
    action.add_argument(
        "--accept", type=session_id, metavar="SESSION_ID", help="accept a friend request"
    )
    action.add_argument(
        "--decline", type=session_id, metavar="SESSION_ID", help="decline a friend request"
    )
    contacts.add_argument("--text", default="", metavar="TEXT", help="a note with --add")
