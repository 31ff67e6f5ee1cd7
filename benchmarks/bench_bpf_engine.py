#!/usr/bin/env python3
"""Benchmark: what the BPF engine costs a guest, and what a read of it costs.

Guest slowdown: a test guest runs ``cpuid`` in a loop (``cpuid-loop``: every
iteration is one ``kvm_cpuid`` hit, handled inside the kernel) for a few
seconds under each monitor, rounds interleaved.  The main figure is the CPU
time its vCPU thread uses per iteration (from /proc/PID/task/TID/schedstat),
which other load on the host does not distort the way it distorts the
iterations per wall-clock second (also shown); both are compared with the
same guest unmonitored:

* ``perf 1 event``: one plain counting perf event on kvm_cpuid per CPU;
* ``perf breakdown``: that event plus 62 children filtered on the
  ``function`` field (the shape of the perf engine's breakdown of a reason
  field: one filtered event per reason per CPU; 62 = the VMX exit reasons);
* ``bpf 1 event``: the BPF engine counting kvm_cpuid per process;
* ``bpf breakdown``: the BPF engine counting kvm_cpuid per process and per
  ``function`` (the full breakdown in one program run).

Read cost: CPU time (user + system) of one read, for the BPF engine with a
small and a ~300-entry table, and for the perf engine with 64 per-thread
groups of the same 33 fields (kvm_userspace_exit, its 31 reasons, kvm_pio).

Run from the repository root, as root::

    python benchmarks/bench_bpf_engine.py [--seconds 2] [--rounds 3]

This is a measurement, not a test: it asserts nothing about speed.  Other
work on the host adds noise; the medians of interleaved rounds are shown.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))

from helpers.kvmguest import GuestProcess  # noqa: E402
from kvmstat.bpfengine import BpfCounter, BpfEventSpec  # noqa: E402
from kvmstat.events import parse_format  # noqa: E402
from kvmstat.native import PER_CPU, PER_THREAD, EventSpec, open_counter_set  # noqa: E402
from kvmstat.providers.tracepoints import online_cpus  # noqa: E402
from kvmstat.resources import ensure_open_files  # noqa: E402

CHILDREN = 62       # filtered perf children in the perf breakdown
USEREXIT_REASONS = 31  # KVM_EXIT_* codes 0..30 of kvm_userspace_exit's table


def load_format(tracefs: str, name: str):
    with open(os.path.join(tracefs, "events", "kvm", name, "format")) as f:
        return parse_format(f.read())


# ---------------------------------------------------------------------------
# Monitors: each opener returns an object with close().

def perf_per_cpu(events: Sequence[EventSpec]) -> Callable[[], object]:
    def open_():
        cs = open_counter_set(events, PER_CPU)
        for cpu in online_cpus():
            cs.add(cpu)
        cs.enable()
        return cs
    return open_


def bpf(events: Sequence[BpfEventSpec], fields) -> Callable[[], object]:
    return lambda: BpfCounter(events, fields)


def monitors(tracefs: str) -> Dict[str, Optional[Callable[[], object]]]:
    fmt = load_format(tracefs, "kvm_cpuid")
    plain = EventSpec("kvm_cpuid", fmt.id)
    children = [EventSpec(f"kvm_cpuid({k})", fmt.id, f"function=={k}") for k in range(CHILDREN)]
    by_function = BpfEventSpec.for_field("kvm_cpuid", fmt.id, fmt.fields["function"])
    return {
        "no monitor": None,
        "perf 1 event": perf_per_cpu([plain]),
        f"perf breakdown (1+{CHILDREN} events/CPU)": perf_per_cpu([plain] + children),
        "bpf 1 event": bpf([BpfEventSpec("kvm_cpuid", fmt.id)], [(0, None)]),
        f"bpf breakdown ({CHILDREN} reasons)": bpf(
            [by_function], [(0, None)] + [(0, (k,)) for k in range(CHILDREN)]),
    }


def thread_cpu_ns(pid: int, tid: int) -> int:
    """CPU time a thread has used, in ns (first field of its schedstat)."""
    with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
        return int(f.read().split()[0])


def loop_run(guest: GuestProcess, seconds: float) -> tuple[int, float, int]:
    """Run the guest loop for about *seconds*: (iterations, elapsed seconds,
    CPU ns the vCPU thread used).  The CPU time is read just before the stop,
    which lets a few more iterations run: negligible over seconds."""
    t0 = time.monotonic()
    tid = guest.start_loop()
    cpu0 = thread_cpu_ns(guest.pid, tid)
    time.sleep(seconds)
    cpu = thread_cpu_ns(guest.pid, tid) - cpu0
    n = guest.stop_loop()
    return n, time.monotonic() - t0, cpu


class Runs:
    """Per monitor: iterations per second and vCPU ns per iteration."""

    def __init__(self) -> None:
        self.rates: Dict[str, List[float]] = {}
        self.costs: Dict[str, List[float]] = {}
        self.checks: List[tuple[int, int]] = []  # BPF: (hits counted, iterations)


def measure_slowdown(tracefs: str, seconds: float, rounds: int) -> Runs:
    runs = Runs()
    with GuestProcess("cpuid-loop") as guest:
        loop_run(guest, 0.3)  # warm up
        for _ in range(rounds):
            for name, opener in monitors(tracefs).items():
                mon = opener() if opener else None
                try:
                    n, elapsed, cpu = loop_run(guest, seconds)
                    runs.rates.setdefault(name, []).append(n / elapsed)
                    runs.costs.setdefault(name, []).append(cpu / n)
                    if isinstance(mon, BpfCounter):
                        counted = sum(e.count for e in mon.dump() if e.tgid == guest.pid)
                        runs.checks.append((counted, n))
                finally:
                    if mon is not None:
                        mon.close()
    return runs


# ---------------------------------------------------------------------------
# Read cost.

def cpu_per_call(fn: Callable[[], object], calls: int) -> float:
    fn()
    t0 = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - t0) / calls


def userexit_fields(nevents: int):
    """kvm_userspace_exit (event 0): all, reasons 0..30; kvm_pio (event 1)."""
    return ([(0, None)] + [(0, (k,)) for k in range(USEREXIT_REASONS)] + [(1, None)]
            + [(i, None) for i in range(2, nevents)])


def measure_reads(tracefs: str, calls: int) -> Dict[str, str]:
    ufmt = load_format(tracefs, "kvm_userspace_exit")
    uexit = BpfEventSpec.for_field("kvm_userspace_exit", ufmt.id, ufmt.fields["reason"])
    pio = BpfEventSpec("kvm_pio", load_format(tracefs, "kvm_pio").id)
    out: Dict[str, str] = {}

    guests = [GuestProcess("pio") for _ in range(4)] + [GuestProcess("hlt") for _ in range(4)]
    try:
        with BpfCounter([uexit, pio], userexit_fields(2)) as c:
            c.set_buckets({g.pid: i for i, g in enumerate(guests)})
            for g in guests:
                g.run(10)
            entries = len(c.dump())
            t = cpu_per_call(lambda: c.read(len(guests)), calls)
            out[f"bpf read, {len(c.fields)} fields x {len(guests)} buckets, {entries} entries"] = \
                f"{t * 1e6:.1f} us"
        # ~300 entries: each tracepoint 36 times (64 programs per tracepoint
        # at most), each of the 4 pio guests hitting all 72.
        events = [uexit] * 36 + [pio] * 36
        with BpfCounter(events, userexit_fields(72)) as c:
            c.set_buckets({g.pid: i for i, g in enumerate(guests)})
            for g in guests[:4]:
                g.run(3)
            entries = len(c.dump())
            t = cpu_per_call(lambda: c.read(len(guests)), calls)
            out[f"bpf read, {len(c.fields)} fields x {len(guests)} buckets, {entries} entries"] = \
                f"{t * 1e6:.1f} us"
    finally:
        for g in guests:
            g.close()

    # The perf engine at 64 groups: per-thread groups on 64 idle threads.
    stop = threading.Event()
    tids: List[int] = []
    lock = threading.Lock()

    def idle():
        with lock:
            tids.append(threading.get_native_id())
        stop.wait()

    threads = [threading.Thread(target=idle, daemon=True) for _ in range(64)]
    for t in threads:
        t.start()
    while len(tids) < 64:
        time.sleep(0.01)
    perf_events = ([EventSpec("kvm_userspace_exit", uexit.tracepoint_id)]
                   + [EventSpec(f"kvm_userspace_exit({k})", uexit.tracepoint_id, f"reason=={k}")
                      for k in range(USEREXIT_REASONS)]
                   + [EventSpec("kvm_pio", pio.tracepoint_id)])
    ensure_open_files(64 * len(perf_events))
    try:
        with open_counter_set(perf_events, PER_THREAD) as cs:
            for i, tid in enumerate(tids):
                cs.add(tid, i)
            cs.enable()
            t = cpu_per_call(lambda: cs.read(64), calls)
            out[f"perf read, {len(perf_events)} events x 64 groups ({cs.fds} fds)"] = \
                f"{t * 1e6:.1f} us"
    finally:
        stop.set()
        for t in threads:
            t.join()
    return out


# ---------------------------------------------------------------------------

def report(runs: Runs, reads: Dict[str, str], seconds: float, rounds: int) -> str:
    base_cost = statistics.median(runs.costs["no monitor"])
    base_rate = statistics.median(runs.rates["no monitor"])
    lines = [f"Guest cost (cpuid-loop, one kvm_cpuid per iteration; medians of {rounds} "
             f"interleaved rounds of {seconds:g} s)",
             "",
             "| monitor | vCPU ns/iteration | cost vs none | iterations/s (wall) | slowdown (wall) |",
             "|---|---:|---:|---:|---:|"]
    for name in runs.rates:
        cost = statistics.median(runs.costs[name])
        rate = statistics.median(runs.rates[name])
        none = name == "no monitor"
        lines.append(
            f"| {name} | {cost:.0f} | {'-' if none else f'{(cost / base_cost - 1) * 100:+.1f}%'} "
            f"| {rate:,.0f} | {'-' if none else f'{(1 - rate / base_rate) * 100:.1f}%'} |")
    # The guest counts an iteration just before its cpuid: a loop stopped
    # between the two counts one iteration without its hit, and the next
    # loop starts with that hit.
    exact = sum(1 for counted, n in runs.checks if abs(counted - n) <= 1)
    lines += ["", f"BPF count of the guest's kvm_cpuid hits = its loop iterations "
              f"(+-1) in {exact} of {len(runs.checks)} runs"
              + ("" if exact == len(runs.checks) else f": {runs.checks}"),
              "", "CPU per read (user + system)", "",
              "| read | CPU |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in reads.items()]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=2.0, help="loop time per measurement")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per monitor")
    p.add_argument("--reads", type=int, default=2000, help="reads timed per read figure")
    p.add_argument("--tracefs", default="/sys/kernel/tracing")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_bpf_engine: needs root (BPF, perf events, /dev/kvm)", file=sys.stderr)
        return 1
    runs = measure_slowdown(args.tracefs, args.seconds, args.rounds)
    reads = measure_reads(args.tracefs, args.reads)
    print(report(runs, reads, args.seconds, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
