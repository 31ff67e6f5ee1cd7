"""The display's durations view (key ``t``): positioned text, no curses.

Per field the table of ``kvm_stat -1 --durations`` (count, share of its
event's time, avg, p50, p99, max), since the sampler was opened or reset,
events sorted by their total time with their reasons under them; with the
by-guest view, one such table per VM.  Under them, where each vCPU
thread's time went over the last interval (in KVM_RUN, in the guest, in
the kernel, halted, in the VMM), busiest first.  Lines saying which
durations this host cannot measure (e.g. kvm_exit on paravirtual KVM) come
last.
"""

from __future__ import annotations

from typing import List, Mapping, Optional

from .formats.durations import durations_notes, tui_rows, tui_vcpu_rows
from .formats.text import guest_heading
from .tui_layout import (BOLD, COLLECTING, FIRST_ROW, MAX_REGEX, NORMAL, REGEX_COLUMN, STANDOUT,
                         Line, View, clip, title)

__all__ = ["durations_screen", "SORT_LABEL", "NO_DURATIONS"]

SORT_LABEL = "Durations since start, sorted by time (t: counts)"
NO_DURATIONS = "No durations measured yet"


def _regex(view: View) -> str:
    text = view.regex or ""
    return text if len(text) <= MAX_REGEX else text[:MAX_REGEX] + "..."


def durations_screen(sample, view: View, width: int, height: int,
                     names: Optional[Mapping[int, Optional[str]]] = None) -> List[Line]:
    """Every line of the durations view for a *width* x *height* terminal."""
    lines = [Line(0, 0, title(view), BOLD), Line(1, 0, SORT_LABEL)]
    if view.regex:
        lines.append(Line(1, max(REGEX_COLUMN, len(SORT_LABEL) + 2),
                          "regex filter: " + _regex(view)))
    bottom = height - 1 if view.message else height
    durations = sample.durations if sample is not None else None
    if durations is None:
        lines.append(Line(FIRST_ROW, 0, COLLECTING))
    else:
        tables = []
        if view.by_guest:
            all_names = {**(names or {}), **sample.vm_names}
            for pid in sorted(durations.by_vm_total or {}):
                tables.append((guest_heading(pid, all_names.get(pid)),
                               durations.by_vm_total[pid]))
        else:
            tables.append((None, durations.total))
        body: List[str] = []
        for heading, fields in tables:
            rows = tui_rows(fields, width)
            if len(rows) == 1:
                continue
            if heading is not None:
                body.append(heading)
            body.extend(rows[1:])
        lines.append(Line(2, 0, tui_rows({}, width)[0], STANDOUT))
        notes = durations_notes(durations)
        room = max(0, bottom - FIRST_ROW - len(notes))
        if not body:
            body = [NO_DURATIONS]
        vcpus = tui_vcpu_rows(durations.vcpus, width) if durations.vcpus else []
        event_room, vcpu_room = min(len(body), room), 0
        if vcpus and room >= 4:  # a blank line, the vCPU header and a row at least
            # What the event rows leave, and at least half the room.
            vcpu_room = min(len(vcpus), max(2, room - len(body) - 1, (room - 1) // 2))
            event_room = min(len(body), room - vcpu_room - 1)
        for i, text in enumerate(body[:event_room]):
            lines.append(Line(FIRST_ROW + i, 0, text))
        y = FIRST_ROW + event_room
        if vcpu_room:
            y += 1
            for i, text in enumerate(vcpus[:vcpu_room]):
                lines.append(Line(y + i, 0, text, STANDOUT if i == 0 else NORMAL))
            y += vcpu_room
        for i, note in enumerate(notes):
            lines.append(Line(y + i, 0, note))
    if view.message:
        lines.append(Line(height - 1, 0, view.message))
    return clip(lines, width, height)
