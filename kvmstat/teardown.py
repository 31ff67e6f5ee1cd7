"""Releasing perf events without making the user wait.

Closing the last perf event of a tracepoint waits for an RCU grace period
under a kernel-wide mutex, so tearing down a few hundred tracepoint events
takes seconds, whatever the number of CPUs.  The command line does not make
its user wait for that: :func:`release_in_background` hands the last
references to a short-lived detached child process, which pays for the
close while the command returns to the shell at once.

Only the command line uses this; the library closes synchronously.
"""

from __future__ import annotations

import os
from typing import Callable

__all__ = ["release_in_background"]


def release_in_background(close: Callable[[], None]) -> bool:
    """Run *close* (which closes perf events) cheaply, leaving the slow part to a child.

    The child keeps a reference to every descriptor of this process, so the
    parent's *close* only drops references (fast).  The child then exits,
    which releases the last references in the background.  The child lets go
    of stdin/stdout/stderr first, so a reader of a pipe sees EOF when this
    process ends.  Returns True if a child took over, False if it closed
    synchronously (fork failed).
    """
    try:
        ready_r, ready_w = os.pipe()
        pid = os.fork()
    except OSError:
        close()
        return False
    if pid == 0:
        # The child forks the process that does the waiting and exits at
        # once, so nothing is left for this process to reap.
        try:
            os.close(ready_w)
            if os.fork() == 0:
                os.setsid()
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                # Wait until the parent has dropped its references, so that
                # the last close (the slow one) happens here, not there.
                while os.read(ready_r, 1):
                    pass
        finally:
            os._exit(0)
    os.close(ready_r)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    try:
        close()
    finally:
        os.close(ready_w)
    return True
