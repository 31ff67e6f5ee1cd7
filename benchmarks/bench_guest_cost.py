#!/usr/bin/env python3
"""Benchmark: what kvm_stat costs a busy guest.

A test guest runs ``cpuid`` in a loop (GuestProcess("cpuid-loop"): every
iteration is one exit handled inside the kernel, where ``kvm_cpuid``
fires; the iterations are counted in guest memory, not by tracing) for a
few seconds under each monitor, in rounds whose order rotates:

* no monitor;
* ``kvm_stat -l`` with the default fields (every kvm event, host-wide);
* ``kvm_stat -l -f kvm_pio``: one event the guest never hits, so a monitor
  that opens only what it shows leaves the guest's exits untraced.

Each run is cut into short windows; a window's figure is the CPU time the
guest's vCPU thread used per iteration (from /proc/PID/task/TID/schedstat;
the iterations per wall-clock second are shown too).  Other work on the
host only ever adds to that time, in bursts, so besides the median of the
windows the benchmark reports their 10th percentile, the cost when the
machine was quiet, and judges the target on it.

Run from the repository root, as root::

    python benchmarks/bench_guest_cost.py [--quick]

This is a measurement, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import support
from support import ReleaseWatch, Target, markdown_table, median, targets_table

from helpers.commands import perf_event_fds

WINDOW = 0.25  # seconds
QUIET = 0.10   # the percentile of the windows taken as the quiet-machine cost

NARROW = "kvm_pio"
#: monitor name -> kvm_stat arguments (None: no monitor)
MONITORS: Dict[str, Optional[List[str]]] = {
    "no monitor": None,
    # Perf groups, the engine this benchmark is about (bench_engines compares BPF).
    "kvm_stat -l (default fields)": ["-l", "--engine", "perf"],
    f"kvm_stat -l -f {NARROW}": ["-l", "-f", NARROW, "--engine", "perf"],
}


class Monitor:
    """A ``kvm_stat`` log-mode process, running once its header is out."""

    def __init__(self, args: Sequence[str]):
        self._release = ReleaseWatch()
        self.proc = subprocess.Popen(support.kvm_stat_command(*args), cwd=support.REPO_ROOT,
                                     env=support.CHILD_ENV, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        # Log mode writes its header once the events count.
        if not self.proc.stdout.readline():
            self.proc.wait()
            raise RuntimeError(f"kvm_stat {' '.join(args)} failed: {self.proc.stderr.read()}")
        self.perf_events = perf_event_fds(self.proc.pid)

    def close(self) -> None:
        self._release.stopping()
        status = support.stop_process(self.proc)
        self.proc.stdout.close()
        self.proc.stderr.close()
        self._release.wait()
        if status != 0:
            raise RuntimeError(f"kvm_stat exited with status {status}")


class Runs:
    """Per monitor: the windows' vCPU ns per iteration and iterations per
    second, and the perf events the monitor held."""

    def __init__(self) -> None:
        self.cost: Dict[str, List[float]] = {name: [] for name in MONITORS}
        self.rate: Dict[str, List[float]] = {name: [] for name in MONITORS}
        self.perf_events: Dict[str, int] = {name: 0 for name in MONITORS}


def loop_windows(guest, seconds: float) -> List[Tuple[float, float]]:
    """Run *guest*'s cpuid loop for about *seconds*: (vCPU ns per iteration,
    iterations per second) of each WINDOW-long window."""
    tid = guest.start_loop()

    def now() -> Tuple[int, int, float]:
        return (guest.loop_iterations(), support.thread_cpu_ns(guest.pid, tid),
                time.monotonic())

    windows = []
    try:
        last = now()
        for _ in range(max(1, round(seconds / WINDOW))):
            time.sleep(WINDOW)
            current = now()
            iterations = current[0] - last[0]
            if iterations:
                windows.append(((current[1] - last[1]) / iterations,
                                iterations / (current[2] - last[2])))
            last = current
    finally:
        guest.stop_loop()
    return windows


def measure(rounds: int, seconds: float) -> Runs:
    """*rounds* rounds of every monitor, *seconds* each; each round starts
    with another monitor, so that none always follows the same one."""
    from helpers.kvmguest import GuestProcess

    support.compile_kvmstat()
    runs = Runs()
    names = list(MONITORS)
    with GuestProcess("cpuid-loop") as guest:
        loop_windows(guest, WINDOW)  # warm-up
        for index in range(rounds):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                args = MONITORS[name]
                monitor = Monitor(args) if args is not None else None
                try:
                    windows = loop_windows(guest, seconds)
                finally:
                    if monitor is not None:
                        monitor.close()
                runs.cost[name] += [cost for cost, _ in windows]
                runs.rate[name] += [rate for _, rate in windows]
                if monitor is not None:
                    runs.perf_events[name] = monitor.perf_events
    return runs


def quiet(values: List[float]) -> float:
    """The QUIET percentile of *values* (nearest rank)."""
    ordered = sorted(values)
    return ordered[int(QUIET * (len(ordered) - 1))]


def report(runs: Runs, rounds: int, seconds: float) -> str:
    none = "no monitor"
    base_quiet, base_median = quiet(runs.cost[none]), median(runs.cost[none])
    base_rate = median(runs.rate[none])
    slowdown: Dict[str, Tuple[float, float]] = {}
    rows = []
    for name in MONITORS:
        low, mid = quiet(runs.cost[name]), median(runs.cost[name])
        rate = median(runs.rate[name])
        slowdown[name] = (low / base_quiet - 1, mid / base_median - 1)
        first = name == none
        rows.append((name, f"{runs.perf_events[name]:,}", len(runs.cost[name]),
                     f"{low:,.0f}", "-" if first else f"{slowdown[name][0]:+.1%}",
                     f"{mid:,.0f}", "-" if first else f"{slowdown[name][1]:+.1%}",
                     f"{rate:,.0f}", "-" if first else f"{1 - rate / base_rate:+.1%}"))
    narrow = f"kvm_stat -l -f {NARROW}"
    spread = max(runs.cost[none]) / base_quiet - 1
    target = Target(f"`-f {NARROW}` slows a cpuid-heavy guest by under 1%",
                    f"{slowdown[narrow][0]:+.2%} vCPU time per iteration, quiet windows "
                    f"({slowdown[narrow][1]:+.1%} in the median window)",
                    slowdown[narrow][0] < 0.01,
                    f"it holds {runs.perf_events[narrow]} perf events (kvm_pio only), none on "
                    f"the guest's exits; the rest is other work on the host: windows without "
                    f"a monitor alone range up to {spread:+.0%} above their quiet cost")
    return "\n\n".join([
        "## Guest cost: a busy guest under kvm_stat",
        f"The guest executes `cpuid` in a loop (one kvm_cpuid exit per iteration, counted "
        f"in guest memory). {rounds} round(s) of {seconds:g} s per monitor, the order "
        f"rotating from round to round, each run cut into {WINDOW:g} s windows; monitors "
        f"are `kvm_stat -l` processes, host-wide. Per window: the vCPU thread's CPU time "
        f"per iteration (other work on the host only adds to it, so the "
        f"{QUIET * 100:.0f}th percentile of the windows is the quiet-machine figure), and the "
        f"wall-clock rate.",
        markdown_table(["monitor", "perf events", "windows", "vCPU ns/iteration, quiet",
                        "vs none", "median", "vs none", "iterations/s (wall, median)",
                        "slowdown (wall)"], rows),
        targets_table([target]),
    ])


def run(quick: bool = False) -> str:
    """Run the benchmark; returns its Markdown section."""
    rounds, seconds = (1, 0.5) if quick else (8, 2.0)
    return report(measure(rounds, seconds), rounds, seconds)


if __name__ == "__main__":
    sys.exit(support.bench_main(run, __doc__))
