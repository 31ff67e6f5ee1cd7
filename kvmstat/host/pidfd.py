"""Process file descriptors: pidfd_open, pidfd_getfd, and which processes exited.

``pidfd_getfd`` (Linux 5.6) duplicates a file descriptor of another
process into this one, the way the binary-stats provider borrows the
statistics descriptors that only a VM's own process can create.  It needs
ptrace-attach rights over the target (root, or CAP_SYS_PTRACE, and Yama's
``kernel.yama.ptrace_scope`` below 3).  The system calls are made by
:mod:`kvmstat.host.syscalls`.

Both functions raise :class:`OSError` with the kernel's errno; callers turn
them into kvmstat errors.
"""

from __future__ import annotations

import select
from typing import Iterable, List, Optional

from . import syscalls

__all__ = ["pidfd_open", "pidfd_getfd", "exited", "ExitPoll"]


def pidfd_open(pid: int) -> int:
    """Return a pidfd (close-on-exec) referring to process *pid*."""
    return syscalls.pidfd_open(pid)


def pidfd_getfd(pidfd: int, target_fd: int) -> int:
    """Duplicate file descriptor *target_fd* of the process behind *pidfd*.

    The new descriptor is close-on-exec and shares the open file with the
    target's (same file position, same kernel object).
    """
    return syscalls.pidfd_getfd(pidfd, target_fd)


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


class ExitPoll:
    """Pidfds registered once and waited on together with epoll: :meth:`exited`
    is one system call whose cost grows with the processes that exited, not
    with those registered (:func:`exited` registers them all at every call).
    Holds one descriptor (the epoll instance) from the first :meth:`add` to
    :meth:`close`."""

    def __init__(self) -> None:
        self._epoll: Optional[select.epoll] = None

    @property
    def fds(self) -> int:
        """Descriptors held: 1 with the epoll instance open, else 0."""
        return 0 if self._epoll is None else 1

    def add(self, pidfd: int) -> None:
        """Watch *pidfd* (the caller keeps it open until :meth:`remove`)."""
        if self._epoll is None:
            self._epoll = select.epoll()
        self._epoll.register(pidfd, select.EPOLLIN)

    def remove(self, pidfd: int) -> None:
        """Stop watching *pidfd* (before the caller closes it)."""
        if self._epoll is not None:
            self._epoll.unregister(pidfd)

    def exited(self) -> List[int]:
        """The registered pidfds whose process has exited."""
        if self._epoll is None:
            return []
        # Level-triggered: a pidfd stays ready until it is removed.
        return [fd for fd, _ in self._epoll.poll(0, maxevents=-1)]

    def close(self) -> None:
        """Close the epoll instance (the pidfds stay the caller's); safe twice."""
        if self._epoll is not None:
            epoll, self._epoll = self._epoll, None
            epoll.close()
