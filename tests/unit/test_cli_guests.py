"""-p, -g and --by-guest in the command line, on a fake /proc and counting core."""

import pytest

from kvmstat.frontends import cli
from kvmstat.frontends.hints import with_flags
from kvmstat.errors import NoSuchVM
from kvmstat.host.paths import Paths

import fake_native
from fakeproc import FakeProc
from test_tracepoint_provider import make_sys, make_tracefs


@pytest.fixture
def proc(tmp_path):
    return FakeProc(tmp_path / "proc")


@pytest.fixture
def paths(tmp_path, proc):
    return Paths(proc=proc.path, sys=make_sys(tmp_path / "s"),
                 tracefs=make_tracefs(tmp_path / "t"))


@pytest.fixture
def created(monkeypatch):
    return fake_native.install(monkeypatch)


def row(name, total, delta):
    return "%-42s%10d%10d\n" % (name, total, delta)


def during_the_second(monkeypatch, action):
    """Run *action* where batch mode sleeps its one second."""
    monkeypatch.setattr("kvmstat.frontends.cli.time.sleep", lambda seconds: action())


def test_by_guest_needs_batch_or_log_mode(capsys):
    assert cli.main(["--by-guest"]) == 1
    err = capsys.readouterr().err
    assert err == "Error: --by-guest requires -1, -l or -L (in the display, press b)\n"


def test_guest_name_not_found_or_ambiguous_before_anything_is_opened(proc, paths, monkeypatch):
    monkeypatch.setattr("kvmstat.sampling.sources.sampler_for",
                        lambda *a, **k: pytest.fail("opened events for a bad -g"))
    proc.add_vm(301, "db")
    proc.add_vm(302, "db")
    proc.add_vm(303, "web")
    with pytest.raises(NoSuchVM, match=r"^no VM named 'mail'; running VMs: 'db' \(pid 301\), "
                                       r"'db' \(pid 302\), 'web' \(pid 303\)$"):
        cli.run(cli.parse_options(["-1", "-g", "mail"]), paths)
    with pytest.raises(NoSuchVM, match=r"^2 VMs are named 'db': 'db' \(pid 301\), "
                                       r"'db' \(pid 302\); choose one by pid$"):
        cli.run(cli.parse_options(["-1", "-g", "db"]), paths)
    # kvm_stat names the flag when it prints the error.
    with pytest.raises(NoSuchVM) as several:
        cli.run(cli.parse_options(["-1", "-g", "db"]), paths)
    assert with_flags(str(several.value)).endswith("; choose one with -p PID")


def test_batch_for_a_guest_by_name(proc, paths, created, monkeypatch, capsys):
    proc.add_vm(303, "web", tids=[303, 304])
    proc.add_vm(400, "db")
    during_the_second(monkeypatch, lambda: created[0].counts.update({(304, "kvm_pio"): 6}))
    assert cli.run(cli.parse_options(["-1", "-g", "web", "-f", "kvm_pio"]), paths) == 0
    assert sorted(t for t, _ in created[0].slots.values()) == [303, 304]
    assert capsys.readouterr().out == row("kvm_pio", 6, 6)


def test_batch_by_guest(proc, paths, created, monkeypatch, capsys):
    proc.add_vm(303, "web")
    proc.add_vm(400, None)

    def work():
        created[0].counts.update({(303, "kvm_pio"): 6, (400, "kvm_pio"): 1})
    during_the_second(monkeypatch, work)
    assert cli.run(cli.parse_options(["-1", "--by-guest", "-f", "kvm_pio"]), paths) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out == "(pid 303) web\n" + row("kvm_pio", 6, 6) + "\n(pid 400)\n" + row("kvm_pio", 1, 1)


def test_batch_by_guest_without_any_vm(paths, created, monkeypatch, capsys):
    during_the_second(monkeypatch, lambda: None)
    assert cli.run(cli.parse_options(["-1", "--by-guest"]), paths) == 0
    out, err = capsys.readouterr()
    assert out == "" and err == "kvm_stat: no VM is running\n"


@pytest.mark.parametrize("by_guest", [False, True])
def test_batch_for_a_pid_that_exits_during_the_second(proc, paths, created, monkeypatch,
                                                       capsys, by_guest):
    proc.add_vm(303, "web")

    def work_then_exit():
        created[0].counts[(303, "kvm_pio")] = 9
        proc.remove(303)
    during_the_second(monkeypatch, work_then_exit)
    argv = ["-1", "-p", "303", "-f", "kvm_pio"] + (["--by-guest"] if by_guest else [])
    assert cli.run(cli.parse_options(argv), paths) == 0
    out, err = capsys.readouterr()
    rows = row("kvm_pio", 9, 9)
    assert out == ("(pid 303) web\n" + rows if by_guest else rows)
    assert err == "kvm_stat: VM process 303 has exited: the counts end at its exit\n"
