"""Run a command in a PID namespace that ends with its launcher:
``python -m p2psync.contain COMMAND [ARG...]``, started by the launcher (as root) with a
pipe as its standard input.

A service of a network of hosts runs as a uid of its own, and the launcher ends every
process of that uid when it stops the service (:mod:`.service_users`). A launcher killed
outright (SIGKILL, the machine's out-of-memory killer) ends nothing: an honest service
exits when its standard input closes, but one somebody broke into, and whatever it
started in a session of its own, would live on until the next run on its folder.

So a service of hosts starts through this module. It makes a PID namespace whose first
process, root's, is a small init of this module's, and the init starts the command. When
the init ends, the kernel kills every process in the namespace, and nothing in it can
leave (:mod:`.confine` forbids ``setns`` and ``unshare``). The init runs as root, so the
service, a uid of its own without capabilities, can neither signal nor trace it, and it
ends:

* when this process ends, however that is (its parent-death signal, SIGKILL);
* when this process's standard input closes, which is how it hears that the launcher is
  gone (the launcher holds the pipe's other end): this process kills it then;
* when the command exits, after reaping whatever else ended in the namespace.

SIGTERM and SIGINT are passed on to the command (a namespace's first process ignores a
signal it has no handler for: a service must not be that process), and this process exits
as the command did (128 + N if signal N ended it), so to the launcher it is the service.

The parent-death signal is tied to the thread that started the child, which is why this
small process stands between: the launcher starts its children from worker threads
(Trio's), which end when idle.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import NoReturn

#: linux/sched.h and linux/prctl.h.
CLONE_NEWPID = 0x20000000
PR_SET_PDEATHSIG = 1
#: What is passed on to the command.
PASSED_ON = (signal.SIGTERM, signal.SIGINT)
#: What a command that cannot be started here exits with (as a shell's "cannot execute").
CANNOT_START = 126
STDIN = 0


def contained(command: Sequence[str]) -> list[str]:
    """``command`` started through this module by the launcher's Python."""
    return [sys.executable, "-P", "-m", "p2psync.contain", *command]


def _forward_to(pidfd: int) -> None:
    """From now on pass :data:`PASSED_ON` signals to the process ``pidfd`` is (by pidfd,
    so never to another that took its pid), those held since :func:`_hold` too."""

    def forward(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):  # it ended already
            signal.pidfd_send_signal(pidfd, signum)

    for signum in PASSED_ON:
        signal.signal(signum, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, PASSED_ON)


def _hold() -> None:
    """Hold :data:`PASSED_ON` signals until :func:`_forward_to` (a fork copies the
    mask): none is lost between a fork and the handler the child installs, not even
    by the init, which, a namespace's first process, would drop one it has no handler
    for."""
    signal.pthread_sigmask(signal.SIG_BLOCK, PASSED_ON)


def main(command: Sequence[str]) -> None:
    if not command:
        sys.exit("usage: python -m p2psync.contain COMMAND [ARG...]")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWPID) != 0:
        sys.exit(f"cannot make a PID namespace: {os.strerror(ctypes.get_errno())}")
    _hold()
    parent = os.pidfd_open(os.getpid())  # the init sees no pid of ours: its own namespace
    init = os.fork()
    if init == 0:
        _init(libc, parent, command)
    os.close(parent)
    ended = os.pidfd_open(init)
    _forward_to(ended)
    sys.exit(_exit_code(_wait(init, ended)))


def _init(libc: ctypes.CDLL, parent: int, command: Sequence[str]) -> NoReturn:
    """The namespace's first process: end with the process ``parent`` (a pidfd) is,
    start ``command``, reap, and exit as ``command`` did."""
    code = CANNOT_START
    try:
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "cannot set a parent-death signal")
        gone = select.poll()
        gone.register(parent, select.POLLIN)
        if gone.poll(0):  # the parent ended before the signal was set
            os._exit(CANNOT_START)
        os.close(parent)
        service = os.fork()
        if service == 0:
            become(command)
        _forward_to(os.pidfd_open(service))
        while True:  # orphans of the namespace are this process's to reap
            reaped, status = os.waitpid(-1, 0)
            if reaped == service:
                code = _exit_code(status)
                break
    except BaseException as error:
        os.write(2, f"p2psync.contain: {error!r}\n".encode())
    os._exit(code)


def become(command: Sequence[str]) -> NoReturn:
    """In the service's child of the init, with :data:`PASSED_ON` held: be ``command``.
    A signal held since the fork meets the default action, as it would in the service:
    the handlers Python left in this process (SIGINT's raises KeyboardInterrupt) would
    end it otherwise as a failed start."""
    # Exec keeps the mask and what is ignored: Python ignores these two for itself.
    for signum in (*PASSED_ON, signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, PASSED_ON)
    try:
        os.execvp(command[0], list(command))
    except OSError as error:
        os.write(2, f"cannot start {command[0]}: {error}\n".encode())
    os._exit(CANNOT_START)


def _wait(child: int, ended: int) -> int:
    """Wait until ``child`` (``ended``: its pidfd) exits, killing it first if standard
    input closes; its wait status."""
    watch = select.poll()
    watch.register(STDIN, select.POLLHUP)
    watch.register(ended, select.POLLIN)
    while True:
        ready = dict(watch.poll())
        if ended in ready:
            break
        if ready:  # the launcher is gone (or there never was a pipe)
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(ended, signal.SIGKILL)
            watch.unregister(STDIN)
    return os.waitpid(child, 0)[1]


def _exit_code(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128 + N for signal N."""
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    main(sys.argv[1:])
