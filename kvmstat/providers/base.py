"""The small interface every data source implements."""

from __future__ import annotations

import abc
import warnings
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, List, Optional, Tuple

__all__ = ["Provider", "Reading", "Totals", "HistogramValues", "Histograms", "SINCE_START",
           "SINCE_CREATION"]

#: field name -> count since the provider was opened (or last reset)
Totals = Dict[str, int]

#: histogram counts since the provider was opened (or last reset)
SINCE_START = "start"
#: histogram counts since the VM was created (the kernel's own counts)
SINCE_CREATION = "creation"


@dataclass(frozen=True)
class HistogramValues:
    """The buckets of one histogram statistic, e.g. KVM's ``halt_wait_hist``.

    ``counts`` holds the number of samples per bucket since ``since``
    (:data:`SINCE_START` or :data:`SINCE_CREATION`).  What a provider knows
    about the buckets comes with them, None where it does not know:
    ``kind`` (``"linear"`` or ``"log"``), ``bounds`` (one ``(low, high)``
    range per bucket in raw units, *high* None for the open-ended last
    bucket) and the scale of those raw units: a raw value *v* means
    ``v * base ** exponent`` of ``unit`` (``"seconds"``, ``"bytes"``...).
    """

    counts: Tuple[int, ...]
    since: str = SINCE_START
    kind: Optional[str] = None
    bounds: Optional[Tuple[Tuple[int, Optional[int]], ...]] = None
    unit: Optional[str] = None
    base: Optional[int] = None
    exponent: int = 0

    @property
    def total(self) -> int:
        """Number of samples in every bucket."""
        return sum(self.counts)


#: histogram name -> its buckets
Histograms = Dict[str, HistogramValues]


@dataclass(frozen=True)
class Reading:
    """One reading of a provider: every part comes from the same instant.

    ``totals`` maps each field to its count; ``by_vm`` maps VM process ids
    to their own totals, ``histograms`` holds the histogram statistics and
    ``vm_histograms`` the same per VM pid, ``by_vcpu`` maps VM pids to vCPU
    ids to values: each empty when not asked for or when the provider does
    not have it.  ``ended`` lists the VMs the provider found exited since
    its previous snapshot (reported once): their ``by_vm`` entries, where
    the provider still has them, hold their final counts, and for the one
    VM watched with ``pid=`` the totals are its final counts.  A VM's
    ``by_vm`` entry may be read-only (providers share one all-zero row
    between the VMs that counted nothing): copy it before changing it.
    """

    totals: Totals
    by_vm: Dict[int, Totals] = field(default_factory=dict)
    histograms: Histograms = field(default_factory=dict)
    vm_histograms: Dict[int, Histograms] = field(default_factory=dict)
    by_vcpu: Dict[int, Dict[int, Totals]] = field(default_factory=dict)
    ended: FrozenSet[int] = frozenset()


