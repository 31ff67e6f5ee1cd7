#!/usr/bin/env python3
"""Benchmark: what ``--durations`` costs, per exit and per system call.

Per exit, on the two guests of ``bench_guest_cost`` (its set-up, pinning
and figures: vCPU CPU time per cpuid iteration, driving thread's CPU time
per I/O exit): counting ``kvm_userspace_exit`` with its reasons (BPF)
alone, the same with ``--durations`` (the default marker, kvm_fpu where it
exists), and the durations engine with the ioctl marker
(``syscalls:sys_enter_ioctl``), each against no monitor in the same round.

Per system call, in a process that is not a VM: an ``ioctl(FIONREAD)`` on a
pipe (an ioctl that is not KVM_RUN, so the ioctl marker's program runs and
returns) and ``getppid()`` (not an ioctl: while a syscall tracepoint is
enabled every system call takes the kernel's traced path), with no monitor,
with the kvm_fpu marker and with the ioctl marker.

Rounds are interleaved (the order rotating), each measured in windows; the
added cost is taken as ``bench_guest_cost`` takes it (quiet: the low
percentile of every window minus the unmonitored one; median: over rounds,
of each round's median minus the same round's unmonitored median).  On a
shared machine those differences are noisy (microseconds per exit), so the
programs' own run time is measured too: with the kernel's BPF run-time
statistics on (``BPF_ENABLE_STATS``, only while this benchmark holds the
descriptor), the ``run_time_ns`` of the durations engine's programs
(``/proc/PID/fdinfo``) per I/O exit and per non-KVM ioctl.

Run from the repository root, as root::

    python benchmarks/bench_durations.py [--quick]

This is a measurement, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import array
import ctypes
import fcntl
import os
import sys
import termios
import time
from typing import Dict, List, Optional

import support
from bench_guest_cost import (GUEST_CPU, NONE, WINDOWS, Results, cpuid_cost, io_cost,
                              monitored_rounds)
from support import markdown_table

COUNTING = "kvm_stat -l -f kvm_userspace_exit"
DURATIONS = "kvm_stat -l -f kvm_userspace_exit --durations"
IOCTL_MARKER = "durations engine, ioctl marker"

def engine_child(marker: str, pid: Optional[int] = None) -> List[str]:
    """A process running the durations engine alone with *marker* (and
    only for process *pid*, as ``-p``) until SIGINT (no command-line option
    selects the marker)."""
    code = ("import signal, kvmstat.sampling.duration_source as d\n"
            f"s = d.open_durations(marker={marker!r}, pid={pid!r})\n"
            "try:\n    signal.pause()\nexcept KeyboardInterrupt:\n    s.close()\n")
    return [sys.executable, "-c", code]


_SYS_BPF = 321          # x86_64
_BPF_ENABLE_STATS = 32  # enum bpf_cmd; BPF_STATS_RUN_TIME is 0


def enable_bpf_stats() -> int:
    """A descriptor that keeps the kernel's BPF run-time statistics on
    until it is closed."""
    libc = ctypes.CDLL(None, use_errno=True)
    attr = ctypes.create_string_buffer(8)
    fd = libc.syscall(_SYS_BPF, _BPF_ENABLE_STATS, attr, ctypes.c_uint(8))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "BPF_ENABLE_STATS failed")
    return fd


def program_run_ns(pid: int) -> int:
    """The run time of every BPF program process *pid* holds, summed."""
    total = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf-prog":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("run_time_ns:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def program_costs(exits: int, calls: int) -> Dict[str, float]:
    """ns of the durations programs per I/O exit (kvm_fpu marker) and per
    non-KVM ioctl (ioctl marker), from the kernel's run-time statistics."""
    from bench_guest_cost import Monitor
    from helpers.kvmguest import Guest

    out: Dict[str, float] = {}
    stats = enable_bpf_stats()
    try:
        with Guest("pio") as pio:
            # The last: -p of another process (pid 1 is never a VM), so the
            # programs return at the process check on every exit of this guest.
            for name, marker, pid in (("per I/O exit, kvm_fpu marker", "kvm_fpu", None),
                                      ("per I/O exit, ioctl marker", "ioctl", None),
                                      ("per I/O exit of another VM than -p's, kvm_fpu marker",
                                       "kvm_fpu", 1)):
                monitor = Monitor(name, engine_child(marker, pid))
                try:
                    before = program_run_ns(monitor.proc.pid)
                    io_cost(pio, exits)
                    out[name] = (program_run_ns(monitor.proc.pid) - before) / exits
                    if "ioctl" in name:
                        before = program_run_ns(monitor.proc.pid)
                        syscall_costs(calls)
                        out["per ioctl(FIONREAD), ioctl marker"] = (
                            program_run_ns(monitor.proc.pid) - before) / calls
                finally:
                    monitor.close()
    finally:
        os.close(stats)
    return out


