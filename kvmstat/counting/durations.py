"""Exit durations: log2 histograms of how long vCPUs stay in each state.

The BPF durations engine (:mod:`kvmstat.counting.duration_engine`) measures, per
process and reason, in the kernel:

============================  ==============================================
field                         what one duration is
============================  ==============================================
``kvm_userspace_exit(R)``     from an exit to user space for reason R until
                              the vCPU thread enters KVM_RUN again: the time
                              the VMM (QEMU...) takes to handle the exit
``kvm_exit(R)``               from kvm_exit until kvm_entry (or until the
                              exit goes on to user space): the kernel's time
``kvm_entry``                 from kvm_entry until kvm_exit: guest time
``kvm_vcpu_wakeup(wait)``,    a halt's length, as kvm_vcpu_wakeup reports it,
``kvm_vcpu_wakeup(poll)``     split into halts that waited and that polled
============================  ==============================================

Each field is named after the event that starts the interval; a parent
(``kvm_userspace_exit``) holds every reason of its event.  This module is the
pure part: the histogram type, its bucket arithmetic and percentiles, and
the folding of the engine's raw entries into fields.  docs/durations.md
describes what the views show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple

__all__ = [
    "BUCKETS",
    "KIND_VMM",
    "KIND_KERNEL",
    "KIND_GUEST",
    "KIND_HALT",
    "KIND_EVENTS",
    "DurationHistogram",
    "DurationEntry",
    "DurationSet",
    "Durations",
    "bucket_of",
    "upper_bound_ns",
    "lower_bound_ns",
    "fold_entries",
    "interval",
    "VcpuEntry",
    "VcpuTimes",
    "vcpu_times",
]

#: number of log2 buckets: bucket i counts durations d with 2**i <= d <
#: 2**(i+1) ns (bucket 0 also 0 and 1 ns), the last one everything above
BUCKETS = 40

# Kinds, as the engine numbers them (csrc/kvmstat_durations.h).
KIND_VMM, KIND_KERNEL, KIND_GUEST, KIND_HALT = 1, 2, 3, 4

#: the event each kind of duration is named after
KIND_EVENTS: Dict[int, str] = {
    KIND_VMM: "kvm_userspace_exit",
    KIND_KERNEL: "kvm_exit",
    KIND_GUEST: "kvm_entry",
    KIND_HALT: "kvm_vcpu_wakeup",
}

#: reason names of kvm_vcpu_wakeup durations (its ``waited`` field)
HALT_REASONS: Dict[int, str] = {1: "wait", 0: "poll"}


def bucket_of(ns: int) -> int:
    """The bucket a duration of *ns* nanoseconds falls in (as the engine's
    programs compute it: floor(log2(ns)), 0 for 0 and 1, capped)."""
    if ns < 0:
        raise ValueError(f"a duration cannot be negative: {ns}")
    return min(max(ns.bit_length() - 1, 0), BUCKETS - 1)


def lower_bound_ns(index: int) -> int:
    """The smallest duration of bucket *index* (0 for the first)."""
    return 0 if index == 0 else 1 << index


def upper_bound_ns(index: int) -> Optional[int]:
    """The exclusive upper bound of bucket *index* in ns, None for the last
    (open-ended) bucket."""
    return None if index >= BUCKETS - 1 else 1 << (index + 1)


@dataclass(frozen=True)
class DurationHistogram:
    """Durations of one field: how many, their sum, the largest, and the
    count per log2 bucket (:data:`BUCKETS` of them, see :func:`bucket_of`).

    ``max_ns`` is exact; percentiles come from the buckets.
    """

    count: int = 0
    sum_ns: int = 0
    max_ns: int = 0
    buckets: Tuple[int, ...] = (0,) * BUCKETS

    @property
    def avg_ns(self) -> float:
        """The mean duration (0.0 without any)."""
        return self.sum_ns / self.count if self.count else 0.0

    def percentile_ns(self, fraction: float) -> int:
        """An upper estimate of the *fraction* quantile (0.5 for p50): the
        upper bound of the bucket holding that rank, never above the
        maximum, so at most twice the true value.  0 without durations."""
        if not 0 < fraction <= 1:
            raise ValueError(f"a quantile is in (0, 1], not {fraction!r}")
        if not self.count:
            return 0
        rank = fraction * self.count
        seen = 0
        for index, n in enumerate(self.buckets):
            seen += n
            if n and seen >= rank:
                bound = upper_bound_ns(index)
                return self.max_ns if bound is None or bound > self.max_ns else bound
        return self.max_ns

    def __add__(self, other: "DurationHistogram") -> "DurationHistogram":
        """Both histograms together (e.g. the reasons of a parent)."""
        return DurationHistogram(
            self.count + other.count, self.sum_ns + other.sum_ns,
            max(self.max_ns, other.max_ns),
            tuple(a + b for a, b in zip(self.buckets, other.buckets)))

    def since(self, earlier: "DurationHistogram", max_ns: int) -> "DurationHistogram":
        """What was added after *earlier* (a previous reading of the same
        cumulative histogram), with *max_ns* the maximum of that interval."""
        return DurationHistogram(
            self.count - earlier.count, self.sum_ns - earlier.sum_ns, max_ns,
            tuple(a - b for a, b in zip(self.buckets, earlier.buckets)))


EMPTY = DurationHistogram()


class DurationEntry(NamedTuple):
    """One raw histogram of the engine: (kind, process, reason code)."""

    kind: int
    tgid: int
    reason: int
    histogram: DurationHistogram


#: field name -> histogram
DurationSet = Dict[str, DurationHistogram]


def _merge(into: DurationSet, name: str, hist: DurationHistogram) -> None:
    have = into.get(name)
    into[name] = hist if have is None else have + hist


def fold_entries(entries: Iterable[DurationEntry],
                 reason_names: Mapping[int, Mapping[int, str]],
                 wanted=None) -> Tuple[DurationSet, Dict[int, DurationSet]]:
    """Fold raw entries into fields, host-wide and per process.

    *reason_names* maps a kind to {reason code: reason name}; a child field
    ``event(NAME)`` is made for the codes it knows (aliases: several codes,
    one name), and every code counts in the parent ``event``.  *wanted*, a
    predicate on field names (``-f``), keeps only the fields it accepts.
    """
    host: DurationSet = {}
    per_pid: Dict[int, DurationSet] = {}
    for entry in entries:
        event = KIND_EVENTS.get(entry.kind)
        if event is None:
            continue
        names = [event]
        reason = reason_names.get(entry.kind, {}).get(entry.reason)
        if reason is not None:
            names.append(f"{event}({reason})")
        mine = per_pid.setdefault(entry.tgid, {})
        for name in names:
            if wanted is None or wanted(name):
                _merge(host, name, entry.histogram)
                _merge(mine, name, entry.histogram)
    return host, {pid: fields for pid, fields in per_pid.items() if fields}


def interval(current: DurationSet, previous: Mapping[str, DurationHistogram]
             ) -> Tuple[DurationSet, DurationSet]:
    """``(total, delta)`` from a cumulative reading whose ``max_ns`` are the
    maxima since the previous reading (as the engine gives them) and the
    previous *total*: the delta is what was added since, the total keeps
    the largest maximum seen."""
    total: DurationSet = {}
    delta: DurationSet = {}
    for name, hist in current.items():
        before = previous.get(name, EMPTY)
        delta[name] = hist.since(before, hist.max_ns)
        total[name] = DurationHistogram(hist.count, hist.sum_ns,
                                        max(hist.max_ns, before.max_ns), hist.buckets)
    return total, delta


class VcpuEntry(NamedTuple):
    """One vCPU thread's cumulative times as the engine reads them (ns,
    since it first saw the thread, the open state counted until the read):
    in KVM_RUN (guest and kernel), in the VMM, in the guest (0 where
    kvm_entry/kvm_exit do not fire), halted (part of KVM_RUN)."""

    tid: int
    pid: int
    run_ns: int
    vmm_ns: int
    guest_ns: int
    halt_ns: int


@dataclass(frozen=True)
class VcpuTimes:
    """Where one vCPU thread's time went over an interval of
    ``interval_ns``: ``run_ns`` inside KVM_RUN (the guest's and the
    kernel's time together), ``vmm_ns`` in the VMM handling exits to user
    space, ``halt_ns`` halted (inside KVM_RUN); ``guest_ns`` in the guest,
    None where kvm_entry/kvm_exit do not fire (then the guest's and the
    kernel's time cannot be told apart).  ``name``: the thread's name as
    the VMM set it (QEMU: ``CPU 0/KVM``; text from outside)."""

    tid: int
    pid: int
    interval_ns: int
    run_ns: int
    vmm_ns: int
    halt_ns: int
    guest_ns: Optional[int] = None
    name: str = ""

    @property
    def kernel_ns(self) -> Optional[int]:
        """In KVM_RUN but not in the guest (halted time included); None
        where the guest's time is not measured."""
        return None if self.guest_ns is None else max(0, self.run_ns - self.guest_ns)

    def share(self, ns: Optional[int]) -> Optional[float]:
        """*ns* as a percentage of the interval (None stays None)."""
        if ns is None:
            return None
        return 100.0 * ns / self.interval_ns if self.interval_ns > 0 else 0.0


def vcpu_times(current: Iterable[VcpuEntry], previous: Mapping[int, VcpuEntry],
               interval_ns: int, guest_measured: bool,
               names: Optional[Mapping[int, str]] = None) -> List[VcpuTimes]:
    """The times of each vCPU over an interval of *interval_ns*: *current*
    minus *previous* (tid -> the entry of the previous read; a thread not
    in it started within the interval).  A read racing a state change may
    see a total a little early or late; negative differences count as 0
    and a share never exceeds the interval.  Sorted by pid, then tid."""
    def since(value: int, old: int) -> int:
        return min(max(0, value - old), max(0, interval_ns))

    names = names or {}
    out = []
    for entry in current:
        b = previous.get(entry.tid)
        if b is None or b.pid != entry.pid:  # new, or the tid reused by another process
            b = VcpuEntry(entry.tid, entry.pid, 0, 0, 0, 0)
        out.append(VcpuTimes(
            entry.tid, entry.pid, interval_ns,
            since(entry.run_ns, b.run_ns), since(entry.vmm_ns, b.vmm_ns),
            since(entry.halt_ns, b.halt_ns),
            since(entry.guest_ns, b.guest_ns) if guest_measured else None,
            names.get(entry.tid, "")))
    return sorted(out, key=lambda v: (v.pid, v.tid))


@dataclass
class Durations:
    """The durations of one :class:`~kvmstat.sampling.sampler.Sample`.

    ``total``: each field's histogram since the sampler was opened (or
    reset); ``delta``: over the sample's interval (``max_ns`` the largest
    of that interval).  ``by_vm_total``/``by_vm_delta``: the same per VM
    process id, when the sampler was asked for a per-VM breakdown.
    ``unavailable`` maps an event whose durations cannot be measured on
    this host (e.g. ``kvm_exit`` where it never fires) to the reason, so
    that views say so instead of showing zeros.  ``dropped``: durations
    lost since start because the engine's histogram table was full (the
    histograms of exited processes stay in it until a reset).
    ``vcpus``: where each vCPU thread's time went over the interval
    (:class:`VcpuTimes`: in the guest, in the kernel, halted, in the VMM),
    ``vcpus_total``: the same since the sampler was opened (or reset);
    threads that ended are left out.
    """

    total: DurationSet
    delta: DurationSet
    by_vm_total: Optional[Dict[int, DurationSet]] = None
    by_vm_delta: Optional[Dict[int, DurationSet]] = None
    unavailable: Dict[str, str] = field(default_factory=dict)
    dropped: int = 0
    vcpus: List[VcpuTimes] = field(default_factory=list)
    vcpus_total: List[VcpuTimes] = field(default_factory=list)

    def fields(self) -> List[str]:
        """Every field with durations, sorted."""
        return sorted(self.total)
