"""Metric families of the exporter: names, types, units and HELP texts of fields.

One place decides how a kvmstat field becomes a Prometheus metric family, following
the Prometheus naming conventions (docs/metrics.md has the full table):

* the source is part of the name, so one concept never has two spellings that differ
  by a letter: tracepoint ``kvm_pio`` -> ``kvm_tracepoint_pio_total``; KVM's own
  statistics (debugfs ``-d`` and binary statistics ``--binstats``, which carry the same
  statistics under the same names and exclude each other) ``exits`` ->
  ``kvm_stats_exits_total``;
* counters end in ``_total``; times are in seconds: a ``*_ns`` statistic becomes
  ``*_seconds_total`` and its values are scaled by 1e-9; no abbreviated unit stays in
  a name (tracepoint ``kvm_halt_poll_ns``, which counts changes of the halt-polling
  interval, becomes ``kvm_tracepoint_halt_poll_interval_changes_total``);
* current levels (instant and peak statistics such as ``pages_4k``) are gauges without
  a suffix;
* a child field ``parent(REASON)`` is a series of its parent's family with a
  ``reason`` label (see :mod:`kvmstat.frontends.exporter_render` for how series partition);
* KVM's histogram statistics (``halt_wait_hist``) become Prometheus histograms in
  seconds: ``kvm_stats_halt_wait_duration_seconds``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, FrozenSet, Iterable, List, Optional, Tuple

from ..sampling.fields import parent_of, reason_of

__all__ = ["DEFAULT_VM_SERIES", "FamilySpec", "HistogramSpec", "family_name", "histogram_family_name",
           "layout_families", "escape_label_value", "escape_help", "histogram_spec", "TRACEPOINT_PREFIX", "STATS_PREFIX"]

#: ``--vm-series`` default: the families that get per-VM series (``re.match`` on the
#: field name): exits and their reasons, I/O, halts and interrupts, from the
#: tracepoints and from KVM's statistics.
DEFAULT_VM_SERIES = (
    r"kvm_(exit|userspace_exit|pio|mmio|fast_mmio|msr|cpuid|hypercall|vcpu_wakeup"
    r"|halt_poll_ns|set_irq|msi_set_irq|inj_virq|apic_accept_irq|apic_ipi|ioapic_set_irq"
    r"|pic_set_irq)$"
    r"|exits$|.*_exits$|halt_.*|.*_injections$")

#: Prefix of the families counted by the tracepoints provider.
TRACEPOINT_PREFIX = "kvm_tracepoint_"
#: Prefix of the families of KVM's own statistics (debugfs, binary statistics).
STATS_PREFIX = "kvm_stats_"

_INVALID_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_]")
_NS_SUFFIX = "_ns"
_SECONDS_PER_NS = 1e-9

#: Tracepoints whose name holds an abbreviated unit, renamed for what they count.
_TRACEPOINT_RENAMES = {
    "kvm_halt_poll_ns": "halt_poll_interval_changes",
}

#: What the common tracepoints mean (others get a generic text).
_TRACEPOINT_HELP = {
    "kvm_exit": "VM exits: times a vCPU left guest mode for the hypervisor",
    "kvm_entry": "VM entries: times a vCPU entered guest mode",
    "kvm_userspace_exit": "Exits of KVM_RUN to the VMM in user space (e.g. QEMU), by reason",
    "kvm_pio": "Port I/O instructions of the guests handled by KVM",
    "kvm_mmio": "Memory-mapped I/O accesses of the guests handled by KVM",
    "kvm_fast_mmio": "Memory-mapped I/O writes completed on KVM's fast path",
    "kvm_msr": "Model-specific register reads and writes of the guests",
    "kvm_cpuid": "CPUID instructions of the guests",
    "kvm_hypercall": "Hypercalls of the guests",
    "kvm_emulate_insn": "Guest instructions emulated by KVM",
    "kvm_vcpu_wakeup": "Wake-ups of halted vCPUs (after polling or waiting)",
    "kvm_halt_poll_ns": "Changes of a vCPU's halt-polling interval",
    "kvm_set_irq": "Interrupt lines set through KVM's interrupt routing",
    "kvm_msi_set_irq": "Message-signalled interrupts injected by KVM",
    "kvm_inj_virq": "Virtual interrupts injected into vCPUs",
    "kvm_apic_accept_irq": "Interrupts accepted by a vCPU's local APIC",
    "kvm_apic_ipi": "Inter-processor interrupts sent by the guests",
    "kvm_page_fault": "Guest page faults handled by KVM",
    "kvm_fpu": "Loads and puts of the guest FPU state",
}

#: What the common KVM statistics mean (others get a generic text).
_STATS_HELP = {
    "exits": "VM exits: times a vCPU left guest mode for the hypervisor",
    "io_exits": "Exits for port I/O",
    "mmio_exits": "Exits for memory-mapped I/O",
    "halt_exits": "Exits because a vCPU halted (HLT)",
    "irq_exits": "Exits because an external interrupt arrived",
    "signal_exits": "Exits of KVM_RUN because a signal was pending for the vCPU thread",
    "request_irq_exits": "Exits to user space to request an interrupt window",
    "irq_window_exits": "Exits at an interrupt window",
    "nmi_window_exits": "Exits at an NMI window",
    "irq_injections": "Interrupts injected into vCPUs",
    "nmi_injections": "Non-maskable interrupts injected into vCPUs",
    "halt_successful_poll": "Halts that ended while polling (a wake-up came within the window)",
    "halt_attempted_poll": "Halts for which KVM polled before sleeping",
    "halt_poll_invalid": "Halt polls ended because the vCPU could not run",
    "halt_wakeup": "Wake-ups of halted vCPUs",
    "halt_poll_success_ns": "Time spent polling in halts whose polling succeeded",
    "halt_poll_fail_ns": "Time spent polling in halts whose polling failed (CPU time "
                         "spent for nothing)",
    "halt_wait_ns": "Time halted vCPUs spent waiting (sleeping) after polling",
    "pages_4k": "Guest memory currently mapped with 4 KiB pages, in pages",
    "pages_2m": "Guest memory currently mapped with 2 MiB pages, in pages",
    "pages_1g": "Guest memory currently mapped with 1 GiB pages, in pages",
}

_HISTOGRAM_HELP = {
    "halt_wait_hist": "How long halted vCPUs waited (slept) after polling, per halt",
    "halt_poll_success_hist": "How long KVM polled in halts whose polling succeeded, per halt",
    "halt_poll_fail_hist": "How long KVM polled in halts whose polling failed, per halt",
}


def escape_label_value(value: str) -> str:
    """*value* escaped for a label value between double quotes (both formats).

    Label values come from outside (guest names, kernel text): backslash, double
    quote and line feed are escaped, so no value can end the quoted string or the line.
    """
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """*text* escaped for a ``# HELP`` line (backslash and line feed)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _sanitized(name: str) -> str:
    return _INVALID_NAME_CHARS.sub("_", name).strip("_") or "unnamed"


