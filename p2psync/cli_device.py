"""``p2psync device ...``: a messenger device for a person at a terminal, against a running
``p2psync network up`` (its ``network.json``). Parsing and printing only; the work is
:class:`p2psync.device.Device`.

A typical session, with two terminals and one network::

    p2psync device init --data alice --mode linked
    p2psync device init --data tablet --mode linked
    p2psync device pair --data tablet --network net/network.json --primary 05…   # shows a code
    p2psync device accept --data alice --network net/network.json --code '123 456'
    p2psync device contacts --data alice --network net/network.json --add 05… --text hi
    p2psync device send --data alice --network net/network.json 05… 'hello'
    p2psync device inbox --data bob --network net/network.json --wait 5
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import trio

from .device import Device, NetworkAccess, create_device, open_device

DEFAULT_TIMEOUT_S = 600.0


def _when(timestamp_ms: int) -> str:
    return datetime.fromtimestamp(timestamp_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _short(session_id: str) -> str:
    return f"{session_id[:10]}…{session_id[-4:]}"


@asynccontextmanager
async def _device(args: argparse.Namespace, *, online: bool = True) -> AsyncIterator[Device]:
    network = NetworkAccess.from_file(args.network)
    async with open_device(Path(args.data), network, online=online) as device:
        yield device


def _run(args: argparse.Namespace, work: Callable[[], Awaitable[None]]) -> int:
    async def main() -> None:
        with trio.fail_after(args.timeout):
            await work()

    try:
        trio.run(main)
    except trio.TooSlowError:
        raise TimeoutError(f"gave up after {args.timeout:g} s (is the network running?)") from None
    return 0


def _cmd_init(args: argparse.Namespace) -> int:
    _, device_id = create_device(Path(args.data), args.mode, args.name)
    print(f"created {args.mode} device {args.name!r}: {device_id}")
    return 0


def _cmd_pair(args: argparse.Namespace) -> int:
    async def work() -> None:
        async with _device(args) as device:
            print(f"asked {args.primary[:12]}… to pair; waiting for it to answer", flush=True)
            ticket = await device.request_pairing(args.primary)
            print(f"pairing code: {ticket.code}", flush=True)
            print("check that the primary shows the same code, then accept it there:")
            print(f"  p2psync device accept --code '{ticket.code}' ...", flush=True)
            await device.wait_paired()
            print(f"paired: this device now acts for user {device.session_id}")

    return _run(args, work)


def _cmd_accept(args: argparse.Namespace) -> int:
    async def work() -> None:
        async with _device(args) as device:
            await device.sync_now()
            offers = device.pairing_requests()
            while args.code is None and not offers:
                await trio.sleep(1)
                offers = device.pairing_requests()
            if args.code is None:
                for offer in offers:
                    when = _when(offer.timestamp_ms)
                    print(f"code {offer.code}  {offer.name!r}  {offer.device}  {when}")
                print("accept one with: p2psync device accept --code CODE ...")
                return
            while True:
                wanted = args.code.replace(" ", "")
                if any(o.code.replace(" ", "") == wanted for o in device.pairing_requests()):
                    break
                await trio.sleep(1)
            paired = await device.accept_pairing(args.code)
            print(f"paired device {paired}")

    return _run(args, work)


def _cmd_send(args: argparse.Namespace) -> int:
    async def work() -> None:
        async with _device(args) as device:
            message_id = await device.send(args.user, args.text)
            # Kept from here on: a later run delivers it if this one is cut short.
            print(f"accepted {message_id.hex()}; storing it in the swarm", flush=True)
            await device.flush()
            print(f"sent {message_id.hex()}")

    return _run(args, work)


def _cmd_inbox(args: argparse.Namespace) -> int:
    async def work() -> None:
        async with _device(args) as device:
            await device.sync_now()
            await trio.sleep(args.wait)
            for item in device.history():
                arrow = "→" if item.outgoing else "←"
                print(
                    f"{_when(item.timestamp_ms)} {arrow} {_short(item.conversation)}  {item.text}"
                )
            for contact in device.contacts():
                if contact.state == "pending":
                    print(f"friend request from {contact.user}: {contact.note!r}")
            for rejection in device.rejections:
                print(f"refused a {rejection.kind}: {rejection.reason}", file=sys.stderr)

    args.timeout = max(args.timeout, args.wait + 60)
    return _run(args, work)


def _cmd_contacts(args: argparse.Namespace) -> int:
    async def work() -> None:
        async with _device(args) as device:
            await device.sync_now()
            if args.add:
                await device.request_friend(args.add, args.text)
            if args.accept:
                await device.accept_friend(args.accept)
            if args.decline:
                await device.decline_friend(args.decline)
            await device.flush()
            print(f"user {device.session_id} (device {_short(device.device_id)}, {device.mode})")
            for contact in device.contacts():
                devices = ", ".join(_short(d) for d in contact.devices)
                print(f"{contact.state:9} {contact.user}  devices: {devices}")

    return _run(args, work)


def add_device_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``device init|pair|accept|send|inbox|contacts`` to the top-level parser."""
    device = commands.add_parser("device", help="a messenger device at the terminal")
    device_commands = device.add_subparsers(dest="device_command", required=True)

    def command(
        name: str, help_text: str, run: Callable[[argparse.Namespace], int], *, network: bool = True
    ) -> argparse.ArgumentParser:
        sub = device_commands.add_parser(name, help=help_text)
        sub.add_argument("--data", required=True, metavar="DIR", help="the device's directory")
        if network:
            sub.add_argument(
                "--network", required=True, metavar="FILE", help="network.json of `network up`"
            )
            sub.add_argument(
                "--timeout",
                type=float,
                default=DEFAULT_TIMEOUT_S,
                metavar="S",
                help=f"give up after S seconds (default: {DEFAULT_TIMEOUT_S:g})",
            )
        sub.set_defaults(run=run)
        return sub

    init = command("init", "create a device (no network needed)", _cmd_init, network=False)
    init.add_argument(
        "--mode", required=True, choices=["mapped", "linked"], help="multi-device mode"
    )
    init.add_argument("--name", default="device", help="shown to the user's other devices")
    pair = command("pair", "on a new device: ask the primary to pair, show the code", _cmd_pair)
    pair.add_argument("--primary", required=True, metavar="SESSION_ID", help="the user's id")
    accept = command("accept", "on the primary: list pairing requests, or accept one", _cmd_accept)
    accept.add_argument("--code", help="the code the new device shows (waits for it)")
    send = command("send", "send a message to a friend", _cmd_send)
    send.add_argument("user", metavar="SESSION_ID", help="the friend's id")
    send.add_argument("text", help="the message")
    inbox = command("inbox", "receive, then print the history and friend requests", _cmd_inbox)
    inbox.add_argument(
        "--wait", type=float, default=5.0, metavar="S", help="receive for S seconds (default: 5)"
    )
    contacts = command(
        "contacts", "list contacts; request, accept or decline friends", _cmd_contacts
    )
    action = contacts.add_mutually_exclusive_group()
    action.add_argument("--add", metavar="SESSION_ID", help="send a friend request")
    action.add_argument("--accept", metavar="SESSION_ID", help="accept a friend request")
    action.add_argument("--decline", metavar="SESSION_ID", help="decline a friend request")
    contacts.add_argument("--text", default="", help="a note with --add")
