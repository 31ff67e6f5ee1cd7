"""Exit durations as Prometheus histograms (``kvm_stat --serve --durations``).

One histogram family per event, named like the tracepoint families with the
base unit: ``kvm_tracepoint_userspace_exit_duration_seconds`` (``_bucket``,
``_sum``, ``_count``), ``kvm_tracepoint_exit_duration_seconds``,
``kvm_tracepoint_entry_duration_seconds`` (guest time),
``kvm_tracepoint_vcpu_wakeup_duration_seconds`` (halts).  The series
partition like every other family (:mod:`kvmstat.frontends.exporter_render`):
one per reason (``reason="IO"``; ``wait``/``poll`` for halts) and
``reason="other"`` for reasons not shown, so ``sum without (reason)`` is the
event's; per VM (``pid``, ``guest``) for the families ``--vm-series`` selects,
with the durations of processes outside the running VMs under
``pid="none",guest=""``; otherwise one host series.  Buckets are the engine's
log2 buckets in seconds (``le`` = 2^(i+1) ns), counted since the exporter
started; ``_sum`` is in seconds.

Where each vCPU's time went is the counter family
``kvm_tracepoint_vcpu_time_seconds_total`` (since the exporter started),
one series per vCPU thread (``pid``, ``guest``, ``vcpu``: the index in
QEMU's thread name ``CPU N/KVM``, else empty; ``tid``) and ``state``, the
states partitioning the thread's time: ``guest``, ``kernel`` (in KVM_RUN
outside the guest, halts excluded), ``halted`` and ``vmm`` where kvm_entry
and kvm_exit fire; elsewhere ``kvm_run`` (the guest's and the kernel's time
together, halts excluded), ``halted`` and ``vmm``.  ``rate()`` of a state
is the share of a CPU the vCPU spends in it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Callable, Dict, List, Mapping, Optional, Pattern, Tuple

from ..counting.durations import (BUCKETS, EMPTY, DurationHistogram, DurationSet, Durations,
                                  VcpuTimes, upper_bound_ns)
from ..sampling.fields import parent_of
from .exporter_names import TRACEPOINT_PREFIX, escape_label_value
from .exporter_render import OUTSIDE_LABELS, Lines

if TYPE_CHECKING:
    from ..sampling.duration_source import DurationSource

__all__ = ["render_durations", "render_vcpu_times", "durations_writer", "family_of",
           "OTHER_REASON", "VCPU_TIME_FAMILY"]

#: the reason label of the durations no shown reason covers
OTHER_REASON = "other"

_NS = 1e-9
_LE = [repr(upper_bound_ns(i) * _NS) for i in range(BUCKETS - 1)] + ["+Inf"]

_HELP = {
    "kvm_userspace_exit": "How long the VMM took to handle each exit to user space, until "
                          "the vCPU entered KVM_RUN again",
    "kvm_exit": "How long the kernel took to handle each VM exit, until kvm_entry or the "
                "exit to user space",
    "kvm_entry": "Time in the guest from each kvm_entry to the next kvm_exit",
    "kvm_vcpu_wakeup": "How long each halt lasted (kvm_vcpu_wakeup), waited or polled",
}


def family_of(event: str) -> str:
    """The histogram family of an event's durations."""
    base = event[len("kvm_"):] if event.startswith("kvm_") else event
    return f"{TRACEPOINT_PREFIX}{base}_duration_seconds"


def _reason(field: str) -> Optional[str]:
    parent = parent_of(field)
    return None if parent == field else field[len(parent) + 1:-1]


def _minus(a: DurationHistogram, b: DurationHistogram) -> DurationHistogram:
    """*a* without *b* (never below zero)."""
    return DurationHistogram(max(a.count - b.count, 0), max(a.sum_ns - b.sum_ns, 0), a.max_ns,
                             tuple(max(x - y, 0) for x, y in zip(a.buckets, b.buckets)))


def _partition(fields: Mapping[str, DurationHistogram]
               ) -> Dict[str, List[Tuple[Optional[str], DurationHistogram]]]:
    """event -> [(reason or None, histogram)], the reasons partitioning it."""
    out: Dict[str, List[Tuple[Optional[str], DurationHistogram]]] = {}
    for name in sorted(fields):
        reason = _reason(name)
        if reason is not None:
            out.setdefault(parent_of(name), []).append((reason, fields[name]))
    for name in sorted(fields):
        if _reason(name) is not None:
            continue
        parts = out.setdefault(name, [])
        if not parts:
            parts.append((None, fields[name]))
            continue
        covered = EMPTY
        for _, hist in parts:
            covered = covered + hist
        rest = _minus(fields[name], covered)
        if rest.count:
            parts.append((OTHER_REASON, rest))
    return out


