#!/usr/bin/env python3
"""Benchmark: the cost of a scrape of ``kvm_stat --serve``.

Two parts.  **Fleet scale**: N idle VMs (processes holding a KVM VM with one vCPU
that never runs) plus a few busy ones (port writes every 50 ms), the exporter
host-wide with its defaults (per-VM series, engine auto): series, bytes and latency
per scrape at 10, 100 and 300 idle VMs, with where the time goes (reading the
providers, writing the answer, HTTP) and the issue's targets (100 idle + 1 busy at
most 1.5x the series and 2x the latency of 10 idle + 1 busy).  ``--baseline TREE``
measures another working tree side by side (e.g. the commit before the change).

**64 VM threads**:
a test VM process with 64 vCPUs, each run by its own thread (plus the
process's main thread and KVM's own helper thread), makes a few port writes
per thread every 100 ms.  ``python -m kvmstat --serve 127.0.0.1:0 -p PID``
then counts every kvm tracepoint (and every reason child) on every thread of
that process; the benchmark times N sequential scrapes of ``/metrics``
(request to last byte) and prints the median, p95, min and max, with the
size of the answer and the number of perf events the exporter holds.  With
``--host`` it also measures a host-wide exporter (per-CPU groups).

Run from the repository root, as root::

    python benchmarks/bench_exporter.py [--threads 64] [--scrapes 50] [--host]
    python benchmarks/bench_exporter.py --fleet [--idle 10,100,300] [--busy 1]
                                        [--scrapes 20] [--baseline TREE]

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
from typing import Dict, List, Optional, Sequence, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))

from helpers.exporter import ExporterProcess  # noqa: E402

import support  # noqa: E402


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
                             if line.startswith("kvmstat_read_duration_seconds ")),
                            float("nan"))
        status = exporter.stop()
    if status != 0:
        raise RuntimeError(f"exporter exited with status {status}")
    return {"startup": startup, "median": statistics.median(times),
            "p95": percentile(times, 0.95), "min": min(times), "max": max(times),
            "series": series, "bytes": len(body), "perf_fds": perf_fds,
            "read": read_seconds}


# ---------------------------------------------------------------------------
# Fleet scale: many idle VMs, a few busy ones

class ForkedVMs:
    """*idle* idle VM processes and *busy* busy ones, forked from this process.

    Each child creates its own VM (one vCPU, tests/helpers/kvmguest.py); an idle
    one never runs it, a busy one makes 5 port writes every 50 ms.  They all
    end when the pipe they read closes.
    """

    def __init__(self, idle: int, busy: int):
        from helpers.kvmguest import Guest

        self._guest_class = Guest
        self.pids: List[int] = []
        self._stop_r, self._stop_w = os.pipe()
        try:
            for index in range(idle + busy):
                self._fork(busy=index >= idle)
        except BaseException:
            self.close()
            raise
        os.close(self._stop_r)

    def _fork(self, busy: bool) -> None:
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            status = 1
            try:
                # Only the parent may hold the write end: its close ends the children.
                os.close(self._stop_w)
                os.close(ready_r)
                guest = self._guest_class("pio")
                os.write(ready_w, b"1")
                if busy:
                    import select
                    while not select.select([self._stop_r], [], [], 0.05)[0]:
                        guest.run(5)
                else:
                    os.read(self._stop_r, 1)
                status = 0
            finally:
                os._exit(status)
        os.close(ready_w)
        answer = os.read(ready_r, 1)
        os.close(ready_r)
        self.pids.append(pid)
        if answer != b"1":
            raise RuntimeError("a VM process did not start")

    def close(self) -> None:
        """End every VM process and reap it."""
        if self._stop_w is not None:
            os.close(self._stop_w)
            self._stop_w = None
        for pid in self.pids:
            os.waitpid(pid, 0)
        self.pids = []


def _series_lines(body: str) -> int:
    return sum(1 for line in body.splitlines() if line and not line.startswith("#"))


def _health(body: str, name: str) -> float:
    return next((float(line.split()[1]) for line in body.splitlines()
                 if line.startswith(name + " ")), float("nan"))


def measure_fleet(args: Sequence[str], scrapes: int, cwd: Optional[str] = None
                  ) -> Dict[str, float]:
    """One exporter (in *cwd*, default this tree) scraped *scrapes* times after a
    warm-up: series, bytes, latency, and the exporter's own reading and whole-scrape
    times (those two only where it reports them)."""
    exporter = ExporterProcess(list(args), timeout=600, cwd=cwd)
    try:
        exporter.get()  # warm-up: the first scrape finds the VMs and lays the families out
        times, reads, wholes = [], [], []
        body = ""
        for _ in range(scrapes):
            t0 = time.perf_counter()
            _, _, body = exporter.get()
            times.append(time.perf_counter() - t0)
            reads.append(_health(body, "kvmstat_read_duration_seconds"))
            wholes.append(_health(body, "kvmstat_last_scrape_duration_seconds"))
        status = exporter.stop()
    finally:
        exporter.kill()
    if status != 0:
        raise RuntimeError(f"exporter exited with status {status}")
    return {"series": _series_lines(body), "bytes": len(body.encode()),
            "median": statistics.median(times), "p10": percentile(times, 0.10),
            "read": statistics.median(reads), "whole": statistics.median(wholes[1:] or wholes)}


def fleet(idle_counts: Sequence[int], busy: int, scrapes: int, rounds: int,
          baseline: Optional[str]) -> str:
    """Measure every idle count (rounds interleaved between this tree and the
    baseline) and return the Markdown section."""
    support.compile_kvmstat()
    trees = [("this tree", None)] + ([("baseline", baseline)] if baseline else [])
    results: Dict[Tuple[str, int], List[Dict[str, float]]] = {}
    for idle in idle_counts:
        vms = ForkedVMs(idle, busy)
        try:
            for _ in range(rounds):
                for label, cwd in trees:
                    results.setdefault((label, idle), []).append(
                        measure_fleet([], scrapes, cwd))
        finally:
            vms.close()
    rows = []
    for (label, idle), runs in results.items():
        def med(key: str) -> float:
            return statistics.median(r[key] for r in runs)
        rows.append((f"{label}", f"{idle} + {busy}", int(med("series")),
                     f"{med('bytes') / 1000:.1f} KB", f"{med('p10') * 1000:.1f}",
                     f"{med('median') * 1000:.1f}",
                     "-" if med("read") != med("read") else f"{med('read') * 1000:.1f}",
                     "-" if med("whole") != med("whole") else
                     f"{(med('whole') - med('read')) * 1000:.1f}"))
    table = support.markdown_table(
        ["tree", "idle + busy VMs", "series", "bytes", "latency p10 (ms)",
         "latency median (ms)", "reading (ms)", "writing (ms)"], rows)
    out = [f"### Fleet scale: idle VMs plus {busy} busy, host-wide, default options\n",
           f"{scrapes} sequential scrapes per run, {rounds} runs per row (interleaved "
           f"between trees); figures are medians over runs.  *reading*: the exporter's "
           f"`kvmstat_read_duration_seconds`; *writing*: the rest of its "
           f"`kvmstat_last_scrape_duration_seconds` (building the answer); the latency "
           f"adds HTTP.\n", table, ""]
    mine = {idle: results[("this tree", idle)] for idle in idle_counts}
    if 10 in mine and 100 in mine:
        def med_of(idle: int, key: str) -> float:
            return statistics.median(r[key] for r in mine[idle])
        series_ratio = med_of(100, "series") / med_of(10, "series")
        latency_ratio = med_of(100, "median") / med_of(10, "median")
        quiet_ratio = med_of(100, "p10") / med_of(10, "p10")
        out.append(support.targets_table([
            support.Target(f"series, 100 idle + {busy} busy <= 1.5x 10 idle + {busy} busy",
                           f"{series_ratio:.2f}x", series_ratio <= 1.5),
            support.Target(f"latency, 100 idle + {busy} busy <= 2x 10 idle + {busy} busy",
                           f"{latency_ratio:.2f}x (medians), {quiet_ratio:.2f}x (p10)",
                           latency_ratio <= 2.0,
                           "" if latency_ratio <= 2.0 else
                           "what still grows with the VMs: one poll over their pidfds, one "
                           "memcmp per VM row, the VM labels; the host is shared, so noise")]))
    return "\n".join(out) + "\n"



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
    parser.add_argument("--fleet", action="store_true",
                        help="measure the fleet-scale part instead (idle VMs)")
    parser.add_argument("--idle", default="10,100,300",
                        help="with --fleet: idle VM counts (10,100,300)")
    parser.add_argument("--busy", type=int, default=1, help="with --fleet: busy VMs (1)")
    parser.add_argument("--rounds", type=int, default=3, help="with --fleet: runs per row (3)")
    parser.add_argument("--baseline", metavar="TREE",
                        help="with --fleet: also measure the kvmstat of this working tree")
    args = parser.parse_args(argv)
    if args.guest_process:
        return run_guest(args.guest_process)
    if args.fleet:
        print(fleet([int(n) for n in args.idle.split(",")], args.busy,
                    args.scrapes if args.scrapes != 50 else 20, args.rounds, args.baseline))
        return 0

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
    scale = (fleet([10, 20], 1, 3, 1, None) if quick
             else fleet([10, 100, 300], 1, 20, 3, None))
    return ("## Exporter: scrape cost of kvm_stat --serve\n\n" + scale +
            "\n### 64 VM threads, every field\n\n"
            f"```\n{printed.getvalue()}```")


if __name__ == "__main__":
    sys.exit(main())
