"""Where the kernel interfaces live: proc, sys, tracefs and debugfs.

Mount points are looked up by filesystem type (the 3rd column of
``/proc/self/mounts``), never by the source column, which any user can set
(docs/design.md §6.2).  Nothing is looked up at import time; every path is a parameter.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from . import syscalls
from ..errors import InvalidArgument, NotAvailable, error_from_errno

__all__ = ["find_mount", "find_mounts", "Paths"]

_OCTAL_RE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    """Decode the octal escapes (``\\040`` for a space) of a mounts field."""
    raw = _OCTAL_RE.sub(lambda m: chr(int(m.group(1), 8)), field)
    # The kernel escapes bytes; re-decode them as UTF-8 where possible.
    try:
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return raw


def find_mounts(fstype: str, mounts_file: str = "/proc/self/mounts") -> List[str]:
    """Mount points whose visible filesystem has type ``fstype``, in order.

    A mount point listed again later was mounted over: only its last (top)
    mount is visible there, so a tmpfs or FUSE mount laid over the real
    debugfs hides it and the mount point no longer counts as debugfs.  An
    unreadable mounts file gives an empty list.
    """
    try:
        with open(mounts_file, encoding="latin-1") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    top: Dict[str, str] = {}  # mount point -> type of its last-listed mount
    for line in lines:
        cols = line.split()
        if len(cols) >= 3:
            point = _unescape(cols[1])
            top.pop(point, None)  # keep the order of the visible mounts
            top[point] = cols[2]
    return [point for point, kind in top.items() if kind == fstype]


def find_mount(fstype: str, mounts_file: str = "/proc/self/mounts") -> Optional[str]:
    """Mount point of the first mount whose filesystem TYPE is ``fstype``.

    The source column is ignored (a FUSE mount named "debugfs" is not
    debugfs).  Octal escapes such as ``\\040`` are decoded.  None if there is
    no such mount.
    """
    mounts = find_mounts(fstype, mounts_file)
    return mounts[0] if mounts else None


def _prefer(mounts: List[str], standard: str) -> Optional[str]:
    if not mounts:
        return None
    norm = os.path.normpath(standard)
    for m in mounts:
        if os.path.normpath(m) == norm:
            return m
    return mounts[0]


@dataclass
class Paths:
    """The roots kvmstat reads from, with explicit overrides.

    ``proc`` and ``sys`` are the procfs and sysfs roots; ``tracefs`` and
    ``debugfs``, when set, are used as given; ``mounts_file`` defaults to
    ``<proc>/self/mounts``.  ``mount(source, target, fstype)`` mounts a
    filesystem that is not mounted yet (mount(2) by default).
    """

    proc: str = "/proc"
    sys: str = "/sys"
    tracefs: Optional[str] = None
    debugfs: Optional[str] = None
    mounts_file: Optional[str] = None
    mount: Callable[[str, str, str], None] = field(default=syscalls.mount, repr=False,
                                                   compare=False)

    def mounts(self) -> str:
        """The mounts file consulted: ``mounts_file`` or ``<proc>/self/mounts``."""
        return self.mounts_file or os.path.join(self.proc, "self", "mounts")

    def _override(self, path: str, what: str) -> str:
        if not os.path.isdir(path):
            raise InvalidArgument(f"{what} path {path} is not a directory: give the directory where {what} is mounted")
        return path

    def _mount(self, fstype: str, target: str, notify: Optional[Callable[[str], None]]) -> str:
        cmd = f"mount -t {fstype} {fstype} {target}"
        try:
            self.mount(fstype, target, fstype)
        except OSError as e:
            raise error_from_errno(e.errno or errno.EIO, f"mounting {fstype} at {target}",
                                   fix=f"run '{cmd}' as root", other=NotAvailable) from None
        if notify is not None:
            notify(f"mounted {fstype} at {target}")
        return target

    def find_debugfs(self, mount: bool = True, notify: Optional[Callable[[str], None]] = None) -> str:
        """Return the debugfs directory.

        The explicit ``debugfs`` if set; else the debugfs mount (the one at
        ``<sys>/kernel/debug`` if there are several); else, when ``mount`` is
        true and the process is root, mount debugfs at ``<sys>/kernel/debug``
        and report it through ``notify``.  Raises NotAvailable (or
        AccessDenied when mounting is refused) with the command to run.
        """
        if self.debugfs:
            return self._override(self.debugfs, "debugfs")
        standard = os.path.join(self.sys, "kernel", "debug")
        found = _prefer(find_mounts("debugfs", self.mounts()), standard)
        if found:
            return found
        if mount and os.geteuid() == 0:
            return self._mount("debugfs", standard, notify)
        raise NotAvailable(f"debugfs is not mounted: run 'mount -t debugfs debugfs {standard}' as root")

    def find_tracefs(self, mount: bool = True, notify: Optional[Callable[[str], None]] = None) -> str:
        """Return the tracefs directory (the one holding ``events/``).

        The explicit ``tracefs`` if set; else the tracefs mount (the one at
        ``<sys>/kernel/tracing`` if there are several); else
        ``<debugfs mount>/tracing`` if it has ``events/``; else, when
        ``mount`` is true and the process is root, mount tracefs at
        ``<sys>/kernel/tracing`` and report it through ``notify``.  Raises
        NotAvailable (or AccessDenied when mounting is refused) with the
        command to run.
        """
        if self.tracefs:
            return self._override(self.tracefs, "tracefs")
        standard = os.path.join(self.sys, "kernel", "tracing")
        mounts_file = self.mounts()
        found = _prefer(find_mounts("tracefs", mounts_file), standard)
        if found:
            return found
        debug = self.debugfs or _prefer(find_mounts("debugfs", mounts_file),
                                        os.path.join(self.sys, "kernel", "debug"))
        if debug:
            candidate = os.path.join(debug, "tracing")
            if os.path.isdir(os.path.join(candidate, "events")):
                return candidate
        if mount and os.geteuid() == 0:
            return self._mount("tracefs", standard, notify)
        raise NotAvailable(f"tracefs is not mounted: run 'mount -t tracefs tracefs {standard}' as root")