def _series(lines: Lines, family: str, labels: str, reason: Optional[str],
            hist: DurationHistogram) -> None:
    if reason is not None:
        reason = escape_label_value(reason)
        labels = f'{labels},reason="{reason}"' if labels else f'reason="{reason}"'
    prefix = labels + "," if labels else ""
    cumulative = 0
    for le, count in zip(_LE, hist.buckets):
        cumulative += count
        lines.append(f'{family}_bucket{{{prefix}le="{le}"}} {cumulative}\n')
    suffix = "{" + labels + "}" if labels else ""
    lines.append(f"{family}_count{suffix} {hist.count}\n")
    lines.append(f"{family}_sum{suffix} {hist.sum_ns * _NS!r}\n")


def render_durations(lines: Lines, durations: Durations, scope: str,
                     vm_labels: Optional[Dict[int, str]],
                     per_vm: Callable[[str], bool]) -> int:
    """Append the duration histograms (since start) to *lines*; returns the
    number of series written.  *scope*: the labels of every series (the
    watched VM's with ``-p``, else empty); *vm_labels*: pid -> label text of
    the running VMs when per-VM series are served (None: host series only);
    *per_vm*: whether an event's family gets per-VM series."""
    host = _partition(durations.total)
    by_vm = durations.by_vm_total or {}
    written = 0
    for event in sorted(host):
        family = family_of(event)
        lines.append(f"# HELP {family} {_HELP.get(event, event)}\n"
                     f"# TYPE {family} histogram\n")
        if vm_labels is None or not per_vm(event):
            for reason, hist in host[event]:
                _series(lines, family, scope, reason, hist)
                written += 1
            continue
        inside: DurationSet = {}
        for pid, labels in vm_labels.items():
            for reason, hist in _partition(by_vm.get(pid, {})).get(event, ()):
                if hist.count:
                    _series(lines, family, labels, reason, hist)
                    written += 1
                    inside[reason or ""] = inside.get(reason or "", EMPTY) + hist
        for reason, hist in host[event]:
            rest = _minus(hist, inside.get(reason or "", EMPTY))
            _series(lines, family, OUTSIDE_LABELS, reason, rest)
            written += 1
    return written


#: the counter family of where vCPU threads spend their time
VCPU_TIME_FAMILY = f"{TRACEPOINT_PREFIX}vcpu_time_seconds"

_QEMU_VCPU = re.compile(r"CPU (\d+)/KVM\Z")


def _states(v: VcpuTimes) -> List[Tuple[str, int]]:
    """The states partitioning *v*'s time, with their ns."""
    halted = min(v.halt_ns, v.run_ns)
    if v.guest_ns is None:
        return [("kvm_run", v.run_ns - halted), ("halted", halted), ("vmm", v.vmm_ns)]
    kernel = v.kernel_ns or 0
    return [("guest", v.guest_ns), ("kernel", max(0, kernel - halted)),
            ("halted", min(halted, kernel)), ("vmm", v.vmm_ns)]


def render_vcpu_times(lines: Lines, vcpus: List[VcpuTimes], scope: str,
                      vm_labels: Mapping[int, str], openmetrics: bool) -> int:
    """Append :data:`VCPU_TIME_FAMILY` (each vCPU's time by state since
    start) to *lines*; returns the number of series written.  The VM labels
    come from *vm_labels* (pid -> label text), else *scope* (``-p``), else
    the pid alone."""
    if not vcpus:
        return 0
    shown = VCPU_TIME_FAMILY if openmetrics else VCPU_TIME_FAMILY + "_total"
    lines.append(f"# HELP {shown} Time each vCPU thread spent in each state: in the guest, in "
                 "the kernel, halted, in the VMM (kvm_run: guest and kernel together where "
                 "they cannot be told apart)\n"
                 f"# TYPE {shown} counter\n")
    written = 0
    for v in vcpus:
        labels = vm_labels.get(v.pid) or scope or f'pid="{v.pid}",guest=""'
        index = _QEMU_VCPU.match(v.name)
        vcpu = index.group(1) if index else ""
        for state, ns in _states(v):
            lines.append(f'{VCPU_TIME_FAMILY}_total{{{labels},vcpu="{vcpu}",tid="{v.tid}",'
                         f'state="{state}"}} {ns * _NS!r}\n')
            written += 1
    return written


def durations_writer(source: "DurationSource", scope: str = "",
                     vm_series: "Optional[Pattern[str]]" = None):
    """A family writer for :meth:`~kvmstat.frontends.exporter.KvmCollector.add_families`:
    at every scrape it reads *source* and writes its histograms.  *scope*: the
    watched VM's labels with ``-p`` (else empty); *vm_series*: the ``--vm-series``
    pattern when the collector serves per-VM series (None: host series only)."""
    def write(lines: Lines, openmetrics: bool, vm_labels: Dict[int, str]) -> int:
        durations = source.sample()
        written = render_durations(
            lines, durations, scope, vm_labels if vm_series is not None else None,
            lambda event: vm_series is not None and vm_series.match(event) is not None)
        return written + render_vcpu_times(lines, durations.vcpus_total, scope, vm_labels,
                                           openmetrics)

    return write
