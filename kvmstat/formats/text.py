"""Plain-text formats: batch output (``-1``) and the ``-f help`` listing."""

from __future__ import annotations

from typing import Iterable, List

from ..fields import parent_of
from ..stats import Sample

__all__ = ["batch_lines", "field_help_lines"]

BATCH_ROW = "%-42s%10d%10d"


def batch_lines(sample: Sample) -> List[str]:
    """One ``name total delta`` line per field, sorted by name (SPEC §3.1)."""
    values = sample.values
    return [BATCH_ROW % (name, values[name][0], values[name][1]) for name in sorted(values)]


def field_help_lines(names: Iterable[str]) -> List[str]:
    """Each event once (children folded into their parent), sorted, indented two spaces."""
    return ["  " + name for name in sorted({parent_of(n) for n in names})]