class Provider(abc.ABC):
    """A source of counters (tracepoints, debugfs, binary stats).

    A provider is opened with the list of fields it should count and holds
    kernel resources until :meth:`close`.  Counts are cumulative since the
    provider was opened (or since :meth:`reset`).

    One sample is :meth:`refresh` (follow VMs and threads that came or
    went) then :meth:`snapshot` (one reading of everything asked for, as a
    :class:`Reading`).  A provider subclass implements :meth:`snapshot`;
    one written for release 0.1 (implementing ``read`` and perhaps
    ``read_by_vm``, ``read_all``, ``read_histograms``,
    ``read_histograms_by_vm``) keeps working for one release.
    """

    #: short name used in messages and ``--check``
    name: str = "provider"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = _own_attributes(cls)
        if "snapshot" not in own and "read" in own:
            warnings.warn(f"{cls.__qualname__} implements read() instead of snapshot(): "
                          f"providers written that way are deprecated (see Provider.snapshot)",
                          DeprecationWarning, stacklevel=2)

    @property
    @abc.abstractmethod
    def fields(self) -> List[str]:
        """The fields this provider counts, in a stable order."""

    @property
    def levels(self) -> FrozenSet[str]:
        """The fields whose value is a current level (an instant value or a
        peak such as ``pages_4k``, ``max_mmu_rmap_size``), not a count of
        events: they can go down.  None by default."""
        return frozenset()

    #: the one VM process watched, set by providers opened with ``pid=``
    _pid: Optional[int] = None

    @property
    def pid(self) -> Optional[int]:
        """The one VM process watched (opened with ``pid=``), else None."""
        return self._pid

    @property
    def supports_by_vm(self) -> bool:
        """True if :meth:`snapshot` can give a per-VM breakdown."""
        return False

    def refresh(self) -> None:
        """Follow changes (threads or VMs that came or went); cheap if none.

        VMs found ended are reported by the next :meth:`snapshot`
        (:attr:`Reading.ended`); this never raises for a VM that exited.
        """

    def snapshot(self, *, by_vm: bool = False, histograms: bool = False,
                 by_vcpu: bool = False) -> Reading:
        """Read the counters once and return everything asked for.

        ``totals`` always; with *by_vm* the per-VM breakdown
        (``by_vm``, and ``vm_histograms`` with *histograms* too) where the
        provider can attribute counts to VMs; with *histograms* the
        histogram statistics; with *by_vcpu* the per-vCPU values where the
        provider has them.  Every part comes from the same reading.
        """
        # Only reached by a provider written for release 0.1 (see the class),
        # through the read methods it overrides; the others give nothing.
        overrides = _own_attributes(type(self))
        if "read" not in overrides:
            raise NotImplementedError(f"{type(self).__name__} implements no snapshot()")
        if by_vm and "read_all" in overrides:
            totals, per_vm = self.read_all()
        else:
            totals = self.read()
            per_vm = self.read_by_vm() if by_vm and "read_by_vm" in overrides else {}
        return Reading(
            totals, per_vm,
            self.read_histograms() if histograms and "read_histograms" in overrides else {},
            self.read_histograms_by_vm()
            if histograms and by_vm and "read_histograms_by_vm" in overrides else {})

    @abc.abstractmethod
    def reset(self) -> None:
        """Start counting from zero again."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release every kernel resource; idempotent."""

    # -- the read methods of release 0.1, deprecated ----------------------------
    # Each is one snapshot(); a provider written for 0.1 overrides them instead.

    def read(self) -> Totals:
        """Deprecated: ``snapshot().totals``."""
        _deprecated("read()", "snapshot().totals")
        return self.snapshot().totals

    def read_by_vm(self) -> Dict[int, Totals]:
        """Deprecated: ``snapshot(by_vm=True).by_vm``."""
        _deprecated("read_by_vm()", "snapshot(by_vm=True).by_vm")
        return self.snapshot(by_vm=True).by_vm

    def read_all(self) -> Tuple[Totals, Dict[int, Totals]]:
        """Deprecated: ``snapshot(by_vm=True)``, its ``totals`` and ``by_vm``."""
        _deprecated("read_all()", "snapshot(by_vm=True)")
        reading = self.snapshot(by_vm=True)
        return reading.totals, reading.by_vm

    def read_histograms(self) -> Histograms:
        """Deprecated: ``snapshot(histograms=True).histograms``."""
        _deprecated("read_histograms()", "snapshot(histograms=True).histograms")
        return self.snapshot(histograms=True).histograms

    def read_histograms_by_vm(self) -> Dict[int, Histograms]:
        """Deprecated: ``snapshot(by_vm=True, histograms=True).vm_histograms``."""
        _deprecated("read_histograms_by_vm()",
                    "snapshot(by_vm=True, histograms=True).vm_histograms")
        return self.snapshot(by_vm=True, histograms=True).vm_histograms

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _own_attributes(cls: type) -> set:
    """Names defined by *cls* or its bases below :class:`Provider`."""
    names: set = set()
    for klass in cls.__mro__:
        if klass is Provider:
            break
        names.update(vars(klass))
    return names


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"Provider.{old} is deprecated: use {new}", DeprecationWarning, stacklevel=3)
