"""The log loop (kvmstat.frontends.logger): schedule, banners, -z, stop, reopen, outputs.

The loop runs against a scripted sampler, a fake monotonic clock and fake
signals, so the schedule is checked exactly without sleeping.  LogFile and
the signals are checked against the real file system and real signals.
"""

import io
import json
import os
import signal
import stat
import time

import pytest

from kvmstat.frontends import logger as logmod
from kvmstat.errors import AccessDenied, Error, InvalidArgument, VMGone
from kvmstat.frontends.logger import LogFile, Logger, StreamOutput, log_layout
from kvmstat.frontends.signals import Signals
from kvmstat.frontends.streams import OutputStream
from kvmstat.sampling.sampler import Sample


class FakeClock:
    def __init__(self, now=100.0):
        self.now = now

    def __call__(self):
        return self.now


class ScriptedSampler:
    """Samples whose deltas come from *deltas* (one list per sample, the
    baseline included); each sample costs *cost* seconds of the fake clock."""

    fields = ["a", "b"]

    def __init__(self, clock, deltas, cost=0.0, fail_at=None):
        self.clock = clock
        self.deltas = list(deltas)
        self.cost = cost
        self.fail_at = fail_at
        self.times = []
        self.totals = {"a": 0, "b": 0}

    pid = 42
    done = False

    def sample(self, refresh=True):
        if self.done and refresh:
            raise VMGone("VM process 42 has exited", 42)
        if refresh and self.fail_at is not None and len(self.times) == self.fail_at:
            self.done = True  # this sample holds the counts up to the exit
        self.times.append(self.clock.now)
        self.clock.now += self.cost
        step = self.deltas.pop(0) if self.deltas else [0, 0]
        values = {}
        for name, delta in zip(self.fields, step):
            self.totals[name] += delta
            values[name] = (self.totals[name], delta)
        return Sample(1e9 + len(self.times), 0.5, values)


def text_output(out):
    """A StreamOutput writing into the in-memory text stream *out*."""
    return StreamOutput(OutputStream(None, "standard output", text_stream=out))


class FakeSignals:
    """wait jumps the clock to the deadline, unless *events* (wait
    number -> function(signals, deadline)) says otherwise."""

    def __init__(self, clock, events=None, stop_after=None):
        self.clock = clock
        self.events = dict(events or {})
        self.stop_after = stop_after
        self.stop = False
        self.output_closed = False
        self.reopen = False
        self.waits = 0

    @property
    def stopping(self):
        return self.stop

    def take_reload(self):
        pending, self.reopen = self.reopen, False
        return pending

    def wait(self, deadline, fds=()):
        self.waits += 1
        if self.stop_after is not None and self.waits > self.stop_after:
            self.stop = True
            return []
        action = self.events.get(self.waits)
        if action is not None:
            action(self, deadline)
            return [(-1, 16)] if self.output_closed else []  # POLLHUP
        self.clock.now = max(self.clock.now, deadline)
        return []


def run_logger(fmt="csv", deltas=(), cost=0.0, events=None, stop_after=5, skip_zero=False,
               delay=0.5, output=None, by_guest=False):
    clock = FakeClock()
    sampler = ScriptedSampler(clock, deltas, cost)
    out = io.StringIO()
    output = output or text_output(out)
    signals = FakeSignals(clock, events, stop_after)
    Logger(sampler, output, log_layout(fmt, by_guest), delay=delay, skip_zero=skip_zero,
           clock=clock).run(signals)
    return out.getvalue(), sampler, signals


def test_rows_are_due_at_start_plus_k_delays_without_drift():
    # Each sample takes 0.07 s: a sleep(delay) loop would drift by 0.07 per row.
    text, sampler, _ = run_logger(cost=0.07, stop_after=10)
    start = sampler.times[0] + 0.07
    due = [t - start for t in sampler.times[1:-1]]
    assert due == pytest.approx([k * 0.5 for k in range(1, 11)])


def test_a_late_wake_up_merges_missed_slots_and_keeps_the_grid():
    def oversleep(signals, deadline):
        signals.clock.now = deadline + 1.6  # 3 slots late
    _, sampler, _ = run_logger(events={2: oversleep}, stop_after=4)
    start = sampler.times[0]
    offsets = [t - start for t in sampler.times[1:-1]]
    assert offsets == pytest.approx([0.5, 2.6, 3.0, 3.5])


