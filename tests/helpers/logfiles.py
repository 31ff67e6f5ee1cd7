"""Checking the CSV files ``kvm_stat`` writes in log mode.

Used by the log-mode and service tests (tests/kernel/test_log_mode.py,
tests/kernel/test_service_files.py); running kvm_stat is in
:mod:`helpers.commands`.  No kvmstat code in here: the files are read as a
user of the CSV would read them.
"""

from __future__ import annotations

import re

#: the time column of plain and CSV rows
ROW_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
INTEGER = re.compile(r"-?\d+")


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
    then rows with a time and one integer per column, the last one complete
    (a level, such as the binary statistic ``blocking``, may go down: its
    change is negative when another VM's vCPU stops blocking).  Returns
    (header, rows), rows as lists of cells."""
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
        assert all(INTEGER.fullmatch(cell) for cell in row[1:]), f"{path}: bad row {row}"
    return header, rows
