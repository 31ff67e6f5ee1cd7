"""The small interface every data source implements."""

from __future__ import annotations

import abc
from typing import Dict, List, Tuple

__all__ = ["Provider", "Totals"]

#: field name -> count since the provider was opened (or last reset)
Totals = Dict[str, int]


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
