"""``-d``, ``-i`` and the lockdown note through the library entry points and the CLI."""

import os

import pytest

import kvmstat
from kvmstat.frontends import cli
from kvmstat.errors import NotAvailable
from kvmstat.host.paths import Paths

from fake_debugfs import HOST, lock_down, make_debugfs, set_value


@pytest.fixture
def no_sleep(monkeypatch):
    monkeypatch.setattr(cli.time, "sleep", lambda seconds: None)


def run_cli(argv, capsys, paths):
    status = cli.main(argv, paths=paths)
    out, err = capsys.readouterr()
    return status, out, err


def rows(out):
    return {line[:42].rstrip(): (int(line[42:52]), int(line[52:62])) for line in out.splitlines()}


def make_proc(root, pids):
    for pid in pids:
        (root / str(pid) / "fd").mkdir(parents=True)
        os.symlink("anon_inode:kvm-vm", root / str(pid) / "fd" / "11")
        (root / str(pid) / "cmdline").write_bytes(b"qemu\0")
    return str(root)


def test_sampler_leaves_out_denied_files_and_notes_once(tmp_path, monkeypatch):
    debugfs = make_debugfs(tmp_path)
    lock_down(monkeypatch, ["exits", "halt_wait_ns"])
    notes = []
    paths = Paths(debugfs=debugfs)
    assert kvmstat.list_fields(["debugfs"], paths) == ["max_mmu_rmap_size", "pages_4k"]
    with kvmstat.open_sampler(["debugfs"], paths=paths, notify=notes.append) as sampler:
        sampler.sample()
        sample = sampler.sample()
    assert set(sample.values) == {"max_mmu_rmap_size", "pages_4k"}
    assert len(notes) == 1
    assert "exits, halt_wait_ns" in notes[0] and "lockdown" in notes[0]


def test_field_filter_applies(tmp_path):
    debugfs = make_debugfs(tmp_path)
    with kvmstat.open_sampler(["debugfs"], fields="pages|exits", paths=Paths(debugfs=debugfs)) as s:
        assert s.fields == ["exits", "pages_4k"]


def test_nothing_readable_fails(tmp_path, monkeypatch):
    debugfs = make_debugfs(tmp_path)
    lock_down(monkeypatch, HOST)
    with pytest.raises(NotAvailable, match="none of the 5"):
        kvmstat.open_sampler(["debugfs"], paths=Paths(debugfs=debugfs))


def test_cli_batch_prints_only_readable_fields(tmp_path, monkeypatch, capsys, no_sleep):
    debugfs = make_debugfs(tmp_path)
    lock_down(monkeypatch, ["exits", "max_mmu_rmap_size"])
    paths = Paths(debugfs=debugfs)
    status, out, err = run_cli(["-1", "-d"], capsys, paths)
    assert status == 0
    assert rows(out) == {"halt_wait_ns": (0, 0), "pages_4k": (10, 0)}
    [line] = err.splitlines()
    assert line.startswith("kvm_stat: debugfs: 2 of 5 files")
    assert "exits, max_mmu_rmap_size" in line and "Operation not permitted" in line


def test_cli_batch_nothing_readable(tmp_path, monkeypatch, capsys, no_sleep):
    debugfs = make_debugfs(tmp_path)
    lock_down(monkeypatch, HOST)
    paths = Paths(debugfs=debugfs)
    status, out, err = run_cli(["-1", "-d"], capsys, paths)
    assert status == 1
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith("Error: debugfs: none of the 5 KVM statistics files")
    assert "lockdown" in line and "(-t)" in line and "(--binstats)" in line


def test_cli_include_past(tmp_path, monkeypatch, capsys):
    debugfs = make_debugfs(tmp_path)
    paths = Paths(debugfs=debugfs)
    # The second sample sees 7 more exits.
    monkeypatch.setattr(cli.time, "sleep", lambda s: set_value(debugfs, "exits", "107\n"))
    status, out, _ = run_cli(["-1", "-d", "-i"], capsys, paths)
    assert status == 0
    assert rows(out)["exits"] == (107, 7)
    set_value(debugfs, "exits", "100\n")
    status, out, _ = run_cli(["-1", "-d"], capsys, paths)
    assert rows(out)["exits"] == (7, 7)


def test_cli_pid_selects_its_directories(tmp_path, monkeypatch, capsys, no_sleep):
    debugfs = make_debugfs(tmp_path / "d", vms={
        "8-3": {"pages_4k": "2\n"}, "8-4": {"pages_4k": "3\n"}, "128-11": {"pages_4k": "50\n"}})
    proc = make_proc(tmp_path / "proc", [8, 128])
    paths = Paths(proc=proc, debugfs=debugfs)
    status, out, _ = run_cli(["-1", "-d", "-p", "8", "-f", "pages"], capsys, paths)
    assert status == 0
    assert rows(out) == {"pages_4k": (5, 0)}


def test_cli_no_kvm(tmp_path, monkeypatch, capsys):
    paths = Paths(debugfs=str(tmp_path))
    status, out, err = run_cli(["-1", "-d"], capsys, paths)
    assert status == 1 and out == ""
    assert err.startswith("Error: no KVM: ") and err.count("\n") == 1
    assert "modprobe" in err
