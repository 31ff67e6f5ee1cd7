"""System calls that Python's :mod:`os` module lacks, made through libc: the
one syscall shim of kvmstat.

``perf_event_open`` (the pure-Python counting backend), ``pidfd_open`` and
``pidfd_getfd`` (borrowing binary statistics descriptors), ``mount``
(mounting tracefs or debugfs).  Each raises :class:`OSError` with the
kernel's errno on failure (ENOSYS for a call whose number is not known on
this machine); callers turn errnos into kvmstat errors
(:func:`kvmstat.errors.error_from_errno`).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
from typing import Dict, Optional, Union

__all__ = ["syscall_number", "perf_event_open", "pidfd_open", "pidfd_getfd", "mount"]

# perf_event_open predates the unified numbering: one number per machine.
_PERF_EVENT_OPEN = {
    "x86_64": 298, "i386": 336, "i686": 336,
    "aarch64": 241, "riscv64": 241, "loongarch64": 241,
    "armv7l": 364, "armv6l": 364,
    "ppc64le": 319, "ppc64": 319, "s390x": 331,
}
# Since Linux 5.1 new system calls share one number on every architecture
# but alpha, whose table is offset by 110 (MIPS ABIs add their own bases,
# not known here).
_UNIFIED = {"pidfd_open": 434, "pidfd_getfd": 438}
_ALPHA_OFFSET = 110


def syscall_number(name: str, machine: Optional[str] = None) -> Optional[int]:
    """The number of system call *name* on *machine* (this one by default),
    None when kvmstat does not know it there."""
    machine = machine or platform.machine()
    if name == "perf_event_open":
        return _PERF_EVENT_OPEN.get(machine)
    number = _UNIFIED.get(name)
    if number is None or machine.startswith("mips"):
        return None
    return number + _ALPHA_OFFSET if machine == "alpha" else number


@functools.lru_cache(maxsize=None)
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                           ctypes.c_ulong, ctypes.c_void_p]
    libc.mount.restype = ctypes.c_int
    return libc


def _check(result: int, *where: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), *where)
    return result


_numbers: Dict[str, int] = {}


def _syscall(name: str, *args: Union[int, bytes]) -> int:
    number = _numbers.get(name)
    if number is None:
        number = syscall_number(name)
        if number is None:
            raise OSError(errno.ENOSYS, f"kvmstat does not know {name}'s system call "
                                        f"number on {platform.machine()}")
        _numbers[name] = number
    values = [ctypes.c_char_p(a) if isinstance(a, bytes) else ctypes.c_long(a) for a in args]
    return _check(_libc().syscall(ctypes.c_long(number), *values))


def perf_event_open(attr: bytes, pid: int, cpu: int, group_fd: int, flags: int) -> int:
    """perf_event_open(2) with the packed ``struct perf_event_attr`` *attr*: a new fd."""
    return _syscall("perf_event_open", attr, pid, cpu, group_fd, flags)


def pidfd_open(pid: int) -> int:
    """A pidfd (close-on-exec) referring to process *pid*."""
    if hasattr(os, "pidfd_open"):
        return os.pidfd_open(pid)
    return _syscall("pidfd_open", pid, 0)


def pidfd_getfd(pidfd: int, target_fd: int) -> int:
    """Duplicate file descriptor *target_fd* of the process behind *pidfd*
    (close-on-exec, sharing the target's open file)."""
    return _syscall("pidfd_getfd", pidfd, target_fd, 0)


def mount(source: str, target: str, fstype: str) -> None:
    """mount(2) *source* of type *fstype* at *target*, no flags, no data."""
    _check(_libc().mount(source.encode(), target.encode(), fstype.encode(), 0, None), target)
