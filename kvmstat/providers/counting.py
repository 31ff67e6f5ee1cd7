"""What the tracepoint providers of both engines share: fields read in bulk
as totals plus one row per VM, and the following of VMs.

A counting engine (perf groups: :class:`kvmstat.counting.native.CounterSet`; BPF:
:class:`kvmstat.counting.bpf.BpfCounter`) is read in one native call as
``(totals, flat bucket matrix)``.  :class:`CountingProvider` turns that into
the :class:`~kvmstat.providers.base.Provider` interface, gives every
followed VM a bucket (row), and follows VMs with :class:`kvmstat.host.vms.VMWatch`:
what to do when a VM or one of its kernel helper threads comes or goes is
engine business, done in the ``_vm_*``/``_helpers_*`` hooks.

The conventions both engines keep: a VM found exited is read one last time
with its final counts before the next :meth:`~CountingProvider.refresh`
drops it from the breakdown (its counts stay in the totals), and the
reading says which VMs ended (:attr:`~kvmstat.providers.base.Reading.ended`);
with one watched VM (*pid*), nothing is followed once it has exited, and its
counts stay readable.
"""

from __future__ import annotations

import heapq
from types import MappingProxyType
from typing import Dict, FrozenSet, List, Mapping, Optional, Protocol, Sequence, Tuple

from ..host.vms import VM, VMChanges, VMWatch
from .base import Provider, Reading

__all__ = ["CountingProvider", "Counter"]


class Counter(Protocol):
    """What a counting engine offers the provider (both engines have it)."""

    fds: int

    def read(self, nbuckets: int = 0) -> Tuple[List[int], Optional[List[int]]]: ...

    def reset(self) -> None: ...

    def close(self) -> None: ...


