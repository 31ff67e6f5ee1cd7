"""Exit durations as text, log rows and JSON (pure functions).

The table (``kvm_stat -1 --durations``, the display's durations view, log
mode) has one row per field: the number of durations, their share of the
time of their event (a reason's share of all the durations of its event:
``kvm_userspace_exit(IO)`` against all of ``kvm_userspace_exit``; 100 for
the event's own row), the mean, p50 and p99 (upper estimates from the log2
buckets, see :meth:`~kvmstat.counting.durations.DurationHistogram.percentile_ns`)
and the maximum, in microseconds.

The vCPU table under it (``-1`` and the display; ``"vcpus"`` in JSON) has
one row per vCPU thread: which share of its time it spent in KVM_RUN
(``run%``), in the guest, in the kernel (``run%`` minus ``guest%``), halted
(part of the kernel's share) and in the VMM.  Where kvm_entry and kvm_exit
do not fire, the guest's and the kernel's shares read ``-`` (not measured),
never 0.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ...counting.durations import DurationHistogram, Durations, VcpuTimes, upper_bound_ns
from ...sampling.fields import parent_of
from ...textsafe import safe_name, safe_text
from .log import _csv_line, timestamp
from .text import guest_heading

__all__ = ["COLUMNS", "DurationRow", "duration_rows", "table_lines", "batch_duration_lines",
           "by_guest_duration_lines", "durations_object", "note_lines", "durations_notes",
           "log_banner",
           "plain_log_rows", "csv_log_header", "csv_log_rows", "sort_by_time",
           "VCPU_COLUMNS", "vcpu_lines", "vcpus_object"]

#: the columns after the field name
COLUMNS = ("count", "time%", "avg(us)", "p50(us)", "p99(us)", "max(us)")

_NAME_WIDTH = 42
_HEADER = ("%-42s%10s%8s%12s%12s%12s%12s" % (("field",) + COLUMNS)).rstrip()

DurationRow = Tuple[str, int, float, float, float, float, float]

def _us(ns: float) -> float:
    return ns / 1000.0

def share(name: str, durations: Mapping[str, DurationHistogram]) -> float:
    """*name*'s share (percent) of the time of its event."""
    hist = durations[name]
    parent = durations.get(parent_of(name))
    if parent is None or parent.sum_ns == 0:
        return 100.0 if hist.sum_ns else 0.0
    return 100.0 * hist.sum_ns / parent.sum_ns

def duration_rows(durations: Mapping[str, DurationHistogram],
                  names: Optional[Sequence[str]] = None) -> List[DurationRow]:
    """``(name, count, time%, avg, p50, p99, max)`` per field (times in
    microseconds), for *names* (default: every field with durations, by
    name)."""
    rows = []
    for name in (sorted(durations) if names is None else names):
        hist = durations.get(name)
        if hist is None or not hist.count:
            continue
        rows.append((name, hist.count, share(name, durations), _us(hist.avg_ns),
                     _us(hist.percentile_ns(0.5)), _us(hist.percentile_ns(0.99)),
                     _us(hist.max_ns)))
    return rows

def sort_by_time(durations: Mapping[str, DurationHistogram]) -> List[str]:
    """Field names with events by total time (largest first), each followed
    by its reasons by total time: the order of the durations view."""
    def weight(name: str) -> Tuple[int, str]:
        return (-durations[name].sum_ns, name)

    parents = sorted((n for n in durations if parent_of(n) == n), key=weight)
    order = []
    for parent in parents:
        order.append(parent)
        order.extend(sorted((n for n in durations if n != parent and parent_of(n) == parent),
                            key=weight))
    return order

def _format_row(row: DurationRow, width: int = _NAME_WIDTH) -> str:
    name, count, pct, avg, p50, p99, peak = row
    return "%-*s%10d%8.1f%12.2f%12.2f%12.2f%12.2f" % (width, safe_text(name)[:width], count,
                                                     pct, avg, p50, p99, peak)

def table_lines(durations: Mapping[str, DurationHistogram],
                names: Optional[Sequence[str]] = None) -> List[str]:
    """The header and one line per field with durations."""
    return [_HEADER] + [_format_row(row) for row in duration_rows(durations, names)]

def note_lines(unavailable: Mapping[str, str]) -> List[str]:
    """One line per distinct reason why some durations cannot be measured,
    naming the events it concerns (so no row reads as a measured zero)."""
    by_reason: Dict[str, List[str]] = {}
    for event, why in sorted(unavailable.items()):
        by_reason.setdefault(why, []).append(event)
    return [f"no durations for {', '.join(events)}: {why}" for why, events in by_reason.items()]

