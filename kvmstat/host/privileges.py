"""What this process may do: capabilities and perf_event_paranoid.

Used to word permission errors (cause and fix) and by ``--check``.  Every
path is a parameter; nothing is read at import time.
"""

from __future__ import annotations

import os
from typing import Optional

__all__ = ["CAP_SYS_PTRACE", "CAP_SYS_ADMIN", "CAP_PERFMON", "effective_capabilities",
           "has_capability", "paranoid_path", "read_perf_event_paranoid", "perf_event_paranoid",
           "perf_privileged", "permission_hint"]

# Capability numbers from <linux/capability.h>.
CAP_SYS_PTRACE = 19
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38


def effective_capabilities(proc: str = "/proc") -> int:
    """The effective capability mask of this process (``CapEff``), 0 if unknown."""
    try:
        with open(os.path.join(proc, "self", "status")) as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def has_capability(cap: int, proc: str = "/proc") -> bool:
    """True if this process has capability number *cap* in effect."""
    return bool(effective_capabilities(proc) >> cap & 1)


def paranoid_path(proc: str = "/proc") -> str:
    """Where perf_event_paranoid is: ``<proc>/sys/kernel/perf_event_paranoid``."""
    return os.path.join(proc, "sys", "kernel", "perf_event_paranoid")


def read_perf_event_paranoid(path: str) -> Optional[int]:
    """The perf_event_paranoid value in file *path*, None if unreadable."""
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def perf_event_paranoid(proc: str = "/proc") -> Optional[int]:
    """The value of ``<proc>/sys/kernel/perf_event_paranoid``, None if unreadable."""
    return read_perf_event_paranoid(paranoid_path(proc))


def perf_privileged(proc: str = "/proc") -> bool:
    """True if perf_event_paranoid does not apply (CAP_PERFMON or CAP_SYS_ADMIN)."""
    caps = effective_capabilities(proc)
    return bool(caps >> CAP_PERFMON & 1 or caps >> CAP_SYS_ADMIN & 1)


def permission_hint(proc: str = "/proc") -> str:
    """The fix for a permission error on tracefs or perf events, with the paranoid value."""
    paranoid = perf_event_paranoid(proc)
    value = "unreadable" if paranoid is None else str(paranoid)
    return (f"run kvm_stat as root (counting kvm tracepoints needs root, or CAP_PERFMON "
            f"and read access to tracefs; perf_event_paranoid is {value})")
