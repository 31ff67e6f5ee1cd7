"""The argument checks both counting engines share (perf counter sets in
:mod:`.common`, the BPF engine in :mod:`.bpf`): values cross into C as fixed
width integers, so each is checked here, once, with a one-line
:class:`~kvmstat.errors.InvalidArgument`."""

from __future__ import annotations

from typing import Any, Sequence, Tuple, Type

from ..errors import InvalidArgument

__all__ = ["INT32_MAX", "UINT32_MAX", "is_int", "in_range", "check_events"]

INT32_MAX = 2**31 - 1
UINT32_MAX = 2**32 - 1


def is_int(value: object) -> bool:
    """True for an int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def in_range(value: object, low: int, high: int) -> bool:
    """True for an int (not a bool) from *low* to *high* inclusive."""
    return is_int(value) and low <= value <= high  # type: ignore[operator]


def check_events(events: Any, spec_type: Type, owner: str) -> Tuple[Any, ...]:
    """*events* as a tuple of *spec_type* (each with ``name`` and
    ``tracepoint_id``), at least one, tracepoint ids fitting 64 bits;
    *owner* ("a counter set", "the BPF engine") says who needs them."""
    if isinstance(events, (str, bytes)) or not isinstance(events, Sequence):
        raise InvalidArgument(f"events must be a sequence of {spec_type.__name__}")
    events = tuple(events)
    if not events:
        raise InvalidArgument(f"{owner} needs at least one event")
    for ev in events:
        if not isinstance(ev, spec_type):
            article = "an" if spec_type.__name__[0] in "AEIOU" else "a"
            raise InvalidArgument(f"not {article} {spec_type.__name__}: {ev!r}")
        if not in_range(ev.tracepoint_id, 0, 2**64 - 1):
            raise InvalidArgument(f"bad tracepoint id {ev.tracepoint_id!r} for {ev.name}")
    return events
