"""The kvm tracepoint catalog: every tracepoint under
``<tracefs>/events/kvm/`` as an :class:`Event`, with its per-reason children.

Two tracepoints carry a reason code that users know by name: ``kvm_exit``
(why the guest left hardware virtualization) and ``kvm_userspace_exit`` (why
KVM returned to the VMM).  For those, kvmstat counts one child event per
reason, ``parent(REASON)``, each a perf tracepoint event with a filter
``"<field>==<value>"`` (see docs/design.md).  The reason names and the filter
field come from the running kernel's own ``__print_symbolic`` table in the
``print fmt`` line of the format file (:mod:`.printfmt`); the built-in tables
(:mod:`.fallback`) are only used when that line cannot be parsed.

Nothing here is computed at import time; every path is a parameter.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ..errors import FormatError, NotAvailable, error_from_errno
from ..host.privileges import permission_hint
from .fallback import fallback_table
from .formats import EventFormat, Field, SymbolicTable, parse_format
from .printfmt import parse_symbolic_tables

__all__ = ["Child", "Event", "REASON_EVENTS", "ISA_CODES", "list_event_names", "load_events"]


@dataclass(frozen=True)
class Child:
    """A per-reason child counter, e.g. ``kvm_exit(HLT)`` with ``exit_reason==12``.

    ``filter`` is the perf tracepoint filter; ``codes`` the same reason
    values as the record holds them, zero-extended to 64 bits from the
    field's size (a signed field's -1 in 4 bytes is 0xffffffff), which is
    how the BPF engine reads the field.  Several codes: aliases.
    """

    name: str
    reason: str
    filter: str
    codes: Tuple[int, ...] = ()


@dataclass(frozen=True)
class Event:
    """A kvm tracepoint: its name, perf id, and per-reason children (if any).

    ``reason_field`` is where the children's reason is in the tracepoint's
    record (offset and size from the format file), for engines that read
    the record; None when the event has no children or the format file did
    not say (children from a built-in table, format unreadable).
    """

    name: str
    id: int
    subsystem: str = "kvm"
    filter_field: Optional[str] = None
    children: Tuple[Child, ...] = ()
    reason_field: Optional[Field] = None


# Events that get per-reason children, with the fields their reason table may
# be keyed on, in order of preference (x86, arm64, powerpc), and the prefix
# dropped from the kernel's names.  Only these two: they are the children
# upstream kvm_stat users know and script against; the other tables
# (APIC registers, emulator modes, ...) would only multiply perf events.
REASON_EVENTS: Dict[str, Tuple[Tuple[str, ...], str]] = {
    "kvm_exit": (("exit_reason", "esr_ec", "exit_nr"), ""),
    "kvm_userspace_exit": (("reason",), "KVM_EXIT_"),
}

# The value of the kvm_exit ``isa`` field for each table flavour
# (arch/x86/kvm/trace.h: KVM_ISA_VMX 1, KVM_ISA_SVM 2; PVM patches add 3).
ISA_CODES: Dict[str, int] = {"vmx": 1, "svm": 2, "pvm": 3}


_ISA_TERM_RE = re.compile(r"^\(*\s*REC->isa\s*==\s*(\d+)\s*\)*$")


def _table_matches(table: SymbolicTable, vendor: Optional[str]) -> bool:
    """Whether the ``REC->isa == N`` conditions of a table select ``vendor``."""
    isa = ISA_CODES.get(vendor or "")
    positive = False
    for text, holds in table.terms:
        m = _ISA_TERM_RE.match(text)
        if not m:
            continue
        if isa is None:
            return False
        if (int(m.group(1)) == isa) != holds:
            return False
        positive = positive or holds
    if vendor == "pvm" and any(_ISA_TERM_RE.match(t) for t, _ in table.terms):
        # A two-table kernel prints PVM codes with the SVM table (its else
        # branch); those names would be wrong, so only a table chosen by
        # "isa == 3" itself is PVM's.
        return positive
    return True


def _select_table(tables: Sequence[SymbolicTable], fmt: EventFormat, prefer: Sequence[str],
                  vendor: Optional[str]) -> Optional[SymbolicTable]:
    candidates = [t for t in tables if t.field in fmt.fields]
    for name in prefer:
        keyed = [t for t in candidates if t.field == name]
        if keyed:
            break
    else:
        fields = {t.field for t in candidates}
        if len(fields) != 1:
            return None
        keyed = candidates
    for t in keyed:
        if _table_matches(t, vendor):
            return t
    if vendor == "pvm":
        # This kernel has no PVM table (isa == 3): show the VMX table, the
        # names PVM hosts' users know.  kvm_exit does not fire on such hosts
        # today, so no count is mislabelled; a kernel with a PVM table gets it.
        return _select_table(tables, fmt, prefer, "vmx")
    return None


def _filter_value(value: int, field: Optional[Field]) -> int:
    if field is not None and not field.signed and value < 0 and 0 < field.size <= 8:
        return value % (1 << (8 * field.size))
    return value


def _record_code(value: int, field: Optional[Field]) -> int:
    """*value* as the record holds it, zero-extended from the field's size."""
    if field is not None and 0 < field.size <= 8:
        return value % (1 << (8 * field.size))
    return value