def test_csv_stream_has_one_header_and_one_row_per_interval():
    text, sampler, _ = run_logger(deltas=[[9, 9], [1, 2], [3, 4]], stop_after=2)
    lines = text.splitlines()
    assert lines[0] == "timestamp,a,b"
    # baseline (9, 9) is not a row; two due rows and the final partial row
    assert [line.split(",", 1)[1] for line in lines[1:]] == ["1,2", "3,4", "0,0"]


def test_stop_writes_the_pending_partial_interval():
    def term(signals, deadline):
        signals.clock.now = deadline - 0.3
        signals.stop = True
    text, sampler, _ = run_logger(deltas=[[0, 0], [5, 0], [7, 1]], events={2: term},
                                  stop_after=None)
    assert [line.split(",", 1)[1] for line in text.splitlines()[1:]] == ["5,0", "7,1"]
    assert sampler.times[-1] - sampler.times[0] == pytest.approx(0.7)


def test_skip_zero_leaves_out_all_zero_rows_including_the_last():
    deltas = [[0, 0], [0, 0], [0, 1], [0, 0], [2, 0], [0, 0]]
    text, _, _ = run_logger(deltas=deltas, stop_after=4, skip_zero=True)
    assert [line.split(",", 1)[1] for line in text.splitlines()] == ["a,b", "0,1", "2,0"]


def test_plain_banner_repeats_after_20_printed_rows_not_counting_skipped_ones():
    deltas = [[0, 0]] + [[1, 0], [0, 0]] * 30  # every other row is skipped by -z
    text, _, _ = run_logger(fmt="plain", deltas=deltas, stop_after=60, skip_zero=True)
    lines = text.splitlines()
    banner = "a b "
    assert [i for i, line in enumerate(lines) if line == banner] == [0, 21]
    assert len(lines) == 2 + 30


def test_plain_without_skip_zero_repeats_the_banner_every_20_rows():
    text, _, _ = run_logger(fmt="plain", stop_after=44)
    lines = text.splitlines()
    assert [i for i, line in enumerate(lines) if line == "a b "] == [0, 21, 42]
    assert len(lines) == 3 + 45


def test_json_lines_have_no_header():
    import json
    text, _, _ = run_logger(fmt="json", deltas=[[0, 0], [1, 1]], stop_after=1)
    objs = [json.loads(line) for line in text.splitlines()]
    assert [o["fields"]["a"]["delta"] for o in objs] == [1, 0]


def test_a_reader_that_went_away_ends_the_loop_with_broken_pipe():
    def gone(signals, deadline):
        signals.output_closed = True
    with pytest.raises(BrokenPipeError):
        run_logger(events={3: gone}, stop_after=None)


def test_the_watched_vm_exiting_ends_the_loop():
    clock = FakeClock()
    sampler = ScriptedSampler(clock, [], fail_at=3)
    Logger(sampler, text_output(io.StringIO()), log_layout("csv"), delay=1,
           clock=clock).run(FakeSignals(clock, stop_after=None))
    assert sampler.done and len(sampler.times) == 4


def test_the_watched_vm_exiting_at_the_baseline_writes_nothing():
    clock = FakeClock()
    sampler = ScriptedSampler(clock, [], fail_at=0)
    out = io.StringIO()
    Logger(sampler, text_output(out), log_layout("csv"), delay=1,
           clock=clock).run(FakeSignals(clock, stop_after=None))
    assert out.getvalue() == "" and len(sampler.times) == 1


def test_vm_gone_writes_the_counts_up_to_the_exit_last():
    clock = FakeClock()
    # baseline, two rows, then the VM exits with 4 and 1 counted since row 2
    sampler = ScriptedSampler(clock, [[0, 0], [1, 2], [3, 0], [4, 1]], fail_at=3)
    out = io.StringIO()
    Logger(sampler, text_output(out), log_layout("csv"), delay=1,
           clock=clock).run(FakeSignals(clock, stop_after=None))
    rows = [line.split(",")[1:] for line in out.getvalue().splitlines()[1:]]
    assert rows == [["1", "2"], ["3", "0"], ["4", "1"]]


def test_bad_layout_and_delay_are_invalid_arguments():
    with pytest.raises(InvalidArgument):
        log_layout("xml")
    with pytest.raises(InvalidArgument):
        Logger(None, None, log_layout("csv"), delay=0)


