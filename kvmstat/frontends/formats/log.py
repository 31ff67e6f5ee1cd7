"""Log formats (docs/design.md §6.5): plain banner and rows, CSV header and rows.

Pure functions from a field list and a :class:`~kvmstat.sampling.sampler.Sample` to
text; the log loop (:mod:`kvmstat.frontends.logger`) decides when each is written.
Every function returns complete lines, each ending in ``"\\n"``.

Host rows carry one delta per field.  By-guest rows (``--by-guest``) are
one row per VM, sorted by pid, with the pid and the guest name before the
deltas:

- plain: banner ``pid guest <name> <name> ...``; row = timestamp,
  ``' %9d'`` pid, ``' %-16s'`` guest name (``-`` for a VM without one),
  ``' %9d'`` per field;
- CSV: header ``timestamp,pid,guest,<name>,...``; row
  ``<timestamp>,<pid>,<guest>,<delta>,...`` (an empty guest for a VM
  without a name; names are quoted by CSV rules when needed).

Guest and field names pass through :func:`kvmstat.textsafe.safe_text`: a
row is always one line, whatever a name holds.
"""

from __future__ import annotations

import csv
import io
import time
from typing import Iterable, List, Mapping, Optional, Sequence, Tuple

from ...sampling.sampler import FieldValues, Sample
from ...textsafe import safe_name, safe_text

__all__ = [
    "TIMESTAMP_FORMAT", "BANNER_EVERY", "timestamp",
    "plain_banner", "plain_rows", "csv_header", "csv_rows",
    "guest_plain_banner", "guest_plain_rows", "guest_csv_header", "guest_csv_rows",
    "all_zero",
]

#: strftime format of the time column, plain and CSV
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
#: the plain banner is written again after this many printed rows
BANNER_EVERY = 20

_PLAIN_VALUE = " %9d"
_PLAIN_GUEST = " %-16s"
_NO_NAME_PLAIN = "-"


def timestamp(when: float) -> str:
    """The time column for the wall-clock time *when* (local time)."""
    return time.strftime(TIMESTAMP_FORMAT, time.localtime(when))


def _deltas(values: Mapping[str, Tuple[int, int]], fields: Sequence[str]) -> List[int]:
    # A field the sample lacks (e.g. a VM's provider without it) counts 0.
    get = values.get
    return [get(name, (0, 0))[1] for name in fields]


def all_zero(values: Mapping[str, Tuple[int, int]], fields: Sequence[str]) -> bool:
    """True if every delta of *fields* in *values* is zero (what ``-z`` skips)."""
    return not any(_deltas(values, fields))


def _csv_line(cells: Iterable[object]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(cells)
    return out.getvalue()


def _vm_rows(sample: Sample, fields: Sequence[str],
             skip_zero: bool) -> List[Tuple[int, Optional[str], List[int]]]:
    rows = []
    for pid in sorted(sample.by_vm or {}):
        values: FieldValues = sample.by_vm[pid]
        deltas = _deltas(values, fields)
        if skip_zero and not any(deltas):
            continue
        rows.append((pid, safe_name(sample.vm_names.get(pid)), deltas))
    return rows


# -- host totals --------------------------------------------------------------

def plain_banner(fields: Sequence[str]) -> str:
    """The plain banner: every field name followed by one space."""
    return "".join(safe_text(name) + " " for name in fields) + "\n"


def plain_rows(sample: Sample, fields: Sequence[str], skip_zero: bool = False) -> List[str]:
    """The plain row of *sample* (none if *skip_zero* and every delta is 0)."""
    deltas = _deltas(sample.values, fields)
    if skip_zero and not any(deltas):
        return []
    return [timestamp(sample.time) + "".join(_PLAIN_VALUE % d for d in deltas) + "\n"]


def csv_header(fields: Sequence[str]) -> str:
    """The CSV header: ``timestamp,<name>,...``."""
    return _csv_line(["timestamp", *map(safe_text, fields)])


def csv_rows(sample: Sample, fields: Sequence[str], skip_zero: bool = False) -> List[str]:
    """The CSV row of *sample* (none if *skip_zero* and every delta is 0)."""
    deltas = _deltas(sample.values, fields)
    if skip_zero and not any(deltas):
        return []
    return [_csv_line([timestamp(sample.time), *deltas])]


# -- one row per VM (--by-guest) -----------------------------------------------

def guest_plain_banner(fields: Sequence[str]) -> str:
    """The by-guest plain banner: ``pid guest`` and the field names."""
    return plain_banner(["pid", "guest", *fields])


def guest_plain_rows(sample: Sample, fields: Sequence[str], skip_zero: bool = False) -> List[str]:
    """One plain row per VM of *sample*, sorted by pid."""
    stamp = timestamp(sample.time)
    return [stamp + _PLAIN_VALUE % pid + _PLAIN_GUEST % (name if name is not None else _NO_NAME_PLAIN)
            + "".join(_PLAIN_VALUE % d for d in deltas) + "\n"
            for pid, name, deltas in _vm_rows(sample, fields, skip_zero)]


def guest_csv_header(fields: Sequence[str]) -> str:
    """The by-guest CSV header: ``timestamp,pid,guest,<name>,...``."""
    return csv_header(["pid", "guest", *fields])


def guest_csv_rows(sample: Sample, fields: Sequence[str], skip_zero: bool = False) -> List[str]:
    """One CSV row per VM of *sample*, sorted by pid."""
    stamp = timestamp(sample.time)
    return [_csv_line([stamp, pid, name if name is not None else "", *deltas])
            for pid, name, deltas in _vm_rows(sample, fields, skip_zero)]
