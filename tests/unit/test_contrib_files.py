"""The shipped systemd unit and logrotate snippet (docs/design.md §6.9): their command
lines are kvm_stat's own, parsed by kvm_stat's parser, and the tools that
read them accept them.  (tests/kernel/test_service_files.py runs them.)"""

import configparser
import os
import shlex
import shutil
import subprocess

import pytest

from kvmstat.frontends import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UNIT = os.path.join(ROOT, "contrib", "systemd", "kvm_stat.service")
LOGROTATE = os.path.join(ROOT, "contrib", "logrotate", "kvm_stat")


def read_unit(path=UNIT):
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # systemd keys are case-sensitive
    with open(path) as f:
        parser.read_file(f)
    return parser


def exec_start_argv():
    return shlex.split(read_unit()["Service"]["ExecStart"])


def test_unit_is_a_simple_service_reloaded_by_sighup_and_restarted_on_failure():
    service = read_unit()["Service"]
    assert service["Type"] == "simple"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == "on-failure"


def test_unit_command_line_parses_as_csv_log_every_10s_with_debugfs_and_tracepoints():
    argv = exec_start_argv()
    assert os.path.isabs(argv[0]) and os.path.basename(argv[0]) == "kvm_stat"
    opts = cli.parse_options(argv[1:])
    assert opts.mode == "log"
    assert opts.csv and opts.skip_zero and not opts.json
    assert opts.delay == 10
    assert sorted(opts.providers) == ["debugfs", "tracepoints"]
    assert opts.log_file == "/var/log/kvm_stat.csv"


def test_logrotate_snippet_rotates_the_units_file_and_reloads_the_unit():
    with open(LOGROTATE) as f:
        text = f.read()
    log_file = cli.parse_options(exec_start_argv()[1:]).log_file
    assert f"\n{log_file} {{\n" in text
    assert "systemctl reload kvm_stat.service" in text
    assert "copytruncate" not in text  # kvm_stat reopens the file: no copy needed


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_unit(tmp_path):
    # systemd-analyze checks that ExecStart exists: point it at this Python.
    with open(UNIT) as f:
        text = f.read()
    argv0 = exec_start_argv()[0]
    unit = tmp_path / "kvm_stat.service"
    unit.write_text(text.replace(f"ExecStart={argv0} ", f"ExecStart={shutil.which('env')} "))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@pytest.mark.skipif(shutil.which("logrotate") is None, reason="logrotate is not installed")
def test_logrotate_accepts_the_snippet(tmp_path):
    with open(LOGROTATE) as f:
        text = f.read()
    config = tmp_path / "kvm_stat"
    config.write_text(text.replace("/var/log/kvm_stat.csv", str(tmp_path / "kvm_stat.csv")))
    result = subprocess.run(["logrotate", "--debug", "--state", str(tmp_path / "state"),
                             str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr.lower()
