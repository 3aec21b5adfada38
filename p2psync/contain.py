"""Run a command as the first process of a PID namespace that ends with its launcher:
``python -m p2psync.contain COMMAND [ARG...]``, started by the launcher with a pipe as
its standard input.

A service of a network of hosts runs as a uid of its own, and the launcher ends every
process of that uid when it stops the service (:mod:`.service_users`). A launcher killed
outright (SIGKILL, the machine's out-of-memory killer) ends nothing: an honest service
exits when its standard input closes, but one somebody broke into, and whatever it
started in a session of its own, would live on until the next run on its folder. So a
service of hosts starts through this module, which runs as root and:

* makes a PID namespace whose first process is the command: when that process ends,
  the kernel kills every process in the namespace, and nothing in it can leave it
  (:mod:`.confine` forbids ``setns`` and ``unshare``);
* gives the command a parent-death signal (SIGKILL), so it ends when this process ends,
  however that is; ``setpriv --pdeathsig keep`` keeps it across the change of uid, and
  :mod:`.confine` forbids the service to clear it;
* ends the command (SIGKILL) once its own standard input closes, which is how it hears
  that the launcher is gone (the launcher holds the pipe's other end);
* passes SIGTERM and SIGINT on to the command, and exits as the command did, so to the
  launcher it is the service.

The parent-death signal is tied to the thread that started the child, which is why this
small process stands between: the launcher starts its children from worker threads
(Trio's), which end when idle.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
from collections.abc import Sequence

#: linux/sched.h and linux/prctl.h.
CLONE_NEWPID = 0x20000000
PR_SET_PDEATHSIG = 1
#: What is passed on to the service; anything else ends this process as usual.
PASSED_ON = (signal.SIGTERM, signal.SIGINT)
#: What a command that cannot be started here exits with (as a shell's "cannot execute").
CANNOT_START = 126


def contained(command: Sequence[str]) -> list[str]:
    """``command`` started through this module by the launcher's Python."""
    return [sys.executable, "-P", "-m", "p2psync.contain", *command]


def main(command: Sequence[str]) -> None:
    if not command:
        sys.exit("usage: python -m p2psync.contain COMMAND [ARG...]")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWPID) != 0:
        sys.exit(f"cannot make a PID namespace: {os.strerror(ctypes.get_errno())}")
    parent = os.pidfd_open(os.getpid())  # the child sees no pid of ours: its own namespace
    child = os.fork()
    if child == 0:
        _become(libc, parent, command)
    os.close(parent)
    for passed in PASSED_ON:
        signal.signal(passed, lambda signum, _frame: os.kill(child, signum))
    status = _wait(child)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:  # ended by a signal: so is this process, for the launcher to read
        signum = -code
        if signum != signal.SIGKILL:
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        code = 128 + signum  # a signal whose default is to be ignored
    sys.exit(code)


def _become(libc: ctypes.CDLL, parent: int, command: Sequence[str]) -> None:
    """In the child, the namespace's first process: end with the process ``parent``
    (a pidfd) is, then be ``command``."""
    try:
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "cannot set a parent-death signal")
        ended = select.poll()
        ended.register(parent, select.POLLIN)
        if ended.poll(0):  # the parent ended before the signal was set
            os._exit(CANNOT_START)
        os.close(parent)
        os.execvp(command[0], list(command))
    except OSError as error:
        os.write(2, f"cannot start {command[0]}: {error}\n".encode())
    os._exit(CANNOT_START)


def _wait(child: int) -> int:
    """Wait until ``child`` exits, ending it first if standard input closes; its wait
    status."""
    watch = select.poll()
    watch.register(sys.stdin.fileno(), select.POLLHUP)
    exited = os.pidfd_open(child)
    watch.register(exited, select.POLLIN)
    while True:
        ready = dict(watch.poll())
        if exited in ready:
            break
        if ready:  # the launcher is gone
            os.kill(child, signal.SIGKILL)
            watch.unregister(sys.stdin.fileno())
    return os.waitpid(child, 0)[1]


if __name__ == "__main__":
    main(sys.argv[1:])
