"""Samples: (total, delta) per field, combined over providers.

A :class:`Sampler` owns opened providers and turns their cumulative counts
into :class:`Sample` objects.  The read path is one read per provider and a
few dict operations; nothing here loops over perf events.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .fields import parent_of
from ..providers.base import Histograms, Provider, Totals

__all__ = ["Sample", "Sampler", "FieldValues"]

#: field name -> (total, delta)
FieldValues = Dict[str, Tuple[int, int]]


@dataclass
class Sample:
    """One reading of every field.

    ``values`` maps each field to ``(total, delta)``: the count since the
    providers were opened (or reset) and the count since the previous sample.
    ``interval`` is the monotonic time in seconds since the previous sample
    (0.0 for the first), ``time`` the wall-clock time of the reading.
    ``by_vm`` maps VM pids to their own field values when the sampler was
    asked for a per-VM breakdown (None otherwise; empty when no provider can
    attribute events to VMs), and ``vm_names`` maps those pids to guest
    names (None for a VM without a name).  ``engine`` says how tracepoints
    were counted (``"bpf"`` or ``"perf"``; None without tracepoints).
    ``histograms`` holds the providers' histogram statistics when the
    sampler was asked for them (None otherwise; empty when no provider has
    any), and ``vm_histograms`` the same per VM pid when a per-VM breakdown
    was asked for too.
    """

    time: float
    interval: float
    values: FieldValues
    by_vm: Optional[Dict[int, FieldValues]] = None
    vm_names: Dict[int, Optional[str]] = field(default_factory=dict)
    engine: Optional[str] = None
    histograms: Optional[Histograms] = None
    vm_histograms: Optional[Dict[int, Histograms]] = None

    def rate(self, name: str) -> float:
        """Per-second rate of *name* over this sample's interval."""
        if self.interval <= 0:
            return 0.0
        return self.values[name][1] / self.interval

    def parents(self) -> List[str]:
        """The fields that are not children, sorted."""
        return sorted(n for n in self.values if parent_of(n) == n)


def _with_deltas(current: Totals, previous: Totals) -> FieldValues:
    # A field (or VM) seen for the first time counts from zero.
    get = previous.get
    return {name: (total, total - get(name, 0)) for name, total in current.items()}


class Sampler:
    """Reads providers and computes deltas between successive samples.

    *by_vm* asks every provider that can attribute events to VMs for a per-VM
    breakdown too.  *names* is an optional callable mapping a VM pid to its
    guest name.  *histograms*, a predicate on histogram names, asks for the
    providers' histogram statistics whose names it accepts (``lambda name:
    True`` for all).  The sampler owns the providers: :meth:`close` closes
    them.
    """

    def __init__(self, providers: Sequence[Provider], *, by_vm: bool = False,
                 names: Optional[Callable[[int], Optional[str]]] = None,
                 histograms: Optional[Callable[[str], bool]] = None,
                 clock: Callable[[], float] = time.monotonic,
                 wallclock: Callable[[], float] = time.time):
        self.providers = list(providers)
        self.by_vm = by_vm
        self._names = names
        self._histogram_filter = histograms
        self._clock = clock
        self._wallclock = wallclock
        self._previous: Totals = {}
        self._previous_vm: Dict[int, Totals] = {}
        self._previous_time: Optional[float] = None

    @property
    def engine(self) -> Optional[str]:
        """How tracepoints are counted (``"bpf"``, ``"perf"``), None without them."""
        for provider in self.providers:
            engine = getattr(provider, "engine", None)
            if engine:
                return engine
        return None

    @property
    def fields(self) -> List[str]:
        """Every field of every provider, sorted by name."""
        names = set()
        for provider in self.providers:
            names.update(provider.fields)
        return sorted(names)

    def _read(self) -> Totals:
        if len(self.providers) == 1:
            return self.providers[0].read()
        totals: Totals = {}
        for provider in self.providers:
            totals.update(provider.read())
        return totals

    def _read_with_vms(self) -> Tuple[Totals, Dict[int, Totals]]:
        totals: Totals = {}
        merged: Dict[int, Totals] = {}
        for provider in self.providers:
            provider_totals, per_vm = provider.read_all()
            totals.update(provider_totals)
            for pid, vm_totals in per_vm.items():
                merged.setdefault(pid, {}).update(vm_totals)
        return totals, merged

    def _read_histograms(self) -> Tuple[Histograms, Optional[Dict[int, Histograms]]]:
        """The accepted histograms of every provider, and per VM with *by_vm*."""
        wanted = self._histogram_filter
        assert wanted is not None
        merged: Histograms = {}
        per_vm: Optional[Dict[int, Histograms]] = {} if self.by_vm else None
        for provider in self.providers:
            merged.update((n, h) for n, h in provider.read_histograms().items() if wanted(n))
            if per_vm is not None:
                for pid, histograms in provider.read_histograms_by_vm().items():
                    mine = per_vm.setdefault(pid, {})
                    mine.update((n, h) for n, h in histograms.items() if wanted(n))
        return merged, per_vm

    def sample(self, refresh: bool = True) -> Sample:
        """Read every provider once and return the new :class:`Sample`.

        Providers first follow VMs that came or went (``refresh()``), which
        raises :class:`~kvmstat.errors.VMGone` when the one VM watched has
        exited; ``sample(refresh=False)`` then still reads the counts it
        left (e.g. for a last row).
        """
        if refresh:
            for provider in self.providers:
                provider.refresh()
        now = self._clock()
        by_vm = None
        vm_names: Dict[int, Optional[str]] = {}
        if self.by_vm:
            totals, per_vm = self._read_with_vms()
            previous_vm = self._previous_vm
            by_vm = {pid: _with_deltas(vm_totals, previous_vm.get(pid, {}))
                     for pid, vm_totals in per_vm.items()}
            if self._names is not None:
                vm_names = {pid: self._names(pid) for pid in per_vm}
            self._previous_vm = per_vm
        else:
            totals = self._read()
        histograms, vm_histograms = (self._read_histograms()
                                     if self._histogram_filter is not None else (None, None))
        interval = 0.0 if self._previous_time is None else now - self._previous_time
        values = _with_deltas(totals, self._previous)
        self._previous = totals
        self._previous_time = now
        return Sample(self._wallclock(), interval, values, by_vm, vm_names, self.engine,
                      histograms, vm_histograms)

    def reset(self) -> None:
        """Zero every counter; the next sample starts a new interval."""
        for provider in self.providers:
            provider.reset()
        self._previous = {}
        self._previous_vm = {}
        self._previous_time = None

    def close(self) -> None:
        """Close every provider."""
        for provider in self.providers:
            provider.close()

    def __enter__(self) -> "Sampler":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
