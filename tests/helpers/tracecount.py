"""Count kvm tracepoint hits with a private tracefs instance (no kvmstat code).

Used to prove the test guest is exact, and usable as an independent referee
for kvmstat's own counts::

    with TraceCounter(tracefs, ["kvm_pio", "kvm_userspace_exit"], pid=tid) as tc:
        guest.run(100)
    assert tc.count("kvm_pio") == 100

The instance is ``<tracefs>/instances/kvmstat-test-<pid>-<n>``, removed on exit.
With ``pid`` set (one task id or several), only those tasks and the tasks
(threads included) they create afterwards are traced (``set_event_pid`` +
``options/event-fork``), so other VMs on the host do not disturb the counts.
"""

from __future__ import annotations

import itertools
import os
import re
import time

__all__ = ["TraceCounter", "find_tracefs", "mount_tracefs"]

_seq = itertools.count()


def find_tracefs() -> "str | None":
    """Mount point of tracefs (by filesystem type), preferring /sys/kernel/tracing."""
    found = []
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3 and fields[2] == "tracefs":
                    found.append(fields[1].replace("\\040", " "))
    except OSError:
        return None
    if "/sys/kernel/tracing" in found:
        return "/sys/kernel/tracing"
    return found[0] if found else None


def mount_tracefs() -> "str | None":
    """find_tracefs(), mounting it at /sys/kernel/tracing first if absent and root."""
    path = find_tracefs()
    if path is None and os.geteuid() == 0 and os.path.isdir("/sys/kernel/tracing"):
        import subprocess

        subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"],
                       check=False, capture_output=True)
        path = find_tracefs()
    return path


class TraceCounter:
    def __init__(self, tracefs: str, events, pid: "int | list[int] | None" = None,
                 buffer_kb: int = 4096, system: str = "kvm"):
        self.tracefs = tracefs
        self.events = list(events)
        self.pid = pid
        self.system = system
        self.buffer_kb = buffer_kb
        self.path = os.path.join(tracefs, "instances",
                                 f"kvmstat-test-{os.getpid()}-{next(_seq)}")
        self._lines: "list[str] | None" = None

    def _write(self, rel: str, value) -> None:
        with open(os.path.join(self.path, rel), "w") as f:
            f.write(f"{value}\n")

    def __enter__(self) -> "TraceCounter":
        os.mkdir(self.path)
        try:
            self._write("tracing_on", 0)
            self._write("buffer_size_kb", self.buffer_kb)
            if self.pid is not None:
                self._write("options/event-fork", 1)
                pids = [self.pid] if isinstance(self.pid, int) else list(self.pid)
                self._write("set_event_pid", " ".join(str(p) for p in pids))
            for ev in self.events:
                self._write(f"events/{self.system}/{ev}/enable", 1)
            self._write("trace", "")  # clear
            self._write("tracing_on", 1)
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._write("tracing_on", 0)
            with open(os.path.join(self.path, "trace")) as f:
                self._lines = [ln for ln in f if ln.strip() and not ln.startswith("#")]
            self.overrun = self._overrun()
        finally:
            self._remove()

    def _overrun(self) -> int:
        total = 0
        per_cpu = os.path.join(self.path, "per_cpu")
        for cpu in os.listdir(per_cpu):
            try:
                with open(os.path.join(per_cpu, cpu, "stats")) as f:
                    for line in f:
                        if line.startswith("overrun:"):
                            total += int(line.split()[1])
            except OSError:
                pass
        return total

    def _remove(self) -> None:
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:  # EBUSY while a reader still holds it
                time.sleep(0.02)
        os.rmdir(self.path)

    # -- results (after the with block) ---------------------------------------
    @property
    def lines(self) -> "list[str]":
        if self._lines is None:
            raise RuntimeError("results are available after the with block")
        return self._lines

    def records(self, event: "str | None" = None):
        """(task_comm, tid, event, text) per trace line, optionally of one event."""
        pat = re.compile(r"^\s*(.*)-(\d+)\s+\[\d+\].*?\s(\w+):\s?(.*)$")
        for line in self.lines:
            m = pat.match(line.rstrip("\n"))
            if m and (event is None or m.group(3) == event):
                yield m.group(1), int(m.group(2)), m.group(3), m.group(4)

    def count(self, event: str, contains: "str | None" = None,
              tid: "int | None" = None) -> int:
        return sum(1 for _, t, _, text in self.records(event)
                   if (contains is None or contains in text) and (tid is None or t == tid))

    def tids(self, event: "str | None" = None) -> "set[int]":
        return {t for _, t, _, _ in self.records(event)}