def durations_notes(durations: Durations) -> List[str]:
    """The notes under a durations table: what cannot be measured here,
    and durations lost to a full histogram table."""
    lines = note_lines(durations.unavailable)
    if durations.dropped:
        lines.append(f"{durations.dropped} durations were not recorded: the histogram table "
                     "is full (reset, or count fewer events)")
    return lines


# -- where each vCPU's time went --------------------------------------------

#: the columns of the vCPU table after the thread's name, pid and tid
VCPU_COLUMNS = ("run%", "guest%", "kernel%", "halted%", "VMM%")

_VCPU_NAME_WIDTH = 24


def _percent(value: Optional[float], column: int) -> str:
    return "%*s" % (column, "-") if value is None else "%*.1f" % (column, value)


def _vcpu_shares(v: VcpuTimes) -> Tuple[Optional[float], ...]:
    return (v.share(v.run_ns), v.share(v.guest_ns), v.share(v.kernel_ns), v.share(v.halt_ns),
            v.share(v.vmm_ns))


def _vcpu_header(label: str, width: int, column: int) -> str:
    return ("%-*s" % (width, label)
            + "".join("%*s" % (column, c) for c in ("pid", "tid") + VCPU_COLUMNS))


def _vcpu_line(v: VcpuTimes, width: int = _VCPU_NAME_WIDTH, column: int = 9) -> str:
    name = safe_text(v.name or f"tid {v.tid}")[:width]
    return ("%-*s%*d%*d" % (width, name, column, v.pid, column, v.tid)
            + "".join(_percent(x, column) for x in _vcpu_shares(v)))


def vcpu_lines(vcpus: Sequence[VcpuTimes], names: Optional[Mapping[int, Optional[str]]] = None,
               by_guest: bool = False) -> List[str]:
    """The vCPU table: a header and a row per vCPU thread (pid, then tid
    order) with its shares of the time (see the module); with *by_guest*,
    a heading per VM (*names*: pid -> guest name) before its vCPUs.  No
    vCPU: no lines."""
    if not vcpus:
        return []
    lines = [_vcpu_header("vcpu", _VCPU_NAME_WIDTH, 9)]
    pid = None
    for v in vcpus:
        if by_guest and v.pid != pid:
            pid = v.pid
            lines.append(guest_heading(pid, (names or {}).get(pid)))
        lines.append(_vcpu_line(v))
    return lines


def vcpus_object(vcpus: Sequence[VcpuTimes]) -> List[dict]:
    """The JSON ``"vcpus"`` list: per vCPU
    thread its ``pid``, ``tid``, ``thread`` name, the ``interval_ns`` and
    the ns spent in KVM_RUN (``run_ns``), in the guest (``guest_ns``), in
    the kernel (``kernel_ns``), halted (``halt_ns``) and in the VMM
    (``vmm_ns``); ``guest_ns`` and ``kernel_ns`` are null where they
    cannot be measured."""
    return [{"pid": v.pid, "tid": v.tid, "thread": safe_text(v.name),
             "interval_ns": v.interval_ns, "run_ns": v.run_ns, "guest_ns": v.guest_ns,
             "kernel_ns": v.kernel_ns, "halt_ns": v.halt_ns, "vmm_ns": v.vmm_ns}
            for v in vcpus]


def _with_vcpus(lines: List[str], sample, by_guest: bool) -> List[str]:
    durations: Durations = sample.durations
    vcpus = vcpu_lines(durations.vcpus, sample.vm_names, by_guest)
    if vcpus:
        lines = lines + [""] + vcpus
    return lines + durations_notes(durations)


def batch_duration_lines(sample) -> List[str]:
    """``kvm_stat -1 --durations``: the table of the durations since start
    (the whole run), the vCPU table over the sample's interval (the
    one-second window: every vCPU that did anything is known by then, so
    its shares add up to the window), then the notes."""
    return _with_vcpus(table_lines(sample.durations.total), sample, False)

def by_guest_duration_lines(sample) -> List[str]:
    """The same per VM: a heading per VM (pid order), its table, an empty
    line between VMs; the vCPU table by VM and the notes at the end."""
    durations: Durations = sample.durations
    lines: List[str] = []
    for pid in sorted(durations.by_vm_total or {}):
        if lines:
            lines.append("")
        lines.append(guest_heading(pid, sample.vm_names.get(pid)))
        lines.extend(table_lines(durations.by_vm_total[pid]))
    return _with_vcpus(lines, sample, True)

