"""Exceptions raised by kvmstat: the whole error tree, and the one mapping
from a failed system call's errno to an exception of the tree.

Every exception derives from :class:`Error`.  ``str(exc)`` is the one-line
message a user sees: it names the cause and, where there is one, the fix.
Messages speak of library concepts (providers, engines, fields); the
``kvm_stat`` command adds its flag names when it prints them.

- :class:`InvalidArgument`: the caller's fault (a bad regex, delay, pid...);
- :class:`KernelDataError`: data the kernel gave cannot be understood (a
  corrupt tracefs format file: :class:`FormatError`; binary statistics:
  :class:`StatsFormatError`);
- :class:`AccessDenied`, :class:`NotAvailable`, :class:`TooManyEvents`: the
  host does not allow or offer something;
- :class:`NoSuchVM`, :class:`VMGone`: about the VM asked for;
- :class:`NativeError`: a system call failed (``errno``), with the BPF
  engine's :class:`BpfLoadError` and :class:`BpfTableFull`.
"""

from __future__ import annotations

import errno as _errno
import os
import resource
from typing import Mapping, Optional, Type

__all__ = [
    "Error",
    "InvalidArgument",
    "AccessDenied",
    "NotAvailable",
    "NoSuchVM",
    "VMGone",
    "TooManyEvents",
    "NativeError",
    "KernelDataError",
    "FormatError",
    "StatsFormatError",
    "BpfLoadError",
    "BpfTableFull",
    "SPARE_FDS",
    "error_from_errno",
    "too_many_events",
]

#: descriptors kvmstat needs besides its counters (stdio, /proc files, the
#: terminal, a log file, the exporter's sockets...)
SPARE_FDS = 64


