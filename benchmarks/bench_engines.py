#!/usr/bin/env python3
"""Benchmark: the two tracepoint engines side by side (--engine perf, --engine bpf).

1. Guest slowdown of a full exit-reason breakdown.  A test guest runs under
   each monitor in turn, rounds interleaved; the figure is the CPU time its
   vCPU thread uses per exit (other load on the host inflates wall-clock
   rates, much less the thread's own CPU time), compared with no monitor:

   * I/O-heavy guest: every KVM_RUN returns to user space for a port write,
     so each exit hits ``kvm_userspace_exit`` once; its breakdown is the
     parent and one child per KVM_EXIT_* reason of the running kernel.
   * cpuid-heavy guest: every iteration is one ``kvm_cpuid`` hit, handled in
     the kernel.  ``kvm_exit`` never fires on this host (paravirtual KVM), so
     ``kvm_cpuid`` stands in for it: its breakdown on the ``function`` field
     has as many children as this kernel's kvm_exit table has reasons.

   Monitors, all host-wide, opened through the providers kvm_stat uses: one
   plain counting event on the tracepoint (perf, one event per CPU); the
   perf engine's breakdown (parent + one filtered event per reason, per
   CPU); the BPF engine with the parent only; the BPF engine's breakdown.
   (This module replaces bench_bpf_engine.py, which measured the same
   breakdowns on kvm_cpuid with hand-built monitors.)

2. CPU per sample (user + system) of a per-VM sampler (``--by-guest``) for
   a VM process with 64 threads: the perf engine has 64 groups of every
   field, the BPF engine one program per tracepoint.

``run(quick)`` returns the Markdown section for benchmarks/RESULTS.md;
``main()`` prints it.  Run from the repository root, as root::

    python benchmarks/bench_engines.py [--quick]

This is a measurement, not a test: it asserts nothing; it says whether the
targets of issue 10 are met in the numbers it measured.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (REPO_ROOT, os.path.join(REPO_ROOT, "tests"), os.path.dirname(__file__)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from bench_exporter import GuestThreads  # noqa: E402
from bench_guest_cost import GUEST_CPU, cpuid_cost, io_cost  # noqa: E402
from helpers.kvmguest import Guest, GuestProcess  # noqa: E402
from kvmstat.errors import Error  # noqa: E402
from kvmstat.tracefs.events import Child, Event, detect_vendor, load_events, parse_format  # noqa: E402
from kvmstat.host.paths import Paths  # noqa: E402
from kvmstat.counting.bpf import BpfCounter  # noqa: E402
from kvmstat.providers.bpf_tracepoints import BpfTracepointProvider, bpf_layout  # noqa: E402
from kvmstat.providers.tracepoints import TracepointProvider  # noqa: E402
from kvmstat.sampling.sources import open_sampler  # noqa: E402
from kvmstat.sampling.teardown import close_detached  # noqa: E402

TITLE = "Tracepoint engines: perf groups vs BPF"

#: (label, opener(tracefs, event) -> provider or None)
Monitor = Tuple[str, Callable[[str, Event], Optional[object]]]

MONITORS: List[Monitor] = [
    ("no monitor", lambda tracefs, ev: None),
    ("perf, 1 plain event", lambda tracefs, ev: TracepointProvider(
        tracefs, events=[ev], fields=[ev.name])),
    ("perf breakdown", lambda tracefs, ev: TracepointProvider(tracefs, events=[ev])),
    ("bpf, parent only", lambda tracefs, ev: BpfTracepointProvider(
        tracefs, events=[ev], fields=[ev.name])),
    ("bpf breakdown", lambda tracefs, ev: BpfTracepointProvider(tracefs, events=[ev])),
    # The floor: a program that returns at once, attached the same way.
    ("bpf, empty program (floor)", lambda tracefs, ev: BpfCounter(
        bpf_layout([ev])[0], [], layout="empty")),
]

QUIET = 0.10   # the percentile of the windows taken as the quiet-machine figure


@dataclass
class Scenario:
    """One guest and tracepoint: vCPU ns per exit of every monitor, per round."""

    name: str
    tracepoint: str
    children: int
    costs: Dict[str, List[List[float]]]  # per round: the run's windows

    def quiet(self, monitor: str) -> float:
        """The QUIET percentile of every window of the monitor."""
        every = sorted(w for run in self.costs[monitor] for w in run)
        return every[int(QUIET * (len(every) - 1))]

    def added(self, monitor: str) -> float:
        """ns per exit the monitor adds to the unmonitored guest, quiet
        machine: its quiet windows against the unmonitored quiet windows
        (other load on the host only ever adds, in bursts)."""
        return self.quiet(monitor) - self.quiet("no monitor")

    def added_median(self, monitor: str) -> float:
        """The median over rounds of the round's median minus the same
        round's unmonitored median (pairs close in time)."""
        return statistics.median(statistics.median(m) - statistics.median(n)
                                 for m, n in zip(self.costs[monitor],
                                                 self.costs["no monitor"]))


