#!/usr/bin/env python3
"""Benchmark: what counting costs kvm_stat itself as the perf groups grow.

A VM process with G threads (benchmarks/vmprocess.py: G parked vCPU
threads, no guest load) is watched the way ``kvm_stat -p PID`` watches it:
every kvm event and every reason child, one perf group per thread, so G
groups x E events, the cost of G CPUs host-wide.  For G = 16, 64, 128 and
for both counting backends (the C core and the pure-Python twin), side by
side and interleaved, a fresh process (benchmarks/scale_child.py) measures:

* set-up CPU: the command's imports, and opening the events
  (``open_sampler``: event list, VM discovery, perf_event_open, enable);
* per-sample CPU (user and system) of ``Sampler.sample()`` (follow the VM,
  one bulk read, the deltas), and of the provider's read alone;
* peak RSS and open file descriptors.

Run from the repository root, as root::

    python benchmarks/bench_scale.py [--quick]

This is a measurement, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import support
from support import Target, markdown_table, median, targets_table
from vmprocess import ParkedVM

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scale_child.py")
BACKENDS = ("c", "python")
TARGET_GROUPS = 64

Results = Dict[Tuple[int, str], List[dict]]


def measure(groups: Sequence[int], rounds: int, samples: int) -> Results:
    """Run every configuration *rounds* times, backends interleaved."""
    support.compile_kvmstat()
    results: Results = {}
    for count in groups:
        with ParkedVM(count) as vm:
            for _ in range(rounds):
                for backend in BACKENDS:
                    runs = results.setdefault((count, backend), [])
                    if runs and "error" in runs[0]:
                        continue  # it will not work the next time either
                    runs.append(support.run_json_child(
                        [sys.executable, CHILD, str(vm.pid), backend, str(samples)]))
    return results


class Figures:
    """Medians over the runs of one configuration (seconds, bytes)."""

    def __init__(self, runs: List[dict]):
        def cpu(run: dict, phase: str, part: Optional[str] = None) -> float:
            """CPU seconds of *phase* in *run*: "user", "sys", or both (None)."""
            times = run[phase]
            return times["user"] + times["sys"] if part is None else times[part]

        def med(phase: str, part: Optional[str] = None, per_call: bool = False) -> float:
            return median(cpu(r, phase, part) / (r["count"] if per_call else 1) for r in runs)

        first = runs[0]
        self.events = first["events"]
        self.perf_events = first["perf_events"]
        self.groups = self.perf_events // self.events
        self.fds = median(r["fds"] for r in runs)
        self.rss_mb = median(r["maxrss_kb"] for r in runs) / 1024
        self.interpreter = med("interpreter")
        self.imports = med("imports")
        self.open = med("open")
        self.open_sys = med("open", "sys")
        self.setup = median(cpu(r, "imports") + cpu(r, "open") for r in runs)
        self.sample = med("samples", per_call=True)
        self.sample_user = med("samples", "user", per_call=True)
        self.sample_sys = med("samples", "sys", per_call=True)
        self.read = med("reads", per_call=True)
        self.read_sys = med("reads", "sys", per_call=True)


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f}"


def _table(figures: Dict[Tuple[int, str], Figures], errors: Dict[Tuple[int, str], str]) -> str:
    rows = []
    for key in sorted({*figures, *errors}):
        count, backend = key
        f = figures.get(key)
        if f is None:
            rows.append((count, backend, f"not run: {errors[key]}") + ("",) * 9)
            continue
        rows.append((f.groups, backend, f"{f.perf_events:,}", f"{f.setup:.3f}",
                     f"{f.imports:.3f}", f"{f.open:.3f} ({f.open_sys:.3f})",
                     _us(f.sample), _us(f.sample_user), _us(f.sample_sys),
                     _us(f.read), f"{f.rss_mb:.1f}", f"{f.fds:,.0f}"))
    return markdown_table(
        ["groups", "backend", "perf events", "set-up CPU s", "imports s", "open s (system)",
         "CPU/sample us", "user", "system", "provider read us", "peak RSS MB", "open fds"],
        rows)


def _ratios(figures: Dict[Tuple[int, str], Figures]) -> str:
    rows = []
    for count in sorted({g for g, _ in figures}):
        c, py = figures.get((count, "c")), figures.get((count, "python"))
        if c is None or py is None:
            continue
        rows.append((count, _us(c.sample), _us(py.sample), f"{c.sample / py.sample:.2f}",
                     _us(c.read), f"{c.read / py.sample:.2f}",
                     f"{c.sample_user / py.sample_user:.2f}"))
    return markdown_table(
        ["groups", "C us/sample", "Python us/sample", "C / Python",
         "C provider read us", "C read / Python sample", "C / Python, user time"], rows)


def _targets(figures: Dict[Tuple[int, str], Figures]) -> str:
    c, py = figures.get((TARGET_GROUPS, "c")), figures.get((TARGET_GROUPS, "python"))
    if c is None or py is None:
        return (f"Targets are stated at {TARGET_GROUPS} groups, which this run did not "
                f"measure (a quick run).")
    ratio = c.sample / py.sample
    targets = [
        Target(f"C per-sample CPU <= 1 ms ({TARGET_GROUPS} groups x {c.events} events)",
               f"{_us(c.sample)} us", c.sample <= 1e-3,
               f"the bulk read (one native call) takes {_us(c.read)} us, nearly all of it "
               f"in the kernel ({_us(c.read_sys)} us system time)"),
        Target("C per-sample CPU <= 1/10 of the pure-Python path",
               f"{_us(c.sample)} / {_us(py.sample)} us = {ratio:.2f}", ratio <= 0.1,
               f"both backends make the same {c.groups} group reads; the C read alone "
               f"({_us(c.read)} us, {_us(c.read_sys)} us of it system time) is "
               f"{c.read / py.sample:.2f} of the Python sample. User time: C "
               f"{_us(c.sample_user)} us, Python {_us(py.sample_user)} us "
               f"({c.sample_user / py.sample_user:.2f})"),
        Target("set-up CPU <= 0.3 s (imports + opening the events)",
               f"{c.setup:.3f} s", c.setup <= 0.3,
               f"opening: {c.open:.3f} s, of it {c.open_sys:.3f} s in the kernel "
               f"({c.perf_events:,} perf_event_open calls); imports {c.imports:.3f} s; "
               f"the interpreter's own start-up adds {c.interpreter:.3f} s"),
        Target("peak RSS <= 40 MB", f"{c.rss_mb:.1f} MB", c.rss_mb <= 40,
               f"perf events live in kernel memory; {c.fds:,.0f} open descriptors"),
    ]
    return targets_table(targets)


def report(results: Results, rounds: int, samples: int) -> str:
    errors = {key: runs[0]["error"] for key, runs in results.items() if "error" in runs[0]}
    figures = {key: Figures(runs) for key, runs in results.items() if key not in errors}
    if not figures:
        raise RuntimeError(f"no configuration could run: {errors}")
    events = next(iter(figures.values())).events
    return "\n\n".join([
        "## Scale: kvm_stat -p --engine perf on a VM process with many threads",
        f"Every kvm event and reason child ({events} events) counted per thread of a VM "
        f"process whose threads all sleep, one perf group per thread (the cost of as "
        f"many CPUs host-wide). Each configuration ran in a fresh process, backends "
        f"interleaved, with bytecode caches (as installed); medians of {rounds} run(s). "
        f"Set-up CPU = the kvm_stat command's "
        f"imports + `open_sampler` (event list, VM discovery, perf_event_open, enable). "
        f"A sample = `Sampler.sample()` (follow the VM, one bulk read, deltas), "
        f"{samples} per run; the provider read is the bulk read and its dict alone. "
        f"CPU totals are exact; the user/system split is an estimate (a kernel with "
        f"tick-based CPU accounting samples it at each timer tick).",
        _table(figures, errors),
        _ratios(figures),
        _targets(figures),
    ])


def run(quick: bool = False) -> str:
    """Run the benchmark; returns its Markdown section."""
    groups, rounds, samples = ((16,), 1, 200) if quick else ((16, 64, 128), 5, 1000)
    return report(measure(groups, rounds, samples), rounds, samples)


if __name__ == "__main__":
    sys.exit(support.bench_main(run, __doc__))
