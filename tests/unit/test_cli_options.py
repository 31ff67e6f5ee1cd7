"""Option parsing and validation (docs/design.md §6.3): before anything is opened."""

import math

import pytest
from hypothesis import given, strategies as st

from kvmstat.frontends import cli
from kvmstat.errors import InvalidArgument


def error_of(argv, capsys):
    status = cli.main(argv)
    err = capsys.readouterr().err
    return status, err


@pytest.mark.parametrize("argv, message", [
    (["-c", "-1"], "-c/--csv requires -l or -L"),
    (["-c"], "-c/--csv requires -l or -L"),
    (["-z"], "-z/--skip-zero-records requires -l or -L"),
    (["-s", "0"], "between 0.1 and 25.5"),
    (["-s", "25.6"], "between 0.1 and 25.5"),
    (["--set-delay=-1"], "between 0.1 and 25.5"),
    (["-s", "nan"], "finite"),
    (["-s", "inf"], "finite"),
    (["-s", "fast"], "not a number"),
    (["-f", "("], "Not a valid regular expression"),
    (["-p", "abc"], "not a process id"),
    (["-p", "0"], "not a process id"),
    (["-p", "1", "-g", "x"], "exclude each other"),
    (["--json"], "--json requires -1, -l or -L"),
    (["-1", "-d", "--binstats"], "choose one"),
    (["-1", "-l"], "exclude each other"),
])
def test_bad_options_are_one_line_errors(argv, message, capsys):
    status, err = error_of(argv, capsys)
    assert status == 1
    assert err.startswith("Error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["--no-such-option"], "Error: unrecognized arguments: --no-such-option (see kvm_stat --help)"),
    (["-s"], "Error: argument -s/--set-delay: expected one argument (see kvm_stat --help)"),
    (["--engine", "x"], "Error: argument --engine: invalid choice: 'x'"),
])
def test_argparse_usage_errors_are_one_line_and_exit_2(argv, message, capsys):
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(message)
    assert err.count("\n") == 1 and "usage:" not in err


def test_help_works_anywhere(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--once", "--csv", "--debugfs", "--fields", "--guest", "--log-to-file",
                   "--pid", "--set-delay", "--skip-zero-records", "--json", "--by-guest",
                   "--serve", "--binstats", "--check", "--engine"):
        assert option in out


@pytest.mark.parametrize("argv, mode", [
    ([], "tui"), (["-1"], "batch"), (["--once"], "batch"), (["--batch"], "batch"),
    (["-l"], "log"), (["-L", "/tmp/x"], "log"), (["--check"], "check"),
    (["-f", "help"], "fields-help"), (["--serve", "9000"], "serve"),
])
def test_modes(argv, mode):
    assert cli.parse_options(argv).mode == mode


def test_provider_choice():
    assert cli.parse_options([]).providers == ["tracepoints"]
    assert cli.parse_options(["-d"]).providers == ["debugfs"]
    assert cli.parse_options(["-d", "-t"]).providers == ["tracepoints", "debugfs"]
    assert cli.parse_options(["--binstats"]).providers == ["binstats"]


def test_missing_pid_fails_before_opening(capsys, monkeypatch):
    def no_open(*args, **kwargs):
        raise AssertionError("opened events despite a bad pid")
    monkeypatch.setattr("kvmstat.sampling.sources.sampler_for", no_open)
    status, err = error_of(["-1", "-p", "999999999"], capsys)
    assert status == 1 and "no process with pid 999999999" in err


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_delay_accepts_exactly_the_documented_range(value):
    text = repr(value)
    if math.isfinite(value) and 0.1 <= value <= 25.5:
        assert cli.parse_delay(text) == value
    else:
        with pytest.raises(InvalidArgument):
            cli.parse_delay(text)


@given(st.text(max_size=12))
def test_delay_never_crashes_on_text(text):
    try:
        value = cli.parse_delay(text)
    except InvalidArgument:
        return
    assert 0.1 <= value <= 25.5


@given(st.text(max_size=12))
def test_pid_never_crashes_on_text(text):
    try:
        value = cli.parse_pid(text)
    except InvalidArgument:
        return
    assert value > 0
