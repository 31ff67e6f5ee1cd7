"""Exit durations for a sampler: which engine, which fields, per VM.

:func:`open_durations` checks that the BPF engine can be used (``--engine
perf``, missing privileges or an old kernel: one line saying why) and opens
a :class:`DurationSource`, which a :class:`~kvmstat.sampling.sampler.Sampler` reads at
every sample (``Sample.durations``).
"""

from __future__ import annotations

import time
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from ..counting.duration_engine import (KVM_RUN, DurationCounter, durations_layout,
                                        kvm_exit_unavailable)
from ..counting.durations import (HALT_REASONS, KIND_EVENTS, KIND_HALT, KIND_KERNEL, KIND_VMM,
                                  Durations, DurationSet, VcpuEntry, VcpuTimes, fold_entries,
                                  interval, vcpu_times)
from .engine import choose_engine
from ..errors import Error, NotAvailable
from ..tracefs.events import Event, detect_vendor, list_event_names, load_events
from ..host.paths import Paths
from ..host.vms import thread_exists, thread_name

__all__ = ["DurationSource", "durations_note", "open_durations"]


def _reason_names(events: Mapping[str, Event]) -> Dict[int, Dict[int, str]]:
    """Kind -> {reason code: name}, from the kernel's reason tables."""
    names: Dict[int, Dict[int, str]] = {KIND_HALT: dict(HALT_REASONS)}
    for kind in (KIND_VMM, KIND_KERNEL):
        event = events.get(KIND_EVENTS[kind])
        table: Dict[int, str] = {}
        for child in (event.children if event is not None else ()):
            for code in child.codes:
                table.setdefault(code, child.reason)
        names[kind] = table
    return names


def _not_below(entry: VcpuEntry, previous: Optional[VcpuEntry]) -> VcpuEntry:
    """*entry*, no total below *previous*'s (the same thread's last read).

    A program ends a state by clearing its start, then adding its length to
    the total: a read in between misses that length once.  Totals must
    never go down (the exporter serves them as counters), so such a read
    keeps the previous values until the real ones pass them."""
    if previous is None or previous.pid != entry.pid:
        return entry
    return VcpuEntry(entry.tid, entry.pid, max(entry.run_ns, previous.run_ns),
                     max(entry.vmm_ns, previous.vmm_ns), max(entry.guest_ns, previous.guest_ns),
                     max(entry.halt_ns, previous.halt_ns))