def _histogram_object(hist: DurationHistogram) -> dict:
    return {"count": hist.count, "sum_ns": hist.sum_ns, "max_ns": hist.max_ns,
            "buckets": [[upper_bound_ns(i), n] for i, n in enumerate(hist.buckets) if n]}

def durations_object(durations: Mapping[str, DurationHistogram]) -> Dict[str, dict]:
    """The JSON ``"durations"`` object: per field ``count``, ``sum_ns``,
    ``max_ns`` and ``buckets``, the non-empty log2 buckets as
    ``[upper_bound_ns, count]`` (exclusive bound; null for the last,
    open-ended bucket)."""
    return {safe_text(name): _histogram_object(durations[name]) for name in sorted(durations)}

# -- log mode ----------------------------------------------------------------

_LOG_HEADER = "%-19s %-42s%10s%8s%12s%12s%12s%12s" % (("time", "field") + COLUMNS)
_CSV_COLUMNS = ("count", "time_share", "avg_us", "p50_us", "p99_us", "max_us")

def log_banner(fields: Sequence[str]) -> str:
    """The plain log header of the durations rows."""
    return _LOG_HEADER.rstrip() + "\n"

def _interval_rows(sample) -> List[Tuple[Optional[int], DurationRow]]:
    durations: Durations = sample.durations
    rows: List[Tuple[Optional[int], DurationRow]] = []
    if durations.by_vm_delta is not None:
        for pid in sorted(durations.by_vm_delta):
            rows.extend((pid, row) for row in duration_rows(durations.by_vm_delta[pid]))
    else:
        rows.extend((None, row) for row in duration_rows(durations.delta))
    return rows

def plain_log_rows(sample, fields: Sequence[str], skip_zero: bool = False) -> List[str]:
    """One plain row per field (and VM) with durations in the interval:
    the time, the name (``NAME@pid`` per VM) and the table's columns."""
    when = timestamp(sample.time)
    out = []
    for pid, row in _interval_rows(sample):
        name = row[0] if pid is None else f"{row[0]}@{pid}"
        out.append(f"{when} {_format_row((name,) + row[1:])}\n")
    return out

def csv_log_header(fields: Sequence[str], by_guest: bool = False) -> str:
    """The CSV header of the durations rows."""
    head = ("timestamp", "pid", "guest", "field") if by_guest else ("timestamp", "field")
    return _csv_line(head + _CSV_COLUMNS)

def csv_log_rows(sample, fields: Sequence[str], skip_zero: bool = False,
                 by_guest: bool = False) -> List[str]:
    """One CSV row per field (and VM) with durations in the interval."""
    when = timestamp(sample.time)
    out = []
    for pid, (name, count, pct, avg, p50, p99, peak) in _interval_rows(sample):
        cells: List[object] = [when]
        if by_guest:
            cells += [pid, safe_name(sample.vm_names.get(pid)) or ""]
        cells += [safe_text(name), count, "%.1f" % pct] + ["%.2f" % v for v in (avg, p50, p99, peak)]
        out.append(_csv_line(cells))
    return out

_TUI_NUMBERS = "%8d%7.1f%10.1f%10.1f%10.1f%10.1f"
_TUI_HEADER = "%8s%7s%10s%10s%10s%10s" % COLUMNS
_TUI_NUMBERS_WIDTH = 55


def tui_vcpu_rows(vcpus: Sequence[VcpuTimes], width: int) -> List[str]:
    """The display's vCPU rows (over the last interval): header and a row
    per vCPU, busiest (largest share in KVM_RUN) first, narrower columns
    than the table, names cut to fit *width*."""
    column = 8
    name_width = max(10, min(_VCPU_NAME_WIDTH, width - 1 - column * (2 + len(VCPU_COLUMNS))))
    rows = [_vcpu_header("vCPU (last interval)", name_width, column)]
    for v in sorted(vcpus, key=lambda v: (-v.run_ns, v.pid, v.tid)):
        rows.append(_vcpu_line(v, name_width, column))
    return rows


def tui_rows(durations: Mapping[str, DurationHistogram], width: int) -> List[str]:
    """The display's durations view: header and rows by time (see
    :func:`sort_by_time`), narrower columns than the table, names cut to
    fit *width*."""
    name_width = max(10, min(_NAME_WIDTH, width - _TUI_NUMBERS_WIDTH))
    rows = ["%-*s" % (name_width, "Event") + _TUI_HEADER]
    for name, *numbers in duration_rows(durations, sort_by_time(durations)):
        rows.append("%-*s" % (name_width, safe_text(name)[:name_width])
                    + _TUI_NUMBERS % tuple(numbers))
    return rows
