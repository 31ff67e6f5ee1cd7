"""The tracepoint provider on the BPF engine (``engine="bpf"``).

One BPF program per selected tracepoint counts every hit, on every CPU
(:mod:`kvmstat.counting.bpf`), attached as a raw tracepoint where the kernel
allows (no trace record is built), reading the reason only for events whose
reason is broken down; the fields are the same
as with perf groups (:class:`~kvmstat.providers.tracepoints.TracepointProvider`):
each parent counts all its reasons, each child ``parent(REASON)`` the codes
of its reason.  The descriptors held do not depend on the number of CPUs,
VMs or threads: two per tracepoint and two or three maps.

- host-wide: every process is counted, in per-CPU array slots (the
  cheapest layout: no key, no process); there is no per-VM breakdown.
- *pid*: only that VM process is counted (all its threads, those it starts
  later), and the kernel threads working for it in their own thread group
  (``kvm-pit/<pid>``), added as they appear; slots too.
- *by_vm*: every process is counted, per process (a hash entry per event,
  process and reason), and each VM's row sums its process and
  its kernel helper threads; VMs are followed as they start and exit, with
  no per-thread work at all (new threads are counted by the programs
  anyway).  Unlike perf groups, the totals stay host-wide: they include
  the events of other processes (e.g. kworkers injecting interrupts).

The count table has an entry per (event, process, reason) seen.  Entries of
processes that exited are folded into the totals: those of VMs when they
are dropped from the breakdown, the others (short-lived processes that hit
a kvm tracepoint) by a sweep once the table is half full.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

from ..counting.bpf import BpfCounter, BpfEventSpec
from ..counting.factories import CounterFactories, real_counters
from ..errors import Error, NotAvailable
from ..host.resources import ensure_open_files
from ..tracefs.catalog import Event, load_events
from ..host.vms import VM, VMWatch, process_alive
from .counting import CountingProvider
from .tracepoints import selected_fields

__all__ = ["BpfTracepointProvider", "REASON_ARGS", "bpf_layout", "in_child_pid_namespace"]

#: Where the reason of an event with children is among its tracepoint's
#: arguments (its TP_PROTO), for raw tracepoint programs: (event, reason
#: field) -> argument index.  kvm_userspace_exit is TP_PROTO(__u32 reason,
#: int errno) in virt/kvm; x86's kvm_exit gets (vcpu, isa) and computes its
#: reason while building the record, so its breakdown reads the record.
REASON_ARGS: Dict[Tuple[str, str], int] = {
    ("kvm_userspace_exit", "reason"): 0,
}


def _spec(event: Event) -> BpfEventSpec:
    """The BPF engine's view of *event*: its record field and, where known,
    its reason argument (raw tracepoint programs need the latter)."""
    arg = REASON_ARGS.get((event.name, event.filter_field or ""))
    return BpfEventSpec.for_field(event.name, event.id, event.reason_field,
                                  tracepoint=event.name, reason_arg=arg)


#: Events that fire only while a vCPU runs (inside KVM_RUN, so in the VM
#: process): a process that counted one of them was a VM.
VCPU_EVENTS = frozenset({"kvm_entry", "kvm_exit", "kvm_userspace_exit", "kvm_pio", "kvm_cpuid",
                         "kvm_msr", "kvm_emulate_insn"})


def in_child_pid_namespace(proc: str = "/proc") -> bool:
    """True when this process runs in a PID namespace below the host's
    (``NSpid:`` of ``<proc>/self/status`` lists more than one id)."""
    try:
        with open(f"{proc}/self/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return len(line.split()) > 2
    except OSError:
        pass
    return False


def bpf_layout(events: Iterable[Event], fields: Optional[Iterable[str]] = None
               ) -> Tuple[List[BpfEventSpec], List[Tuple[int, Optional[Tuple[int, ...]]]], List[str]]:
    """What the BPF engine counts for the selected *fields* of *events*.

    Returns the tracepoints (one program each: only those with a selected
    field), the columns as ``(tracepoint index, None or reason codes)`` and
    the field names, in the order of
    :func:`~kvmstat.providers.tracepoints.event_specs`.  Raises
    :class:`NotAvailable` for a child whose reason field's place in the
    record is unknown (its format file could not be read).
    """
    specs: List[BpfEventSpec] = []
    index: Dict[str, int] = {}
    columns: List[Tuple[int, Optional[Tuple[int, ...]]]] = []
    names: List[str] = []
    for event, child in selected_fields(events, fields):
        if event.name not in index:
            index[event.name] = len(specs)
            specs.append(_spec(event))
        if child is None:
            columns.append((index[event.name], None))
            names.append(event.name)
            continue
        if event.reason_field is None:
            raise NotAvailable(
                f"the BPF engine cannot count {child.name}: the format file of {event.name} "
                f"does not say where its {event.filter_field} field is (use the perf engine)")
        columns.append((index[event.name], child.codes))
        names.append(child.name)
    return specs, columns, names


class BpfTracepointProvider(CountingProvider):
    """Counts kvm tracepoints with BPF programs, host-wide, for one VM, or per VM.

    The arguments are those of
    :class:`~kvmstat.providers.tracepoints.TracepointProvider` (no
    *backend*: the BPF engine exists only in the C extension), plus
    *max_entries*, the capacity of the per-process count table (None: sized
    by the number of CPUs, see :class:`~kvmstat.counting.bpf.BpfCounter`),
    *attach* (:data:`~kvmstat.counting.bpf.ATTACH_MODES`), and *counters*,
    which makes the BPF engine (the real one by default).  The layout follows
    from the mode: per process only with *by_vm*, slots otherwise.
    """

    name = "tracepoints"
    engine = "bpf"

    def __init__(self, tracefs: str, *, fields: Optional[Iterable[str]] = None,
                 pid: Optional[int] = None, by_vm: bool = False, vendor: Optional[str] = None,
                 events: Optional[Sequence[Event]] = None, proc: str = "/proc",
                 debugfs: Optional[str] = None, max_entries: Optional[int] = None,
                 attach: str = "auto", counters: Optional[CounterFactories] = None):
        if events is None:
            events = load_events(tracefs, vendor)
        specs, columns, names = bpf_layout(events, fields)
        super().__init__(names)
        self._proc = proc
        self._bpf: Optional[BpfCounter] = None
        self._rows: Dict[int, int] = {}           # process id -> bucket
        self._helpers: Dict[int, Set[int]] = {}    # VM pid -> its helper threads
        self._rows_changed = False
        self.layout = "by-process" if by_vm else "slots"
        # Per VM: which table events show a process ran a vCPU (see
        # _add_unseen_vms), and the table size when last looked at.
        self._vcpu_events = ({i for i, spec in enumerate(specs) if spec.name in VCPU_EVENTS}
                             if by_vm and pid is None else set())
        self._entries_looked_at = 0
        if not specs:
            return
        watch = None
        if (pid is not None or by_vm) and in_child_pid_namespace(proc):
            # The programs see the host's process ids, /proc shows this
            # namespace's: the VMs could not be told apart.
            raise NotAvailable("the BPF engine tells VMs apart by the host's process ids, "
                               "and kvmstat runs in a PID namespace: use the perf engine")
        if pid is not None or by_vm:
            # Lists the VM(s) first: NoSuchVM before any program is loaded.
            watch = VMWatch(proc, pid=pid, debugfs=debugfs if pid is None else None)
        # A program and an attached perf event per tracepoint, and the maps.
        ensure_open_files(2 * len(specs) + 3, kind="BPF programs")
        open_bpf_counter = (counters or real_counters()).open_bpf_counter
        self._counter = self._bpf = open_bpf_counter(specs, columns, only_pid=pid,
                                                     layout=self.layout, attach=attach,
                                                     max_entries=max_entries)
        self._sweep_at = self._bpf.max_entries // 2
        try:
            if watch is not None:
                self._follow(watch, pid)
        except BaseException:
            self.close()
            raise

    @property
    def attached(self) -> Dict[str, str]:
        """Tracepoint name -> how its program is attached (``raw`` or
        ``perf``); empty once closed or when nothing is counted."""
        if self._bpf is None or self._counter is not self._bpf:
            return {}
        try:
            kinds = self._bpf.attached
        except Error:
            return {}
        return {spec.name: kind for spec, kind in zip(self._bpf.events, kinds)}

    # -- following VMs: a process -> row table, nothing per thread -----------------
    def _map(self, pid: int, tgids: Iterable[int]) -> None:
        bucket = self._buckets[pid]
        for tgid in tgids:
            self._rows[tgid] = bucket
        self._rows_changed = True

    def _vm_started(self, vm: VM, bucket: int) -> None:
        # A kernel thread is its own process: its id is its tgid.
        self._helpers[vm.pid] = set(vm.helper_tids)
        self._map(vm.pid, (vm.pid, *vm.helper_tids))

    def _helpers_started(self, pid: int, tids: List[int]) -> None:
        self._helpers[pid].update(tids)
        self._map(pid, tids)

    # An ended helper thread keeps its row until its VM is dropped, so that
    # the VM's counts never go back.

    def _vm_ended(self, pid: int) -> None:
        if pid == self._pid:
            # Nothing is left to count: keep the final counts and detach the
            # programs, which would otherwise run for every other VM's hits.
            counter, self._counter = self._bpf, _FinalCounts(*self._bpf.read(self._nbuckets))
            counter.close()

    def _vm_dropped(self, pid: int, bucket: int) -> None:
        gone = [pid, *sorted(self._helpers.pop(pid))]
        for tgid in gone:
            self._rows.pop(tgid, None)
        self._rows_changed = True
        self._bpf.forget(gone)

    def _changes_done(self) -> None:
        if not self._rows_changed or self._counter is not self._bpf:
            return
        self._bpf.set_buckets(self._rows)
        if self._pid is not None:
            self._bpf.also_count(tgid for tgid in self._rows if tgid != self._pid)
        self._rows_changed = False

    def refresh(self) -> None:
        """Follow VMs (see :class:`CountingProvider`), then fold the entries
        of exited processes into the totals when the table is half full.
        With *pid*, nothing is followed once that VM has exited."""
        super().refresh()
        self._add_unseen_vms()
        self._sweep()

    def _add_unseen_vms(self) -> None:
        """Give a row to VMs that ran and exited between two refreshes, so
        before anyone could discover them: processes that counted a vCPU
        event (:data:`VCPU_EVENTS`), are gone, and have no row.  Each is
        reported once, by pid, with its counts, then dropped like any VM
        that exited.  The table is looked at only when it has new entries."""
        if not self._vcpu_events or self._bpf is None or self._counter is not self._bpf \
                or self._bpf.entries == self._entries_looked_at:
            return
        self._entries_looked_at = self._bpf.entries
        ran = {entry.tgid for entry in self._bpf.dump() if entry.event in self._vcpu_events}
        unseen = [tgid for tgid in sorted(ran - self._rows.keys())
                  if not process_alive(tgid, None, self._proc)]
        for tgid in unseen:
            self._start_vm(VM(tgid, None))
            self._exited.append(tgid)  # dropped at the next refresh
        if unseen:
            self._changes_done()
            self._ended = self._ended | frozenset(unseen)

    def _sweep(self) -> None:
        """Forget the entries of processes that have exited (other than the
        VMs and helpers in the breakdown, forgotten when dropped)."""
        if self._bpf is None or self._counter is not self._bpf \
                or self._bpf.layout != "by-process" or self._bpf.entries < self._sweep_at:
            return
        seen = {entry.tgid for entry in self._bpf.dump()}
        dead = [tgid for tgid in seen - self._rows.keys()
                if not process_alive(tgid, None, self._proc)]
        removed = self._bpf.forget(dead) if dead else 0
        # Next time: halfway between what the live processes fill and the
        # capacity, so a table of live entries is not swept every refresh.
        live = max(0, self._bpf.entries - removed)
        self._sweep_at = live + (self._bpf.max_entries - live) // 2


class _FinalCounts:
    """The counts of a watched VM that has exited, read like a counter."""

    fds = 0

    def __init__(self, totals: List[int], flat: Optional[List[int]]):
        self._totals, self._flat = totals, flat or []

    def read(self, nbuckets: int = 0) -> Tuple[List[int], Optional[List[int]]]:
        n = len(self._totals)
        return list(self._totals), (self._flat[:nbuckets * n] if nbuckets else None)

    def reset(self) -> None:
        self._totals = [0] * len(self._totals)
        self._flat = [0] * len(self._flat)

    def close(self) -> None:
        pass
