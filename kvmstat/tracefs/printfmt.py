"""The reason tables of a ``print fmt`` line: a tokenizer for its C
expression, a parser of its ``__print_symbolic`` tables and of the ``?:``
conditions that select them, and an evaluator of the constant integer
expressions in their entries.

Format files come from the kernel but are read as untrusted text: any
malformed input raises :class:`~kvmstat.errors.FormatError` and nothing
else, with bounded nesting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import FormatError
from .formats import SymbolicTable

__all__ = ["parse_symbolic_tables"]


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