class Error(Exception):
    """Base class of every kvmstat error; ``str()`` is a one-line message."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgument(Error, ValueError):
    """A parameter (regex, delay, pid, guest name, path, ...) is not valid."""


class AccessDenied(Error, PermissionError):
    """The process lacks a privilege (root, CAP_PERFMON, perf_event_paranoid)."""


class NotAvailable(Error):
    """A data source is missing on this host (no KVM, no tracefs, lockdown...)."""


class NoSuchVM(Error, LookupError):
    """No VM matches the pid or guest name asked for (or several do)."""

    def __init__(self, message: str, candidates: "list[tuple[int, str | None]] | None" = None):
        super().__init__(message)
        self.candidates = candidates or []


class VMGone(Error):
    """The VM being watched has exited."""

    def __init__(self, message: str, pid: int | None = None):
        super().__init__(message)
        self.pid = pid


class TooManyEvents(Error):
    """More descriptors (perf events) are needed than the open-files limit allows."""

    def __init__(self, message: str, needed: int = 0, limit: int = 0):
        super().__init__(message)
        self.needed = needed
        self.limit = limit


class NativeError(Error, OSError):
    """A system call of the counting core failed.

    ``errno`` is the error number, ``event`` the name of the event being set
    up (or None) and ``target`` the CPU or thread id (or None).
    """

    def __init__(self, message: str, errno: int, event: str | None = None,
                 target: int | None = None):
        Error.__init__(self, message)
        self.errno = errno
        self.event = event
        self.target = target


class KernelDataError(Error):
    """Data the kernel gave cannot be understood (not the caller's fault)."""


class FormatError(KernelDataError):
    """A tracepoint ``format`` file or ``print fmt`` expression is malformed."""


class StatsFormatError(KernelDataError, ValueError):
    """Binary statistics data that does not follow the KVM_GET_STATS_FD format."""


class BpfLoadError(NativeError):
    """The kernel's verifier rejected a program; ``log`` is its full log."""

    def __init__(self, message: str, errno: int, event: str | None, log: str):
        super().__init__(message, errno, event=event)
        self.log = log


class BpfTableFull(NativeError):
    """Hits were lost because the count table was full (``dropped`` of them)."""

    def __init__(self, message: str, dropped: int):
        super().__init__(message, _errno.ENOSPC)
        self.dropped = dropped


def too_many_events(needed: int, *, what: str = "", kind: str = "perf events",
                    system_wide: bool = False, hard_capped: bool = False,
                    nr_open: Optional[int] = None) -> TooManyEvents:
    """The one error for running out of descriptors: *needed* are needed (0:
    unknown) by *what*, when said, to hold *kind*; *system_wide* when the
    kernel's own file table is full (ENFILE) rather than this process's limit.

    The fix named depends on who runs: "run as root" is no advice to root,
    whose hard limit is capped by its service (``LimitNOFILE=``) or its
    container when it could not raise it (*hard_capped*, or a soft limit
    already at the hard one), or by fs.nr_open (*nr_open*, when known)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if system_wide:
        cause = "the system-wide open-files table is full (fs.file-max)"
    elif soft == resource.RLIM_INFINITY:
        cause = "the open-files limit is unlimited"
    else:
        shown_hard = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
        cause = f"the open-files limit is {soft} (hard {shown_hard})"
    count = f"{needed} open files" if needed else "more open files"
    need = f"{what} needs {count}" if what else f"{count} are needed"
    want = str(needed + SPARE_FDS) if needed else "N"
    if nr_open is not None and needed and needed + SPARE_FDS > nr_open:
        fix = f"raise fs.nr_open (now {nr_open}) and the hard limit"
    elif os.geteuid() == 0 and (hard_capped or soft == hard):
        fix = (f"raise the hard limit (LimitNOFILE={want} in the service, "
               f"'ulimit -n {want}' in the shell that starts it)")
    elif os.geteuid() == 0:
        fix = f"raise the limit (ulimit -n {want})"
    else:
        fix = f"raise the limit (ulimit -n {want}) or run as root"
    return TooManyEvents(f"too many {kind}: {need} and {cause}: {fix}, or count fewer events",
                         needed=needed, limit=0 if soft == resource.RLIM_INFINITY else soft)


_DENIED = (_errno.EPERM, _errno.EACCES)
_NO_FILES = (_errno.EMFILE, _errno.ENFILE)
_UNSUPPORTED = (_errno.ENOSYS, _errno.EOPNOTSUPP)


def error_from_errno(err: int, what: str, subject: str = "", *, fix: str = "",
                     fixes: Optional[Mapping[int, str]] = None,
                     reasons: Optional[Mapping[int, str]] = None,
                     other: Type[Error] = NativeError, needed: int = 0,
                     kind: str = "perf events", event: Optional[str] = None,
                     target: Optional[int] = None) -> Error:
    """The one mapping from a failed system call's errno to a kvmstat exception.

    *what* names what was attempted ("perf_event_open", "mounting tracefs at
    /x"), *subject* (optional) what it was for ("kvm_pio on CPU 0"); the
    message is ``what denied[ for subject] (reason): fix`` for a permission error,
    else ``what failed[ for subject]: reason[: fix]``, the reason being
    ``reasons[err]`` or the errno's text, the fix ``fixes[err]`` or *fix*.
    The class follows the errno: EPERM/EACCES
    :class:`AccessDenied`; EMFILE/ENFILE :class:`TooManyEvents` (*needed*
    descriptors to hold *kind*, see :func:`too_many_events`); ENOSYS/EOPNOTSUPP
    :class:`NotAvailable`; any other *other* (a :class:`NativeError` carries
    *err*, *event* and *target*).
    """
    where = f" for {subject}" if subject else ""
    if err in _NO_FILES:
        return too_many_events(needed, what=what + where, kind=kind,
                               system_wide=err == _errno.ENFILE)
    reason = (reasons or {}).get(err) or os.strerror(err)
    cure = (fixes or {}).get(err, fix)
    if err in _DENIED:
        return AccessDenied(f"{what} denied{where} ({reason}): {cure}" if cure
                            else f"{what} denied{where}: {reason}")
    message = f"{what} failed{where}: {reason}" + (f": {cure}" if cure else "")
    if err in _UNSUPPORTED:
        return NotAvailable(message)
    if issubclass(other, NativeError):
        return other(message, err, event=event, target=target)
    return other(message)