class DurationSource:
    """Durations for a :class:`~kvmstat.sampling.sampler.Sampler`.

    *events*: the kvm events of this host (name -> Event); *wanted*: a
    predicate on field names (``-f``); *pid*: only that VM process (the
    programs record nothing for other processes); *by_vm*: a breakdown per
    process (every process that makes vCPU exits is a VM).  Every sample
    also says where each vCPU thread's time went (``Durations.vcpus``);
    *proc_path* is where to see which threads still exist and their names.
    *marker*: see :data:`MARKERS`; *raw*: attach the programs as raw
    tracepoints where the kernel allows (else, and with False, through
    perf events of the tracepoints).  Raises :class:`NotAvailable` (one line
    saying why) where the engine cannot run.
    """

    def __init__(self, tracefs: str, events: Mapping[str, Event], *,
                 wanted: Optional[Callable[[str], bool]] = None, pid: Optional[int] = None,
                 by_vm: bool = False, marker: str = "auto", raw: bool = True,
                 sys_path: str = "/sys", proc_path: str = "/proc"):
        unavailable = kvm_exit_unavailable(sys_path)
        layout = durations_layout(tracefs, events, marker=marker,
                                  kernel_times=unavailable is None)
        self.marker = layout["marker"].name
        self.unavailable: Dict[str, str] = {}
        if unavailable is not None:
            self.unavailable = {"kvm_exit": unavailable, "kvm_entry": unavailable}
        elif "kvm_exit" not in layout:
            why = "this kernel has no kvm_exit/kvm_entry tracepoints with an exit reason"
            self.unavailable = {"kvm_exit": why, "kvm_entry": why}
        self._pid = pid
        self._by_vm = by_vm
        self._wanted = wanted
        self._names = _reason_names(events)
        marker_value = 1 if self.marker == "kvm_fpu" else KVM_RUN
        self._proc = proc_path
        self._guest_measured = "kvm_entry" in layout
        self._start_ns = time.monotonic_ns()  # the programs' clock (CLOCK_MONOTONIC)
        self._counter = DurationCounter(layout, marker_value=marker_value, raw=raw, tgid=pid)
        self._previous: DurationSet = {}
        self._previous_vcpus: Dict[int, VcpuEntry] = {}
        self._previous_ns = self._start_ns
        self._thread_names: Dict[int, str] = {}
        self._previous_vm: Dict[int, DurationSet] = {}
        #: durations lost because the histogram table was full (since start)
        self.dropped = 0

    def _alive_name(self, entry: VcpuEntry) -> Optional[str]:
        """The thread's name (read once), None if the thread has ended."""
        name = self._thread_names.get(entry.tid)
        if name is None:
            name = thread_name(entry.pid, entry.tid, self._proc)
            if name is not None:
                self._thread_names[entry.tid] = name
        elif not thread_exists(entry.pid, entry.tid, self._proc):
            name = None
        return name

    def _live_vcpus(self) -> Tuple[List[VcpuEntry], int]:
        """The engine's vCPU threads that still exist; the entries of ended
        ones are dropped from the engine (their open state would grow)."""
        entries, now = self._counter.read_vcpus()
        live = []
        for entry in entries:
            if self._alive_name(entry) is not None:
                live.append(_not_below(entry, self._previous_vcpus.get(entry.tid)))
            else:
                self._counter.forget(entry.tid)
                self._thread_names.pop(entry.tid, None)
        return live, now

    def _vcpu_times(self) -> Tuple[List[VcpuTimes], List[VcpuTimes]]:
        """Each live vCPU's times over the interval and since start."""
        entries, now = self._live_vcpus()
        delta = vcpu_times(entries, self._previous_vcpus, now - self._previous_ns,
                           self._guest_measured, self._thread_names)
        total = vcpu_times(entries, {}, now - self._start_ns, self._guest_measured,
                           self._thread_names)
        self._previous_vcpus = {e.tid: e for e in entries}
        self._previous_ns = now
        return delta, total

    def sample(self) -> Durations:
        """Read the engine once: since start and since the previous sample."""
        entries, self.dropped = self._counter.read()
        host, per_pid = fold_entries(entries, self._names, self._wanted)
        total, delta = interval(host, self._previous)
        self._previous = total
        by_total = by_delta = None
        if self._by_vm:
            by_total, by_delta = {}, {}
            for tgid, fields in per_pid.items():
                by_total[tgid], by_delta[tgid] = interval(fields, self._previous_vm.get(tgid, {}))
            self._previous_vm = by_total
        vcpus, vcpus_total = self._vcpu_times()
        return Durations(total, delta, by_total, by_delta, dict(self.unavailable),
                         self.dropped, vcpus, vcpus_total)

    @property
    def attachments(self) -> Dict[str, str]:
        """How each program is attached (see
        :attr:`~kvmstat.counting.duration_engine.DurationCounter.attachments`)."""
        return self._counter.attachments

    def reset(self) -> None:
        """Start again from zero."""
        self._counter.reset()
        self._previous = {}
        self._previous_vm = {}
        self._previous_vcpus = {}
        self._start_ns = self._previous_ns = time.monotonic_ns()

    def close(self) -> None:
        """Detach the programs."""
        self._counter.close()


def open_durations(paths: Optional[Paths] = None, *, engine: str = "auto",
                   backend: Optional[str] = None, notify=None, **kwargs) -> DurationSource:
    """Open a :class:`DurationSource` (keyword arguments: its own) on this
    host.  Raises :class:`NotAvailable` with one line saying why where the
    BPF engine cannot be used: ``engine="perf"``, the pure-Python backend,
    missing privileges, an old kernel, a program the verifier refuses."""
    paths = paths or Paths()
    choice = choose_engine(engine, backend=backend)
    if choice.engine != "bpf":
        raise NotAvailable(f"exit durations need the BPF engine, and {choice.reason}"
                           if engine == "auto" else
                           "exit durations need the BPF engine: the perf engine was asked "
                           "for, and perf groups cannot measure durations")
    tracefs = paths.find_tracefs(notify=notify)
    wanted = set(KIND_EVENTS.values()) | {"kvm_fpu"}
    events = load_events(tracefs, detect_vendor(paths.sys, paths.proc),
                         names=[n for n in list_event_names(tracefs) if n in wanted])
    try:
        return DurationSource(tracefs, {e.name: e for e in events}, sys_path=paths.sys,
                              proc_path=paths.proc, **kwargs)
    except NotAvailable:
        raise
    except Error as exc:
        raise NotAvailable(f"exit durations need BPF programs on the kvm tracepoints: {exc}") from None


def durations_note(paths: Optional[Paths] = None, engine: str = "bpf") -> str:
    """What ``--durations`` measures on this host, or why it cannot, in one
    line (a note of ``kvm_stat --check``).  Tries it: loads and attaches the
    programs (host-wide), then releases them."""
    try:
        source = open_durations(paths, engine=engine)
    except Error as exc:
        return f"--durations is not available: {exc}"
    try:
        marker, unavailable = source.marker, dict(source.unavailable)
    finally:
        source.close()
    text = (f"--durations works (BPF): the VMM's time per exit to user space (end of "
            f"each: the next KVM_RUN, seen at {marker}), halt times and each vCPU's time "
            "in KVM_RUN and in the VMM")
    if unavailable:
        return f"{text}; {unavailable.get('kvm_exit')}"
    return f"{text}, the kernel's time per exit reason and the guest's time"
