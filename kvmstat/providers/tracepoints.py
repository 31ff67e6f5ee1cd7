"""The tracepoint provider: perf counting of every ``kvm:*`` tracepoint.

Each selected event (and each child event, a filtered copy of its parent)
becomes one member of a perf group.  Host-wide, one group is opened per
online CPU.  For one VM (``pid=``) or per VM (``by_vm=True``), one group is
opened per thread of each VM process, and per kernel thread working for it
(:mod:`kvmstat.vms`), tagged with the VM's bucket so that one native read
returns per-VM sums.  Those groups inherit (perf ``inherit``): threads a VM
starts later are counted from their first event, also once they ended,
without new groups; :meth:`TracepointProvider.refresh` only looks for VMs
and helper threads that came or went.
"""

from __future__ import annotations

import errno
import heapq
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .. import native
from ..errors import NativeError, NoSuchVM, VMGone
from ..events import Event, load_events
from ..resources import ensure_open_files
from ..vms import VM, VMWatch, thread_exiting
from .base import Provider, Totals

__all__ = ["TracepointProvider", "online_cpus", "event_fields", "event_specs"]

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
    """Counts kvm tracepoints host-wide, for one VM process, or per VM.

    *tracefs* is the tracefs mount point.  *fields* limits the events opened
    (None: all).  *events* may be given to skip reading the format files
    again (see :func:`kvmstat.events.load_events`).

    - default: one perf group per online CPU (every event of the host);
      :meth:`read_by_vm` gives nothing.
    - *pid*: the VM process *pid* (:class:`NoSuchVM` if it is none), all its
      threads, those it starts later, and the kernel threads working for it;
      once it has exited :meth:`refresh` raises :class:`VMGone` (counts stay
      readable).  :meth:`read_by_vm` gives that one VM.
    - *by_vm*: every VM process, followed as VMs start and exit; totals are
      the sum over the VMs (see :meth:`read`).  *debugfs* (optional) makes
      finding new VMs cheap (see :class:`kvmstat.vms.VMWatch`).
    """

    name = "tracepoints"

    def __init__(self, tracefs: str, *, fields: Optional[Iterable[str]] = None,
                 pid: Optional[int] = None, by_vm: bool = False, vendor: Optional[str] = None,
                 events: Optional[Sequence[Event]] = None, backend: Optional[str] = None,
                 proc: str = "/proc", sys: str = "/sys", debugfs: Optional[str] = None):
        self._pid = pid
        self._proc = proc
        if events is None:
            events = load_events(tracefs, vendor)
        self._specs = event_specs(events, fields)
        self._names = [spec.name for spec in self._specs]
        self._set: Optional[native.CounterSet] = None
        self._watch: Optional[VMWatch] = None
        self._buckets: Dict[int, int] = {}          # VM pid -> bucket
        self._free_buckets: List[int] = []          # heap of cleared buckets
        self._nbuckets = 0
        self._vm_slots: Dict[int, Dict[int, int]] = {}  # VM pid -> {tid: slot}
        self._exited: List[int] = []                # VMs read one last time
        self._gone: Optional[VMGone] = None
        if not self._specs:
            return
        if pid is None and not by_vm:
            self._set = self._open_per_cpu(online_cpus(sys), backend)
            return
        self._watch = VMWatch(proc, pid=pid, debugfs=debugfs)
        vms = list(self._watch.vms.values())
        ensure_open_files(len(self._specs) * sum(len(vm.tids) + len(vm.helper_tids)
                                                 for vm in vms))
        self._set = native.open_counter_set(self._specs, native.PER_THREAD_INHERIT, backend)
        try:
            for vm in vms:
                self._open_vm(vm)
            if pid is not None and not self._vm_slots.get(pid):
                raise NoSuchVM(f"VM process {pid} has exited", [(pid, None)])
            self._set.enable()
        except BaseException:
            self.close()
            raise

    def _open_per_cpu(self, cpus: List[int], backend: Optional[str]) -> native.CounterSet:
        ensure_open_files(len(self._specs) * len(cpus))
        counter_set = native.open_counter_set(self._specs, native.PER_CPU, backend)
        try:
            for cpu in cpus:
                counter_set.add(cpu)
            counter_set.enable()
        except BaseException:
            counter_set.close()
            raise
        return counter_set

    # -- following VMs -------------------------------------------------------
    def _add_threads(self, pid: int, tids: Iterable[int]) -> None:
        assert self._set is not None
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

    def _open_vm(self, vm: VM) -> None:
        if self._free_buckets:
            bucket = heapq.heappop(self._free_buckets)
        else:
            bucket, self._nbuckets = self._nbuckets, self._nbuckets + 1
        self._buckets[vm.pid] = bucket
        self._vm_slots[vm.pid] = {}
        self._add_threads(vm.pid, vm.tids + vm.helper_tids)

    def _retire_threads(self, pid: int, tids: Iterable[int]) -> None:
        assert self._set is not None
        slots = self._vm_slots[pid]
        for tid in tids:
            if tid in slots:
                self._set.retire(slots.pop(tid))

    def _retire_vm(self, pid: int) -> None:
        """Retire every group of an exited VM: its final counts stay in its
        bucket until :meth:`_drop_vm`, and in the totals for good."""
        self._retire_threads(pid, list(self._vm_slots[pid]))
        self._exited.append(pid)

    def _drop_vm(self, pid: int) -> None:
        """Forget an exited VM and give its bucket back."""
        assert self._set is not None
        del self._vm_slots[pid]
        bucket = self._buckets.pop(pid)
        self._set.clear_bucket(bucket)
        heapq.heappush(self._free_buckets, bucket)

    def refresh(self) -> None:
        """Follow VMs: add groups for new VMs and new helper threads, retire
        those of exited VMs and ended helper threads.

        Threads a VM process starts need nothing here: they inherit.  The
        groups of its ended threads stay open until the VM exits (closing
        them would stop the counting of threads they started).  A VM found
        exited is read one last time, with its final counts, before the next
        refresh drops it from :meth:`read_by_vm`.  With *pid*, raises
        :class:`VMGone` once that VM has exited (its counts stay readable).
        """
        if self._watch is None or self._set is None:
            return
        if self._gone is not None:
            raise self._gone
        while self._exited:
            self._drop_vm(self._exited.pop())
        changes = self._watch.update()
        if not changes:
            return
        for pid in changes.ended:
            self._retire_vm(pid)
        for pid, tids in changes.helpers_ended.items():
            self._retire_threads(pid, tids)
        new_threads = (sum(len(vm.tids) + len(vm.helper_tids) for vm in changes.started)
                       + sum(len(tids) for tids in changes.helpers_started.values()))
        if new_threads:
            ensure_open_files(self.fds + new_threads * len(self._specs))
        for vm in changes.started:
            self._open_vm(vm)
        for pid, tids in changes.helpers_started.items():
            self._add_threads(pid, tids)
        if self._pid is not None and self._pid in changes.ended:
            self._gone = VMGone(f"VM process {self._pid} has exited", self._pid)
            raise self._gone

    # -- reading -------------------------------------------------------------
    @property
    def fields(self) -> List[str]:
        """The counted fields (parents and children), in event order."""
        return list(self._names)

    @property
    def fds(self) -> int:
        """Number of perf file descriptors held."""
        return self._set.fds if self._set is not None else 0

    @property
    def supports_by_vm(self) -> bool:
        """True when opened with *pid* or *by_vm*."""
        return self._watch is not None

    @property
    def vms(self) -> Dict[int, VM]:
        """The VMs counted now (pid -> :class:`~kvmstat.vms.VM`); empty host-wide."""
        return dict(self._watch.vms) if self._watch is not None else {}

    def read(self) -> Totals:
        """Cumulative counts of every field: one native bulk read.

        Per VM (*pid*, *by_vm*) the totals are what the VMs' threads and
        helper threads did since they were opened, including VMs that have
        exited since; events in other threads (e.g. kworkers that inject
        interrupts for irqfds) are not counted, unlike host-wide.
        """
        if self._set is None:
            return dict.fromkeys(self._names, 0)
        totals, _ = self._set.read()
        return dict(zip(self._names, totals))

    def read_all(self) -> Tuple[Totals, Dict[int, Totals]]:
        """Totals and the per-VM breakdown from one native read.

        The breakdown lists the VMs running at the last :meth:`refresh`,
        and those it found exited, with their final counts; after that an
        exited VM leaves the breakdown (its counts stay in the totals).
        """
        if self._set is None or self._watch is None:
            return self.read(), {}
        totals, flat = self._set.read(self._nbuckets)
        names, n = self._names, len(self._names)
        per_vm = {pid: dict(zip(names, flat[b * n:(b + 1) * n]))  # type: ignore[index]
                  for pid, b in self._buckets.items()}
        return dict(zip(names, totals)), per_vm

    def read_by_vm(self) -> Dict[int, Totals]:
        """Cumulative counts per VM pid (see :meth:`read_all`); ``{}`` host-wide."""
        return self.read_all()[1]

    def reset(self) -> None:
        """Zero every counter (live and those of ended threads)."""
        if self._set is not None:
            self._set.reset()

    def close(self) -> None:
        """Close every perf event; safe to call twice."""
        if self._set is not None:
            counter_set, self._set = self._set, None
            counter_set.close()
