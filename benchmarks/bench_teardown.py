#!/usr/bin/env python3
"""Benchmark: how long kvm_stat keeps the user waiting when it stops.

Closing perf events is slow in the kernel; kvm_stat hands that work to a
detached process.  This measures, for every way the command ends, the time
from the user's (or the program's) last word until the shell has control
again, i.e. until the process has exited AND its output has reached end of
file (nothing, not even a helper process, still holds the terminal or pipe):

* the display: from the ``q`` key (in a pseudo-terminal);
* log mode (``-l``): from SIGINT;
* batch mode (``-1``): from the moment its output arrives.

Every kvm event is counted host-wide, with the default engine and with
perf groups (one group per CPU), and, in a full run, with ``-p`` on a VM
process with 64 sleeping threads (64 perf groups).  The
last column is how long the detached process then took to finish the
kernel's teardown in the background.

Run from the repository root, as root::

    python benchmarks/bench_teardown.py [--quick]

This is a measurement, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import errno
import os
import select
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Sequence, Tuple

import support
from support import ReleaseWatch, Target, markdown_table, median, targets_table
from vmprocess import ParkedVM

TARGET_SECONDS = 0.3
SCALE_THREADS = 64
TIMEOUT = 60.0


class Ending:
    """What one run measured (seconds)."""

    def __init__(self, startup: float, exited: float, eof: float, released: float):
        self.startup = startup      # start until ready to be stopped
        self.exited = exited        # stop until the process exited
        self.eof = eof              # stop until its output reached end of file
        self.released = released    # stop until the detached release ended

    @property
    def prompt(self) -> float:
        """Stop until the shell has control: exited and output closed."""
        return max(self.exited, self.eof)


def _read(fd: int) -> bytes:
    """One read; b"" at end of file (a pty master says EIO then)."""
    try:
        return os.read(fd, 65536)
    except OSError as exc:
        if exc.errno == errno.EIO:
            return b""
        raise


def _wait_output(fd: int, ready: Callable[[bytes], bool], proc: subprocess.Popen) -> bytes:
    """Read *fd* until *ready* accepts what came so far."""
    seen = b""
    deadline = time.monotonic() + TIMEOUT
    while not ready(seen):
        if time.monotonic() > deadline:
            raise RuntimeError(f"kvm_stat was not ready in {TIMEOUT:g} s: {seen[-500:]!r}")
        if not select.select([fd], [], [], 0.5)[0]:
            if proc.poll() is not None:
                raise RuntimeError(f"kvm_stat exited before it was ready: {seen[-500:]!r}")
            continue
        data = _read(fd)
        if not data:
            raise RuntimeError(f"kvm_stat closed its output early: {seen[-500:]!r}")
        seen += data
    return seen


def _finish(proc: subprocess.Popen, fd: int, stopped: float) -> Tuple[float, float]:
    """Drain *fd* until end of file and wait for *proc*: (exit, eof) seconds after *stopped*."""
    exited = eof = None
    deadline = stopped + TIMEOUT
    while exited is None or eof is None:
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("kvm_stat did not end")
        if eof is None:
            if select.select([fd], [], [], 0.001)[0] and not _read(fd):
                eof = time.monotonic() - stopped
        else:
            time.sleep(0.001)
        if exited is None and proc.poll() is not None:
            exited = time.monotonic() - stopped
    if proc.returncode != 0:
        raise RuntimeError(f"kvm_stat exited with status {proc.returncode}")
    return exited, eof


def _display(args: Sequence[str]) -> Ending:
    """The curses display in a pseudo-terminal, stopped with ``q``."""
    from helpers.ptyterm import PtyTerminal

    started = time.monotonic()
    release = ReleaseWatch()
    term = PtyTerminal(support.kvm_stat_command(*args), env=support.CHILD_ENV)
    try:
        # Only the program may hold the terminal, or its end would not show.
        os.close(term.slave)
        term.slave = -1
        term.wait_for("kvm statistics", timeout=TIMEOUT)
        stopped = release.stopping()
        term.send("q")
        exited, eof = _finish(term.proc, term.master, stopped)
        return Ending(stopped - started, exited, eof, release.wait())
    finally:
        term.close()


def _piped(args: Sequence[str], ready: Callable[[bytes], bool], interrupt: bool) -> Ending:
    """kvm_stat writing to a pipe; stopped with SIGINT once *ready*, or not at all."""
    started = time.monotonic()
    release = ReleaseWatch()
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(support.kvm_stat_command(*args), cwd=support.REPO_ROOT,
                                env=support.CHILD_ENV, stdout=subprocess.PIPE, stderr=errors)
        fd = proc.stdout.fileno()
        try:
            _wait_output(fd, ready, proc)
            stopped = release.stopping()
            if interrupt:
                support.interrupt(proc)
            exited, eof = _finish(proc, fd, stopped)
        except RuntimeError as exc:
            errors.seek(0)
            raise RuntimeError(f"{exc}; stderr: {errors.read().decode(errors='replace')}") from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        return Ending(stopped - started, exited, eof, release.wait())


MODES: Dict[str, Callable[[Sequence[str]], Ending]] = {
    "display: q": _display,
    "log (-l): SIGINT": lambda args: _piped(["-l", *args], lambda out: b"\n" in out, True),
    "batch (-1): output out": lambda args: _piped(["-1", *args], bool, False),
}


def measure(rounds: int, scale: bool) -> Dict[Tuple[str, str], List[Ending]]:
    """*rounds* rounds of every mode: host-wide with the default engine and
    with perf groups, and (with *scale*) with -p on perf groups."""
    support.compile_kvmstat()
    results: Dict[Tuple[str, str], List[Ending]] = {}

    def run_all(scope: str, args: Sequence[str]) -> None:
        for _ in range(rounds):
            for mode, measure_one in MODES.items():
                results.setdefault((scope, mode), []).append(measure_one(args))

    cpus = len(os.sched_getaffinity(0))
    run_all(f"host-wide ({cpus} CPUs), default engine", [])
    # Perf groups: the engine whose kernel teardown is slow.
    run_all(f"host-wide ({cpus} CPUs), --engine perf", ["--engine", "perf"])
    if scale:
        with ParkedVM(SCALE_THREADS) as vm:
            run_all(f"-p: {vm.threads} threads, --engine perf",
                    ["-p", str(vm.pid), "--engine", "perf"])
    return results


def report(results: Dict[Tuple[str, str], List[Ending]], rounds: int) -> str:
    rows = []
    worst = (0.0, "")
    for (scope, mode), endings in results.items():
        prompt = median(e.prompt for e in endings)
        worst = max(worst, (prompt, f"{mode}, {scope}"))
        rows.append((scope, mode, f"{median(e.startup for e in endings):.2f}",
                     f"{prompt * 1000:.0f}", f"{max(e.prompt for e in endings) * 1000:.0f}",
                     f"{median(e.exited for e in endings) * 1000:.0f}",
                     f"{median(e.eof for e in endings) * 1000:.0f}",
                     f"{median(e.released for e in endings):.2f}"))
    target = Target(f"teardown <= {TARGET_SECONDS} s to the prompt",
                    f"slowest median {worst[0] * 1000:.0f} ms ({worst[1]})",
                    worst[0] <= TARGET_SECONDS,
                    "the kernel's teardown runs in a detached process (last column); "
                    "what remains is the interpreter's exit")
    return "\n\n".join([
        "## Teardown: from the last word to the shell prompt",
        f"Every kvm event counted. Time from `q` / SIGINT / the batch output until the "
        f"process has exited and its terminal or pipe reached end of file; medians of "
        f"{rounds} run(s) (max: the slowest run).",
        markdown_table(["scope", "how it ends", "start-up s", "to prompt ms", "max ms",
                        "exit ms", "output EOF ms", "background release s"], rows),
        targets_table([target]),
    ])


def run(quick: bool = False) -> str:
    """Run the benchmark; returns its Markdown section."""
    rounds, scale = (1, False) if quick else (3, True)
    return report(measure(rounds, scale), rounds)


if __name__ == "__main__":
    sys.exit(support.bench_main(run, __doc__))
