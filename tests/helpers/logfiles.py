"""Running ``kvm_stat`` in log mode as a process and checking its CSV files.

Used by the log-mode and service tests (tests/kernel/test_log_mode.py,
tests/kernel/test_service_files.py).  No kvmstat code in here: the files are
read as a user of the CSV would read them.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time

#: the command that runs this tree's kvm_stat
KVM_STAT = [sys.executable, "-m", "kvmstat"]
#: the time column of plain and CSV rows
ROW_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def start_kvm_stat(*args, **kwargs) -> subprocess.Popen:
    """Start ``kvm_stat ARGS`` with stdout and stderr as text pipes."""
    return subprocess.Popen([*KVM_STAT, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def wait_for(predicate, what: str, timeout: float = 30.0, proc=None) -> None:
    """Poll *predicate* until true; fail after *timeout* s or when *proc* ends."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"kvm_stat ended (status {proc.returncode}) while waiting "
                                 f"for {what}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def complete_lines(path) -> list:
    """The complete lines of a file being written (a partial last line is left out)."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return []
    return text[:text.rfind("\n") + 1].splitlines()


def column_sum(path, name: str):
    """Sum of CSV column *name* over the complete rows (None without a header)."""
    lines = complete_lines(path)
    if not lines:
        return None
    index = lines[0].split(",").index(name)
    return sum(int(line.split(",")[index]) for line in lines[1:])


def check_csv(path):
    """Assert *path* is a whole kvm_stat CSV file: exactly one header, first,
    then rows with a time and one integer per column, the last one complete.
    Returns (header, rows), rows as lists of cells."""
    with open(path) as f:
        text = f.read()
    assert text.endswith("\n"), f"{path}: the last row is torn"
    lines = text.splitlines()
    header = lines[0].split(",")
    assert header[0] == "timestamp", f"{path}: no header first"
    assert [i for i, line in enumerate(lines) if line.startswith("timestamp")] == [0], \
        f"{path}: header not exactly once"
    rows = [line.split(",") for line in lines[1:]]
    for row in rows:
        assert len(row) == len(header), f"{path}: torn row {row}"
        assert ROW_TIME.fullmatch(row[0]), f"{path}: bad time in {row}"
        assert all(cell.isdigit() for cell in row[1:]), f"{path}: bad row {row}"
    return header, rows


def perf_event_fds(pid: int) -> int:
    """How many perf event descriptors process *pid* holds (0 if it is gone)."""
    count = 0
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    for name in names:
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}") == "anon_inode:[perf_event]":
                count += 1
        except OSError:
            pass
    return count


@contextlib.contextmanager
def killed_on_failure(proc: subprocess.Popen):
    """Kill *proc* when the block leaves it running (a failed assertion)."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
