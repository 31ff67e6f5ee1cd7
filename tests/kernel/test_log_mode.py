"""Log mode on the real kernel, as a real process (docs/design.md §6.5, §6.6, §6.9).

A test guest process makes exactly N port writes (N kvm_pio events) while
``kvm_stat -L FILE -c -s 0.2 -p PID`` logs it; the file is renamed and
SIGHUP sent mid-run, then SIGTERM: every event is in exactly one row of
exactly one file.  ``kvm_stat -l | head -3`` ends at once and quietly.
"""

import json
import os
import signal
import subprocess
import time

import pytest

from helpers.batchwindow import start_batch
from helpers.commands import killed_on_failure, start_kvm_stat, wait_for
from helpers.logfiles import ROW_TIME, check_csv, column_sum, complete_lines


def test_csv_log_through_rename_sighup_and_sigterm_keeps_every_event_once(guest_process, tmp_path):
    guest = guest_process("pio")
    log = tmp_path / "kvm_stat.csv"
    rotated = tmp_path / "kvm_stat.csv.1"
    started = time.monotonic()
    proc = start_kvm_stat("-L", str(log), "-c", "-s", "0.2", "-p", str(guest.pid))
    with killed_on_failure(proc):
        # The header is written once counting has begun.
        wait_for(lambda: len(complete_lines(log)) >= 1, "the CSV header", proc=proc)
        before, after = [300, 1, 199], [150, 77, 23]
        for n in before:
            guest.run(n)
            time.sleep(0.15)
        wait_for(lambda: column_sum(log, "kvm_pio") == sum(before),
                 "the first bursts to be logged", proc=proc)

        os.rename(log, rotated)          # what logrotate does ...
        proc.send_signal(signal.SIGHUP)  # ... and then `systemctl reload`
        wait_for(lambda: len(complete_lines(log)) >= 1, "the new file's header", proc=proc)

        for n in after[:-1]:
            guest.run(n)
            time.sleep(0.15)
        guest.run(after[-1])             # still pending when SIGTERM comes
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    elapsed = time.monotonic() - started

    assert proc.returncode == 0, err
    assert err == "" and out == ""
    old_header, old_rows = check_csv(rotated)
    new_header, new_rows = check_csv(log)
    assert old_header == new_header
    pio = old_header.index("kvm_pio")
    old_pio = sum(int(row[pio]) for row in old_rows)
    new_pio = sum(int(row[pio]) for row in new_rows)
    assert (old_pio, new_pio) == (sum(before), sum(after))
    assert old_pio + new_pio == sum(before) + sum(after)
    # No row twice: rows are in time order across the files, and there are no
    # more of them than 0.2 s intervals (plus the final partial one).
    times = [row[0] for row in old_rows + new_rows]
    assert times == sorted(times)
    assert len(old_rows) + len(new_rows) <= elapsed / 0.2 + 1


@pytest.mark.parametrize("extra", [[], ["--json"]], ids=["plain", "json"])
def test_log_into_head_ends_within_a_second_quietly(extra):
    writer = start_kvm_stat("-l", "-s", "0.1", *extra)
    reader = subprocess.Popen(["head", "-3"], stdin=writer.stdout, stdout=subprocess.PIPE,
                              text=True)
    writer.stdout.close()  # only head holds the read end now
    try:
        lines = [reader.stdout.readline() for _ in range(3)]
        third = time.monotonic()
        status = writer.wait(timeout=30)
        ended = time.monotonic()
        err = writer.stderr.read()
        reader.wait(timeout=30)
    finally:
        for p in (writer, reader):
            if p.poll() is None:
                p.kill()
                p.wait()
        writer.stderr.close()
        reader.stdout.close()
    assert status == 0
    assert err == ""
    assert ended - third < 1.0
    assert all(line.endswith("\n") for line in lines)
    if extra:
        objs = [json.loads(line) for line in lines]
        for obj in objs:
            assert set(obj) == {"time", "interval", "engine", "fields"}
            assert obj["engine"] in ("bpf", "perf")
            assert obj["fields"]["kvm_pio"].keys() == {"total", "delta"}
        assert all(0.05 < obj["interval"] < 1.0 for obj in objs)
    else:
        assert lines[0].split()[:2] == sorted(lines[0].split())[:2]
        assert ROW_TIME.match(lines[1]) and ROW_TIME.match(lines[2])


def test_log_to_stdout_stops_on_sigint_with_the_pending_row(guest_process):
    guest = guest_process("pio")
    proc = start_kvm_stat("-l", "-c", "-s", "25", "-p", str(guest.pid), "-f", "kvm_pio")
    header = proc.stdout.readline()
    guest.run(41)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and err == ""
    assert header == "timestamp,kvm_pio\n"
    rows = out.splitlines()
    assert len(rows) == 1 and rows[0].endswith(",41")


def test_once_json_reports_exact_counts(guest_process):
    guest = guest_process("pio")
    # Inside kvm_stat's one-second window: its events are open and the first
    # sample taken.
    proc = start_batch(["--json", "-p", str(guest.pid), "-f", "kvm_(pio|userspace_exit)"])
    guest.run(321)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == 1
    obj = json.loads(lines[0])
    assert obj["fields"]["kvm_pio"] == {"total": 321, "delta": 321}
    assert obj["fields"]["kvm_userspace_exit(IO)"]["total"] == 321
    assert 0.9 < obj["interval"] < 5


@pytest.mark.parametrize("last_burst_pending", [False, True], ids=["logged", "pending"])
def test_csv_log_of_a_guest_that_exits_mid_run(guest_process, tmp_path, last_burst_pending):
    guest = guest_process("pio")
    log = tmp_path / "kvm_stat.csv"
    proc = start_kvm_stat("-L", str(log), "-c", "-s", "0.2", "-p", str(guest.pid),
                          "-f", "kvm_pio")
    with killed_on_failure(proc):
        wait_for(lambda: len(complete_lines(log)) >= 1, "the CSV header", proc=proc)
        bursts = [120, 7, 64]
        for n in bursts:
            guest.run(n)
            time.sleep(0.15)
        if not last_burst_pending:
            wait_for(lambda: column_sum(log, "kvm_pio") == sum(bursts), "the bursts to be logged",
                     proc=proc)
        guest.run(33)  # the guest's last writes, then it exits at once
        guest.close()
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert out == ""
    assert err == f"kvm_stat: VM process {guest.pid} has exited\n"
    header, rows = check_csv(log)
    assert header == ["timestamp", "kvm_pio"]
    assert sum(int(row[1]) for row in rows) == sum(bursts) + 33
