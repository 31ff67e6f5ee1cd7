"""What the TUI shows: a sample and the view state in, positioned text out.

Pure functions, no curses: :func:`screen` turns a :class:`~kvmstat.sampling.sampler.Sample`
and a :class:`View` into :class:`Line` objects (row, column, text, style) for
the layout of docs/design.md §6.8; the help and prompt screens are built the same way.
:mod:`kvmstat.frontends.tui` draws them and handles the keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ..sampling.fields import is_child, parent_of
from ..sampling.sampler import FieldValues, Sample
from ..textsafe import safe_text

__all__ = ["View", "Line", "Row", "SORT_RATE", "SORT_TOTAL", "title", "watched", "event_rows",
           "guest_rows", "format_row", "header", "label_width", "screen", "clip", "help_screen", "prompt_screen",
           "vm_table", "HEADER_FORMAT"]

HEADER_FORMAT = "%-40s %10s%7s %8s"
LABEL_WIDTH = 40
NUMBERS_WIDTH = 27   # " %10s%7s %8s"
MIN_LABEL_WIDTH = 8
FIRST_ROW = 3
REGEX_COLUMN = 17
MAX_NAME = 48   # guest name in the title
MAX_REGEX = 44  # regex on the filter line

SORT_RATE = "rate"
SORT_TOTAL = "total"
_SORT_LABELS = {SORT_RATE: "Sort: CurAvg/s", SORT_TOTAL: "Sort: Total"}

COLLECTING = "Collecting data..."
NO_EVENTS = "No matching events reported yet"
DEAD = "Guest is DEAD"

NORMAL, BOLD, STANDOUT = "normal", "bold", "standout"


@dataclass
class View:
    """What the user chose to see (changed by the keys)."""

    regex: Optional[str] = None     # -f / f
    pid: Optional[int] = None       # -p, -g / p, g
    guest: Optional[str] = None     # guest name of pid, if it has one
    by_guest: bool = False          # b
    children: bool = False          # x
    sort: str = SORT_RATE           # o
    dead: bool = False              # the VM of pid has exited
    message: Optional[str] = None   # one-line note at the bottom
    engine: Optional[str] = None    # how tracepoints are counted ("bpf", "perf")
    durations: bool = False         # t: the durations view


@dataclass(frozen=True)
class Line:
    """Text at a screen position; *style* is ``normal``, ``bold`` or ``standout``."""

    y: int
    x: int
    text: str
    style: str = NORMAL


@dataclass(frozen=True)
class Row:
    """One table row: *percent* and *rate* are None when there is nothing to show."""

    label: str
    total: int
    delta: int
    percent: Optional[float]
    rate: Optional[float]


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def watched(view: View) -> str:
    """What is watched: ``summary`` or ``pid <pid> (<name>)``."""
    if view.pid is None:
        return "summary"
    if view.guest is None:
        return f"pid {view.pid}"
    return f"pid {view.pid} ({_cut(view.guest, MAX_NAME)})"


def title(view: View) -> str:
    """Row 0: summary, or the watched VM, the tracepoint engine (e.g.
    ``kvm statistics - summary (bpf)``), and whether the VM has exited."""
    text = "kvm statistics - " + watched(view)
    if view.engine:
        text += f" ({view.engine})"
    if view.dead:
        text += "  " + DEAD
    return text


def _rate(delta: int, interval: float) -> Optional[float]:
    # Counter deltas and the interval come from the same two readings.
    return delta / interval if interval > 0 else None


def _percent(part: int, whole: int) -> Optional[float]:
    return 100.0 * part / whole if whole > 0 else None


def _sort_key(sort: str):
    if sort == SORT_TOTAL:
        return lambda item: (-item[1][0], -item[1][1], item[0])
    return lambda item: (-item[1][1], -item[1][0], item[0])


def _visible(values: FieldValues, names: Iterable[str], sort: str) -> List[Tuple[str, Tuple[int, int]]]:
    items = [(n, values[n]) for n in names if values[n][0] or values[n][1]]
    items.sort(key=_sort_key(sort))
    return items


def _grand_total(values: FieldValues) -> Tuple[int, int]:
    """Sum of the parents (children are already part of their parent)."""
    total = delta = 0
    for name, (t, d) in values.items():
        if not is_child(name):
            total += t
            delta += d
    return total, delta


def event_rows(sample: Sample, *, children: bool, sort: str) -> Tuple[List[Row], Row]:
    """The event table of *sample* and its ``Total`` row.

    Parents are sorted by *sort*; with *children*, each parent's non-zero
    children follow it, indented two spaces, sorted the same way.  A parent's
    percentage is of the grand total, a child's of its parent.
    """
    values, interval = sample.values, sample.interval
    parents = [n for n in values if not is_child(n)]
    kids: Dict[str, List[str]] = {}
    if children:
        for name in values:
            if is_child(name):
                kids.setdefault(parent_of(name), []).append(name)
    grand, grand_delta = _grand_total(values)
    rows: List[Row] = []
    for name, (total, delta) in _visible(values, parents, sort):
        rows.append(Row(name, total, delta, _percent(total, grand), _rate(delta, interval)))
        for child, (ctotal, cdelta) in _visible(values, kids.get(name, ()), sort):
            rows.append(Row("  " + child, ctotal, cdelta, _percent(ctotal, total),
                            _rate(cdelta, interval)))
    return rows, Row("Total", grand, grand_delta, None, _rate(grand_delta, interval))


def _guest_labels(pids: Sequence[int], names: Mapping[int, Optional[str]]) -> Dict[int, str]:
    labels = {pid: names.get(pid) or str(pid) for pid in pids}
    seen: Dict[str, int] = {}
    for label in labels.values():
        seen[label] = seen.get(label, 0) + 1
    # Two VMs with the same name: tell them apart by pid.
    return {pid: (f"{label} ({pid})" if seen[label] > 1 else label) for pid, label in labels.items()}


def guest_rows(sample: Sample, names: Mapping[int, Optional[str]], *, sort: str) -> Tuple[List[Row], Row]:
    """The by-guest table: one row per VM with the sum of its events, and ``Total``.

    *names* maps pids to guest names (a VM without a name shows its pid).
    """
    per_vm = sample.by_vm or {}
    sums = {pid: _grand_total(values) for pid, values in per_vm.items()}
    labels = _guest_labels(sorted(sums), names)
    by_label = {labels[pid]: sums[pid] for pid in sums}
    grand = sum(t for t, _ in sums.values())
    grand_delta = sum(d for _, d in sums.values())
    rows = [Row(label, total, delta, _percent(total, grand), _rate(delta, sample.interval))
            for label, (total, delta) in _visible(by_label, by_label, sort)]
    return rows, Row("Total", grand, grand_delta, None, _rate(grand_delta, sample.interval))


def _format_rate(rate: Optional[float]) -> str:
    if not rate:
        return ""
    return "%.1f" % rate if rate < 10 else "%.0f" % rate


def label_width(width: int) -> int:
    """Width of the name column: 40, narrower when the numbers would not fit."""
    return max(MIN_LABEL_WIDTH, min(LABEL_WIDTH, width - NUMBERS_WIDTH))


def header(first: str, width: int = 80) -> str:
    """The column header (:data:`HEADER_FORMAT` on terminals of 67 columns or more)."""
    return "%-*s %10s%7s %8s" % (label_width(width), first, "Total", "%Total", "CurAvg/s")


def format_row(row: Row, width: int = 80) -> str:
    """The text of a table row, aligned with :func:`header`."""
    lw = label_width(width)
    percent = "" if row.percent is None else "%.1f" % row.percent
    return "%-*s %10d%7s %8s" % (lw, row.label[:lw], row.total, percent, _format_rate(row.rate))


def screen(sample: Optional[Sample], view: View, width: int, height: int,
           names: Optional[Mapping[int, Optional[str]]] = None) -> List[Line]:
    """Every line of the main screen (docs/design.md §6.8) for a *width* x *height* terminal.

    *sample* is None before the first refresh.  *names* maps VM pids to guest
    names for the by-guest view when the sample itself does not name them.
    Rows that do not fit are left out (the ``Total`` row always follows the
    last row shown), the name column narrows on terminals narrower than 67
    columns so the numbers stay visible, and every line is cut at *width*.
    """
    lines = [Line(0, 0, title(view), BOLD), Line(1, 0, _SORT_LABELS[view.sort])]
    if view.regex:
        lines.append(Line(1, REGEX_COLUMN, "regex filter: " + _cut(view.regex, MAX_REGEX)))
    first = "Guest Name" if view.by_guest else "Event"
    lines.append(Line(2, 0, header(first, width), STANDOUT))
    bottom = height - 1 if view.message else height
    if sample is None:
        lines.append(Line(FIRST_ROW, 0, NO_EVENTS if view.dead else COLLECTING))
    else:
        if view.by_guest:
            rows, total = guest_rows(sample, {**(names or {}), **sample.vm_names},
                                     sort=view.sort)
        else:
            rows, total = event_rows(sample, children=view.children, sort=view.sort)
        if not rows:
            lines.append(Line(FIRST_ROW, 0, NO_EVENTS))
        else:
            room = max(0, bottom - FIRST_ROW - 1)
            shown = rows[:room]
            for i, row in enumerate(shown):
                lines.append(Line(FIRST_ROW + i, 0, format_row(row, width)))
            lines.append(Line(FIRST_ROW + len(shown), 0, format_row(total, width), BOLD))
    if view.message:
        lines.append(Line(height - 1, 0, view.message))
    return clip(lines, width, height)


def clip(lines: Iterable[Line], width: int, height: int) -> List[Line]:
    """Drop what lies outside a *width* x *height* screen, cut what sticks out.

    Every text reaches the screen through here, so this is where names from
    outside are made inert (:func:`kvmstat.textsafe.safe_text`).
    """
    return [Line(line.y, line.x, safe_text(line.text)[: width - line.x], line.style)
            for line in lines if 0 <= line.y < height and 0 <= line.x < width]


_HELP = [
    ("b", "show events per guest (by-guest view) on/off"),
    ("c", "clear the regex and guest filters"),
    ("f", "filter events by a regular expression"),
    ("g", "filter by guest name"),
    ("h", "show this help"),
    ("o", "sort by current rate or by total"),
    ("p", "filter by guest pid"),
    ("q", "quit"),
    ("r", "reset the counters"),
    ("s", "set the refresh interval"),
    ("t", "show exit durations (count, time share, avg, p50, p99, max) on/off"),
    ("x", "show child events (reasons) on/off"),
]


def help_screen(delay: float) -> List[Line]:
    """The ``h`` screen: every key and what it does."""
    lines = [Line(0, 0, "Help: interactive keys", BOLD)]
    for i, (key, text) in enumerate(_HELP):
        lines.append(Line(2 + i, 2, f"{key}  {text}"))
    y = 3 + len(_HELP)
    lines.append(Line(y, 0, f"Any other key refreshes the display now "
                            f"(refresh interval {delay:g} s)."))
    lines.append(Line(y + 1, 0, "In prompts: Enter accepts, an empty answer keeps the "
                                "current value, ESC cancels."))
    lines.append(Line(y + 3, 0, "Press any key to continue."))
    return lines


def vm_table(vms: Sequence[Tuple[int, Optional[str]]]) -> List[str]:
    """Lines listing running VMs (pid and guest name) for the g/p prompts."""
    if not vms:
        return ["No VMs are running."]
    lines = ["Running VMs:", "%8s  %s" % ("PID", "Guest name")]
    lines.extend("%8d  %s" % (pid, name if name is not None else "(no name)") for pid, name in vms)
    return lines


def prompt_screen(info: Sequence[str], prompt: str, answer: str, error: Optional[str],
                  width: int, height: int) -> Tuple[List[Line], Tuple[int, int]]:
    """A prompt screen: *info* lines, the prompt with the answer typed so far,
    and the last error below it.  Returns the lines and the cursor position.

    When the screen is short, *info* is cut so the prompt stays visible.
    """
    keep = max(0, height - 3)
    shown = list(info[:keep])
    if len(info) > keep and keep:
        shown[-1] = "..."
    lines = [Line(i, 0, text) for i, text in enumerate(shown)]
    y = len(shown) + (1 if shown else 0)
    y = min(y, max(0, height - 2))
    lines.append(Line(y, 0, prompt + answer))
    if error:
        lines.append(Line(y + 1, 0, error))
    cursor = (y, min(len(prompt) + len(answer), max(0, width - 1)))
    return clip(lines, width, height), cursor
