"""Shared pieces of the benchmarks: paths, statistics, Markdown, processes.

Every ``bench_*.py`` module imports this first: it puts the repository root
(for ``kvmstat``) and ``tests/`` (for the test guests in ``helpers``) on
``sys.path``, so the benchmarks measure the working tree they live in.
"""

from __future__ import annotations

import argparse
import compileall
import gzip
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS_DIR = os.path.join(REPO_ROOT, "tests")
for _path in (TESTS_DIR, REPO_ROOT):
    if _path not in sys.path:
        sys.path.insert(0, _path)

#: The environment of the processes the benchmarks start: bytecode caches
#: are used and written, as an installed kvm_stat has them, even when this
#: shell says PYTHONDONTWRITEBYTECODE (then every start-up would compile).
CHILD_ENV = {name: value for name, value in os.environ.items()
             if name != "PYTHONDONTWRITEBYTECODE"}

#: comm of the detached process that pays the kernel's perf-event teardown
#: (kvmstat.sampling.teardown.PROCESS_NAME; repeated so this module imports no kvmstat)
RELEASE_COMM = "kvmstat-release"


def bench_main(run: Callable[[bool], str], doc: str,
               argv: Optional[Sequence[str]] = None) -> int:
    """The command line of a benchmark module run as a script: ``[--quick]``,
    then print the Markdown section that *run* returns."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the short smoke version")
    args = parser.parse_args(argv)
    print(run(args.quick))
    return 0


def median(values: Iterable[float]) -> float:
    """The median of *values* (NaN when there are none)."""
    values = list(values)
    return statistics.median(values) if values else float("nan")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]],
                   numbers: bool = True) -> str:
    """A Markdown table; with *numbers*, the columns after the first are
    right-aligned."""
    rest = "---:" if numbers else "---"
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + [rest] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Target:
    """One speed target of the issue and what was measured against it."""

    name: str
    figure: str
    met: bool
    note: str = ""


def targets_table(targets: Sequence[Target]) -> str:
    """The Markdown table of *targets*: target, figure, met or not, why."""
    return markdown_table(["target", "measured", "met", "what limits it"],
                          [(t.name, t.figure, "yes" if t.met else "**no**", t.note or "-")
                           for t in targets], numbers=False)


# ---------------------------------------------------------------------------
# Processes

def compile_kvmstat() -> None:
    """Write kvmstat's bytecode caches (if stale), so that no measured
    start-up compiles source."""
    compileall.compile_dir(os.path.join(REPO_ROOT, "kvmstat"), quiet=1)


def kvm_stat_command(*args: str) -> List[str]:
    """``kvm_stat ARGS`` from this working tree (run it with ``cwd=REPO_ROOT``
    and ``env=CHILD_ENV``)."""
    return [sys.executable, "-m", "kvmstat", *args]


def run_json_child(argv: Sequence[str], timeout: float = 600.0) -> dict:
    """Run *argv* (a Python program printing one JSON object as its last
    line) and return that object; RuntimeError with its stderr if it fails."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          cwd=REPO_ROOT, env=CHILD_ENV)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(argv[1:])} failed with status {proc.returncode}: "
                           f"{proc.stderr.strip()[-2000:]}")
    return json.loads(lines[-1])


def thread_cpu_ns(pid: int, tid: int) -> int:
    """CPU time thread *tid* of process *pid* has used, in ns (schedstat)."""
    with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
        return int(f.read().split()[0])


#: a release process that appears this long after kvm_stat was told to
#: stop is taken for that run's (other users' kvm_stat may release too)
RELEASE_GRACE = 0.5


def _release_pids() -> Set[int]:
    """Release processes that have not exited (zombies left out)."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        comm, _, rest = stat.partition(b"(")[2].rpartition(b")")
        if comm == RELEASE_COMM.encode() and rest[1:2] not in (b"Z", b"X"):
            pids.add(int(entry))
    return pids


class ReleaseWatch:
    """Waits for the detached release process of one kvm_stat run.

    kvm_stat hands the kernel's slow perf-event teardown to a detached
    process (kvmstat.sampling.teardown.close_detached).  Measurements that follow
    one another wait for it, so that one run's teardown does not load the
    next.  Call :meth:`stopping` as kvm_stat is stopped: the release
    processes that appear within RELEASE_GRACE seconds are that run's.
    """

    def __init__(self) -> None:
        self.stopping()

    def stopping(self) -> float:
        """Note that kvm_stat is being stopped now; returns that time."""
        self._before = _release_pids()
        self.stopped = time.monotonic()
        return self.stopped

    def wait(self, timeout: float = 60.0) -> float:
        """Wait until the run's release processes have exited; returns when
        they were last seen, in seconds after :meth:`stopping`."""
        mine: Set[int] = set()
        last_seen = self.stopped
        while True:
            now = time.monotonic()
            current = _release_pids()
            if now - self.stopped <= RELEASE_GRACE:
                mine |= current - self._before
            if mine & current:
                last_seen = now
            elif now - self.stopped > RELEASE_GRACE:
                break
            if now - self.stopped > timeout:
                break
            time.sleep(0.02)
        return last_seen - self.stopped


def interrupt(proc: subprocess.Popen) -> None:
    """Send SIGINT to *proc* if it still runs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)


def stop_process(proc: subprocess.Popen, timeout: float = 30.0) -> Optional[int]:
    """SIGINT *proc*, wait for it (kill it after *timeout*); its status."""
    interrupt(proc)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def cpu_accounting() -> str:
    """How the kernel accounts CPU time to user and system mode (from
    /proc/config.gz): "precise" or "tick-based" (the user/system split of
    getrusage is then sampled at each timer tick), or "unknown"."""
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            config = set(line.strip() for line in f)
    except OSError:
        return "unknown"
    if config & {"CONFIG_VIRT_CPU_ACCOUNTING_GEN=y", "CONFIG_VIRT_CPU_ACCOUNTING_NATIVE=y"}:
        return "precise"
    if "CONFIG_TICK_CPU_ACCOUNTING=y" in config:
        return "tick-based (user/system split sampled at each tick)"
    return "unknown"


def machine() -> Dict[str, str]:
    """What the benchmarks ran on: CPU model, CPUs, kernel, Python, KVM module."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    modules = []
    for name in ("kvm_intel", "kvm_amd", "kvm_pvm"):
        if os.path.isdir(f"/sys/module/{name}"):
            modules.append(name)
    uname = os.uname()
    return {
        "CPU": model,
        "CPUs": f"{os.cpu_count()} ({len(os.sched_getaffinity(0))} usable)",
        "kernel": f"{uname.sysname} {uname.release} {uname.machine}",
        "KVM module": ", ".join(modules) or "none found",
        "Python": sys.version.split()[0],
        "CPU time accounting": cpu_accounting(),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
