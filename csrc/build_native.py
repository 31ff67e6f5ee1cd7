"""cffi builder for kvmstat._native (API / out-of-line mode).

Used by setup.py as ``cffi_modules=["csrc/build_native.py:ffibuilder"]``;
paths are relative to the repository root, where setup.py runs.  Running this
file directly builds the extension in the current directory.

The C headers are the one description of the API: the cdef is the part of
each public header between its ``cdef: begin`` and ``cdef: end`` markers,
with every ``#define NAME value`` handed to cffi as ``#define NAME ...`` (cffi
reads the value from the compiled header, so the two cannot disagree).
"""

import os
import re

import cffi

CSRC = os.path.dirname(os.path.abspath(__file__))
PUBLIC_HEADERS = ("kvmstat_native.h", "kvmstat_bpf.h", "kvmstat_durations.h")
SOURCES = ("kvmstat_sys.c", "kvmstat_native.c", "kvmstat_bpf_asm.c", "kvmstat_bpf.c",
           "kvmstat_bpf_slots.c",
           "kvmstat_bpf_prog.c", "kvmstat_bpf_read.c", "kvmstat_durations.c")
PRIVATE_HEADERS = ("kvmstat_sys.h", "kvmstat_bpf_asm.h", "kvmstat_bpf_engine.h",
                   "kvmstat_array.h")

BEGIN = re.compile(r"^/\* cdef: begin\b.*\*/$", re.M)
END = re.compile(r"^/\* cdef: end \*/$", re.M)
DEFINE = re.compile(r"^(\s*#\s*define\s+[A-Za-z_][A-Za-z0-9_]*)\s+.*$", re.M)
COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)


def header_cdef(text, name="header"):
    """The cdef of one header's text: its public part, constants as ``...``.

    Raises ValueError when the markers are missing or out of order.
    """
    begin, end = BEGIN.search(text), END.search(text)
    if begin is None or end is None or end.start() < begin.end():
        raise ValueError(f"{name}: no '/* cdef: begin */' ... '/* cdef: end */' part")
    # Comments first: one may follow a #define and run over several lines.
    public = COMMENT.sub(lambda m: "\n" * m.group().count("\n"), text[begin.end():end.start()])
    return DEFINE.sub(r"\1 ...", public)


def read_cdef(csrc=CSRC):
    """The cdef of every public header under csrc, in order."""
    parts = []
    for name in PUBLIC_HEADERS:
        with open(os.path.join(csrc, name), encoding="utf-8") as f:
            parts.append(header_cdef(f.read(), name))
    return "\n".join(parts)


def _rel(name):
    # setup.py runs from the repository root and wants relative paths.
    return "csrc/" + name


ffibuilder = cffi.FFI()
ffibuilder.cdef(read_cdef())
ffibuilder.set_source(
    "kvmstat._native",
    "".join(f'#include "{h}"\n' for h in PUBLIC_HEADERS),
    sources=[_rel(s) for s in SOURCES],
    include_dirs=["csrc"],
    depends=[_rel(h) for h in PUBLIC_HEADERS + PRIVATE_HEADERS],
    extra_compile_args=["-O2", "-Wall", "-Wextra"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
