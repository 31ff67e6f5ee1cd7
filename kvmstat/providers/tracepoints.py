"""The tracepoint provider: perf counting of every ``kvm:*`` tracepoint.

Each selected event (and each child event, a filtered copy of its parent)
becomes one member of a perf group.  Host-wide, one group is opened per
online CPU.  For one VM (``pid=``) or per VM (``by_vm=True``), one group is
opened per thread of each VM process, and per kernel thread working for it
(:mod:`kvmstat.host.vms`), tagged with the VM's bucket so that one native read
returns per-VM sums.  Those groups inherit (perf ``inherit``): threads a VM
starts later are counted from their first event, also once they ended,
without new groups; :meth:`TracepointProvider.refresh` only looks for VMs
and helper threads that came or went.
"""

from __future__ import annotations

import errno
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ..counting import native
from ..counting.factories import CounterFactories, real_counters
from ..errors import NativeError, NoSuchVM
from ..tracefs.catalog import Child, Event, load_events
from ..host.resources import ensure_open_files
from ..host.vms import VM, VMChanges, VMWatch, thread_exiting
from .counting import CountingProvider

__all__ = ["TracepointProvider", "online_cpus", "event_fields", "event_specs", "selected_fields"]

# perf_event_open errors of a thread that has just exited (or is exiting),
# and, transiently, of a live thread that is starting threads right then.
_THREAD_BUSY = (errno.ESRCH, errno.ENOENT, errno.ENODEV, errno.EINVAL)
# How often the group of a live thread is opened before such an error counts.
_ADD_ATTEMPTS = 10


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


def selected_fields(events: Iterable[Event], fields: Optional[Iterable[str]] = None
                    ) -> List[Tuple[Event, Optional[Child]]]:
    """The selected *fields* (all if None) as (event, None) for a parent and
    (event, child) for a child, each parent followed by its children."""
    wanted = None if fields is None else set(fields)
    out: List[Tuple[Event, Optional[Child]]] = []
    for event in events:
        if wanted is None or event.name in wanted:
            out.append((event, None))
        for child in event.children:
            if wanted is None or child.name in wanted:
                out.append((event, child))
    return out


def event_specs(events: Iterable[Event], fields: Optional[Iterable[str]] = None) -> List[native.EventSpec]:
    """Perf event specs for the selected *fields* of *events* (all if None)."""
    return [native.EventSpec(event.name, event.id, None) if child is None
            else native.EventSpec(child.name, event.id, child.filter)
            for event, child in selected_fields(events, fields)]


