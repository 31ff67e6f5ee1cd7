#!/usr/bin/env python3
"""Benchmark: scrape latency of ``kvm_stat --serve`` at 64 VM threads x every kvm event.

A test VM process with 64 vCPUs, each run by its own thread (plus the
process's main thread and KVM's own helper thread), makes a few port writes
per thread every 100 ms.  ``python -m kvmstat --serve 127.0.0.1:0 -p PID``
then counts every kvm tracepoint (and every reason child) on every thread of
that process; the benchmark times N sequential scrapes of ``/metrics``
(request to last byte) and prints the median, p95, min and max, with the
size of the answer and the number of perf events the exporter holds.  With
``--host`` it also measures a host-wide exporter (per-CPU groups).

Run from the repository root, as root::

    python benchmarks/bench_exporter.py [--threads 64] [--scrapes 50] [--host]

This is a measurement, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))

from helpers.exporter import ExporterProcess  # noqa: E402


# ---------------------------------------------------------------------------
# The VM process: one thread per vCPU.

def run_guest(threads: int) -> int:
    """Body of the VM child: *threads* vCPU threads making port writes until stdin closes."""
    from helpers.kvmguest import Guest

    guest = Guest("pio", vcpus=threads)
    stop = threading.Event()

    def vcpu_loop(index: int) -> None:
        while not stop.is_set():
            guest.run(5, index)
            stop.wait(0.1)

    workers = [threading.Thread(target=vcpu_loop, args=(i,), daemon=True)
               for i in range(1, threads)]
    for worker in workers:
        worker.start()
    guest.run(1, 0)
    print(f"ready {os.getpid()}", flush=True)
    reader = threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True)
    reader.start()
    while not stop.is_set():  # vCPU 0 on the main thread
        guest.run(5, 0)
        stop.wait(0.1)
    for worker in workers:
        worker.join()
    guest.close()
    return 0


class GuestThreads:
    """The VM child process (this script with ``--guest-process``)."""

    def __init__(self, threads: int):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--guest-process", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "ready":
            self.close()
            raise RuntimeError(f"the guest process did not start (said {line!r})")
        self.pid = int(line[1])

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------------------
# Measuring

def percentile(values: Sequence[float], fraction: float) -> float:
    """The *fraction* quantile of *values* (nearest rank)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def measure(args: Sequence[str], scrapes: int) -> Dict[str, float]:
    """Start an exporter with *args*, time *scrapes* scrapes, stop it."""
    started = time.monotonic()
    with ExporterProcess(list(args), timeout=600) as exporter:
        startup = time.monotonic() - started
        _, _, body = exporter.get()  # warm-up
        times: List[float] = []
        for _ in range(scrapes):
            t0 = time.perf_counter()
            _, _, body = exporter.get()
            times.append(time.perf_counter() - t0)
        perf_fds = exporter.perf_fds()
        series = sum(1 for line in body.splitlines() if line and not line.startswith("#"))
        read_seconds = next((float(line.split()[1]) for line in body.splitlines()
                             if line.startswith("kvmstat_sample_seconds ")), float("nan"))
        status = exporter.stop()
    if status != 0:
        raise RuntimeError(f"exporter exited with status {status}")
    return {"startup": startup, "median": statistics.median(times),
            "p95": percentile(times, 0.95), "min": min(times), "max": max(times),
            "series": series, "bytes": len(body), "perf_fds": perf_fds,
            "read": read_seconds}


def report(title: str, r: Dict[str, float], scrapes: int) -> None:
    print(f"{title}")
    print(f"  perf events held        {int(r['perf_fds']):>10}")
    print(f"  series per scrape       {int(r['series']):>10}   ({int(r['bytes'])} bytes, text format)")
    print(f"  start-up (open events)  {r['startup']:>10.2f} s")
    print(f"  scrape latency, {scrapes} scrapes: median {r['median'] * 1000:.1f} ms, "
          f"p95 {r['p95'] * 1000:.1f} ms, min {r['min'] * 1000:.1f} ms, "
          f"max {r['max'] * 1000:.1f} ms")
    print(f"  of which reading the counters (last scrape): {r['read'] * 1000:.2f} ms")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description="Scrape latency of kvm_stat --serve.")
    parser.add_argument("--threads", type=int, default=64, help="vCPU threads of the VM (64)")
    parser.add_argument("--scrapes", type=int, default=50, help="scrapes to time (50)")
    parser.add_argument("--fields", default=None, help="-f regex (default: every event)")
    parser.add_argument("--host", action="store_true", help="also measure a host-wide exporter")
    parser.add_argument("--guest-process", type=int, metavar="THREADS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.guest_process:
        return run_guest(args.guest_process)

    fields = ["-f", args.fields] if args.fields else []
    guest = GuestThreads(args.threads)
    try:
        print(f"VM process {guest.pid}: {guest.threads()} threads "
              f"({args.threads} vCPU threads), {os.cpu_count()} CPUs; "
              f"events: {args.fields or 'every kvm tracepoint and reason'}")
        result = measure(["-p", str(guest.pid), *fields], args.scrapes)
        report(f"kvm_stat --serve -p {guest.pid} ({guest.threads()} threads)", result, args.scrapes)
        if args.host:
            report("kvm_stat --serve host-wide (per-CPU)",
                   measure(fields, args.scrapes), args.scrapes)
    finally:
        guest.close()
    return 0


def run(quick: bool = False) -> str:
    """Run the benchmark (benchmarks/run.py convention); returns its Markdown
    section.  *quick*: 8 threads and 5 scrapes."""
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(["--threads", "8", "--scrapes", "5"] if quick else [])
    if status != 0:
        raise RuntimeError(f"bench_exporter failed with status {status}")
    return ("## Exporter: scrape latency of kvm_stat --serve\n\n"
            f"```\n{printed.getvalue()}```")


if __name__ == "__main__":
    sys.exit(main())
