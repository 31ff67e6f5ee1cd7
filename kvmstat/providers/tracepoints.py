"""The tracepoint provider: perf counting of every ``kvm:*`` tracepoint.

Each selected event (and each child event, a filtered copy of its parent)
becomes one member of a perf group; one group is opened per online CPU
(host-wide) or per thread of the watched VM process (``pid=``).
"""

from __future__ import annotations

import errno
from typing import Dict, Iterable, List, Optional, Sequence

from .. import native
from ..errors import NativeError, NoSuchVM, VMGone
from ..events import Event, load_events
from ..resources import ensure_open_files
from ..vms import find_vm, is_vm_process, thread_ids
from .base import Provider, Totals

__all__ = ["TracepointProvider", "online_cpus", "event_fields", "event_specs"]

# perf_event_open errors meaning "that thread has just exited"
_THREAD_GONE = (errno.ESRCH, errno.ENOENT)


def online_cpus(sys: str = "/sys") -> List[int]:
    """Return the online CPU numbers (from ``<sys>/devices/system/cpu/online``)."""
    with open(f"{sys}/devices/system/cpu/online") as f:
        text = f.read().strip()
    cpus: List[int] = []
    for part in text.split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


def event_fields(events: Iterable[Event]) -> List[str]:
    """All field names of *events*: each parent followed by its children."""
    names: List[str] = []
    for event in events:
        names.append(event.name)
        names.extend(child.name for child in event.children)
    return names


def event_specs(events: Iterable[Event], fields: Optional[Iterable[str]] = None) -> List[native.EventSpec]:
    """Perf event specs for the selected *fields* of *events* (all if None)."""
    wanted = None if fields is None else set(fields)
    specs = []
    for event in events:
        if wanted is None or event.name in wanted:
            specs.append(native.EventSpec(event.name, event.id, None))
        for child in event.children:
            if wanted is None or child.name in wanted:
                specs.append(native.EventSpec(child.name, event.id, child.filter))
    return specs


class TracepointProvider(Provider):
    """Counts kvm tracepoints host-wide or for one VM process.

    *tracefs* is the tracefs mount point.  *fields* limits the events opened
    (None: all).  With *pid*, one perf group is opened per thread of that
    process; otherwise one per online CPU.  *events* may be given to skip
    reading the format files again (see :func:`kvmstat.events.load_events`).
    """

    name = "tracepoints"

    def __init__(self, tracefs: str, *, fields: Optional[Iterable[str]] = None,
                 pid: Optional[int] = None, vendor: Optional[str] = None,
                 events: Optional[Sequence[Event]] = None, backend: Optional[str] = None,
                 proc: str = "/proc", sys: str = "/sys"):
        self._proc = proc
        self._pid = pid
        if events is None:
            events = load_events(tracefs, vendor)
        self._specs = event_specs(events, fields)
        self._names = [spec.name for spec in self._specs]
        self._set: Optional[native.CounterSet] = None
        self._slots: Dict[int, int] = {}  # target -> slot
        if not self._specs:
            return
        if pid is not None:
            find_vm(pid, proc)  # NoSuchVM if it is not (or no longer) a VM
            targets = thread_ids(pid, proc)
            mode = native.PER_THREAD
        else:
            targets = online_cpus(sys)
            mode = native.PER_CPU
        ensure_open_files(len(self._specs) * len(targets))
        counter_set = native.open_counter_set(self._specs, mode, backend)
        try:
            for target in targets:
                self._add_target(counter_set, target)
            if pid is not None and not self._slots:
                raise NoSuchVM(f"VM process {pid} has exited", [(pid, None)])
            counter_set.enable()
        except BaseException:
            counter_set.close()
            raise
        self._set = counter_set

    def _add_target(self, counter_set: native.CounterSet, target: int) -> None:
        try:
            self._slots[target] = counter_set.add(target)
        except NativeError as exc:
            # A thread that ended between listing and opening is not an error.
            if self._pid is None or exc.errno not in _THREAD_GONE:
                raise

    @property
    def fields(self) -> List[str]:
        """The counted fields (parents and children), in event order."""
        return list(self._names)

    def refresh(self) -> None:
        """With *pid*: raise :class:`VMGone` once that VM process has exited."""
        if self._pid is not None and not is_vm_process(self._pid, self._proc):
            raise VMGone(f"VM process {self._pid} has exited", self._pid)

    @property
    def fds(self) -> int:
        """Number of perf file descriptors held."""
        return self._set.fds if self._set is not None else 0

    def read(self) -> Totals:
        """Cumulative counts of every field: one native bulk read."""
        if self._set is None:
            return dict.fromkeys(self._names, 0)
        totals, _ = self._set.read()
        return dict(zip(self._names, totals))

    def reset(self) -> None:
        """Zero every counter (live and those of ended threads)."""
        if self._set is not None:
            self._set.reset()

    def close(self) -> None:
        """Close every perf event; safe to call twice."""
        if self._set is not None:
            counter_set, self._set = self._set, None
            counter_set.close()
