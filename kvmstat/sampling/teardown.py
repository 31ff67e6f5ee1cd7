"""Releasing perf events without making the user wait.

The kernel's teardown of a tracepoint perf event happens when the last
reference to its file goes away, and it is slow: closing a few hundred events
takes seconds (each one waits for the tracepoint's users to quiesce).  Closing
a file that another process still holds only drops a reference, which is
cheap.  :func:`close_detached` uses that: a detached process inherits the
references, the caller closes its own at once, and the detached process
drops the last references afterwards, with nobody waiting for it.
"""

from __future__ import annotations

import os
from typing import Protocol

__all__ = ["close_detached", "PROCESS_NAME"]


class _Closeable(Protocol):
    def close(self) -> None: ...


#: Process name (comm) of the detached process, so ``ps`` explains it.
PROCESS_NAME = "kvmstat-release"


def _hold_until_released(release_fd: int, null_fd: int, proc: str) -> None:
    """Body of the detached process: wait for the parent, then exit.

    Runs in a forked child (maybe of a multi-threaded caller): plain system
    calls only, no kvmstat or I/O library code, and it never returns
    (``os._exit``).
    """
    try:
        os.setsid()  # out of the terminal's session: no SIGHUP/SIGINT from it
        if os.fork() != 0:
            os._exit(0)  # the intermediate child; the caller reaps it at once
        try:
            comm = os.open(f"{proc}/self/comm", os.O_WRONLY)
            os.write(comm, PROCESS_NAME.encode())
            os.close(comm)
        except OSError:
            pass
        # Do not hold the terminal open (an ssh session would wait for it).
        if null_fd >= 0:
            for fd in (0, 1, 2):
                os.dup2(null_fd, fd)
        # EOF arrives when the caller has closed its references (or exited);
        # only then are ours the last ones.
        while os.read(release_fd, 1):
            pass
    finally:
        os._exit(0)  # exiting closes every inherited file: the slow part


def close_detached(resource: _Closeable, proc: str = "/proc") -> bool:
    """Close *resource* now; leave the kernel's slow teardown to a detached process.

    The detached process is named :data:`PROCESS_NAME` (set through
    ``<proc>/self/comm``).  Returns True when it took over the last references,
    False when forking failed and *resource* was closed in this process
    (then the call takes as long as an ordinary close).
    """
    try:
        release_r, release_w = os.pipe2(os.O_CLOEXEC)
    except OSError:
        resource.close()
        return False
    try:
        null_fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        null_fd = -1
    try:
        try:
            pid = os.fork()
        except OSError:
            resource.close()
            return False
        if pid == 0:
            os.close(release_w)
            _hold_until_released(release_r, null_fd, proc)
        os.waitpid(pid, 0)
        resource.close()  # cheap: the detached process still holds references
        return True
    finally:
        os.close(release_r)
        os.close(release_w)  # lets the detached process go
        if null_fd >= 0:
            os.close(null_fd)
