#!/usr/bin/env python3
"""Run every kvmstat benchmark: one command, one results file.

    python benchmarks/run.py [--quick] [--output FILE] [--only NAME ...]
    python benchmarks/run.py --list

Each benchmark is a module ``benchmarks/bench_NAME.py`` with a function
``run(quick: bool = False) -> str`` that measures and returns a Markdown
section (its tables, and its targets met or not with the figures).  This
runs the modules of :data:`BENCHMARKS` in order (an optional one that is
not there is skipped and said so), prints the document and writes it to
``benchmarks/RESULTS.md`` (or FILE) under a description of the machine.
``--quick`` is a short smoke version of every benchmark (what CI runs);
its figures are not the results.

Needs root and KVM, like the kernel tests.  Exit status 1 if a benchmark
failed (its section then holds the error); every other one still runs.
Each section is preceded by a ``<!-- benchmark: NAME -->`` marker;
``--list`` prints each known benchmark as ``NAME present|missing
optional|required``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import subprocess
import sys
import time
import traceback
from typing import List, Optional, Sequence, Tuple

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)

import support  # noqa: E402

#: (module, optional): the benchmarks, in the order they run and appear
BENCHMARKS: List[Tuple[str, bool]] = [
    ("bench_scale", False),
    ("bench_guest_cost", False),
    ("bench_teardown", False),
    ("bench_exporter", False),
    ("bench_engines", True),   # the perf and BPF engines side by side (issue 10)
    ("bench_durations", True),  # --durations per exit and the ioctl marker (issue 15)
]

DEFAULT_OUTPUT = os.path.join(BENCH_DIR, "RESULTS.md")


def marker(name: str) -> str:
    """The comment that precedes the section of benchmark *name*."""
    return f"<!-- benchmark: {name} -->"


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=support.REPO_ROOT, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def _commit() -> str:
    """The commit measured, "-dirty" when tracked files differ from it (the
    results file itself, which a run rewrites, aside)."""
    commit = _git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown"
    changed = _git("status", "--porcelain", "--untracked-files=no", "--", ".",
                   ":(exclude)benchmarks/RESULTS.md")
    return commit + ("-dirty" if changed else "")


def header(quick: bool) -> str:
    """The title and the machine the benchmarks run on."""
    facts = support.machine()
    facts["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    facts["kvmstat"] = _commit()
    lines = ["# kvmstat benchmark results", "",
             "Written by `python benchmarks/run.py" + (" --quick" if quick else "")
             + "`: run it again rather than editing this file. See benchmarks/README.md "
             "for what each benchmark does."]
    if quick:
        lines += ["", "**Quick (smoke) run: shortened benchmarks; these figures are not "
                      "the results.**"]
    lines += ["", support.markdown_table(["machine", ""], facts.items(), numbers=False)]
    return "\n".join(lines)


def _module_present(name: str) -> bool:
    return os.path.exists(os.path.join(BENCH_DIR, f"{name}.py"))


def run_one(name: str, quick: bool) -> Tuple[str, str]:
    """Run benchmark *name*: (status, Markdown section)."""
    try:
        module = importlib.import_module(name)
        section = module.run(quick=quick)
    except Exception:  # report it in the results and go on with the others
        return "FAILED", f"## {name}: FAILED\n\n```\n{traceback.format_exc()}```"
    return "ok", section


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a short smoke version of every benchmark (CI)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT,
                        help="where to write the results (default: benchmarks/RESULTS.md)")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="run only these benchmarks (e.g. bench_scale)")
    parser.add_argument("--list", action="store_true",
                        help="list the known benchmarks and whether they are here")
    args = parser.parse_args(argv)
    if args.list:
        for name, optional in BENCHMARKS:
            print(name, "present" if _module_present(name) else "missing",
                  "optional" if optional else "required")
        return 0
    known = [name for name, _ in BENCHMARKS]
    unknown = [name for name in args.only or () if name not in known]
    if unknown:
        print(f"run.py: unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(known)}",
              file=sys.stderr)
        return 2
    if os.geteuid() != 0 or not os.path.exists("/dev/kvm"):
        print("run.py: the benchmarks need root and /dev/kvm (perf events, test guests)",
              file=sys.stderr)
        return 1

    sections = [header(args.quick)]
    summary = []
    for name, optional in BENCHMARKS:
        if args.only and name not in args.only:
            continue
        if optional and not _module_present(name):
            summary.append((name, "not present", "-"))
            sections.append(f"{marker(name)}\n## {name}: not present\n\n"
                            f"benchmarks/{name}.py is not in this tree; skipped.")
            continue
        print(f"run.py: {name} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        status, section = run_one(name, args.quick)
        summary.append((name, status, f"{time.monotonic() - started:.0f}"))
        sections.append(f"{marker(name)}\n{section}")

    sections.append("## Benchmarks run\n\n"
                    + support.markdown_table(["benchmark", "status", "seconds"], summary))
    document = "\n\n".join(sections) + "\n"
    with open(args.output, "w") as f:
        f.write(document)
    print(document)
    print(f"run.py: results written to {args.output}", file=sys.stderr)
    return 1 if any(status == "FAILED" for _, status, _ in summary) else 0


if __name__ == "__main__":
    sys.exit(main())
