"""Run a Python module that can neither make nor join a namespace:
``python -m p2psync.confine MODULE [ARG...]``, as ``python -m MODULE [ARG...]``.

A service of a network of hosts runs without capabilities, as a uid of its own
(:mod:`.service_users`). Where the kernel lets anyone make a user namespace (most
distributions do), such a process could still make one and hold every capability inside
it: over nothing of the system's, but with far more of the kernel in its reach (mounts,
netfilter, new network stacks), which is where the kernel's own holes have been. So a
service starts through this module, which loads a seccomp filter that answers ``EPERM``
to ``unshare``, to ``setns`` and to a ``clone`` asking for a new namespace, and
``ENOSYS`` to ``clone3`` (whose flags a filter cannot read; the C library then falls back
to ``clone``, as it does under Docker's and systemd's filters), and then becomes the
module, in this process (a service's uid may not be able to start its Python again:
``setpriv`` can, while it still holds root's rights). The filter is loaded before the
service reads anything from outside, cannot be taken off, and holds for every process
the service starts. It is built by libseccomp (through ``pyseccomp``), not written here
by hand. It reads ``clone``'s flags as its first argument, where every architecture but
s390 has them, and refuses to run on s390 rather than let a ``clone`` there pass. It
also caps the processes the service's uid may run at once (:data:`MAX_PROCESSES`).
"""

from __future__ import annotations

import errno
import os
import resource
import runpy
import sys
from collections.abc import Sequence

#: linux/sched.h: the flags of ``clone`` that make a namespace.
CLONE_NEW_FLAGS = {
    "mount": 0x00020000,
    "cgroup": 0x02000000,
    "uts": 0x04000000,
    "ipc": 0x08000000,
    "user": 0x10000000,
    "pid": 0x20000000,
    "net": 0x40000000,
}


#: Processes and threads a service's uid may have at once (``RLIMIT_NPROC``): a service
#: runs a few dozen threads; one broken into cannot fork the machine to a halt.
MAX_PROCESSES = 512


def forbid_namespaces() -> None:
    """Load the filter into this process (and so into all it starts from now on). It
    needs ``no_new_privs`` (``setpriv --no-new-privs``) or CAP_SYS_ADMIN."""
    if os.uname().machine.startswith("s390"):
        raise OSError("on s390 clone's flags are its second argument: no filter for that here")
    try:
        import pyseccomp as seccomp
    except RuntimeError as error:  # what pyseccomp raises without the C library
        raise OSError(f"libseccomp (libseccomp.so.2) is not installed: {error}") from None

    refused = seccomp.ERRNO(errno.EPERM)
    rules = seccomp.SyscallFilter(seccomp.ALLOW)
    rules.add_rule(refused, "unshare")
    rules.add_rule(refused, "setns")
    for flag in CLONE_NEW_FLAGS.values():
        rules.add_rule(refused, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    try:
        rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    except OSError as error:
        raise OSError(f"libseccomp knows no clone3 (it needs 2.5 or later): {error}") from None
    rules.load()


def main(arguments: Sequence[str]) -> None:
    if not arguments:
        sys.exit("usage: python -m p2psync.confine MODULE [ARG...]")
    try:
        forbid_namespaces()
        resource.setrlimit(resource.RLIMIT_NPROC, (MAX_PROCESSES, MAX_PROCESSES))
    except (ImportError, OSError, ValueError) as error:
        sys.exit(f"cannot confine a service here: {error}")
    sys.argv = list(arguments)
    runpy.run_module(arguments[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