class CountingProvider(Provider):
    """Fields counted by one engine object, host-wide or per VM.

    Subclasses set :attr:`_counter` and, to follow VMs, call :meth:`_follow`
    with a :class:`~kvmstat.host.vms.VMWatch`; they implement the hooks below.
    """

    #: how the events are counted, shown to users ("perf", "bpf")
    engine: str = ""

    def __init__(self, names: Sequence[str]):
        self._names: List[str] = list(names)
        self._zero_row: Mapping[str, int] = MappingProxyType(dict.fromkeys(self._names, 0))
        self._counter: Optional[Counter] = None
        self._pid: Optional[int] = None
        self._watch: Optional[VMWatch] = None
        self._buckets: Dict[int, int] = {}          # VM pid -> bucket
        self._free_buckets: List[int] = []          # heap of cleared buckets
        self._nbuckets = 0
        self._exited: List[int] = []                # VMs read one last time
        self._watched_ended = False                 # the VM of *pid* has exited
        self._ended: FrozenSet[int] = frozenset()   # found exited, not yet reported

    # -- hooks for the engines -------------------------------------------------
    def _vm_started(self, vm: VM, bucket: int) -> None:
        """Start counting a VM (its threads and helper threads) into *bucket*."""

    def _vm_ended(self, pid: int) -> None:
        """The VM has exited: it is read once more, then dropped."""

    def _vm_dropped(self, pid: int, bucket: int) -> None:
        """Forget an exited VM; its counts stay in the totals, *bucket* is reused."""

    def _helpers_started(self, pid: int, tids: List[int]) -> None:
        """Kernel threads now work for VM *pid*."""

    def _helpers_ended(self, pid: int, tids: List[int]) -> None:
        """Kernel threads of VM *pid* have ended."""

    def _changes_coming(self, changes: VMChanges) -> None:
        """Called before the hooks of one refresh (e.g. to raise limits)."""

    def _changes_done(self) -> None:
        """Called after the hooks of the first VMs and of every refresh that
        changed something."""

    # -- following VMs -----------------------------------------------------------
    def _follow(self, watch: VMWatch, pid: Optional[int]) -> None:
        """Follow the VMs of *watch* (one VM when *pid* is set), starting
        with those it lists now."""
        self._watch, self._pid = watch, pid
        for vm in watch.vms.values():
            self._start_vm(vm)
        self._changes_done()

    def _start_vm(self, vm: VM) -> None:
        if self._free_buckets:
            bucket = heapq.heappop(self._free_buckets)
        else:
            bucket, self._nbuckets = self._nbuckets, self._nbuckets + 1
        self._buckets[vm.pid] = bucket
        self._vm_started(vm, bucket)

    def _drop_vm(self, pid: int) -> None:
        bucket = self._buckets.pop(pid)
        self._vm_dropped(pid, bucket)
        heapq.heappush(self._free_buckets, bucket)

    def refresh(self) -> None:
        """Follow VMs: start counting new VMs and helper threads, stop with
        exited ones.  The VMs found exited are in the next :meth:`snapshot`'s
        ``ended``; once the watched VM (*pid*) has exited nothing is
        followed any more and its counts stay readable."""
        if self._watch is None or self._counter is None or self._watched_ended:
            return
        dropped = bool(self._exited)
        while self._exited:
            self._drop_vm(self._exited.pop())
        changes = self._watch.update()
        if changes:
            self._changes_coming(changes)
            for pid in changes.ended:
                self._vm_ended(pid)
                self._exited.append(pid)
            for pid, tids in changes.helpers_ended.items():
                self._helpers_ended(pid, tids)
            for vm in changes.started:
                self._start_vm(vm)
            for pid, tids in changes.helpers_started.items():
                self._helpers_started(pid, tids)
        if changes or dropped:
            self._changes_done()
        self._ended = self._ended | frozenset(changes.ended)
        if self._pid is not None and self._pid in changes.ended:
            self._watched_ended = True

    # -- reading -------------------------------------------------------------------
    @property
    def fields(self) -> List[str]:
        """The counted fields (parents and children), in event order."""
        return list(self._names)

    @property
    def fds(self) -> int:
        """Number of file descriptors the counting engine holds (following
        VMs holds a pidfd per VM besides: :attr:`watch_fds`)."""
        return self._counter.fds if self._counter is not None else 0

    @property
    def watch_fds(self) -> int:
        """Number of file descriptors held to follow VMs (pidfds)."""
        return self._watch.fds if self._watch is not None else 0

    @property
    def supports_by_vm(self) -> bool:
        """True when opened for one VM or per VM."""
        return self._watch is not None

    @property
    def vms(self) -> Dict[int, VM]:
        """The VMs counted now (pid -> :class:`~kvmstat.host.vms.VM`); empty host-wide."""
        return dict(self._watch.vms) if self._watch is not None else {}

    def snapshot(self, *, by_vm: bool = False, histograms: bool = False,
                 by_vcpu: bool = False) -> Reading:
        """One native bulk read: totals, and with *by_vm* the per-VM breakdown.

        The breakdown lists the VMs running at the last :meth:`refresh`,
        and those it found exited (``ended``) with their final counts; the
        refresh after that drops an exited VM from the breakdown (its counts
        stay in the totals).  Tracepoints have no histograms nor vCPUs.
        """
        names = self._names
        ended, self._ended = self._ended, frozenset()
        if self._counter is None:
            return Reading(dict.fromkeys(names, 0), ended=ended)
        if not by_vm or self._watch is None:
            totals, _ = self._counter.read()
            return Reading(dict(zip(names, totals)), ended=ended)
        totals, rows = _read_rows(self._counter, self._nbuckets, len(names))
        # Rows only for the VMs that counted something; the others (idle VMs,
        # most of a fleet) share one read-only all-zero row: same values,
        # nothing built per VM and field.
        zero = self._zero_row
        per_vm = {pid: dict(zip(names, rows[b])) if b in rows else zero
                  for pid, b in self._buckets.items()}
        return Reading(dict(zip(names, totals)), per_vm, ended=ended)

    def reset(self) -> None:
        """Start every count from zero again."""
        if self._counter is not None:
            self._counter.reset()

    def close(self) -> None:
        """Release every file descriptor; safe to call twice."""
        if self._counter is not None:
            counter, self._counter = self._counter, None
            counter.close()
        if self._watch is not None:
            self._watch.close()


def _read_rows(counter: Counter, nbuckets: int, nfields: int
               ) -> Tuple[List[int], Dict[int, Sequence[int]]]:
    """The totals and the rows of the buckets that counted something
    (bucket -> row), with the counter's ``read_rows`` where it has one, else
    from its dense matrix."""
    read_rows = getattr(counter, "read_rows", None)
    if read_rows is not None:
        return read_rows(nbuckets)
    totals, flat = counter.read(nbuckets)
    flat = flat or []
    rows = {}
    for b in range(nbuckets):
        row = flat[b * nfields:(b + 1) * nfields]
        if any(row):
            rows[b] = row
    return totals, rows
