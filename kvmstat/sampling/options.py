"""What to sample, in one frozen object built at the edge (the command line or
a library call) and passed down unchanged to the providers' openers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple, Union

from ..counting.factories import CounterFactories, real_counters
from ..errors import InvalidArgument
from ..host.paths import Paths
from .engine import check_engine
from .fields import FieldFilter

__all__ = ["SamplerOptions", "PROVIDER_NAMES", "check_provider"]

#: the providers there are, by name
PROVIDER_NAMES = ("tracepoints", "debugfs", "binstats")


def check_provider(name: str) -> str:
    """Return *name* if it is one of :data:`PROVIDER_NAMES`, else raise InvalidArgument."""
    if name not in PROVIDER_NAMES:
        raise InvalidArgument(f"unknown provider '{name}' (known: {', '.join(PROVIDER_NAMES)})")
    return name


@dataclass(frozen=True)
class SamplerOptions:
    """Every choice about what a sampler counts and how, checked once.

    ``providers``: provider names (:data:`PROVIDER_NAMES`); ``fields``: a
    ``-f`` regex or a :class:`~kvmstat.sampling.fields.FieldFilter`
    (stored as the filter); ``pid``: the one VM process to watch;
    ``by_vm``: a per-VM breakdown; ``engine``: how tracepoints are counted
    (``auto``, ``bpf``, ``perf``); ``backend``: the perf backend (``c``,
    ``python``, None for the default); ``include_past``: debugfs and binary
    statistics count from VM creation; ``histograms``: samples carry the
    histogram statistics whose names ``fields`` matches; ``durations``:
    samples carry the exit durations of those fields (BPF only); ``paths``: where
    /proc, /sys, tracefs and debugfs are; ``counters``: how counters are
    made (the real counting core unless a test gives fakes).
    Raises :class:`~kvmstat.errors.InvalidArgument` for an unknown provider
    or engine, a bad regex or a pid that is not a positive number.
    """

    providers: Tuple[str, ...] = ("tracepoints",)
    fields: Union[FieldFilter, str, None] = None
    pid: Optional[int] = None
    by_vm: bool = False
    engine: str = "auto"
    backend: Optional[str] = None
    include_past: bool = False
    histograms: bool = False
    durations: bool = False
    paths: Paths = field(default_factory=Paths)
    counters: CounterFactories = field(default_factory=real_counters)

    def __post_init__(self) -> None:
        if isinstance(self.providers, str):
            raise InvalidArgument(f"providers must be a list of names, not {self.providers!r}")
        object.__setattr__(self, "providers", tuple(self.providers))
        for name in self.providers:
            check_provider(name)
        if not isinstance(self.fields, FieldFilter):
            object.__setattr__(self, "fields", FieldFilter(self.fields))
        if self.pid is not None and (isinstance(self.pid, bool) or not isinstance(self.pid, int)
                                     or self.pid <= 0):
            raise InvalidArgument(f"{self.pid!r} is not a process id")
        check_engine(self.engine)

    @property
    def field_filter(self) -> FieldFilter:
        """``fields`` as a :class:`~kvmstat.sampling.fields.FieldFilter`."""
        assert isinstance(self.fields, FieldFilter)
        return self.fields
