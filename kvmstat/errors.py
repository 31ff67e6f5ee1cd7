"""Exceptions raised by kvmstat.

Every exception derives from :class:`Error`.  ``str(exc)`` is the one-line
message a user sees: it names the cause and, where there is one, the fix.
"""

from __future__ import annotations

__all__ = [
    "Error",
    "InvalidArgument",
    "AccessDenied",
    "NotAvailable",
    "NoSuchVM",
    "VMGone",
    "TooManyEvents",
    "NativeError",
]


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
    """More perf events are needed than the open-files limit allows."""

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