# -- LogFile ---------------------------------------------------------------------

def read(path):
    with open(path) as f:
        return f.read()


def run_into_file(path, fmt="csv", events=None, stop_after=2, deltas=(), notes=None):
    with LogFile(str(path), notify=(notes.append if notes is not None else None)) as out:
        run_logger(fmt=fmt, output=out, events=events, stop_after=stop_after, deltas=deltas)


def test_new_file_gets_the_header_and_a_restart_appends_without_one(tmp_path):
    path = tmp_path / "log.csv"
    run_into_file(path, stop_after=1)
    run_into_file(path, stop_after=1)
    lines = read(path).splitlines()
    assert lines.count("timestamp,a,b") == 1 and lines[0] == "timestamp,a,b"
    assert len(lines) == 1 + 2 + 2


def test_an_empty_existing_file_gets_the_header(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("")
    run_into_file(path, stop_after=0)
    assert read(path).splitlines()[0] == "timestamp,a,b"


def test_csv_file_with_other_columns_is_moved_aside(tmp_path, monkeypatch):
    path = tmp_path / "log.csv"
    old = "timestamp,x\n2024-01-01 00:00:00,1\n"
    path.write_text(old)
    notes = []
    run_into_file(path, stop_after=1, notes=notes)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("log.csv.")]
    assert len(aside) == 1 and aside[0].read_text() == old
    assert read(path).splitlines()[0] == "timestamp,a,b"
    assert len(notes) == 1 and str(aside[0]) in notes[0] and "\n" not in notes[0]
    # A second run with other columns the same second does not overwrite the first aside.
    path.write_text(old)
    run_into_file(path, stop_after=1, notes=notes)
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("log.csv.")]) == 2


@pytest.mark.parametrize("fmt, old", [
    ("csv", "timestamp,a,b\n2024-01-01 00:00:00,1,2\n2024-01-01 00:00:01,3"),
    ("plain", "a b \n2024-01-01 00:00:00         1         2\n2024-01-01 00:00:01   "),
    ("json", '{"time": 1, "fields": {}}\n{"time": 2, "fie'),
])
def test_a_file_ending_in_a_torn_line_is_moved_aside(tmp_path, fmt, old):
    """What a stop on a full disk leaves: the next run must not glue its
    first row onto the piece (issue 18, case 3)."""
    path = tmp_path / "log"
    path.write_text(old)
    notes = []
    run_into_file(path, fmt=fmt, stop_after=1, notes=notes)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("log.")]
    assert len(aside) == 1 and aside[0].read_text() == old
    assert len(notes) == 1 and "ends with an incomplete line" in notes[0]
    assert str(aside[0]) in notes[0]
    new = read(path)
    assert new.endswith("\n") and old not in new
    if fmt == "csv":
        assert new.splitlines()[0] == "timestamp,a,b" and len(new.splitlines()) == 3
    if fmt == "json":
        assert all(json.loads(line) for line in new.splitlines())


def test_a_complete_file_is_appended_to_without_a_note(tmp_path):
    path = tmp_path / "log"
    path.write_text('{"time": 1}\n')
    notes = []
    run_into_file(path, fmt="json", stop_after=1, notes=notes)
    assert notes == [] and read(path).startswith('{"time": 1}\n{')


def test_plain_file_gets_a_banner_on_every_start(tmp_path):
    path = tmp_path / "log.txt"
    run_into_file(path, fmt="plain", stop_after=1)
    run_into_file(path, fmt="plain", stop_after=1)
    assert read(path).splitlines().count("a b ") == 2


def test_reopen_after_rename_starts_a_new_file_with_its_header(tmp_path):
    path = tmp_path / "log.csv"

    def rotate(signals, deadline):
        os.rename(path, tmp_path / "log.csv.1")
        signals.reopen = True
        signals.clock.now = deadline
    run_into_file(path, events={3: rotate}, stop_after=5, deltas=[[0, 0]] + [[1, 1]] * 6)
    old = read(tmp_path / "log.csv.1").splitlines()
    new = read(path).splitlines()
    assert old[0] == new[0] == "timestamp,a,b"
    assert old.count("timestamp,a,b") == new.count("timestamp,a,b") == 1
    assert len(old) - 1 + len(new) - 1 == 6  # 5 due rows + the final one, none lost or doubled
    assert len(old) - 1 == 2


