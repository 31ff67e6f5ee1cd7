"""Writing a sample as the Prometheus text format or OpenMetrics, family by family.

The exporter writes its families directly (no per-series Python objects, no zero
series for VMs), so a scrape costs in proportion to the series it returns.

How series partition (docs/metrics.md):

* every family's series add up to the host-wide count: ``sum(family)`` is the host
  total, never a double count;
* per VM (``pid``, ``guest`` labels) only for the families the operator selected
  (``--vm-series``) and only for what happened in that VM: a VM's series appears at
  its first non-zero count and stays until the VM exits.  The events outside the VMs
  that are running (threads of no VM, VMs that have exited) are the series
  ``pid="none", guest=""``.  A family without per-VM series has one host series
  without ``pid``/``guest`` labels;
* a parent with reasons has one series per reason and ``reason="other"`` for the
  rest, never an all-reasons series: the all-reasons count is ``sum without (reason)``;
* gauges (current levels) with per-VM series have no ``pid="none"`` series (a level
  has no "outside"), and KVM's peak values (``max_*``) are not sums: use ``max()``.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from .exporter_names import (STATS_PREFIX, FamilySpec, HistogramSpec, escape_help,
                             escape_label_value, family_name)
from ..providers.base import SINCE_START, HistogramValues, Histograms
from ..providers.base import Totals
from ..textsafe import safe_text

__all__ = ["OUTSIDE_LABELS", "vm_label_text", "render_families", "render_histograms",
           "render_vcpus", "format_value", "Lines"]

#: The labels of the series of events outside the VMs that are running.
OUTSIDE_LABELS = 'pid="none",guest=""'

Lines = List[str]


def vm_label_text(pid: int, name: Optional[str]) -> str:
    """``pid="1234",guest="web1"`` (guest empty for a VM without a name), escaped."""
    return f'pid="{pid}",guest="{escape_label_value(safe_text(name or ""))}"'


def format_value(value: float, scale: Optional[float] = None) -> str:
    """A sample value as text: integers exact, scaled values as Python floats."""
    if scale is None:
        return str(value)
    return repr(value * scale)


def _join(a: str, b: str) -> str:
    if a and b:
        return "{" + a + "," + b + "}"
    if a or b:
        return "{" + (a or b) + "}"
    return ""


def _entries(family: FamilySpec, values: Totals) -> List[Tuple[str, int]]:
    """(reason label text, total) of *family*'s series in one scope."""
    parent = values.get(family.parent)
    if not family.children:
        return [] if parent is None else [("", parent)]
    out: List[Tuple[str, int]] = []
    listed = 0
    for field, label in family.children:
        counts = values.get(field)
        if counts is not None:
            out.append((label, counts))
            listed += counts
    if parent is not None:
        out.append(('reason="other"', max(parent - listed, 0)))
    return out


def _write(lines: Lines, sample_name: str, scope: str, entries: Iterable[Tuple[str, int]],
           scale: Optional[float], skip_zero: bool) -> int:
    written = 0
    for label, total in entries:
        if skip_zero and total == 0:
            continue
        lines.append(f"{sample_name}{_join(scope, label)} {format_value(total, scale)}\n")
        written += 1
    return written


def _has_counts(values: Totals, verdicts: Dict[int, bool]) -> bool:
    """True if any of *values* is not zero.  Providers share one all-zero row
    between idle VMs: it is looked at once per scrape (*verdicts*, by object
    identity, only valid while the rows are alive)."""
    verdict = verdicts.get(id(values))
    if verdict is None:
        verdict = verdicts[id(values)] = any(values.values())
    return verdict


def render_families(lines: Lines, families: Sequence[FamilySpec], values: Totals,
                    scope: str, by_vm: Optional[Dict[int, Totals]],
                    vm_labels: Dict[int, str], gauges_seen: Dict[int, set],
                    openmetrics: bool) -> int:
    """Append every family's lines; returns the number of series written.

    *scope* labels every host series (a watched VM's labels, or ``""``).  With
    *by_vm*, families selected for per-VM series get one series per VM and reason
    where the count is not zero (gauges: once non-zero, until the VM exits, kept
    in *gauges_seen*), and counters a ``pid="none"`` series for the rest.
    """
    written = 0
    verdicts: Dict[int, bool] = {}
    # Counter families write nothing for a VM whose counts are all zero (an
    # idle VM, most of a fleet): they look only at the others, told apart once
    # per scrape (a C-speed pass over each row), so that writing them costs in
    # proportion to the VMs with events, not to VMs x families.
    counted = {pid: labels for pid, labels in vm_labels.items()
               if _has_counts((by_vm or {}).get(pid, {}), verdicts)} if by_vm else {}
    for family in families:
        lines.append(family.header(openmetrics))
        name, scale = family.sample_name, family.scale
        if by_vm is None or not family.per_vm:
            written += _write(lines, name, scope, _entries(family, values), scale, False)
            continue
        gauge = family.type == "gauge"
        active: List[Totals] = []
        for pid, labels in (vm_labels if gauge else counted).items():
            vm_values = by_vm.get(pid)
            if vm_values is None:
                continue
            parent = vm_values.get(family.parent)
            if parent is None:
                continue
            if gauge:
                seen = gauges_seen.setdefault(pid, set())
                if parent == 0 and family.name not in seen:
                    continue
                seen.add(family.name)
                written += _write(lines, name, labels, _entries(family, vm_values), scale, False)
                continue
            if parent == 0:  # no event, so no reason either: nothing to write
                continue
            active.append(vm_values)
            written += _write(lines, name, labels, _entries(family, vm_values), scale, True)
        if gauge:
            continue
        # Outside the running VMs: the host count minus theirs (only VMs with events
        # count: a VM whose parent count is zero has zero for every reason too).
        outside: Totals = {}
        for field in [family.parent, *(f for f, _ in family.children)]:
            host = values.get(field)
            if host is None:
                continue
            inside = 0
            for vm_values in active:
                counts = vm_values.get(field)
                if counts is not None:
                    inside += counts
            outside[field] = max(host - inside, 0)
        written += _write(lines, name, OUTSIDE_LABELS, _entries(family, outside), scale, False)
    return written


