"""Device commands from other terminals while ``p2psync device run`` holds the device.

One process opens a device folder at a time, so without this a ``send`` or an ``accept``
typed beside a running ``run`` could only fail with "in use". Instead ``run`` listens on
a Unix socket in the device's folder (:data:`CONTROL_SOCKET`, mode 0600, and only
connections from the same user are answered), and such a command hands its command line
to it: the running device does the work, and the command prints what it would have
printed and exits with the same status.

The exchange is JSON lines: the command sends ``{"argv": [...]}``; the device answers
``{"out": line}`` and ``{"err": line}`` as the command runs, then ``{"exit": status}``.
Closing the connection (Ctrl-C on the command) cancels the work.

Output goes through :func:`say`: to the terminal normally, to the connection while the
running device does a forwarded command's work (a context variable, so the run's own
lines are not caught up in it).
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import trio

from .errors import P2PSyncError

#: The socket a running device listens on, in its folder.
CONTROL_SOCKET = "control.sock"
#: The longest request line (a command line) and answer line (one line of output).
MAX_REQUEST_BYTES = 64 * 1024
MAX_ANSWER_BYTES = 4 * 1024 * 1024
#: The most commands a running device does at once for other terminals, and how soon
#: one must say what it asks.
MAX_CONNECTIONS = 16
REQUEST_WITHIN_S = 10.0

#: Where :func:`say` writes: None for this process's stdout and stderr, else a function of
#: (line, to stderr) that sends it to the terminal that asked.
_sink: ContextVar[Callable[[str, bool], None] | None] = ContextVar("sink", default=None)


def say(line: str, *, err: bool = False) -> None:
    """Print ``line`` (to stderr with ``err``) to the terminal of the command being done."""
    sink = _sink.get()
    if sink is None:
        print(line, file=sys.stderr if err else sys.stdout, flush=True)
    else:
        sink(line, err)


class ControlError(P2PSyncError):
    """A request or an answer that breaks the exchange."""


async def _lines(stream: trio.abc.ReceiveStream, limit: int) -> AsyncGenerator[bytes, None]:
    """Each line of ``stream`` (without its newline) until it ends; ControlError past
    ``limit`` bytes without one."""
    buffer = bytearray()
    while True:
        newline = buffer.find(b"\n")
        if newline >= 0:
            line = bytes(buffer[:newline])
            del buffer[: newline + 1]
            yield line
            continue
        if len(buffer) > limit:
            raise ControlError(f"a line longer than {limit} bytes")
        data = await stream.receive_some(65536)
        if not data:
            return
        buffer += data


def _frame(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def _same_user(sock: trio.socket.SocketType) -> bool:
    """Whether the process at the other end runs as this one's user (``SO_PEERCRED``)."""
    credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", credentials)
    return bool(uid == os.getuid())


#: What a running device does for one forwarded command line: the work, with output
#: going through :func:`say`; its exit status.
Perform = Callable[[list[str]], Awaitable[int]]


async def serve_control(
    folder: Path, perform: Perform, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Until cancelled, answer commands from other terminals on ``folder``'s socket (see
    the module docstring). The socket goes with the run; one a killed run left behind is
    replaced (the caller holds the device, so no other run is listening on it). A folder
    whose path is too long for a Unix socket gets a line on stderr, and the run goes on
    without it."""
    path = folder / CONTROL_SOCKET
    path.unlink(missing_ok=True)
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o177)
    try:
        await listener.bind(str(path))
    except OSError as exc:
        listener.close()
        say(f"commands from other terminals are unavailable: {path}: {exc}", err=True)
        task_status.started()
        return
    finally:
        os.umask(umask)
    try:
        listener.listen(MAX_CONNECTIONS)
        limit = trio.CapacityLimiter(MAX_CONNECTIONS)

        async def answer(stream: trio.SocketStream) -> None:
            async with limit, stream:
                await _answer(stream, perform)

        task_status.started()
        await trio.serve_listeners(answer, [trio.SocketListener(listener)])
    finally:
        path.unlink(missing_ok=True)


async def _answer(stream: trio.SocketStream, perform: Perform) -> None:
    if not _same_user(stream.socket):
        return
    lines = _lines(stream, MAX_REQUEST_BYTES)
    try:
        with trio.fail_after(REQUEST_WITHIN_S):
            request = await anext(lines)
        argv = json.loads(request)["argv"]
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise ControlError("argv is not a list of strings")
    except (StopAsyncIteration, ControlError, ValueError, KeyError, TypeError, trio.TooSlowError):
        return  # not a command from this program: nothing to say to it
    finally:
        await lines.aclose()
    send, receive = trio.open_memory_channel[bytes](math.inf)

    def sink(line: str, err: bool) -> None:
        send.send_nowait(_frame({"err" if err else "out": line}))

    async def relay_output() -> None:
        async with receive:
            async for frame in receive:
                await stream.send_all(frame)

    async def until_hung_up(scope: trio.CancelScope) -> None:
        while await stream.receive_some(1024):
            pass
        scope.cancel()  # the terminal went away (a Ctrl-C): stop its work

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(until_hung_up, nursery.cancel_scope)
            async with trio.open_nursery() as relaying:
                relaying.start_soon(relay_output)
                with send:  # closed once the work is done: the relay then ends
                    token = _sink.set(sink)
                    try:
                        status = await perform(argv)
                    finally:
                        _sink.reset(token)
            await stream.send_all(_frame({"exit": status}))  # after every line of output
            nursery.cancel_scope.cancel()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the terminal went away: nothing more to tell it


async def forward(folder: Path, argv: list[str]) -> int | None:
    """Have the device running in ``folder`` do ``argv``, printing what it says; its exit
    status, or None if no run answers there (none listening: the caller goes on as if
    this were never tried)."""
    try:
        stream = await trio.open_unix_socket(str(folder / CONTROL_SOCKET))
    except OSError:
        return None
    async with stream, aclosing(_lines(stream, MAX_ANSWER_BYTES)) as lines:
        await stream.send_all(_frame({"argv": argv}))
        say(f"(done by the `p2psync device run` holding {folder})", err=True)
        async for line in lines:
            try:
                answer = json.loads(line)
                if "exit" in answer:
                    return int(answer["exit"])
                say(
                    str(answer["out"]) if "out" in answer else str(answer["err"]),
                    err="out" not in answer,
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise ControlError(f"the running device answered {line[:80]!r}") from exc
    raise ControlError("the running device stopped before the command was done")
