"""The kvm tracepoints and the parsing of their tracefs ``format`` files: the
names of release 0.1, re-exported from the modules that own them.

- :mod:`kvmstat.tracefs.catalog`: :class:`Event`, :class:`Child`,
  :func:`load_events`, :func:`list_event_names`;
- :mod:`kvmstat.tracefs.formats`: :class:`Field`, :class:`EventFormat`,
  :class:`SymbolicTable`, :func:`parse_format`;
- :mod:`kvmstat.tracefs.printfmt`: :func:`parse_symbolic_tables`;
- :mod:`kvmstat.tracefs.vendor`: :func:`detect_vendor`;
- :mod:`kvmstat.tracefs.fallback`: :func:`fallback_table`;
- :class:`FormatError` is in :mod:`kvmstat.errors`.
"""

from __future__ import annotations

from ..errors import FormatError
from .catalog import ISA_CODES, REASON_EVENTS, Child, Event, list_event_names, load_events
from .fallback import fallback_table
from .formats import EventFormat, Field, SymbolicTable, parse_format
from .printfmt import parse_symbolic_tables
from .vendor import detect_vendor

__all__ = [
    "FormatError",
    "Field",
    "EventFormat",
    "SymbolicTable",
    "Child",
    "Event",
    "REASON_EVENTS",
    "ISA_CODES",
    "parse_format",
    "parse_symbolic_tables",
    "detect_vendor",
    "fallback_table",
    "list_event_names",
    "load_events",
]