def test_reopen_without_rename_appends_to_the_same_file(tmp_path):
    path = tmp_path / "log.csv"

    def reload(signals, deadline):
        signals.reopen = True
    run_into_file(path, events={2: reload}, stop_after=3)
    lines = read(path).splitlines()
    # rows: wait 1, wait 3 (wait 2 was the SIGHUP, before its deadline) and the final one
    assert lines.count("timestamp,a,b") == 1 and len(lines) == 1 + 3


def test_reopen_that_fails_keeps_writing_to_the_old_file(tmp_path):
    directory = tmp_path / "d"
    directory.mkdir()
    path = directory / "log.csv"
    notes = []

    def remove_dir(signals, deadline):
        os.rename(path, tmp_path / "kept.csv")
        os.rmdir(directory)
        signals.reopen = True
    run_into_file(path, events={2: remove_dir}, stop_after=3, notes=notes)
    assert len(read(tmp_path / "kept.csv").splitlines()) == 1 + 3
    assert len(notes) == 1 and "still writing" in notes[0]


@pytest.mark.parametrize("make, reason", [
    (lambda d: str(d), "Is a directory"),
    (lambda d: str(d / "missing" / "log.csv"), "No such file or directory"),
    (lambda d: str(d / "file" / "log.csv"), "Not a directory"),
    # not writable even by root: no write bits on sysfs, no write handler in /proc
    (lambda d: "/sys/kernel/notes", "Permission denied"),
    (lambda d: "/proc/version", "Input/output error"),
    (lambda d: "/dev/full", "No space left on device"),
    (lambda d: "/proc/no-such-dir/log.csv", "No such file or directory"),
    (lambda d: str(d / "fifo"), "FIFO that no process reads"),
    (lambda d: "", "empty"),
])
def test_unwritable_paths_are_one_line_errors(tmp_path, make, reason):
    (tmp_path / "file").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    path = make(tmp_path)
    with pytest.raises((InvalidArgument, AccessDenied)) as exc:  # AccessDenied: EACCES
        LogFile(path)
    message = str(exc.value)
    assert reason in message and "\n" not in message
    if path:
        assert f"'{path}'" in message


def test_write_errors_are_one_line_errors(tmp_path, monkeypatch):
    def full(fd, data):
        raise OSError(28, "No space left on device")
    with LogFile(str(tmp_path / "log")) as out:
        monkeypatch.setattr(logmod.os, "write", full)
        with pytest.raises(Error) as exc:
            out.write("x\n")
    assert str(exc.value) == f"cannot write to log file '{tmp_path / 'log'}': No space left on device"


# -- StreamOutput and Signals ------------------------------------------------------

def test_stream_output_watches_pipes_only(tmp_path):
    assert text_output(io.StringIO()).watch_fd is None
    with open(tmp_path / "f", "w") as f:
        assert StreamOutput(OutputStream(f.fileno(), "f")).watch_fd is None
    r, w = os.pipe()
    assert StreamOutput(OutputStream(w, "pipe")).watch_fd == w
    os.close(r)
    os.close(w)


def test_signals_wake_the_wait_and_set_flags():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    with Signals(hangup="reload") as signals:
        os.kill(os.getpid(), signal.SIGHUP)
        start = time.monotonic()
        signals.wait(start + 30)
        assert signals.take_reload() and not signals.take_reload()
        os.kill(os.getpid(), signal.SIGTERM)
        signals.wait(time.monotonic() + 30)
        assert signals.stop == signal.SIGTERM
        assert time.monotonic() - start < 10
    assert {s: signal.getsignal(s) for s in before} == before


def test_sigint_stops_and_sighup_is_ignored_without_a_file():
    with Signals(hangup="ignore") as signals:
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)
        signals.wait(time.monotonic() + 30)
        assert signals.stopping and not signals.take_reload()


def test_wait_returns_at_the_deadline():
    with Signals(hangup="reload") as signals:
        deadline = time.monotonic() + 0.05
        assert signals.wait(deadline) == []
        assert time.monotonic() >= deadline
        assert not signals.stopping


def test_a_closed_pipe_reader_is_seen_while_waiting():
    r, w = os.pipe()
    try:
        with Signals() as signals:
            os.close(r)
            fired = signals.wait(time.monotonic() + 30, [(w, 0)])
            assert fired and fired[0][0] == w
    finally:
        os.close(w)
