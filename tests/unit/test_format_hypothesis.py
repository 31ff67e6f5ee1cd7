"""Property tests for the print fmt table parser of kvmstat.tracefs.events."""

from __future__ import annotations

import pathlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmstat.tracefs.events import FormatError, parse_format, parse_symbolic_tables

DATA = pathlib.Path(__file__).parent / "data"
FIXTURES = sorted(p.read_text() for p in DATA.glob("*.format"))

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def c_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def rendered_int(draw, value: int, allow_sum: bool = True) -> str:
    styles = ["dec", "hex"]
    if allow_sum:
        styles.append("sum")
    style = draw(st.sampled_from(styles))
    if style == "sum":
        a = draw(st.integers(min_value=-(1 << 33), max_value=1 << 33))
        left = draw(rendered_int(a, allow_sum=False))
        right = draw(rendered_int(value - a, allow_sum=False))
        text = f"{left} + {right}"
        return f"({text})" if draw(st.booleans()) else text
    magnitude = abs(value)
    body = str(magnitude) if style == "dec" else draw(st.sampled_from(["0x%x", "0x%X", "0x%03x"])) % magnitude
    if style == "hex" and draw(st.booleans()):
        body = body + draw(st.sampled_from(["u", "UL", "ULL", "l"]))
    return "-" + body if value < 0 else body


@st.composite
def rendered_name(draw, name: str) -> str:
    cuts = sorted(draw(st.lists(st.integers(min_value=0, max_value=len(name)), max_size=4)))
    pieces, last = [], 0
    for c in cuts:
        pieces.append(name[last:c])
        last = c
    pieces.append(name[last:])
    return " ".join(c_string(p) for p in pieces)


names = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
ints = st.integers(min_value=-(1 << 40), max_value=1 << 40)
idents = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)


@st.composite
def table(draw):
    field = draw(idents)
    entries = draw(st.lists(st.tuples(ints, names), max_size=8))
    parts = []
    for value, name in entries:
        parts.append("{ %s, %s }" % (draw(rendered_int(value)), draw(rendered_name(name))))
    mask = draw(st.sampled_from(["", " & 0xffff", " & ~0xffff"]))
    text = f"__print_symbolic(REC->{field}{mask}" + "".join(", " + p for p in parts) + ")"
    return field, tuple(entries), text


@given(st.lists(table(), max_size=4), st.data())
@SETTINGS
def test_tables_round_trip(tables, data):
    args = []
    expected = []
    i = 0
    while i < len(tables):
        if i + 1 < len(tables) and data.draw(st.booleans()):
            k = data.draw(st.integers(min_value=0, max_value=9))
            args.append(f"(REC->isa == {k}) ? {tables[i][2]} : {tables[i + 1][2]}")
            expected.append((tables[i][0], tables[i][1], f"REC->isa == {k}"))
            expected.append((tables[i + 1][0], tables[i + 1][1], f"!(REC->isa == {k})"))
            i += 2
        else:
            args.append(tables[i][2])
            expected.append((tables[i][0], tables[i][1], None))
            i += 1
        if data.draw(st.booleans()):
            args.append('__print_flags(REC->f, "|", { 1, "F" })')
    fmt = c_string("%s " * len(args)) + "".join(", " + a for a in args) + ", REC->x"
    got = parse_symbolic_tables(fmt)
    assert [(t.field, t.entries, t.condition) for t in got] == expected


@given(st.text(max_size=400))
@SETTINGS
def test_garbage_text(text):
    for fn in (parse_symbolic_tables, parse_format):
        try:
            fn(text)
        except FormatError:
            pass


TOKENS = ["(", ")", "{", "}", ",", "?", ":", '"a"', '"', "1", "0x1f", "-", "+", "<<", "|",
          "REC", "->", "isa", "==", "__print_symbolic", "__print_flags", "REC->r", "\\",
          "'", "x", "~", "*", "99999999999999999999", "0b", "09", " "]


@given(st.lists(st.sampled_from(TOKENS), max_size=60))
@SETTINGS
def test_token_soup(tokens):
    try:
        parse_symbolic_tables(" ".join(tokens))
    except FormatError:
        pass
    try:
        parse_symbolic_tables("".join(tokens))
    except FormatError:
        pass


@given(st.sampled_from(FIXTURES), st.data())
@SETTINGS
def test_truncated_and_mutated_real_formats(text, data):
    cut = data.draw(st.integers(min_value=0, max_value=len(text)))
    variants = [text[:cut], text[cut:]]
    pos = data.draw(st.integers(min_value=0, max_value=len(text)))
    junk = data.draw(st.text(max_size=5))
    variants.append(text[:pos] + junk + text[pos + data.draw(st.integers(0, 5)):])
    for v in variants:
        try:
            fmt = parse_format(v)
        except FormatError:
            fmt = None
        if fmt is not None:
            try:
                parse_symbolic_tables(fmt.print_fmt)
            except FormatError:
                pass
        line = v[v.find("print fmt:"):] if "print fmt:" in v else v
        try:
            parse_symbolic_tables(line)
        except FormatError:
            pass
