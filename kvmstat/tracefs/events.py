"""The kvm tracepoints and the parsing of their tracefs ``format`` files.

Every tracepoint under ``<tracefs>/events/kvm/`` is an :class:`Event`.  Two of
them carry a reason code that users know by name (SPEC §1.1): ``kvm_exit``
(why the guest left hardware virtualization) and ``kvm_userspace_exit`` (why
KVM returned to the VMM).  For those, kvmstat counts one child event per
reason, ``parent(REASON)``, each a perf tracepoint event with a filter
``"<field>==<value>"``.  The reason names and the filter field come from the
running kernel's own ``__print_symbolic`` table in the ``print fmt`` line of
the format file; small built-in tables are only used when that line cannot be
parsed.

Nothing here is computed at import time; every path is a parameter.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field as dc_field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ..errors import FormatError, NotAvailable, error_from_errno
from ..host.privileges import permission_hint

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


# --------------------------------------------------------------------------
# Data types
# --------------------------------------------------------------------------

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


# --------------------------------------------------------------------------
# Format files
# --------------------------------------------------------------------------

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


# --------------------------------------------------------------------------
# print fmt tokenizer and table parser
# --------------------------------------------------------------------------

_MAX_DEPTH = 200
_OPS3 = ("<<=", ">>=")
_OPS2 = ("->", "==", "!=", "<=", ">=", "&&", "||", "<<", ">>", "++", "--")
_OPEN = {"(": ")", "{": "}", "[": "]"}
_CLOSE = {")", "}", "]"}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", '"': '"', "'": "'",
            "a": "\a", "b": "\b", "f": "\f", "v": "\v", "?": "?"}


@dataclass(frozen=True)
class _Tok:
    kind: str   # "str", "num", "id", "op"
    text: str   # decoded string for "str", source text otherwise
    start: int
    end: int


def _tokenize(src: str) -> List[_Tok]:
    toks: List[_Tok] = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c.isspace():
            i += 1
        elif c == '"':
            j = i + 1
            out = []
            while True:
                if j >= n:
                    raise FormatError("unterminated string literal in print fmt: the format file is truncated")
                ch = src[j]
                if ch == '"':
                    break
                if ch == "\\":
                    if j + 1 >= n:
                        raise FormatError("unterminated string literal in print fmt: the format file is truncated")
                    out.append(_ESCAPES.get(src[j + 1], src[j + 1]))
                    j += 2
                else:
                    out.append(ch)
                    j += 1
            toks.append(_Tok("str", "".join(out), i, j + 1))
            i = j + 1
        elif c == "'":
            j = src.find("'", i + 1)
            if j < 0:
                raise FormatError("unterminated character literal in print fmt: the format file is truncated")
            toks.append(_Tok("op", src[i:j + 1], i, j + 1))
            i = j + 1
        elif c.isdigit():
            j = i
            while j < n and (src[j].isalnum() or src[j] == "_"):
                j += 1
            toks.append(_Tok("num", src[i:j], i, j))
            i = j
        elif c.isalpha() or c == "_":
            j = i
            while j < n and (src[j].isalnum() or src[j] == "_"):
                j += 1
            toks.append(_Tok("id", src[i:j], i, j))
            i = j
        else:
            for op in _OPS3 + _OPS2:
                if src.startswith(op, i):
                    break
            else:
                op = c
            toks.append(_Tok("op", op, i, i + len(op)))
            i += len(op)
    return toks


def _match_brackets(toks: Sequence[_Tok]) -> Dict[int, int]:
    """Map each opening bracket index to its closing index; check nesting."""
    pairs: Dict[int, int] = {}
    stack: List[int] = []
    for k, t in enumerate(toks):
        if t.kind != "op":
            continue
        if t.text in _OPEN:
            stack.append(k)
            if len(stack) > _MAX_DEPTH:
                raise FormatError("print fmt nests brackets too deeply: the format file looks corrupt")
        elif t.text in _CLOSE:
            if not stack or _OPEN[toks[stack[-1]].text] != t.text:
                raise FormatError(f"unbalanced {t.text!r} in print fmt at offset {t.start}: the format file looks corrupt")
            pairs[stack.pop()] = k
    if stack:
        raise FormatError("unclosed bracket in print fmt: the format file is truncated")
    return pairs


class _TableParser:
    def __init__(self, src: str):
        self.src = src
        self.toks = _tokenize(src)
        self.pairs = _match_brackets(self.toks)
        self.tables: List[SymbolicTable] = []

    # ranges are half-open [lo, hi) over self.toks

    def _split(self, lo: int, hi: int, sep: str) -> List[Tuple[int, int]]:
        parts = []
        k = start = lo
        while k < hi:
            t = self.toks[k]
            if t.kind == "op" and t.text in _OPEN:
                k = self.pairs[k] + 1
                continue
            if t.kind == "op" and t.text == sep:
                parts.append((start, k))
                start = k + 1
            k += 1
        parts.append((start, hi))
        return parts

    def _text(self, lo: int, hi: int) -> str:
        return self.src[self.toks[lo].start:self.toks[hi - 1].end].strip()

    def _unwrap(self, lo: int, hi: int) -> Tuple[int, int]:
        while (hi - lo >= 2 and self.toks[lo].kind == "op" and self.toks[lo].text == "("
               and self.pairs.get(lo) == hi - 1):
            lo, hi = lo + 1, hi - 1
        return lo, hi

    def walk(self, lo: int, hi: int, terms: Tuple[Tuple[str, bool], ...], depth: int = 0) -> None:
        if depth > _MAX_DEPTH:
            raise FormatError("print fmt nests conditions too deeply: the format file looks corrupt")
        for a, b in self._split(lo, hi, ","):
            self._walk_expr(a, b, terms, depth + 1)

    def _walk_expr(self, lo: int, hi: int, terms, depth: int) -> None:
        lo, hi = self._unwrap(lo, hi)
        if lo >= hi:
            return
        q = c = None
        nest = 0
        k = lo
        while k < hi:
            t = self.toks[k]
            if t.kind == "op" and t.text in _OPEN:
                k = self.pairs[k] + 1
                continue
            if t.kind == "op" and t.text == "?":
                if q is None:
                    q = k
                else:
                    nest += 1
            elif t.kind == "op" and t.text == ":" and q is not None:
                if nest == 0:
                    c = k
                    break
                nest -= 1
            k += 1
        if q is not None:
            if c is None:
                raise FormatError(f"'?' without ':' in print fmt at offset {self.toks[q].start}: the format file looks corrupt")
            if q == lo or c == q + 1 or c + 1 >= hi:
                raise FormatError(f"incomplete '?:' expression in print fmt at offset {self.toks[q].start}: the format file looks corrupt")
            clo, chi = self._unwrap(lo, q)
            cond = self._text(clo, chi) if clo < chi else self._text(lo, q)
            self.walk(lo, q, terms, depth + 1)
            self.walk(q + 1, c, terms + ((cond, True),), depth + 1)
            self.walk(c + 1, hi, terms + ((cond, False),), depth + 1)
            return
        k = lo
        while k < hi:
            t = self.toks[k]
            if (t.kind == "id" and t.text in ("__print_symbolic", "__print_flags")
                    and k + 1 < hi and self.toks[k + 1].text == "(" and self.toks[k + 1].kind == "op"):
                close = self.pairs[k + 1]
                if t.text == "__print_symbolic":
                    self._table(k + 2, close, terms, t.start)
                k = close + 1
                continue
            if t.kind == "op" and t.text in _OPEN:
                close = self.pairs[k]
                self.walk(k + 1, close, terms, depth + 1)
                k = close + 1
                continue
            k += 1

    def _table(self, lo: int, hi: int, terms, at: int) -> None:
        args = self._split(lo, hi, ",")
        flo, fhi = args[0]
        fname = None
        for k in range(flo, fhi - 2):
            a, b, c = self.toks[k], self.toks[k + 1], self.toks[k + 2]
            if a.kind == "id" and a.text == "REC" and b.text == "->" and c.kind == "id":
                fname = c.text
                break
        if fname is None:
            raise FormatError(f"__print_symbolic at offset {at} is not keyed on a REC->field: the format file looks corrupt")
        entries = []
        for a, b in args[1:]:
            if a == b and (a, b) == args[-1] and len(args) > 1:
                continue  # trailing comma
            entry = self._entry(a, b, at)
            if entry is not None:
                entries.append(entry)
        cond = None
        if terms:
            cond = " && ".join(t if ok else f"!({t})" for t, ok in terms)
        self.tables.append(SymbolicTable(fname, cond, tuple(entries), tuple(terms)))

    def _entry(self, lo: int, hi: int, at: int) -> Optional[Tuple[int, str]]:
        """Parse ``{ value, "name" }``; None for an empty ``{ }`` or a value
        the kernel left as an unresolved enum name (it cannot be filtered)."""
        toks = self.toks
        if not (hi - lo >= 2 and toks[lo].kind == "op" and toks[lo].text == "{"
                and self.pairs.get(lo) == hi - 1):
            raise FormatError(f"__print_symbolic at offset {at} has an entry that is not {{value, \"name\"}}: the format file looks corrupt")
        if hi - lo == 2:
            return None
        parts = self._split(lo + 1, hi - 1, ",")
        if len(parts) == 3 and parts[2][0] == parts[2][1]:
            parts = parts[:2]
        if len(parts) != 2:
            raise FormatError(f"__print_symbolic at offset {at} has an entry that is not {{value, \"name\"}}: the format file looks corrupt")
        (va, vb), (sa, sb) = parts
        if sa >= sb or any(t.kind != "str" for t in toks[sa:sb]):
            raise FormatError(f"__print_symbolic at offset {at} has an entry whose name is not a string: the format file looks corrupt")
        expr = _Expr(toks[va:vb], at)
        value = expr.parse()
        if expr.unresolved:
            return None
        return value, "".join(t.text for t in toks[sa:sb])


_INT_RE = re.compile(r"^(0[xX][0-9a-fA-F]+|0[bB][01]+|0[0-7]*|[1-9][0-9]*)([uUlL]*)$")


class _Expr:
    """Evaluate a constant integer expression: + - * | & ^ << >> ~ ( ).

    Identifiers (enum names left unresolved by the kernel) evaluate to 0 and
    set ``unresolved``.
    """

    _BINARY = (("|",), ("^",), ("&",), ("<<", ">>"), ("+", "-"), ("*",))

    def __init__(self, toks: Sequence[_Tok], at: int):
        self.toks = list(toks)
        self.pos = 0
        self.at = at
        self.unresolved = False

    def _fail(self) -> FormatError:
        return FormatError(f"__print_symbolic at offset {self.at} has a value that is not a constant integer: the format file looks corrupt")

    def parse(self) -> int:
        if not self.toks:
            raise self._fail()
        v = self._binary(0)
        if self.pos != len(self.toks):
            raise self._fail()
        return v

    def _peek(self) -> Optional[str]:
        if self.pos < len(self.toks) and self.toks[self.pos].kind == "op":
            return self.toks[self.pos].text
        return None

    def _binary(self, level: int) -> int:
        if level == len(self._BINARY):
            return self._unary(0)
        v = self._binary(level + 1)
        while self._peek() in self._BINARY[level]:
            op = self.toks[self.pos].text
            self.pos += 1
            w = self._binary(level + 1)
            if op == "|":
                v |= w
            elif op == "^":
                v ^= w
            elif op == "&":
                v &= w
            elif op in ("<<", ">>"):
                if w < 0 or w > 128:
                    raise self._fail()
                v = v << w if op == "<<" else v >> w
            elif op == "+":
                v += w
            elif op == "-":
                v -= w
            else:
                v *= w
            if v.bit_length() > 256:
                raise self._fail()
        return v

    def _unary(self, depth: int) -> int:
        if depth > _MAX_DEPTH:
            raise self._fail()
        op = self._peek()
        if op in ("-", "+", "~"):
            self.pos += 1
            v = self._unary(depth + 1)
            return -v if op == "-" else (~v if op == "~" else v)
        if op == "(":
            self.pos += 1
            v = self._binary(0)
            if self._peek() != ")":
                raise self._fail()
            self.pos += 1
            return v
        if self.pos < len(self.toks) and self.toks[self.pos].kind == "num":
            m = _INT_RE.match(self.toks[self.pos].text)
            if not m:
                raise self._fail()
            self.pos += 1
            digits = m.group(1)
            if digits[:2] in ("0x", "0X"):
                return int(digits, 16)
            if digits[:2] in ("0b", "0B"):
                return int(digits[2:], 2)
            if len(digits) > 1 and digits[0] == "0":
                return int(digits, 8)
            return int(digits)
        if self.pos < len(self.toks) and self.toks[self.pos].kind == "id":
            # An enum constant the kernel did not replace by its value.
            self.pos += 1
            self.unresolved = True
            return 0
        raise self._fail()


def parse_symbolic_tables(print_fmt: str) -> List[SymbolicTable]:
    """Return every ``__print_symbolic`` table of a ``print fmt``, in order.

    ``print_fmt`` is the text after ``print fmt:`` (the prefix is tolerated).
    Values may be decimal, octal, hex, negative or constant expressions such
    as ``0x040 + 1`` or ``(1 << 0) | (1 << 2)``; names made of adjacent C
    string literals are joined.  ``__print_flags`` tables are ignored.
    Raises :class:`FormatError` (and nothing else) on malformed input.
    """
    if not isinstance(print_fmt, str):
        raise FormatError("print fmt is not text: pass the line of a format file")
    src = print_fmt.strip()
    if src.startswith("print fmt:"):
        src = src[len("print fmt:"):]
    try:
        parser = _TableParser(src)
        if parser.toks:
            parser.walk(0, len(parser.toks), ())
    except RecursionError:
        raise FormatError("print fmt nests too deeply: the format file looks corrupt") from None
    return parser.tables


# --------------------------------------------------------------------------
# Vendor detection
# --------------------------------------------------------------------------

_MODULE_VENDORS = (("kvm_intel", "vmx"), ("kvm_amd", "svm"), ("kvm_pvm", "pvm"))
_CPU_VENDORS = {
    "GenuineIntel": "vmx", "CentaurHauls": "vmx", "Shanghai": "vmx",
    "AuthenticAMD": "svm", "HygonGenuine": "svm",
}


def detect_vendor(sys_path: str = "/sys", proc_path: str = "/proc") -> Optional[str]:
    """Return the kvm_exit table flavour of this host: "vmx", "svm" or "pvm".

    The loaded KVM vendor module decides first (``kvm_intel`` → vmx,
    ``kvm_amd`` → svm, ``kvm_pvm`` → pvm: PVM reports its own exit codes
    with its own ISA number), then the ``vendor_id`` of ``<proc>/cpuinfo``.
    The vmx/svm cpuinfo flags are never used: nested and paravirtual hosts
    hide them while KVM works.  Returns None when neither source tells.
    """
    for module, vendor in _MODULE_VENDORS:
        if os.path.isdir(os.path.join(sys_path, "module", module)):
            return vendor
    try:
        with open(os.path.join(proc_path, "cpuinfo"), encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "vendor_id":
                    return _CPU_VENDORS.get(value.strip())
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------
# Built-in fallback tables (used only when a format cannot be parsed).
# Facts from the kernel UAPI headers (asm/vmx.h, asm/svm.h, linux/kvm.h) and
# the kernel's trace tables.
# --------------------------------------------------------------------------

_VMX_REASONS = (
    "0 EXCEPTION_NMI|1 EXTERNAL_INTERRUPT|2 TRIPLE_FAULT|3 INIT_SIGNAL|4 SIPI_SIGNAL|"
    "7 INTERRUPT_WINDOW|8 NMI_WINDOW|9 TASK_SWITCH|10 CPUID|12 HLT|13 INVD|14 INVLPG|"
    "15 RDPMC|16 RDTSC|18 VMCALL|19 VMCLEAR|20 VMLAUNCH|21 VMPTRLD|22 VMPTRST|23 VMREAD|"
    "24 VMRESUME|25 VMWRITE|26 VMOFF|27 VMON|28 CR_ACCESS|29 DR_ACCESS|30 IO_INSTRUCTION|"
    "31 MSR_READ|32 MSR_WRITE|33 INVALID_STATE|34 MSR_LOAD_FAIL|36 MWAIT_INSTRUCTION|"
    "37 MONITOR_TRAP_FLAG|39 MONITOR_INSTRUCTION|40 PAUSE_INSTRUCTION|41 MCE_DURING_VMENTRY|"
    "43 TPR_BELOW_THRESHOLD|44 APIC_ACCESS|45 EOI_INDUCED|46 GDTR_IDTR|47 LDTR_TR|"
    "48 EPT_VIOLATION|49 EPT_MISCONFIG|50 INVEPT|51 RDTSCP|52 PREEMPTION_TIMER|53 INVVPID|"
    "54 WBINVD|55 XSETBV|56 APIC_WRITE|57 RDRAND|58 INVPCID|59 VMFUNC|60 ENCLS|61 RDSEED|"
    "62 PML_FULL|63 XSAVES|64 XRSTORS|67 UMWAIT|68 TPAUSE|74 BUS_LOCK|75 NOTIFY|77 TDCALL|"
    "84 MSR_READ_IMM|85 MSR_WRITE_IMM")

_SVM_REASONS = (
    "0x000 read_cr0|0x002 read_cr2|0x003 read_cr3|0x004 read_cr4|0x008 read_cr8|0x010 write_cr0|"
    "0x012 write_cr2|0x013 write_cr3|0x014 write_cr4|0x018 write_cr8|0x020 read_dr0|0x021 read_dr1|"
    "0x022 read_dr2|0x023 read_dr3|0x024 read_dr4|0x025 read_dr5|0x026 read_dr6|"
    "0x027 read_dr7|0x030 write_dr0|0x031 write_dr1|0x032 write_dr2|0x033 write_dr3|"
    "0x034 write_dr4|0x035 write_dr5|0x036 write_dr6|0x037 write_dr7|0x040 DE excp|"
    "0x041 DB excp|0x043 BP excp|0x044 OF excp|0x045 BR excp|0x046 UD excp|0x047 NM excp|"
    "0x048 DF excp|0x04a TS excp|0x04b NP excp|0x04c SS excp|0x04d GP excp|0x04e PF excp|"
    "0x050 MF excp|0x051 AC excp|0x052 MC excp|0x053 XF excp|0x060 interrupt|0x061 nmi|"
    "0x062 smi|0x063 init|0x064 vintr|0x065 cr0_sel_write|0x066 read_idtr|0x067 read_gdtr|"
    "0x068 read_ldtr|0x069 read_rt|0x06a write_idtr|0x06b write_gdtr|0x06c write_ldtr|"
    "0x06d write_rt|0x06e rdtsc|0x06f rdpmc|0x070 pushf|0x071 popf|0x072 cpuid|0x073 rsm|"
    "0x074 iret|0x075 swint|0x076 invd|0x077 pause|0x078 hlt|0x079 invlpg|0x07a invlpga|"
    "0x07b io|0x07c msr|0x07d task_switch|0x07e ferr_freeze|0x07f shutdown|0x080 vmrun|"
    "0x081 hypercall|0x082 vmload|0x083 vmsave|0x084 stgi|0x085 clgi|0x086 skinit|"
    "0x087 rdtscp|0x088 icebp|0x089 wbinvd|0x08a monitor|0x08b mwait|0x08d xsetbv|"
    "0x08f write_efer_trap|0x090 write_cr0_trap|0x094 write_cr4_trap|0x098 write_cr8_trap|"
    "0x0a2 invpcid|0x0a5 buslock|0x0a6 idle-halt|0x400 npf|0x401 avic_incomplete_ipi|"
    "0x402 avic_unaccelerated_access|0x403 vmgexit|0x80000001 vmgexit_mmio_read|"
    "0x80000002 vmgexit_mmio_write|0x80000003 vmgexit_nmi_complete|0x80000004 vmgexit_ap_hlt_loop|"
    "0x80000005 vmgexit_ap_jump_table|0x80000010 vmgexit_page_state_change|"
    "0x80000011 vmgexit_guest_request|0x80000012 vmgexit_ext_guest_request|"
    "0x80000013 vmgexit_ap_creation|0x8000fffd vmgexit_hypervisor_feature|-1 invalid_guest_state")

_USERSPACE_REASONS = (
    "0 UNKNOWN|1 EXCEPTION|2 IO|3 HYPERCALL|4 DEBUG|5 HLT|6 MMIO|7 IRQ_WINDOW_OPEN|"
    "8 SHUTDOWN|9 FAIL_ENTRY|10 INTR|11 SET_TPR|12 TPR_ACCESS|13 S390_SIEIC|14 S390_RESET|"
    "15 DCR|16 NMI|17 INTERNAL_ERROR|18 OSI|19 PAPR_HCALL|20 S390_UCONTROL|21 WATCHDOG|"
    "22 S390_TSCH|23 EPR|24 SYSTEM_EVENT|25 S390_STSI|26 IOAPIC_EOI|27 HYPERV|28 ARM_NISV|"
    "29 X86_RDMSR|30 X86_WRMSR|31 DIRTY_RING_FULL|32 AP_RESET_HOLD|33 X86_BUS_LOCK|34 XEN|"
    "35 RISCV_SBI|36 RISCV_CSR|37 NOTIFY")


def fallback_table(event: str, vendor: Optional[str]) -> Optional[Tuple[str, Tuple[Tuple[int, str], ...]]]:
    """Return the built-in ``(field, ((value, name), ...))`` table of an event.

    Only for ``kvm_exit`` on vmx/svm hosts and ``kvm_userspace_exit``; names
    carry no ``KVM_EXIT_`` prefix.  None when there is no built-in table.
    """
    if event == "kvm_exit" and vendor == "vmx":
        field, text = "exit_reason", _VMX_REASONS
    elif event == "kvm_exit" and vendor == "svm":
        field, text = "exit_reason", _SVM_REASONS
    elif event == "kvm_userspace_exit":
        field, text = "reason", _USERSPACE_REASONS
    else:
        return None
    entries = []
    for item in text.split("|"):
        value, _, name = item.partition(" ")
        entries.append((int(value, 0), name))
    return field, tuple(entries)


# --------------------------------------------------------------------------
# Building events and children
# --------------------------------------------------------------------------

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
