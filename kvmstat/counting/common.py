"""What the two counting backends (C in native.py, Python in pyperf.py) share.

The event description, the argument checks of :class:`CounterSet`, and the one
mapping from an errno of the counting core to a kvmstat exception live here,
so both backends behave identically by construction.  Users import these
names from :mod:`kvmstat.counting.native`.
"""

from __future__ import annotations

import errno as _errno
import os
from dataclasses import dataclass
from typing import Sequence

from .. import errors
from ..errors import Error, InvalidArgument
from ..host.privileges import paranoid_path, read_perf_event_paranoid
from .checks import INT32_MAX, check_events, is_int

PER_CPU = 0
PER_THREAD = 1
#: thread ids; each group also counts the threads its target creates later
#: (perf inherit), even after they ended.  See csrc/kvmstat_native.h.
PER_THREAD_INHERIT = 2
MODES = (PER_CPU, PER_THREAD, PER_THREAD_INHERIT)
#: the default of the *paranoid_path* parameters (the host's /proc)
PARANOID_PATH = paranoid_path()



@dataclass(frozen=True)
class EventSpec:
    """One counter of a set: a tracepoint, optionally narrowed by a filter."""

    name: str  # shown in error messages, e.g. "kvm_exit(HLT)"
    tracepoint_id: int
    filter: str | None = None


def describe_target(mode: int, target: int | None) -> str:
    if target is None or target < 0:
        return "every target"
    return f"CPU {target}" if mode == PER_CPU else f"thread {target}"


def error_from_errno(err: int, *, event: EventSpec | None, target: int | None,
                     mode: int, action: str = "perf_event_open",
                     needed: int = 0,
                     paranoid_path: str = PARANOID_PATH) -> Error:
    """Turn a positive errno from the counting core into a kvmstat exception
    (through :func:`kvmstat.errors.error_from_errno`).

    ``event``/``target`` say where it failed (None when not specific),
    ``action`` what was attempted, ``needed`` how many descriptors the set
    would hold had the call worked (for the open-files message).
    """
    name = event.name if event is not None else None
    where = describe_target(mode, target)
    subject = f"{name} on {where}" if name else where
    paranoid = read_perf_event_paranoid(paranoid_path)
    denied = (f"run as root or grant CAP_PERFMON, or lower {paranoid_path} "
              f"(now {'unreadable' if paranoid is None else paranoid})")
    reasons = {}
    if event is not None and event.filter:
        reasons[_errno.EINVAL] = f"{os.strerror(_errno.EINVAL)} (filter {event.filter!r})"
    return errors.error_from_errno(err, action, subject,
                                   fixes={_errno.EACCES: denied, _errno.EPERM: denied},
                                   reasons=reasons, needed=needed, event=name, target=target)


