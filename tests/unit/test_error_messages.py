"""One-line errors with cause and fix: no KVM, unreadable tracefs, other users' VMs."""

import os

import pytest

from kvmstat.frontends import cli
from kvmstat.errors import AccessDenied
from kvmstat.host.paths import Paths
from kvmstat.host.vms import find_vm


def run_cli(argv, paths, monkeypatch, capsys):
    status = cli.main(argv, paths=paths)
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("Error: ")
    return status, err


def test_no_kvm_tracepoints(tmp_path, monkeypatch, capsys):
    (tmp_path / "events").mkdir()
    status, err = run_cli(["-1"], Paths(tracefs=str(tmp_path)), monkeypatch, capsys)
    assert status == 1
    assert err == (f"Error: no kvm tracepoints under {tmp_path}/events/kvm: "
                   "is the kvm module loaded?\n")


def test_unreadable_tracefs_names_the_fix(tmp_path, monkeypatch, capsys):
    (tmp_path / "events" / "kvm").mkdir(parents=True)
    proc = tmp_path / "proc"
    real = os.listdir

    def listdir(path):
        if str(path).endswith("events/kvm"):
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(os, "listdir", listdir)
    status, err = run_cli(["-f", "help"], Paths(proc=str(proc), tracefs=str(tmp_path)),
                          monkeypatch, capsys)
    assert status == 1
    assert err.startswith(f"Error: reading {tmp_path}/events/kvm denied (Permission denied): "
                          "run kvm_stat as root")
    assert "perf_event_paranoid is " in err


def test_other_users_process(tmp_path, monkeypatch):
    (tmp_path / "77" / "fd").mkdir(parents=True)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(AccessDenied) as e:
        find_vm(77, str(tmp_path))
    assert str(e.value) == "cannot inspect process 77 (Permission denied): run kvm_stat as root"
