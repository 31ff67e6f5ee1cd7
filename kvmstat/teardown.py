"""Closing kernel resources without making the user wait for the kernel.

Releasing perf events on tracepoints is slow in the kernel (each release
waits for an RCU grace period under a global mutex: a few hundred events
take seconds, and closing them from several threads is no faster).  A
program that is about to exit does not need to wait for that:
:func:`close_detached` lets a small child process hold the descriptors, so
the parent's own close is only a reference drop and it can exit at once;
the child lets the kernel tear the events down after the parent has gone.
"""

from __future__ import annotations

import os
import signal

__all__ = ["close_detached"]


def _hold_until_parent_exits(read_end: int) -> None:
    # In the child: keep the inherited descriptors until the parent is gone
    # (EOF on the pipe), then exit, which releases them.  Nothing of the
    # parent's Python state runs here (no atexit, no buffered output).
    try:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)   # readers of the parent's stdout/stderr see EOF
        # The parent's handlers only set flags: the child must die by signal.
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a later Ctrl-C is not for us
        while os.read(read_end, 1):
            pass
    finally:
        os._exit(0)


def close_detached(resource) -> None:
    """Close *resource* (anything with ``close()``) at once and leave the
    kernel's teardown of its descriptors to a detached child process.

    Meant for a program about to exit: the child waits until this process
    has exited, then exits itself.  If no child can be made, *resource* is
    closed the ordinary (slower) way.
    """
    try:
        read_end, write_end = os.pipe()  # not inherited by exec'd programs
    except OSError:
        resource.close()
        return
    try:
        pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        resource.close()
        return
    if pid == 0:
        os.close(write_end)
        _hold_until_parent_exits(read_end)
    os.close(read_end)
    # The child holds every descriptor too: closing ours only drops a reference.
    resource.close()
    # write_end stays open on purpose until this process exits: its closing
    # is what tells the child to go.