class CounterSet:
    """perf groups of the same events, one group per CPU or thread.

    Use :func:`kvmstat.counting.native.open_counter_set` to get one.  Every group is
    tagged with a bucket number so that :meth:`read` can return per-bucket
    sums; a retired group's last counts stay in totals and in its bucket.
    New sets start disabled; call :meth:`enable`.  Context manager; call
    :meth:`close` (or leave the ``with`` block) to release the descriptors.

    Subclasses (the backends) implement the ``_do_*`` methods; the checks
    here are shared so that both backends reject the same arguments.
    """

    def __init__(self, events: Sequence[EventSpec], mode: int,
                 paranoid_path: str = PARANOID_PATH):
        events = check_events(events, EventSpec, "a counter set")
        for ev in events:
            if ev.filter is not None and not isinstance(ev.filter, str):
                raise InvalidArgument(f"filter of {ev.name} must be a string")
            if ev.filter and "\0" in ev.filter:
                raise InvalidArgument(f"filter of {ev.name} contains a NUL byte")
        if mode not in MODES or not is_int(mode):
            raise InvalidArgument(
                f"bad counting mode {mode!r}: use PER_CPU (0), PER_THREAD (1) "
                f"or PER_THREAD_INHERIT (2)")
        self.events: tuple[EventSpec, ...] = events
        self.mode: int = mode
        self._paranoid_path = paranoid_path
        self._closed = False
        self._live: set[int] = set()  # slots of live groups, for argument checks

    # -- helpers for the backends ------------------------------------------
    def _error(self, err: int, *, index: int | None = None,
               target: int | None = None, action: str = "perf_event_open",
               opening: bool = False) -> Error:
        event = self.events[index] if index is not None and 0 <= index < len(self.events) else None
        needed = self.fds + len(self.events) if opening else self.fds
        return error_from_errno(err, event=event, target=target, mode=self.mode,
                                action=action, needed=needed,
                                paranoid_path=self._paranoid_path)

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidArgument("the counter set is closed")

    # -- public interface ---------------------------------------------------
    def add(self, target: int, bucket: int = 0) -> int:
        """Open one group for a CPU or thread id; returns its slot number."""
        self._check_open()
        if not is_int(target) or not 0 <= target <= INT32_MAX:
            raise InvalidArgument(f"bad target {target!r}: need a CPU number or thread id >= 0")
        if not is_int(bucket) or not 0 <= bucket <= INT32_MAX:
            raise InvalidArgument(f"bad bucket {bucket!r}: need an integer >= 0")
        slot = self._do_add(target, bucket)
        self._live.add(slot)
        return slot

    def retire(self, slot: int) -> None:
        """Close a group, keeping its last counts in totals and its bucket."""
        self._check_open()
        if not is_int(slot) or slot not in self._live:
            raise InvalidArgument(f"no live group in slot {slot!r}")
        self._do_retire(slot)
        self._live.discard(slot)

    def enable(self) -> None:
        self._check_open()
        self._do_ioctl("enable")

    def disable(self) -> None:
        self._check_open()
        self._do_ioctl("disable")

    def reset(self) -> None:
        """Count from zero again: totals and buckets read 0 right afterwards."""
        self._check_open()
        self._do_reset()

    def clear_bucket(self, bucket: int) -> None:
        """Forget the retired sums of *bucket* (totals keep them) so that the
        bucket number can be given to new groups.  Raises NativeError (EBUSY)
        while a live group uses the bucket."""
        self._check_open()
        if not is_int(bucket) or not 0 <= bucket <= INT32_MAX:
            raise InvalidArgument(f"bad bucket {bucket!r}: need an integer >= 0")
        self._do_clear_bucket(bucket)

    def read(self, nbuckets: int = 0) -> tuple[list[int], list[int] | None]:
        """Totals per event, and a flat nbuckets x nevents list (row = bucket,
        None when nbuckets is 0).  Groups in buckets >= nbuckets count only
        in the totals."""
        if self._closed or not is_int(nbuckets) or not 0 <= nbuckets <= INT32_MAX:
            self._check_open()
            raise InvalidArgument(f"bad nbuckets {nbuckets!r}: need an integer >= 0")
        return self._do_read(nbuckets)

    @property
    def groups(self) -> int:
        """Number of live groups."""
        return 0 if self._closed else self._do_groups()

    @property
    def fds(self) -> int:
        """File descriptors held: live groups x events."""
        return self.groups * len(self.events)

    def close(self) -> None:
        """Release every descriptor; the set cannot be used afterwards."""
        if not self._closed:
            self._closed = True
            self._live.clear()
            self._do_close()

    def __enter__(self) -> "CounterSet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = ("PER_CPU", "PER_THREAD", "PER_THREAD_INHERIT")[self.mode]
        state = "closed" if self._closed else f"{self.groups} groups"
        return f"<{type(self).__name__} {len(self.events)} events {mode} {state}>"

    # -- backend hooks ------------------------------------------------------
    def _do_add(self, target: int, bucket: int) -> int:
        raise NotImplementedError

    def _do_retire(self, slot: int) -> None:
        raise NotImplementedError

    def _do_ioctl(self, what: str) -> None:
        raise NotImplementedError

    def _do_reset(self) -> None:
        raise NotImplementedError

    def _do_clear_bucket(self, bucket: int) -> None:
        raise NotImplementedError

    def _do_read(self, nbuckets: int) -> tuple[list[int], list[int] | None]:
        raise NotImplementedError

    def _do_groups(self) -> int:
        raise NotImplementedError

    def _do_close(self) -> None:
        raise NotImplementedError