def _histogram_lines(lines: Lines, spec: HistogramSpec, labels: str, counts: Sequence[int],
                     seconds: Optional[float]) -> None:
    cumulative = 0
    bucket = spec.name + "_bucket"
    prefix = labels + "," if labels else ""
    for le, count in zip(spec.les, counts):
        cumulative += count
        lines.append(f'{bucket}{{{prefix}le="{le}"}} {cumulative}\n')
    total = sum(counts)
    lines.append(f'{bucket}{{{prefix}le="+Inf"}} {total}\n')
    suffix = "{" + labels + "}" if labels else ""
    lines.append(f"{spec.name}_count{suffix} {total}\n")
    if seconds is not None:
        lines.append(f"{spec.name}_sum{suffix} {seconds!r}\n")


def _sum_seconds(spec: HistogramSpec, histogram: HistogramValues,
                 values: Totals) -> Optional[float]:
    # The matching *_ns counter is the sum of the histogram's samples when both
    # count over the same time (since the exporter started).
    if spec.sum_field is None or histogram.since != SINCE_START:
        return None
    counts = values.get(spec.sum_field)
    return None if counts is None else counts * 1e-9


def render_histograms(lines: Lines, specs: Sequence[HistogramSpec], histograms: Histograms,
                      values: Totals, scope: str,
                      vm_histograms: Optional[Dict[int, Histograms]],
                      by_vm: Optional[Dict[int, Totals]], vm_labels: Dict[int, str],
                      openmetrics: bool) -> int:
    """Append the histogram families (partitioned like the counters); returns the
    number of series written (one per histogram and label set)."""
    written = 0
    for spec in specs:
        host = histograms.get(spec.source)
        if host is None:
            continue
        lines.append(spec.header(openmetrics))
        if vm_histograms is None or not spec.per_vm:
            _histogram_lines(lines, spec, scope, host.counts, _sum_seconds(spec, host, values))
            written += 1
            continue
        inside = [0] * len(host.counts)
        inside_seconds = 0.0
        for pid, labels in vm_labels.items():
            mine = vm_histograms.get(pid, {}).get(spec.source)
            if mine is None or mine.total == 0 or len(mine.counts) != len(host.counts):
                continue
            vm_values = (by_vm or {}).get(pid, {})
            seconds = _sum_seconds(spec, mine, vm_values)
            _histogram_lines(lines, spec, labels, mine.counts, seconds)
            written += 1
            inside = [a + b for a, b in zip(inside, mine.counts)]
            inside_seconds += seconds or 0.0
        rest = [max(a - b, 0) for a, b in zip(host.counts, inside)]
        seconds = _sum_seconds(spec, host, values)
        _histogram_lines(lines, spec, OUTSIDE_LABELS, rest,
                         None if seconds is None else max(seconds - inside_seconds, 0.0))
        written += 1
    return written


def render_vcpus(lines: Lines, by_vcpu: Dict[int, Dict[int, Dict[str, int]]],
                 wanted: Callable[[str], bool], levels: frozenset,
                 vm_labels: Dict[int, str], openmetrics: bool) -> int:
    """Append per-vCPU families (``kvm_stats_vcpu_*``, labels pid, guest, vcpu) of the
    fields *wanted* accepts, non-zero values only; returns the series written."""
    rows: Dict[str, List[str]] = {}
    kinds: Dict[str, Tuple[str, Optional[float], str]] = {}
    for pid in sorted(by_vcpu):
        labels = vm_labels.get(pid)
        if labels is None:
            continue
        for vcpu in sorted(by_vcpu[pid]):
            for field, total in by_vcpu[pid][vcpu].items():
                if total == 0 or not wanted(field):
                    continue
                if field not in kinds:
                    name, scaled = family_name(field, "binstats")
                    name = "kvm_stats_vcpu_" + name[len(STATS_PREFIX):]
                    level = field in levels
                    kinds[field] = (name if level else name + "_total", 1e-9 if scaled else None,
                                    "gauge" if level else "counter")
                sample_name, scale, _ = kinds[field]
                rows.setdefault(field, []).append(
                    f'{sample_name}{{{labels},vcpu="{vcpu}"}} {format_value(total, scale)}\n')
    written = 0
    for field in sorted(rows):
        sample_name, scale, kind = kinds[field]
        shown = sample_name[: -len("_total")] if openmetrics and kind == "counter" else sample_name
        unit = ", in seconds" if scale else ""
        lines.append(f"# HELP {shown} {escape_help(f'KVM statistic {field} of one vCPU{unit}')}\n"
                     f"# TYPE {shown} {kind}\n")
        lines.extend(rows[field])
        written += len(rows[field])
    return written
