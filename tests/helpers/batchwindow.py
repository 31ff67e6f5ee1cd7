"""Start ``kvm_stat -1`` and wait until it is inside its one-second window.

``kvm_stat -1`` opens its events, takes a first sample and sleeps one second
before the second sample.  Tests that make a guest do exact work "during the
second" must not start before the events are open; instead of guessing with a
fixed delay, :func:`start_batch` waits until the process sleeps in
``nanosleep`` (seen in ``/proc/<pid>/wchan`` or ``/proc/<pid>/syscall``):
from then on everything it counts is open and enabled.  No kvmstat code here.
"""

from __future__ import annotations

import os
import subprocess

from .commands import start_kvm_stat, wait_for

__all__ = ["start_batch", "sleeping_in_nanosleep"]

# nanosleep and clock_nanosleep on x86_64, aarch64/riscv64 (generic table)
_SLEEP_SYSCALLS = {"x86_64": {35, 230}, "aarch64": {101, 115}, "riscv64": {101, 115}}


def sleeping_in_nanosleep(pid: int) -> bool:
    """True if process *pid* is blocked in a sleep system call right now."""
    try:
        with open(f"/proc/{pid}/wchan") as f:
            if "nanosleep" in f.read():
                return True
        with open(f"/proc/{pid}/syscall") as f:
            words = f.read().split()
    except OSError:
        return False
    machine = os.uname().machine
    return bool(words) and words[0].isdigit() and int(words[0]) in _SLEEP_SYSCALLS.get(machine, ())


def start_batch(args, env=None, timeout: float = 60.0) -> subprocess.Popen:
    """Run ``python -m kvmstat -1 ARGS`` and return once it sleeps in its
    one-second window.  Fails (AssertionError, with its stderr if it ended)
    when it does not get there within *timeout* seconds."""
    proc = start_kvm_stat("-1", *args, env=env)
    try:
        wait_for(lambda: sleeping_in_nanosleep(proc.pid), "the -1 sampling window",
                 timeout=timeout, proc=proc, interval=0.002)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    return proc
