"""Device commands from other terminals while ``p2psync device run`` holds the device.

One process opens a device folder at a time, so without this a ``send`` or an ``accept``
typed beside a running ``run`` could only fail with "in use". Instead ``run`` listens on
a Unix socket in the device's folder (:data:`CONTROL_SOCKET`, mode 0600, and only
connections from the same user are answered), and such a command hands its command line
to it: the running device does the work, and the command prints what it would have
printed and exits with the same status.

The exchange is JSON lines: the command sends ``{"argv": [...], "network": path}`` (the
absolute path of the network file it names, which must be the run's); the device
answers ``{"out": line}`` and ``{"err": line}`` as the command runs, then
``{"exit": status}``. Closing the connection (Ctrl-C on the command) cancels the work.

Output goes through :func:`say`: to the terminal normally, to the connection while the
running device does a handed command's work (a context variable, so the run's own
lines are not caught up in it).
"""

from __future__ import annotations

import contextlib
import json
import logging
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

logger = logging.getLogger(__name__)

#: The socket a running device listens on, in its folder.
CONTROL_SOCKET = "control.sock"
#: The longest request line (a command line) and answer line (one line of output).
MAX_REQUEST_BYTES = 64 * 1024
MAX_ANSWER_BYTES = 4 * 1024 * 1024
#: The most commands a running device does at once for other terminals, and how soon
#: one must say what it asks.
MAX_CONNECTIONS = 16
REQUEST_WITHIN_S = 10.0
#: Lines of output a command's terminal may leave unread before it is let go.
MAX_PENDING_LINES = 10_000

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


#: What a running device does for one handed command: its command line and the network
#: file it named (absolute) in, its exit status out, the work's output going through
#: :func:`say`.
Perform = Callable[[list[str], str | None], Awaitable[int]]


def _listening_socket(path: Path) -> socket.socket:
    """A Unix socket listening at ``path`` with mode 0600 from its first moment: bound
    under a umask that allows nothing else, synchronously, so no other task or thread
    of the process makes files while the umask is narrowed."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o177)
    try:
        listener.bind(str(path))
    except OSError:
        listener.close()
        raise
    finally:
        os.umask(umask)
    listener.listen(MAX_CONNECTIONS)
    return listener


async def serve_control(
    folder: Path, perform: Perform, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Until cancelled, answer commands from other terminals on ``folder``'s socket (see
    the module docstring). The socket goes with the run; one a killed run left behind is
    replaced (the caller holds the device, so no other run is listening on it). A folder
    whose path is too long for a Unix socket gets a line on stderr, and the run goes on
    without it. No connection, whatever it sends or however it ends, stops the run."""
    path = folder / CONTROL_SOCKET
    path.unlink(missing_ok=True)
    try:
        listener = trio.socket.from_stdlib_socket(_listening_socket(path))
    except OSError as exc:
        say(f"commands from other terminals are unavailable: {path}: {exc}", err=True)
        task_status.started()
        return
    try:
        slots = trio.CapacityLimiter(MAX_CONNECTIONS)

        async def answer(stream: trio.SocketStream) -> None:
            async with stream:
                with trio.move_on_after(REQUEST_WITHIN_S) as waiting:
                    await slots.acquire()
                if waiting.cancelled_caught:  # every slot busy for as long as a request may take
                    busy = f"p2psync: error: the running device is doing {MAX_CONNECTIONS} commands"
                    with contextlib.suppress(trio.BrokenResourceError):
                        await stream.send_all(_frame({"err": busy}) + _frame({"exit": 1}))
                    return
                try:
                    await _answer(stream, perform)
                except Exception:  # one connection never ends the run
                    logger.exception("a command from another terminal failed")
                finally:
                    slots.release()

        task_status.started()
        await trio.serve_listeners(answer, [trio.SocketListener(listener)])
    finally:
        path.unlink(missing_ok=True)


async def _request(stream: trio.SocketStream) -> tuple[list[str], str | None] | None:
    """The command line and network a connection asks for, or None if it does not ask
    for one within :data:`REQUEST_WITHIN_S` in the shape :func:`forward` sends."""
    with trio.move_on_after(REQUEST_WITHIN_S):
        async with aclosing(_lines(stream, MAX_REQUEST_BYTES)) as lines:
            try:
                request = json.loads(await anext(lines))
            except Exception:  # an end, a line too long, not JSON (even nested too deep)
                return None
        if not isinstance(request, dict):
            return None
        argv, network = request.get("argv"), request.get("network")
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            return None
        if network is not None and not isinstance(network, str):
            return None
        return argv, network
    return None


async def _answer(stream: trio.SocketStream, perform: Perform) -> None:
    if not _same_user(stream.socket):
        return
    asked = await _request(stream)
    if asked is None:
        return  # not a command from this program: nothing to say to it
    send, receive = trio.open_memory_channel[bytes](MAX_PENDING_LINES)

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

            def sink(line: str, err: bool) -> None:
                try:
                    send.send_nowait(_frame({"err" if err else "out": line}))
                except trio.WouldBlock:  # a terminal that does not read: let it go
                    nursery.cancel_scope.cancel()
                except trio.ClosedResourceError:  # said after the command was done
                    print(line, file=sys.stderr if err else sys.stdout, flush=True)

            nursery.start_soon(until_hung_up, nursery.cancel_scope)
            async with trio.open_nursery() as relaying:
                relaying.start_soon(relay_output)
                with send:  # closed once the work is done: the relay then ends
                    token = _sink.set(sink)
                    try:
                        status = await perform(*asked)
                    finally:
                        _sink.reset(token)
            await stream.send_all(_frame({"exit": status}))  # after every line of output
            nursery.cancel_scope.cancel()
    except* (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the terminal went away: nothing more to tell it


async def forward(folder: Path, argv: list[str], network: str | None) -> int | None:
    """Have the device running in ``folder`` do ``argv`` (which names ``network``, an
    absolute path, or None), printing what it says; its exit status, or None if no run
    answers there (none listening: the caller goes on as if this were never tried)."""
    try:
        stream = await trio.open_unix_socket(str(folder / CONTROL_SOCKET))
    except OSError:
        return None
    async with stream, aclosing(_lines(stream, MAX_ANSWER_BYTES)) as lines:
        if not _same_user(stream.socket):
            raise ControlError(f"{folder / CONTROL_SOCKET} is served by another user")
        await stream.send_all(_frame({"argv": argv, "network": network}))
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
