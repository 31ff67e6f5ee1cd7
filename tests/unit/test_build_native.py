"""The cffi cdef is generated from the C headers (csrc/build_native.py)."""

import importlib.util
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"


def load_builder():
    spec = importlib.util.spec_from_file_location("build_native", CSRC / "build_native.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


builder = load_builder()


def test_public_part_only_and_constants_become_dots():
    text = ("#include <stdint.h>\nint hidden(void);\n/* cdef: begin (why) */\n"
            "#define A 1  /* one,\n   on two lines */\n#define B (-1)\nint shown(int x);\n"
            "/* cdef: end */\n#endif\n")
    cdef = builder.header_cdef(text)
    assert "hidden" not in cdef and "stdint" not in cdef and "endif" not in cdef
    assert "#define A ..." in cdef and "#define B ..." in cdef
    assert "int shown(int x);" in cdef
    assert "(-1)" not in cdef and "two lines" not in cdef


@pytest.mark.parametrize("text", ["int f(void);\n",
                                  "/* cdef: end */\n/* cdef: begin */\n",
                                  "/* cdef: begin */\nint f(void);\n"])
def test_missing_or_misordered_markers_are_refused(text):
    with pytest.raises(ValueError, match="cdef: begin"):
        builder.header_cdef(text, "x.h")


def test_every_public_declaration_reaches_the_binding():
    native = pytest.importorskip("kvmstat._native")
    cdef = builder.read_cdef(str(CSRC))
    functions = set(re.findall(r"\b(kvmstat_\w+)\s*\(", cdef))
    constants = set(re.findall(r"#define\s+(\w+)", cdef))
    assert "kvmstat_bpf_new" in functions and "kvmstat_set_new" in functions
    assert "KVMSTAT_BPF_ALL_TGIDS" in constants and "KVMSTAT_PER_CPU" in constants
    for name in functions | constants:
        assert hasattr(native.lib, name), name
    # The values come from the compiled header, not from a copy.
    assert native.lib.KVMSTAT_BPF_ALL_TGIDS == -1


def test_every_c_file_is_built_and_every_header_is_a_dependency():
    headers = set(builder.PUBLIC_HEADERS + builder.PRIVATE_HEADERS)
    assert headers == {h.name for h in CSRC.glob("*.h")}
    assert set(builder.SOURCES) == {c.name for c in CSRC.glob("*.c")}