def _source_of(provider: str) -> str:
    return "tracepoint" if provider == "tracepoints" else "stats"


def family_name(field: str, provider: str = "tracepoints") -> Tuple[str, bool]:
    """(family name without ``_total``, True if values are nanoseconds to scale).

    ``kvm_pio`` -> ``kvm_tracepoint_pio``; ``kvm_exit(HLT)`` -> ``kvm_tracepoint_exit``
    (the reason becomes a label); statistics (provider ``debugfs`` or ``binstats``):
    ``exits`` -> ``kvm_stats_exits``, ``halt_wait_ns`` -> ``kvm_stats_halt_wait_seconds``
    (scaled).  Characters a metric name cannot hold become ``_``.
    """
    parent = parent_of(field)
    scaled = False
    if _source_of(provider) == "tracepoint":
        base = _TRACEPOINT_RENAMES.get(parent)
        if base is None:
            base = parent[len("kvm_"):] if parent.startswith("kvm_") else parent
        prefix = TRACEPOINT_PREFIX
    else:
        base, prefix = parent, STATS_PREFIX
        if base.endswith(_NS_SUFFIX):
            base, scaled = base[: -len(_NS_SUFFIX)] + "_seconds", True
    base = _sanitized(base)
    if base.endswith("_total"):  # the suffix belongs to the samples
        base = base[: -len("_total")]
    return prefix + base, scaled


def histogram_family_name(name: str, unit: Optional[str]) -> str:
    """``halt_wait_hist`` (unit seconds) -> ``kvm_stats_halt_wait_duration_seconds``."""
    base = name[: -len("_hist")] if name.endswith("_hist") else name
    base = _sanitized(base)
    if unit == "seconds":
        return f"{STATS_PREFIX}{base}_duration_seconds"
    if unit:
        return f"{STATS_PREFIX}{base}_{_sanitized(unit)}"
    return STATS_PREFIX + base


def _help_of(parent: str, provider: str, level: bool, scaled: bool, reasons: bool) -> str:
    if _source_of(provider) == "tracepoint":
        text = _TRACEPOINT_HELP.get(parent) or f"Times the kvm:{parent} tracepoint fired"
        text += f" (tracepoint kvm:{parent})"
    else:
        text = _STATS_HELP.get(parent) or (
            f"KVM's {'current value' if level else 'count'} of the statistic {parent}")
        text += f" (KVM statistic {parent}, {provider})"
    if scaled:
        text += ", in seconds"
    if reasons:
        text += "; one series per reason, reason=\"other\" counts the reasons not listed"
    return escape_help(text)


