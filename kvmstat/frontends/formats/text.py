"""Plain-text formats: batch output (``-1``, also by guest) and the ``-f help`` listing."""

from __future__ import annotations

from typing import Iterable, List, Optional

from ...sampling.fields import parent_of
from ...sampling.sampler import FieldValues, Sample
from ...textsafe import safe_text

__all__ = ["batch_lines", "by_guest_batch_lines", "guest_heading", "field_help_lines"]

BATCH_ROW = "%-42s%10d%10d"


def _rows(values: FieldValues) -> List[str]:
    return [BATCH_ROW % (safe_text(name), values[name][0], values[name][1])
            for name in sorted(values)]


def batch_lines(sample: Sample) -> List[str]:
    """One ``name total delta`` line per field, sorted by name (docs/design.md §6.4)."""
    return _rows(sample.values)


def guest_heading(pid: int, name: Optional[str]) -> str:
    """``(pid <pid>) <name>``, or ``(pid <pid>)`` for a VM without a name.

    The pid comes first so that a guest name, which whoever starts a VM
    chooses, never starts a line (it could pass for a row otherwise).
    """
    return f"(pid {pid}) {safe_text(name)}" if name else f"(pid {pid})"


def by_guest_batch_lines(sample: Sample) -> List[str]:
    """Batch output per VM (``-1 --by-guest``): for each VM, by pid, a
    heading line (:func:`guest_heading`) and its rows in the batch format;
    an empty line between VMs.  No VM: no lines."""
    lines: List[str] = []
    for pid in sorted(sample.by_vm or {}):
        if lines:
            lines.append("")
        lines.append(guest_heading(pid, sample.vm_names.get(pid)))
        lines.extend(_rows(sample.by_vm[pid]))  # type: ignore[index]
    return lines


def field_help_lines(names: Iterable[str]) -> List[str]:
    """Each event once (children folded into their parent), sorted, indented two spaces."""
    return ["  " + safe_text(name) for name in sorted({parent_of(n) for n in names})]
