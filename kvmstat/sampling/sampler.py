"""Samples: (total, delta) per field, combined over providers.

A :class:`Sampler` owns opened providers and turns their cumulative counts
into :class:`Sample` objects.  The read path is one read per provider and a
few dict operations; nothing here loops over perf events.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from ..errors import VMGone
from .fields import parent_of
from ..counting.durations import Durations
from ..providers.base import Histograms, Provider, Totals

__all__ = ["Sample", "Sampler", "FieldValues", "vm_exited_message"]

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
    was asked for too.  ``ended`` maps the VMs found exited during this
    interval to their last field values (the counts up to the exit), when
    the sampler follows VMs (a per-VM breakdown, or one VM watched with
    ``pid=``: then :attr:`Sampler.done` is True from this sample on).
    ``durations`` holds the exit durations
    (:class:`~kvmstat.counting.durations.Durations`) when the sampler was opened
    with a durations source (None otherwise).
    """

    time: float
    interval: float
    values: FieldValues
    by_vm: Optional[Dict[int, FieldValues]] = None
    vm_names: Dict[int, Optional[str]] = field(default_factory=dict)
    engine: Optional[str] = None
    histograms: Optional[Histograms] = None
    vm_histograms: Optional[Dict[int, Histograms]] = None
    ended: Dict[int, FieldValues] = field(default_factory=dict)
    durations: Optional["Durations"] = None

    def rate(self, name: str) -> float:
        """Per-second rate of *name* over this sample's interval."""
        if self.interval <= 0:
            return 0.0
        return self.values[name][1] / self.interval

    def parents(self) -> List[str]:
        """The fields that are not children, sorted."""
        return sorted(n for n in self.values if parent_of(n) == n)


def vm_exited_message(pid: Optional[int]) -> str:
    """The one-line note that the watched VM process *pid* has exited."""
    return f"VM process {pid} has exited"


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
    True`` for all).  *durations*, a source of exit durations (see
    :class:`~kvmstat.sampling.duration_source.DurationSource`: anything with
    ``sample()``, ``reset()`` and ``close()``), fills ``Sample.durations``.
    The sampler owns the providers and the durations source: :meth:`close`
    closes them.
    """

    def __init__(self, providers: Sequence[Provider], *, by_vm: bool = False,
                 names: Optional[Callable[[int], Optional[str]]] = None,
                 histograms: Optional[Callable[[str], bool]] = None,
                 durations=None,
                 clock: Callable[[], float] = time.monotonic,
                 wallclock: Callable[[], float] = time.time):
        self.providers = list(providers)
        self.by_vm = by_vm
        self._names = names
        self._histogram_filter = histograms
        self.durations = durations
        self._clock = clock
        self._wallclock = wallclock
        self._previous: Totals = {}
        self._previous_vm: Dict[int, Totals] = {}
        self._previous_time: Optional[float] = None
        #: the one VM process watched (``pid=``) by the providers, else None
        self.pid: Optional[int] = next(
            (p.pid for p in self.providers if getattr(p, "pid", None) is not None), None)
        self._done = False

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

    @property
    def done(self) -> bool:
        """True once the one VM watched (``pid=``) has exited: the sample that
        found it lists it in ``ended`` with its counts up to the exit, and
        there is nothing more to count."""
        return self._done

    def _snapshot(self) -> Tuple[Totals, Dict[int, Totals], Optional[Histograms],
                                 Optional[Dict[int, Histograms]], Set[int]]:
        """One snapshot of every provider, merged."""
        wanted = self._histogram_filter
        want_histograms = wanted is not None
        if len(self.providers) == 1 and not want_histograms:
            # The common case, without merging.
            reading = self.providers[0].snapshot(by_vm=self.by_vm)
            return reading.totals, reading.by_vm, None, None, set(reading.ended)
        totals: Totals = {}
        per_vm: Dict[int, Totals] = {}
        histograms: Optional[Histograms] = {} if want_histograms else None
        vm_histograms: Optional[Dict[int, Histograms]] = \
            {} if want_histograms and self.by_vm else None
        ended: Set[int] = set()
        for provider in self.providers:
            reading = provider.snapshot(by_vm=self.by_vm, histograms=want_histograms)
            totals.update(reading.totals)
            for pid, vm_totals in reading.by_vm.items():
                per_vm.setdefault(pid, {}).update(vm_totals)
            if histograms is not None:
                assert wanted is not None
                histograms.update((n, h) for n, h in reading.histograms.items() if wanted(n))
            if vm_histograms is not None:
                assert wanted is not None
                for pid, vm_hist in reading.vm_histograms.items():
                    mine = vm_histograms.setdefault(pid, {})
                    mine.update((n, h) for n, h in vm_hist.items() if wanted(n))
            ended.update(reading.ended)
        return totals, per_vm, histograms, vm_histograms, ended

    def sample(self, refresh: bool = True) -> Sample:
        """Read every provider once and return the new :class:`Sample`.

        Providers first follow VMs that came or went (``refresh()``).  The
        sample that finds the watched VM (``pid=``) exited lists it in
        ``ended`` and sets :attr:`done`; after that ``sample()`` raises
        :class:`~kvmstat.errors.VMGone` (nothing is left to watch), while
        ``sample(refresh=False)`` still reads the counts it left.
        """
        if refresh:
            if self._done:
                raise VMGone(vm_exited_message(self.pid), self.pid)
            for provider in self.providers:
                provider.refresh()
        now = self._clock()
        totals, per_vm, histograms, vm_histograms, ended_pids = self._snapshot()
        by_vm = None
        vm_names: Dict[int, Optional[str]] = {}
        previous_vm = self._previous_vm
        if self.by_vm:
            by_vm = {pid: _with_deltas(vm_totals, previous_vm.get(pid, {}))
                     for pid, vm_totals in per_vm.items()}
            if self._names is not None:
                vm_names = {pid: self._names(pid) for pid in per_vm}
            self._previous_vm = per_vm
        durations = self.durations.sample() if self.durations is not None else None
        interval = 0.0 if self._previous_time is None else now - self._previous_time
        values = _with_deltas(totals, self._previous)
        ended: Dict[int, FieldValues] = {}
        if ended_pids and (self.by_vm or self.pid is not None):
            for pid in sorted(ended_pids):
                if by_vm is not None and pid in by_vm:
                    ended[pid] = by_vm[pid]
                elif pid == self.pid:
                    ended[pid] = values
                else:
                    # Dropped before this reading: its last values, unchanged since.
                    ended[pid] = {name: (total, 0)
                                  for name, total in previous_vm.get(pid, {}).items()}
            if self.pid in ended:
                self._done = True
        self._previous = totals
        self._previous_time = now
        return Sample(self._wallclock(), interval, values, by_vm, vm_names, self.engine,
                      histograms, vm_histograms, ended, durations)

    def reset(self) -> None:
        """Zero every counter; the next sample starts a new interval."""
        for provider in self.providers:
            provider.reset()
        if self.durations is not None:
            self.durations.reset()
        self._previous = {}
        self._previous_vm = {}
        self._previous_time = None

    def close(self) -> None:
        """Close every provider (and the durations source)."""
        for provider in self.providers:
            provider.close()
        if self.durations is not None:
            self.durations.close()

    def __enter__(self) -> "Sampler":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