@dataclass
class FamilySpec:
    """How one parent field and its children are served.

    ``series`` lists (field, escaped reason label or "") of the children; ``other``
    is True when a ``reason="other"`` series completes them (parent minus the
    listed reasons).  ``scale`` multiplies values (1e-9 for nanoseconds).
    ``per_vm`` says whether the family gets per-VM series (the operator's choice).
    """

    name: str
    type: str
    help: str
    parent: str
    children: List[Tuple[str, str]]
    scale: Optional[float] = None
    per_vm: bool = False

    @property
    def sample_name(self) -> str:
        """The name of the samples: ``_total`` for counters."""
        return self.name + "_total" if self.type == "counter" else self.name

    def header(self, openmetrics: bool) -> str:
        """The ``# HELP``/``# TYPE`` lines (OpenMetrics names counters without ``_total``)."""
        shown = self.name if openmetrics else self.sample_name
        return f"# HELP {shown} {self.help}\n# TYPE {shown} {self.type}\n"


@dataclass
class HistogramSpec:
    """How one histogram statistic is served: family name, HELP, and the ``le``
    bounds (escaped label text, one per bucket but the last, which is ``+Inf``)."""

    name: str
    help: str
    source: str
    les: Tuple[str, ...]
    sum_field: Optional[str]
    per_vm: bool = False

    def header(self, openmetrics: bool) -> str:
        """The ``# HELP``/``# TYPE`` lines of the histogram family."""
        return f"# HELP {self.name} {self.help}\n# TYPE {self.name} histogram\n"


def _format_le(high: int, base: Optional[int], exponent: int) -> str:
    if base == 10:
        return repr(float(f"{high}e{exponent}"))
    return repr(float(high) * float(base or 1) ** exponent)


#: KVM's debugfs histogram files give bare buckets; the halt histograms are KVM's
#: logarithmic nanosecond histograms (bucket 0 = [0, 1), bucket N = [2**(N-1), 2**N)).
_DEBUGFS_LOG_NS = re.compile(r"halt_.*_hist")


def histogram_spec(name: str, counts_len: int, bounds, unit: Optional[str], base: Optional[int],
                   exponent: int, fields: FrozenSet[str], per_vm: bool) -> Optional[HistogramSpec]:
    """The :class:`HistogramSpec` of histogram *name*, None when its buckets'
    bounds are unknown (such a histogram is not served)."""
    if bounds is None:
        if not _DEBUGFS_LOG_NS.fullmatch(name) or counts_len < 2:
            return None
        bounds = [(0 if i == 0 else 1 << (i - 1), (1 << i) if i < counts_len - 1 else None)
                  for i in range(counts_len)]
        unit, base, exponent = "seconds", 10, -9
    highs = [high for _, high in bounds]
    if any(h is None for h in highs[:-1]) or highs[-1] is not None:
        return None
    les = tuple(_format_le(h, base, exponent) for h in highs[:-1])
    stem = name[: -len("_hist")] if name.endswith("_hist") else name
    sum_field = stem + _NS_SUFFIX if unit == "seconds" and stem + _NS_SUFFIX in fields else None
    help_text = _HISTOGRAM_HELP.get(name) or f"KVM's histogram statistic {name}"
    if unit:
        help_text += f", in {unit}"
    return HistogramSpec(histogram_family_name(name, unit), escape_help(
        help_text + f" (KVM statistic {name})"), name, les, sum_field, per_vm)


def layout_families(fields: Iterable[str], provider_of: Dict[str, str],
                    levels: FrozenSet[str], per_vm: "re.Pattern[str] | None"
                    ) -> Tuple[List[FamilySpec], List[str]]:
    """Group fields into families; returns (families sorted by name, fields left out).

    Fields in *levels* become gauges, every other field a counter.  *per_vm* selects
    (``re.match`` on the parent field's name) the families that get per-VM series.
    A field left out is one whose family another parent already took (two names
    that sanitize alike): it is reported once instead of making every scrape invalid.
    """
    families: Dict[str, FamilySpec] = {}
    owner: Dict[str, str] = {}
    skipped: List[str] = []
    # Parents sort before their children ("kvm_exit" < "kvm_exit(").
    for field in sorted(fields):
        parent = parent_of(field)
        provider = provider_of.get(parent, provider_of.get(field, "tracepoints"))
        name, scaled = family_name(field, provider)
        if owner.setdefault(name, parent) != parent:
            skipped.append(field)
            continue
        family = families.get(name)
        if family is None:
            level = parent in levels
            family = families[name] = FamilySpec(
                name, "gauge" if level else "counter", "", parent, [],
                1e-9 if scaled else None,
                per_vm is not None and per_vm.match(parent) is not None)
            family.help = _help_of(parent, provider, level, scaled, False)
        reason = reason_of(field)
        if reason is not None:
            family.children.append((field, f'reason="{escape_label_value(reason)}"'))
    for family in families.values():
        if family.children:
            provider = provider_of.get(family.parent, "tracepoints")
            family.help = _help_of(family.parent, provider, family.type == "gauge",
                                   family.scale is not None, True)
    return [families[n] for n in sorted(families)], skipped
