"""How counters are made: the one object the tracepoint providers get them from.

The providers never call the counting core directly: they are handed a
:class:`CounterFactories` (the real core by default), so that tests give
them fakes as an argument instead of patching module globals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

from . import bpf, native

__all__ = ["CounterFactories", "REAL_COUNTERS", "real_counters"]


@dataclass(frozen=True)
class CounterFactories:
    """The counting core's three entry points the providers and the engine choice use.

    ``open_counter_set(specs, mode, backend)``: an empty perf counter set
    (:func:`kvmstat.counting.native.open_counter_set`);
    ``open_bpf_counter(specs, columns, only_pid=, max_entries=)``: the BPF
    engine (:class:`kvmstat.counting.bpf.BpfCounter`);
    ``bpf_supported(tracepoint_id)``: whether BPF can be used here, and why
    not (:func:`kvmstat.counting.bpf.bpf_supported`).
    """

    open_counter_set: Callable[..., native.CounterSet] = native.open_counter_set
    open_bpf_counter: Callable[..., bpf.BpfCounter] = bpf.BpfCounter
    bpf_supported: Callable[[Optional[int]], Tuple[bool, str]] = bpf.bpf_supported


#: the real counting core
REAL_COUNTERS = CounterFactories()


def real_counters() -> CounterFactories:
    """The factories used when none is given: :data:`REAL_COUNTERS`, looked
    up at each call (the one place a test replaces for a whole command)."""
    return REAL_COUNTERS