# ---------------------------------------------------------------------------
# Guests

def measure(name: str, tracefs: str, event: Event, rounds: int,
            one_run: Callable[[], List[float]]) -> Scenario:
    scenario = Scenario(name, event.name, len(event.children), {m: [] for m, _ in MONITORS})
    one_run()  # warm up
    for round_ in range(rounds):
        # Every other round in reverse order: no monitor always runs right
        # after the same one.
        for label, opener in MONITORS if round_ % 2 == 0 else MONITORS[::-1]:
            monitor = opener(tracefs, event)
            try:
                scenario.costs[label].append(one_run())
            finally:
                if monitor is not None:
                    # Closed here and now: a teardown in the background would
                    # run during the next measurement.
                    monitor.close()
    return scenario


def cpuid_stand_in(tracefs: str, events: Dict[str, Event]) -> Event:
    """kvm_cpuid with children on its ``function`` field, one per reason of
    this kernel's kvm_exit table (the breakdown kvm_exit would get)."""
    with open(os.path.join(tracefs, "events", "kvm", "kvm_cpuid", "format")) as f:
        fmt = parse_format(f.read())
    field = fmt.fields["function"]
    reasons = [code for child in events["kvm_exit"].children for code in child.codes[:1]]
    children = tuple(Child(f"kvm_cpuid({code})", str(code), f"function=={code}", (code,))
                     for code in reasons)
    return Event("kvm_cpuid", fmt.id, "kvm", "function", children, field)


# ---------------------------------------------------------------------------
# CPU per sample

def sample_cpu(engine: str, fields: str, samples: int) -> Tuple[float, int, int]:
    """CPU seconds per sample of a per-VM sampler: (seconds, fds, fields)."""
    sampler = open_sampler(fields=fields, by_vm=True, engine=engine)
    try:
        for _ in range(3):
            sampler.sample()
        start = time.process_time()
        for _ in range(samples):
            sampler.sample()
        cpu = (time.process_time() - start) / samples
        return cpu, sum(p.fds for p in sampler.providers), len(sampler.fields)
    finally:
        close_detached(sampler)


# ---------------------------------------------------------------------------
# Report

def _ratio(part: float, whole: float) -> str:
    return f"{part / whole:.2f}" if whole > 0 else "n/a"


def scenario_table(s: Scenario) -> List[str]:
    lines = [f"**{s.name}** (`{s.tracepoint}`, breakdown = parent + {s.children} "
             f"children; {len(s.costs['no monitor'])} interleaved rounds of "
             f"{len(s.costs['no monitor'][0])} windows)", "",
             "| monitor | vCPU ns per exit, quiet | added, quiet | vs 1 plain perf event "
             "| added, median | vs 1 plain perf event |",
             "|---|---:|---:|---:|---:|---:|"]
    plain, plain_median = s.added("perf, 1 plain event"), s.added_median("perf, 1 plain event")
    for label, _ in MONITORS:
        if label == "no monitor":
            lines.append(f"| {label} | {s.quiet(label):.0f} | - | - | - | - |")
        else:
            lines.append(f"| {label} | {s.quiet(label):.0f} | {s.added(label):+.0f} "
                         f"| {_ratio(s.added(label), plain)} | {s.added_median(label):+.0f} "
                         f"| {_ratio(s.added_median(label), plain_median)} |")
    bpf, perf = s.added("bpf breakdown"), s.added("perf breakdown")
    floor = s.added("bpf, empty program (floor)")
    ok1 = bpf <= 0 or (plain > 0 and bpf <= 1.5 * plain)
    ok2 = bpf <= 0 or (perf > 0 and bpf <= perf / 4)
    lines += ["",
              f"Targets (quiet figures): BPF breakdown <= 1.5 x one plain event: "
              f"{_ratio(bpf, plain)} x ({'met' if ok1 else 'NOT met'}); BPF breakdown <= 1/4 "
              f"of the perf breakdown: {_ratio(bpf, perf)} ({'met' if ok2 else 'NOT met'}). "
              f"The floor (an empty program attached the same way) adds {floor:+.0f} ns: "
              f"what entering any BPF program from this tracepoint costs here.", ""]
    return lines


