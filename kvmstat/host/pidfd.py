"""Process file descriptors: pidfd_open and pidfd_getfd.

``pidfd_getfd`` (Linux 5.6) duplicates a file descriptor of another
process into this one, the way the binary-stats provider borrows the
statistics descriptors that only a VM's own process can create.  It needs
ptrace-attach rights over the target (root, or CAP_SYS_PTRACE, and Yama's
``kernel.yama.ptrace_scope`` below 3).  Python has ``os.pidfd_open`` but
no ``pidfd_getfd``, so that one goes through libc's ``syscall``.

Both functions raise :class:`OSError` with the kernel's errno; callers turn
them into kvmstat errors.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
import select
from typing import Iterable, List

__all__ = ["pidfd_open", "pidfd_getfd", "exited"]

# Syscall numbers (pidfd_open, pidfd_getfd).  Since Linux 5.1 new system
# calls share one number on every architecture but alpha, whose table is
# offset by 110; MIPS ABIs add their own bases.
_GENERIC = (434, 438)
_BY_MACHINE = {"alpha": (544, 548)}


@functools.lru_cache(maxsize=None)
def _syscall_numbers() -> tuple:
    machine = platform.machine()
    if machine.startswith("mips"):
        raise OSError(errno.ENOSYS, "pidfd syscalls are not wired for MIPS in kvmstat")
    return _BY_MACHINE.get(machine, _GENERIC)


@functools.lru_cache(maxsize=None)
def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _syscall(number: int, *args: int) -> int:
    result = _libc().syscall(ctypes.c_long(number), *(ctypes.c_long(a) for a in args))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def pidfd_open(pid: int) -> int:
    """Return a pidfd (close-on-exec) referring to process *pid*."""
    if hasattr(os, "pidfd_open"):
        return os.pidfd_open(pid)
    return _syscall(_syscall_numbers()[0], pid, 0)


def pidfd_getfd(pidfd: int, target_fd: int) -> int:
    """Duplicate file descriptor *target_fd* of the process behind *pidfd*.

    The new descriptor is close-on-exec and shares the open file with the
    target's (same file position, same kernel object).
    """
    return _syscall(_syscall_numbers()[1], pidfd, target_fd, 0)


def exited(pidfds: Iterable[int]) -> List[int]:
    """The pidfds among *pidfds* whose process has exited (one poll call).

    A pidfd becomes readable when its process has exited, zombie or not,
    which a check of ``/proc/<pid>`` would miss (and a reused pid would fool).
    """
    fds = list(pidfds)
    if not fds:
        return []
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return [fd for fd, _ in poller.poll(0)]
