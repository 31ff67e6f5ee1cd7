"""The tracefs ``format`` file of one tracepoint: its record fields, id and
``print fmt`` line, parsed."""

from __future__ import annotations

import re
from dataclasses import dataclass, field as dc_field
from typing import Dict, Optional, Tuple

from ..errors import FormatError

__all__ = ["Field", "EventFormat", "SymbolicTable", "parse_format"]


@dataclass(frozen=True)
class Field:
    """One field of a tracepoint record: name, byte offset, size, signedness."""

    name: str
    offset: int
    size: int
    signed: bool


@dataclass(frozen=True)
class EventFormat:
    """The parsed content of ``<tracefs>/events/<subsys>/<event>/format``."""

    name: str
    id: int
    fields: Dict[str, Field]
    print_fmt: str


@dataclass(frozen=True)
class SymbolicTable:
    """One ``__print_symbolic(REC->field..., {value, "name"}, ...)`` table.

    ``condition`` is the text of the ``?:`` conditions that select this table
    (``None`` when it is printed unconditionally).  A table in an else branch
    gets the negated condition, e.g. ``!(REC->isa == 1)``; nested conditions
    are joined with `` && ``.  ``terms`` holds the same conditions as
    ``(text, holds)`` pairs, ``holds`` False for an else branch, for callers
    that want to evaluate them.
    """

    field: str
    condition: Optional[str]
    entries: Tuple[Tuple[int, str], ...]
    terms: Tuple[Tuple[str, bool], ...] = dc_field(default=(), compare=False)


_FIELD_RE = re.compile(
    r"^\s*field:(?P<decl>[^;]*);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);"
    r"\s*signed:(?P<signed>-?\d+);")
_NAME_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:\[[^\]]*\]\s*)*$")


def parse_format(text: str) -> EventFormat:
    """Parse the text of a tracepoint ``format`` file.

    Raises :class:`FormatError` (and nothing else) when the text lacks a name
    or an ID, or when a ``field:`` line is malformed.
    """
    if not isinstance(text, str):
        raise FormatError("tracepoint format is not text: pass the content of a format file")
    name = None
    ev_id = None
    fields: Dict[str, Field] = {}
    print_fmt = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("name:") and name is None:
            name = stripped[5:].strip()
        elif stripped.startswith("ID:") and ev_id is None:
            value = stripped[3:].strip()
            if not (value.isascii() and value.isdigit()):
                raise FormatError(f"tracepoint format has a bad ID {value!r}: expected a number")
            ev_id = int(value)
        elif stripped.startswith("field:"):
            m = _FIELD_RE.match(line)
            if not m:
                raise FormatError(f"malformed field line in tracepoint format: {stripped[:80]!r}")
            nm = _NAME_RE.search(m.group("decl").strip())
            if not nm:
                raise FormatError(f"field without a name in tracepoint format: {stripped[:80]!r}")
            f = Field(nm.group(1), int(m.group("off")), int(m.group("size")),
                      m.group("signed") not in ("0", "-0"))
            fields[f.name] = f
        elif stripped.startswith("print fmt:"):
            print_fmt = stripped[len("print fmt:"):].strip()
    if not name:
        raise FormatError("tracepoint format has no 'name:' line: is this a tracefs format file?")
    if ev_id is None:
        raise FormatError(f"tracepoint format of {name!r} has no 'ID:' line: is this a tracefs format file?")
    return EventFormat(name, ev_id, fields, print_fmt)