def report(scenarios: Sequence[Scenario], samples: Dict[str, Tuple[float, int, int]],
           threads: int, quick: bool) -> str:
    lines = [f"## {TITLE}", "",
             f"Measured on {os.cpu_count()} CPUs, kernel {os.uname().release}"
             f"{' (quick run)' if quick else ''}.", ""]
    lines.append("### Guest slowdown of a full exit-reason breakdown")
    lines.append("")
    for s in scenarios:
        lines += scenario_table(s)
    lines += ["### CPU per sample", "",
              f"A per-VM sampler (`--by-guest`) on a VM process with {threads} threads, "
              f"fields `kvm_(pio|userspace_exit)`; user + system CPU per sample.", "",
              "| engine | descriptors | CPU per sample |", "|---|---:|---:|"]
    for engine, (cpu, fds, nfields) in samples.items():
        what = (f"perf groups ({fds // nfields} groups x {nfields} fields)" if engine == "perf"
                else f"bpf ({nfields} fields)")
        lines.append(f"| {what} | {fds} | {cpu * 1e6:.0f} us |")
    bpf_cpu, perf_cpu = samples["bpf"][0], samples["perf"][0]
    lines += ["", f"Target: BPF per-sample CPU <= perf groups': {_ratio(bpf_cpu, perf_cpu)} x "
                  f"({'met' if bpf_cpu <= perf_cpu else 'NOT met'}).", ""]
    lines += [
        "How to read this.  *vCPU ns per exit* is the CPU time the guest's vCPU "
        "thread spends per exit (or per cpuid iteration), so it holds the whole "
        "round trip: guest, KVM, and whatever runs on every hit of the tracepoint. "
        "*Added* is that minus the unmonitored guest's in the same round (median "
        "over rounds): the monitor's cost per hit.  A perf breakdown puts one "
        "filtered perf event per reason on every CPU, and every hit runs all of "
        "their filters, so its cost grows with the number of reasons.  The BPF "
        "engine runs one program per hit (a raw tracepoint program where the "
        "kernel allows: no trace record is built), which reads the reason and, "
        "host-wide, increments one slot of a per-CPU array: its cost does not "
        "depend on the number of reasons (breakdown = parent only), and compares "
        "with one plain counting event, which increments one counter.  Per-VM "
        "rows (below) use a per-CPU hash table keyed by process instead.  Per sample, the perf engine "
        "reads one group per thread of every VM (its cost grows with threads x "
        "fields), the BPF engine one table (an entry per process and reason "
        "seen, whatever the threads); both then do the same work following VMs "
        "and building the sample.  Costs of a few tens of ns are within the "
        "noise of a shared machine: rounds are interleaved, and a negative "
        "value means no cost could be measured.",
        ""]
    return "\n".join(lines)


def run(quick: bool = False) -> str:
    """Measure both engines and return the Markdown section (needs root and KVM)."""
    if os.geteuid() != 0:
        raise RuntimeError("bench_engines needs root (perf events, BPF, /dev/kvm)")
    rounds, exits, seconds, samples = (5, 20000, 0.5, 50) if quick else (31, 20000, 0.6, 300)
    paths = Paths()
    tracefs = paths.find_tracefs()
    events = {e.name: e for e in load_events(tracefs, detect_vendor(paths.sys, paths.proc))}
    scenarios = []
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {GUEST_CPU})  # this thread drives the I/O guest
    try:
        with Guest("pio") as guest:
            scenarios.append(measure("I/O-heavy guest", tracefs, events["kvm_userspace_exit"],
                                     rounds, lambda: io_cost(guest, exits)))
        with GuestProcess("cpuid-loop") as guest:
            scenarios.append(measure("cpuid-heavy guest (kvm_cpuid standing in for kvm_exit)",
                                     tracefs, cpuid_stand_in(tracefs, events), rounds,
                                     lambda: cpuid_cost(guest, seconds)))
    finally:
        os.sched_setaffinity(0, saved)
    vm = GuestThreads(62)  # + its stdin reader and KVM's kvm-nx-lpage-re thread: 64
    try:
        threads = vm.threads()
        per_sample = {engine: sample_cpu(engine, r"kvm_(pio|userspace_exit)", samples)
                      for engine in ("perf", "bpf")}
    finally:
        vm.close()
    return report(scenarios, per_sample, threads, quick)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the Markdown section; 1 with a one-line error when it cannot run."""
    parser = argparse.ArgumentParser(description=TITLE)
    parser.add_argument("--quick", action="store_true", help="fewer and shorter rounds")
    args = parser.parse_args(argv)
    try:
        print(run(args.quick))
    except (RuntimeError, OSError, Error) as exc:
        print(f"bench_engines: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
