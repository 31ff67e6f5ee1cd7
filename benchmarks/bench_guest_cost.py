#!/usr/bin/env python3
"""Benchmark: what a monitor costs the guests, per exit, side by side.

Two test guests, each with one vCPU thread pinned to CPU 1 while every
monitor is pinned to CPU 0 (so the figure is the work done on the guest's
own CPU for each tracepoint hit, not competition for the CPU):

* the cpuid guest (GuestProcess("cpuid-loop")): every iteration is one exit
  handled in the kernel, where ``kvm_cpuid`` fires; the figure is the vCPU
  thread's CPU time per iteration (iterations counted in guest memory);
* the I/O guest (Guest("pio"), driven from a thread of this process): every
  KVM_RUN returns to user space for a port write, so each exit hits
  ``kvm_pio``, ``kvm_userspace_exit`` and the other tracepoints on that
  path; the figure is the driving thread's CPU time per exit.

Monitors, each started afresh in every round (rounds interleaved, the order
rotating): no monitor; ``kvm_stat -l`` (default engine and fields: every
kvm event, host-wide); ``kvm_stat -l --engine perf``; ``kvm_stat -l
--by-guest``; ``perf stat -a -e 'kvm:*'`` and a bpftrace program counting
every kvm tracepoint by process (when those tools are installed); ``-f
kvm_pio`` with perf groups (an event the cpuid guest never hits); and the
floor of BPF, programs that do nothing attached to every kvm tracepoint
(empty_programs.py), as kvm_stat attaches them and all through perf events.
(The reason breakdown against one plain event is bench_engines.py's: it
switches monitors in-process, many more times.)

The added cost of a monitor is its figure minus the unmonitored figure of
the same round: the median over rounds, and the quiet figure (other work on
the shared host only ever adds, so the 20th percentile of each is taken).
Ratios compare added costs measured in the same run.

Run from the repository root, as root::

    python benchmarks/bench_guest_cost.py [--quick]

This is a measurement, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import support
from support import Target, markdown_table, median, targets_table

from helpers.commands import fd_links

QUIET = 0.10      # the percentile of the windows taken as the quiet-machine figure
WINDOWS = 10      # windows per run
GUEST_CPU = 1     # the vCPU threads run here
MONITOR_CPU = 0   # the monitors run here

#: bpftrace: every kvm tracepoint counted by process
BPFTRACE_PROGRAM = "tracepoint:kvm:* { @hits[pid, probe] = count(); }"

NONE = "no monitor"
DEFAULT = "kvm_stat -l"
PERF_ENGINE = "kvm_stat -l --engine perf"
BY_GUEST = "kvm_stat -l --by-guest"
PERF_STAT = "perf stat -a -e 'kvm:*'"
BPFTRACE = "bpftrace, every kvm tracepoint by process"
NARROW = "kvm_stat -l -f kvm_pio --engine perf"
FLOOR_RAW = "floor: empty BPF programs, attached as kvm_stat does"
FLOOR_PERF = "floor: empty BPF programs, all through perf events"
EMPTY_PROGRAMS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "empty_programs.py")


def monitors() -> Dict[str, Optional[List[str]]]:
    """Monitor name -> command (None: no monitor), those installed only."""
    out: Dict[str, Optional[List[str]]] = {
        NONE: None,
        DEFAULT: support.kvm_stat_command("-l"),
        PERF_ENGINE: support.kvm_stat_command("-l", "--engine", "perf"),
        BY_GUEST: support.kvm_stat_command("-l", "--by-guest"),
    }
    if shutil.which("perf"):
        out[PERF_STAT] = ["perf", "stat", "-a", "-e", "kvm:*", "-o", os.devnull]
    if shutil.which("bpftrace"):
        out[BPFTRACE] = ["bpftrace", "-e", BPFTRACE_PROGRAM]
    out[NARROW] = support.kvm_stat_command("-l", "-f", "kvm_pio", "--engine", "perf")
    out[FLOOR_RAW] = [sys.executable, EMPTY_PROGRAMS, "--attach", "auto"]
    out[FLOOR_PERF] = [sys.executable, EMPTY_PROGRAMS, "--attach", "perf"]
    return out


def _counting_fds(pid: int) -> int:
    """perf events, BPF programs, links and maps that *pid* holds."""
    return sum(1 for link in fd_links(pid)
               if link.startswith("anon_inode:") and ("perf_event" in link or "bpf" in link))


class Monitor:
    """A monitor process on MONITOR_CPU, counting once this returns."""

    def __init__(self, name: str, argv: Sequence[str]):
        self.name = name
        self.proc = subprocess.Popen(
            list(argv), cwd=support.REPO_ROOT, env=support.CHILD_ENV,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=lambda: os.sched_setaffinity(0, {MONITOR_CPU}))
        self.fds = self._settle()

    def _settle(self, timeout: float = 60.0) -> int:
        """Wait until the monitor's counting descriptors stop changing."""
        deadline = time.monotonic() + timeout
        last, stable_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.proc.stderr.read().strip()}")
            now = _counting_fds(self.proc.pid)
            if now != last:
                last, stable_since = now, time.monotonic()
            elif now > 0 and time.monotonic() - stable_since >= 0.5:
                return now
            time.sleep(0.05)
        self.close()
        raise RuntimeError(f"{self.name} did not start counting within {timeout:g} s")

    def close(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stderr.close()


def monitored_rounds(table: Dict[str, Optional[List[str]]], rounds: int):
    """Each monitor of *table* (name -> command, None: no monitor) in turn,
    *rounds* times, the order rotating every round: yields ``(name, the
    running Monitor or None)`` and stops the monitor once the caller's
    measurement is done."""
    names = list(table)
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            argv = table[name]
            monitor = Monitor(name, argv) if argv is not None else None
            try:
                yield name, monitor
            finally:
                if monitor is not None:
                    monitor.close()


def cpuid_cost(guest, seconds: float) -> List[float]:
    """vCPU ns per iteration of the cpuid guest in each WINDOWS-th of about
    *seconds*."""
    tid = guest.start_loop()
    try:
        os.sched_setaffinity(tid, {GUEST_CPU})
        figures = []
        last = (guest.loop_iterations(), support.thread_cpu_ns(guest.pid, tid))
        for _ in range(WINDOWS):
            time.sleep(seconds / WINDOWS)
            now = (guest.loop_iterations(), support.thread_cpu_ns(guest.pid, tid))
            if now[0] > last[0]:
                figures.append((now[1] - last[1]) / (now[0] - last[0]))
            last = now
    finally:
        guest.stop_loop()
    return figures


def io_cost(guest, exits: int) -> List[float]:
    """CPU ns per exit of *exits* KVM_RUNs of the pio guest in this thread
    (pinned to GUEST_CPU by the caller), in WINDOWS chunks."""
    from helpers.kvmguest import KVM_RUN

    fd = guest.fds["vcpus"][0]
    ioctl = fcntl.ioctl
    chunk = max(1, exits // WINDOWS)
    figures = []
    for _ in range(WINDOWS):
        start = time.thread_time_ns()
        for _ in range(chunk):
            ioctl(fd, KVM_RUN, 0)
        figures.append((time.thread_time_ns() - start) / chunk)
    return figures


def quiet(values: Sequence[float]) -> float:
    """The QUIET percentile of *values* (nearest rank)."""
    ordered = sorted(values)
    return ordered[int(QUIET * (len(ordered) - 1))]


class Results:
    """Per guest and monitor: the windows of each round."""

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        self.cost: Dict[str, Dict[str, List[List[float]]]] = {
            guest: {name: [] for name in names} for guest in ("cpuid", "io")}
        self.fds: Dict[str, int] = {name: 0 for name in names}

    def windows(self, guest: str, name: str) -> List[float]:
        return [w for run in self.cost[guest][name] for w in run]

    def figure(self, guest: str, name: str) -> Tuple[float, float]:
        """(quiet, median) ns per exit over every window of the monitor."""
        every = self.windows(guest, name)
        return quiet(every), median(every)

    def added(self, guest: str, name: str) -> Tuple[float, float]:
        """ns added per exit: (quiet window minus unmonitored quiet window,
        median over rounds of the round's median minus the same round's
        unmonitored median)."""
        low = self.figure(guest, name)[0] - self.figure(guest, NONE)[0]
        pairs = [median(m) - median(n)
                 for m, n in zip(self.cost[guest][name], self.cost[guest][NONE])]
        return low, median(pairs)


def measure(rounds: int, seconds: float, exits: int) -> Results:
    from helpers.kvmguest import Guest, GuestProcess

    support.compile_kvmstat()
    table = monitors()
    results = Results(table)
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {GUEST_CPU})  # this thread drives the I/O guest
    try:
        with GuestProcess("cpuid-loop") as cpuid, Guest("pio") as pio:
            cpuid_cost(cpuid, 0.3)  # warm-up
            io_cost(pio, exits // 4)
            for name, monitor in monitored_rounds(table, rounds):
                results.cost["cpuid"][name].append(cpuid_cost(cpuid, seconds))
                results.cost["io"][name].append(io_cost(pio, exits))
                if monitor is not None:
                    results.fds[name] = monitor.fds
    finally:
        os.sched_setaffinity(0, saved)
    return results


def _ratio(part: float, whole: float) -> str:
    return f"{part / whole:.2f}" if whole > 0 else "n/a"


def report(r: Results, rounds: int, seconds: float, exits: int, engines: str) -> str:
    rows = []
    for name in r.names:
        row: List[object] = [name, "-" if name == NONE else f"{r.fds[name]:,}"]
        for guest in ("cpuid", "io"):
            base = r.figure(guest, name)[0]
            if name == NONE:
                row += [f"{base:,.0f}", "-", "-"]
                continue
            quiet, mid = r.added(guest, name)
            row += [f"{base:,.0f}", f"{quiet:+,.0f}", f"{mid:+,.0f}"]
        rows.append(row)
    table = markdown_table(
        ["monitor", "counting fds", "cpuid: ns/exit, quiet", "added, quiet", "added, median",
         "I/O: ns/exit, quiet", "added, quiet", "added, median"], rows)

    targets = []
    if PERF_STAT in r.names:
        for name, limit in ((DEFAULT, 1.0), (BY_GUEST, 1.25)):
            for guest, label in (("cpuid", "cpuid"), ("io", "I/O")):
                mine, ref = r.added(guest, name), r.added(guest, PERF_STAT)
                targets.append(Target(
                    f"`{name}` <= {limit:g}x `perf stat -a -e 'kvm:*'`, {label} guest",
                    f"quiet {_ratio(mine[0], ref[0])}x ({mine[0]:+,.0f} / {ref[0]:+,.0f} ns); "
                    f"median {_ratio(mine[1], ref[1])}x ({mine[1]:+,.0f} / {ref[1]:+,.0f} ns)",
                    mine[0] <= 0 or (ref[0] > 0 and mine[0] <= limit * ref[0]),
                    "judged on the quiet figures; the medians carry the other work on the "
                    "shared host (compare the floor rows, which do nothing per hit)"))
    narrow = r.added("cpuid", NARROW)
    targets.append(Target(
        "`-f kvm_pio` adds under 1% to a cpuid-heavy guest",
        f"{narrow[0]:+,.0f} ns quiet, {narrow[1]:+,.0f} ns median per "
        f"{r.figure('cpuid', NONE)[0]:,.0f} ns iteration",
        narrow[0] < 0.01 * r.figure("cpuid", NONE)[0],
        "its events are not on the guest's exits"))

    missing = [tool for tool, name in (("perf", PERF_STAT), ("bpftrace", BPFTRACE))
               if name not in r.names]
    return "\n\n".join(filter(None, [
        "## Guest cost: what each monitor adds to a guest's exits",
        f"{rounds} interleaved round(s); per round and monitor: the cpuid guest loops for "
        f"{seconds:g} s, then the I/O guest makes {exits:,} exits. vCPU threads on CPU "
        f"{GUEST_CPU}, monitors on CPU {MONITOR_CPU}; each run is cut into {WINDOWS} windows. "
        f"*ns/exit*: the vCPU thread's CPU time per exit, {QUIET * 100:.0f}th percentile of "
        f"the windows (quiet); *added, quiet*: that minus the unmonitored quiet figure; "
        f"*added, median*: the median over rounds of the run's median minus the same "
        f"round's unmonitored median. The host is shared with other work, which only ever "
        f"adds: read the quiet column first. `--engine auto` on this host: {engines}.",
        f"Not installed, not measured: {', '.join(missing)}." if missing else "",
        table,
        targets_table(targets),
    ]))


def engines_chosen() -> str:
    """What ``kvm_stat --check`` says the engine is, in one line."""
    proc = subprocess.run(support.kvm_stat_command("--check"), capture_output=True, text=True,
                          cwd=support.REPO_ROOT, env=support.CHILD_ENV, timeout=60)
    lines = [" ".join(line.split()) for line in proc.stdout.splitlines()
             if line.startswith("BPF engine")]
    return "; ".join(lines) or "(kvm_stat --check said nothing about the engine)"


def run(quick: bool = False) -> str:
    """Run the benchmark; returns its Markdown section."""
    rounds, seconds, exits = (2, 0.3, 5000) if quick else (9, 1.5, 30000)
    return report(measure(rounds, seconds, exits), rounds, seconds, exits, engines_chosen())


if __name__ == "__main__":
    sys.exit(support.bench_main(run, __doc__))