def monitors() -> Dict[str, Optional[List[str]]]:
    """Monitor name -> command (None: no monitor)."""
    return {
        NONE: None,
        COUNTING: support.kvm_stat_command("-l", "-f", "kvm_userspace_exit"),
        DURATIONS: support.kvm_stat_command("-l", "-f", "kvm_userspace_exit", "--durations"),
        IOCTL_MARKER: engine_child("ioctl"),
    }


def syscall_costs(calls: int) -> Dict[str, List[float]]:
    """ns per ioctl(FIONREAD) on a pipe and per getppid() in this thread,
    in WINDOWS chunks each."""
    read_end, write_end = os.pipe()
    buf = array.array("i", [0])
    chunk = max(1, calls // WINDOWS)
    calls_of = {"ioctl": lambda: fcntl.ioctl(read_end, termios.FIONREAD, buf),
                "getppid": os.getppid}
    out: Dict[str, List[float]] = {}
    try:
        for kind, call in calls_of.items():
            out[kind] = []
            for _ in range(WINDOWS):
                start = time.thread_time_ns()
                for _ in range(chunk):
                    call()
                out[kind].append((time.thread_time_ns() - start) / chunk)
    finally:
        os.close(read_end)
        os.close(write_end)
    return out


SYSCALLS = ("ioctl", "getppid")
KINDS = ("cpuid", "io") + SYSCALLS


def measure(rounds: int, seconds: float, exits: int, calls: int) -> Results:
    """The windows of each round, per kind of figure and monitor (the
    guests' figures as bench_guest_cost takes them, the system calls' too)."""
    from helpers.kvmguest import Guest, GuestProcess

    support.compile_kvmstat()
    table = monitors()
    results = Results(table)
    results.cost.update({kind: {name: [] for name in table} for kind in SYSCALLS})
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {GUEST_CPU})
    try:
        with GuestProcess("cpuid-loop") as cpuid, Guest("pio") as pio:
            cpuid_cost(cpuid, 0.3)  # warm-up
            io_cost(pio, exits // 4)
            syscall_costs(calls // 4)
            for name, _ in monitored_rounds(table, rounds):
                results.cost["cpuid"][name].append(cpuid_cost(cpuid, seconds))
                results.cost["io"][name].append(io_cost(pio, exits))
                for kind, windows in syscall_costs(calls).items():
                    results.cost[kind][name].append(windows)
    finally:
        os.sched_setaffinity(0, saved)
    return results


def report(results: Results, programs: Dict[str, float], rounds: int, seconds: float,
           exits: int, calls: int) -> str:
    rows = []
    for name in results.names:
        if name == NONE:
            continue
        cells = [name]
        for kind in KINDS:
            low, med = results.added(kind, name)
            cells.append(f"{low:+.0f} / {med:+.0f}")
        rows.append(cells)
    base = [NONE] + ["%.0f / %.0f" % results.figure(kind, NONE) for kind in KINDS]
    dur_io = results.added("io", DURATIONS)[1] - results.added("io", COUNTING)[1]
    lines = [
        "## Exit durations (`--durations`): cost per exit and per system call",
        "",
        f"{rounds} interleaved rounds; per round {seconds:g} s of the cpuid guest, {exits} "
        f"I/O exits, {calls} ioctl(FIONREAD) and getppid() calls in a process that is not "
        "a VM.  ns added (quiet / median, as bench_guest_cost takes them) against no "
        "monitor; the unmonitored figures (quiet / median ns) in the first row.",
        "",
        markdown_table(["monitor", "cpuid guest, ns/iteration", "I/O guest, ns/exit",
                        "ioctl(FIONREAD), ns/call", "getppid(), ns/call"],
                       [base] + rows),
        "",
        f"What the durations add to counting alone on an I/O exit (medians): "
        f"{dur_io:+.0f} ns (within the noise of this machine; see below).",
        "",
        "The durations engine's BPF programs' own run time (kernel statistics, "
        f"{exits} exits, {calls} calls; the dispatch to the programs is not included):",
        "",
        markdown_table(["programs' run time", "ns"],
                       [[name, f"{ns:.0f}"] for name, ns in programs.items()]),
    ]
    return "\n".join(lines) + "\n"


def run(quick: bool = False) -> str:
    rounds, seconds, exits, calls = (2, 0.2, 2000, 20000) if quick else (9, 1.0, 20000, 200000)
    cost = measure(rounds, seconds, exits, calls)
    return report(cost, program_costs(exits, calls), rounds, seconds, exits, calls)


if __name__ == "__main__":
    sys.exit(support.bench_main(run, __doc__))
