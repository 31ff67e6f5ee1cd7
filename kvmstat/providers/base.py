"""The small interface every data source implements."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Optional, Tuple

__all__ = ["Provider", "Totals", "HistogramValues", "Histograms", "SINCE_START",
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


class Provider(abc.ABC):
    """A source of counters (tracepoints, debugfs, binary stats).

    A provider is opened with the list of fields it should count and holds
    kernel resources until :meth:`close`.  Counts are cumulative since the
    provider was opened (or since :meth:`reset`).
    """

    #: short name used in messages and ``--check``
    name: str = "provider"

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

    @abc.abstractmethod
    def read(self) -> Totals:
        """Return the current cumulative count of every field."""

    def read_by_vm(self) -> Dict[int, Totals]:
        """Return cumulative counts per VM process id.

        Providers that cannot attribute events to VMs return ``{}``.
        """
        return {}

    def read_all(self) -> Tuple[Totals, Dict[int, Totals]]:
        """Return :meth:`read` and :meth:`read_by_vm` together.

        Providers that can take both from one reading override this, so that
        the breakdown and the totals describe the same instant.
        """
        return self.read(), self.read_by_vm()

    def read_histograms(self) -> Histograms:
        """Histogram statistics over everything the provider reads.

        Providers without histograms return ``{}``.
        """
        return {}

    def read_histograms_by_vm(self) -> Dict[int, Histograms]:
        """Histogram statistics per VM process id (``{}`` when not attributable)."""
        return {}

    @property
    def supports_by_vm(self) -> bool:
        """True if :meth:`read_by_vm` gives a per-VM breakdown."""
        return False

    def refresh(self) -> None:
        """Follow changes (threads or VMs that came or went); cheap if none."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Start counting from zero again."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release every kernel resource; idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