def _children(event: str, field_name: str, entries: Iterable[Tuple[int, str]],
              prefix: str, field: Optional[Field]) -> Tuple[Child, ...]:
    values: Dict[str, List[int]] = {}
    for value, name in entries:
        if prefix and name.startswith(prefix) and len(name) > len(prefix):
            name = name[len(prefix):]
        if not name:
            continue
        v = _filter_value(value, field)
        seen = values.setdefault(name, [])
        if v not in seen:
            seen.append(v)
    return tuple(
        Child(f"{event}({name})", name,
              " || ".join(f"{field_name}=={v}" for v in vals),
              tuple(dict.fromkeys(_record_code(v, field) for v in vals)))
        for name, vals in values.items())


def _build_event(name: str, ev_id: int, fmt_text: Optional[str], vendor: Optional[str],
                 subsystem: str) -> Event:
    spec = REASON_EVENTS.get(name) if subsystem == "kvm" else None
    if spec is None:
        return Event(name, ev_id, subsystem)
    prefer, prefix = spec
    fmt = None
    try:
        if fmt_text is None:
            raise FormatError("format file unreadable")
        fmt = parse_format(fmt_text)
        tables = parse_symbolic_tables(fmt.print_fmt)
    except FormatError:
        fallback = fallback_table(name, vendor)
        if fallback is None:
            return Event(name, ev_id, subsystem)
        field_name, entries = fallback
        known = fmt.fields.get(field_name) if fmt is not None else None
        # Without the format's field, values are filtered as a 4-byte
        # unsigned field would be, and the record offset stays unknown.
        field = known if known is not None else Field(field_name, 0, 4, False)
        return Event(name, ev_id, subsystem, field_name,
                     _children(name, field_name, entries, "", field), known)
    table = _select_table(tables, fmt, prefer, vendor)
    if table is None or not table.entries:
        return Event(name, ev_id, subsystem)
    field = fmt.fields.get(table.field)
    children = _children(name, table.field, table.entries, prefix, field)
    if not children:
        return Event(name, ev_id, subsystem)
    return Event(name, ev_id, subsystem, table.field, children, field)


def list_event_names(tracefs: str, subsystem: str = "kvm") -> List[str]:
    """Sorted names of the tracepoints under ``<tracefs>/events/<subsystem>/``.

    Only directories with an ``id`` file count.  Raises NotAvailable when
    there are none (kvm module not loaded, or tracefs not the right path),
    AccessDenied when the directory may not be read (not root).
    """
    base = os.path.join(tracefs, "events", subsystem)
    try:
        entries = os.listdir(base)
    except PermissionError as exc:
        # tracefs is readable by root only (mode 0700): the user is not root.
        raise error_from_errno(exc.errno, f"reading {base}", fix=permission_hint()) from None
    except OSError:
        entries = []
    names = sorted(e for e in entries if os.path.isfile(os.path.join(base, e, "id")))
    if not names:
        raise NotAvailable(f"no {subsystem} tracepoints under {base}: is the {subsystem} module loaded?")
    return names


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def load_events(tracefs: str, vendor: Optional[str], names: Optional[Iterable[str]] = None,
                subsystem: str = "kvm") -> List[Event]:
    """Load the tracepoints of ``<tracefs>/events/<subsystem>/`` as Events.

    ``vendor`` is a :func:`detect_vendor` result and selects the kvm_exit
    table on x86.  ``names`` restricts the events (default: all of
    :func:`list_event_names`).  An event whose ``id`` cannot be read (it
    vanished, e.g. a module unloaded meanwhile) is skipped.  Children come
    from the kernel's table in the format file; the built-in tables are used
    only when the format cannot be read or parsed.
    """
    if names is None:
        names = list_event_names(tracefs, subsystem)
    base = os.path.join(tracefs, "events", subsystem)
    events = []
    for name in names:
        id_text = _read(os.path.join(base, name, "id"))
        if id_text is None or not id_text.strip().isdigit():
            continue
        fmt_text = _read(os.path.join(base, name, "format"))
        events.append(_build_event(name, int(id_text.strip()), fmt_text, vendor, subsystem))
    return events
