"""Log-mode options through the command line: every bad -s, -c/-z/--json
combination and -L path is one line before anything is opened; -L is
opened before the events; a VM that exits ends log mode with status 0."""

import itertools
import json
import os

import pytest
from hypothesis import given, strategies as st

from kvmstat.frontends import cli
from kvmstat.providers.base import Provider, Reading
from kvmstat.sampling.sampler import Sampler


@pytest.fixture
def nothing_opened(monkeypatch):
    """Fails the test if kvm_stat gets as far as opening events."""
    def no_open(*args, **kwargs):
        raise AssertionError("events were opened despite a bad option")
    monkeypatch.setattr("kvmstat.sampling.sources.sampler_for", no_open)


def one_line_error(argv, capsys):
    status = cli.main(argv)
    captured = capsys.readouterr()
    assert status == 1, captured
    assert captured.out == ""
    assert captured.err.startswith("Error: ") and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err
    return captured.err


# -- -c / -z / --json / -1 / -l / -L: every combination -------------------------

FLAGS = ["-c", "-z", "--json", "-1", "-l", "-L"]


def expected_error(flags):
    """The documented rule each combination breaks first (None: valid)."""
    log = "-l" in flags or "-L" in flags
    if "-c" in flags and not log:
        return "-c/--csv requires -l or -L"
    if "-z" in flags and not log:
        return "-z/--skip-zero-records requires -l or -L"
    if "--json" in flags and not (log or "-1" in flags):
        return "--json requires -1, -l or -L"
    if "--json" in flags and "-c" in flags:
        return "--json and -c/--csv exclude each other"
    if "-1" in flags and log:
        return "-1 and -l/-L exclude each other"
    if "-l" in flags and "-L" in flags:
        return "-l and -L exclude each other"
    return None


COMBINATIONS = [c for n in range(1, len(FLAGS) + 1) for c in itertools.combinations(FLAGS, n)]


@pytest.mark.parametrize("flags", COMBINATIONS, ids=" ".join)
def test_every_combination_of_log_flags(flags, tmp_path, capsys, nothing_opened):
    log_file = tmp_path / "log.csv"
    argv = []
    for flag in flags:
        argv += [flag, str(log_file)] if flag == "-L" else [flag]
    message = expected_error(flags)
    if message is None:
        opts = cli.parse_options(argv)
        assert opts.csv == ("-c" in flags) and opts.skip_zero == ("-z" in flags)
        assert opts.json == ("--json" in flags)
        assert opts.mode == ("batch" if "-1" in flags else "log")
    else:
        assert message in one_line_error(argv, capsys)
        assert not log_file.exists()


# -- -s ----------------------------------------------------------------------------

@pytest.mark.parametrize("delay", ["0", "0.09", "25.51", "26", "-1", "-0.5", "nan", "NaN",
                                   "inf", "-inf", "Infinity", "1e400", "", " ", "fast",
                                   "0x10", "1,5", "3s", "None"])
def test_bad_delays_are_one_line_errors_and_nothing_is_created(delay, tmp_path, capsys,
                                                               nothing_opened):
    log_file = tmp_path / "log.csv"
    message = one_line_error(["-L", str(log_file), "-c", "-s", delay], capsys)
    assert "delay" in message or "not a number" in message
    assert not log_file.exists()


@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=10)))
def test_any_delay_text_parses_in_range_or_is_rejected(text):
    try:
        opts = cli.parse_options(["-l", "-s", text])
    except cli.InvalidArgument as exc:
        assert "\n" not in str(exc)
        return
    except SystemExit:  # argparse: a value that looks like an option ("-x")
        assert text.startswith("-")
        return
    assert 0.1 <= opts.delay <= 25.5


# -- -L paths ------------------------------------------------------------------------

@pytest.mark.parametrize("make, reason", [
    (lambda d: str(d), "Is a directory"),
    (lambda d: str(d / "no" / "such" / "dir" / "log.csv"), "No such file or directory"),
    (lambda d: str(d / "file" / "log.csv"), "Not a directory"),
    (lambda d: "/sys/kernel/notes", "Permission denied"),
    (lambda d: "/proc/version", "Input/output error"),
    (lambda d: str(d / "fifo"), "FIFO that no process reads"),
    (lambda d: "", "needs a file name"),
    (lambda d: "   ", "needs a file name"),
])
@pytest.mark.parametrize("extra", [["-c"], ["-c", "-z"], ["--json"], []])
def test_unwritable_log_paths_fail_before_anything_is_opened(make, reason, extra, tmp_path,
                                                             capsys, nothing_opened):
    (tmp_path / "file").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    assert reason in one_line_error(["-L", make(tmp_path), *extra], capsys)


def test_log_file_is_opened_before_the_events(tmp_path, capsys, monkeypatch):
    log_file = tmp_path / "log.csv"
    seen = []

    def record(*args, **kwargs):
        seen.append(log_file.exists())
        raise cli.InvalidArgument("stop here")
    monkeypatch.setattr("kvmstat.sampling.sources.sampler_for", record)
    assert "stop here" in one_line_error(["-L", str(log_file), "-c"], capsys)
    assert seen == [True]


# -- a watched VM that exits -----------------------------------------------------------

class VanishingProvider(Provider):
    """Counts 3 per read; the VM is gone at the *gone_at*-th refresh."""

    name = "vanishing"

    def __init__(self, gone_at):
        self.gone_at = gone_at
        self.refreshes = 0
        self.total = 0
        self.closed = False

    @property
    def fields(self):
        return ["kvm_pio"]

    @property
    def pid(self):
        return 4242

    def refresh(self):
        self.refreshes += 1

    def snapshot(self, *, by_vm=False, histograms=False, by_vcpu=False):
        self.total += 3
        ended = frozenset({4242}) if self.refreshes == self.gone_at else frozenset()
        return Reading({"kvm_pio": self.total}, ended=ended)

    def reset(self):
        self.total = 0

    def close(self):
        self.closed = True


@pytest.mark.parametrize("fmt", [["-c"], ["--json"], []])
def test_log_mode_stops_with_status_0_when_the_vm_exits(fmt, capsys, monkeypatch):
    provider = VanishingProvider(gone_at=4)
    monkeypatch.setattr("kvmstat.sampling.sources.sampler_for",
                        lambda *a, **k: Sampler([provider]))
    monkeypatch.setattr(cli, "_resolve_vm", lambda opts, paths: None)
    # Do not fork the test process: the ordinary close is fast for this fake.
    monkeypatch.setattr("kvmstat.sampling.teardown.close_detached", lambda resource: resource.close())
    status = cli.main(["-l", "-s", "0.1", "-p", "4242", *fmt])
    out, err = capsys.readouterr()
    assert status == 0
    assert err == "kvm_stat: VM process 4242 has exited\n"
    assert provider.closed
    lines = out.splitlines()
    # The rows of refreshes 2 and 3 (1 was the baseline), then a last row with
    # what the VM did between refresh 3 and its exit (the sample that found it).
    if fmt == ["--json"]:
        assert [json.loads(line)["fields"]["kvm_pio"]["delta"] for line in lines] == [3, 3, 3]
    else:
        # header/banner first
        assert len(lines) == 4 and all(line.endswith(" 3") or line.endswith(",3")
                                       for line in lines[1:])