class TracepointProvider(CountingProvider):
    """Counts kvm tracepoints with perf groups, host-wide, for one VM process, or per VM.

    *tracefs* is the tracefs mount point.  *fields* limits the events opened
    (None: all).  *events* may be given to skip reading the format files
    again (see :func:`kvmstat.tracefs.catalog.load_events`).

    - default: one perf group per online CPU (every event of the host);
      no per-VM breakdown.
    - *pid*: the VM process *pid* (:class:`NoSuchVM` if it is none), all its
      threads, those it starts later, and the kernel threads working for it;
      once it has exited, the next snapshot says so (``ended``) and its
      counts stay readable.  The per-VM breakdown gives that one VM.
    - *by_vm*: every VM process, followed as VMs start and exit; totals are
      the sum over the VMs.  *debugfs* (optional) makes finding new VMs
      cheap (see :class:`kvmstat.host.vms.VMWatch`).

    Per VM (*pid*, *by_vm*) the totals are what the VMs' threads and helper
    threads did since they were opened, including VMs that have exited
    since; events in other threads (e.g. kworkers that inject interrupts
    for irqfds) are not counted, unlike host-wide.  Threads a VM process
    starts need nothing from :meth:`refresh`: they inherit.  The groups of
    its ended threads stay open until the VM exits (closing them would stop
    the counting of threads they started).  :meth:`reset` zeroes live
    groups and those of ended threads.  *counters* makes the counter sets
    (the real counting core by default).
    """

    name = "tracepoints"
    engine = "perf"

    def __init__(self, tracefs: str, *, fields: Optional[Iterable[str]] = None,
                 pid: Optional[int] = None, by_vm: bool = False, vendor: Optional[str] = None,
                 events: Optional[Sequence[Event]] = None, backend: Optional[str] = None,
                 proc: str = "/proc", sys: str = "/sys", debugfs: Optional[str] = None,
                 counters: Optional[CounterFactories] = None):
        self._proc = proc
        self._open_counter_set = (counters or real_counters()).open_counter_set
        if events is None:
            events = load_events(tracefs, vendor)
        self._specs = event_specs(events, fields)
        super().__init__([spec.name for spec in self._specs])
        self._vm_slots: Dict[int, Dict[int, int]] = {}  # VM pid -> {tid: slot}
        if not self._specs:
            return
        if pid is None and not by_vm:
            self._counter = self._set = self._open_per_cpu(online_cpus(sys), backend)
            return
        watch = VMWatch(proc, pid=pid, debugfs=debugfs)
        vms = list(watch.vms.values())
        ensure_open_files(len(self._specs) * sum(len(vm.tids) + len(vm.helper_tids)
                                                 for vm in vms))
        self._counter = self._set = self._open_counter_set(self._specs,
                                                           native.PER_THREAD_INHERIT, backend)
        try:
            self._follow(watch, pid)
            if pid is not None and not self._vm_slots.get(pid):
                raise NoSuchVM(f"VM process {pid} has exited", [(pid, None)])
            self._set.enable()
        except BaseException:
            self.close()
            raise

    def _open_per_cpu(self, cpus: List[int], backend: Optional[str]) -> native.CounterSet:
        ensure_open_files(len(self._specs) * len(cpus))
        counter_set = self._open_counter_set(self._specs, native.PER_CPU, backend)
        try:
            for cpu in cpus:
                counter_set.add(cpu)
            counter_set.enable()
        except BaseException:
            counter_set.close()
            raise
        return counter_set

    # -- following VMs: one inheriting group per thread ---------------------------
    def _add_threads(self, pid: int, tids: Iterable[int]) -> None:
        bucket = self._buckets[pid]
        slots = self._vm_slots[pid]
        for tid in tids:
            for attempt in range(_ADD_ATTEMPTS):
                try:
                    slots[tid] = self._set.add(tid, bucket)
                    break
                except NativeError as exc:
                    # A thread that ended (or is ending) between listing and
                    # opening is not an error, whatever the errno.
                    if thread_exiting(tid, self._proc):
                        break
                    # A live thread that starts threads while its group is
                    # being opened makes perf_event_open fail now and then
                    # (ENODEV, EINVAL: measured with a thread starting
                    # threads non-stop, about one open in two); opening the
                    # group again succeeds.  Any other errno, or one that
                    # persists, is a real error.
                    if exc.errno not in _THREAD_BUSY or attempt == _ADD_ATTEMPTS - 1:
                        raise

    def _retire_threads(self, pid: int, tids: Iterable[int]) -> None:
        slots = self._vm_slots[pid]
        for tid in tids:
            if tid in slots:
                self._set.retire(slots.pop(tid))

    def _vm_started(self, vm: VM, bucket: int) -> None:
        self._vm_slots[vm.pid] = {}
        self._add_threads(vm.pid, vm.tids + vm.helper_tids)

    def _vm_ended(self, pid: int) -> None:
        # Its final counts stay in its bucket until it is dropped, and in
        # the totals for good.
        self._retire_threads(pid, list(self._vm_slots[pid]))

    def _vm_dropped(self, pid: int, bucket: int) -> None:
        del self._vm_slots[pid]
        self._set.clear_bucket(bucket)

    def _helpers_started(self, pid: int, tids: List[int]) -> None:
        self._add_threads(pid, tids)

    def _helpers_ended(self, pid: int, tids: List[int]) -> None:
        self._retire_threads(pid, tids)

    def _changes_coming(self, changes: VMChanges) -> None:
        new_threads = (sum(len(vm.tids) + len(vm.helper_tids) for vm in changes.started)
                       + sum(len(tids) for tids in changes.helpers_started.values()))
        if new_threads:
            ensure_open_files(self.fds + new_threads * len(self._specs))
