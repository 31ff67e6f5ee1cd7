"""Tests for kvmstat.host.paths: mount lookup by filesystem type, overrides, mounting."""

from __future__ import annotations

import os

import pytest

from kvmstat.errors import AccessDenied, InvalidArgument, NotAvailable
from kvmstat.host.paths import Paths, find_mount, find_mounts


def write_mounts(tmp_path, lines):
    p = tmp_path / "mounts"
    p.write_text("".join(line + "\n" for line in lines))
    return str(p)


def test_find_mount_uses_type_column(tmp_path):
    mounts = write_mounts(tmp_path, [
        "sysfs /sys sysfs rw 0 0",
        "nodev /sys/kernel/tracing tracefs rw 0 0",
        "none /sys/kernel/debug debugfs rw 0 0",
    ])
    assert find_mount("tracefs", mounts) == "/sys/kernel/tracing"
    assert find_mount("debugfs", mounts) == "/sys/kernel/debug"
    assert find_mount("cgroup2", mounts) is None


def test_fake_debugfs_source_is_ignored(tmp_path):
    mounts = write_mounts(tmp_path, [
        "debugfs /home/eve/debug fuse.sshfs rw 0 0",
        "debugfs /tmp/fake tmpfs rw 0 0",
        "tracefs /tmp/fake2 tmpfs rw 0 0",
    ])
    assert find_mount("debugfs", mounts) is None
    assert find_mount("tracefs", mounts) is None
    assert find_mount("tmpfs", mounts) == "/tmp/fake"


def test_first_match_wins_and_all_listed(tmp_path):
    mounts = write_mounts(tmp_path, [
        "x /a debugfs rw 0 0",
        "y /b debugfs rw 0 0",
    ])
    assert find_mount("debugfs", mounts) == "/a"
    assert find_mounts("debugfs", mounts) == ["/a", "/b"]


def test_octal_escapes_decoded(tmp_path):
    mounts = write_mounts(tmp_path, [
        r"none /mnt/my\040debug\011dir debugfs rw 0 0",
        r"none /mnt/back\134slash tracefs rw 0 0",
    ])
    assert find_mount("debugfs", mounts) == "/mnt/my debug\tdir"
    assert find_mount("tracefs", mounts) == "/mnt/back\\slash"


def test_missing_mounts_file(tmp_path):
    assert find_mount("tracefs", str(tmp_path / "nope")) is None


def test_short_and_blank_lines_ignored(tmp_path):
    mounts = write_mounts(tmp_path, ["", "garbage", "a b", "none /t tracefs rw 0 0"])
    assert find_mount("tracefs", mounts) == "/t"


def test_default_mounts_file_under_proc(tmp_path):
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "mounts").write_text("none /x/tracing tracefs rw 0 0\n")
    p = Paths(proc=str(tmp_path))
    assert p.mounts() == str(tmp_path / "self" / "mounts")
    assert p.find_tracefs(mount=False) == "/x/tracing"


def test_tracefs_prefers_standard_place(tmp_path):
    mounts = write_mounts(tmp_path, [
        "none /elsewhere tracefs rw 0 0",
        f"none {tmp_path}/sys/kernel/tracing tracefs rw 0 0",
    ])
    p = Paths(sys=str(tmp_path / "sys"), mounts_file=mounts)
    assert p.find_tracefs(mount=False) == f"{tmp_path}/sys/kernel/tracing"


def test_tracefs_falls_back_to_debugfs_tracing(tmp_path):
    debug = tmp_path / "dbg"
    (debug / "tracing" / "events").mkdir(parents=True)
    mounts = write_mounts(tmp_path, [f"none {debug} debugfs rw 0 0"])
    p = Paths(sys=str(tmp_path / "sys"), mounts_file=mounts)
    assert p.find_tracefs(mount=False) == str(debug / "tracing")


def test_debugfs_tracing_without_events_not_used(tmp_path, monkeypatch):
    debug = tmp_path / "dbg"
    (debug / "tracing").mkdir(parents=True)
    mounts = write_mounts(tmp_path, [f"none {debug} debugfs rw 0 0"])
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    p = Paths(sys=str(tmp_path / "sys"), mounts_file=mounts)
    with pytest.raises(NotAvailable):
        p.find_tracefs()


def test_overrides_win(tmp_path):
    mounts = write_mounts(tmp_path, ["none /t tracefs rw 0 0", "none /d debugfs rw 0 0"])
    p = Paths(tracefs=str(tmp_path), debugfs=str(tmp_path), mounts_file=mounts)
    assert p.find_tracefs() == str(tmp_path)
    assert p.find_debugfs() == str(tmp_path)


def test_override_must_exist(tmp_path):
    p = Paths(tracefs=str(tmp_path / "nope"))
    with pytest.raises(InvalidArgument) as e:
        p.find_tracefs()
    assert "nope" in str(e.value)


def test_not_mounted_message_non_root(tmp_path, monkeypatch):
    mounts = write_mounts(tmp_path, ["sysfs /sys sysfs rw 0 0"])
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    called = []
    p = Paths(mounts_file=mounts, mount=lambda *a: called.append(a))
    with pytest.raises(NotAvailable) as e:
        p.find_tracefs()
    assert str(e.value) == ("tracefs is not mounted: run "
                            "'mount -t tracefs tracefs /sys/kernel/tracing' as root")
    with pytest.raises(NotAvailable) as e:
        p.find_debugfs()
    assert str(e.value) == ("debugfs is not mounted: run "
                            "'mount -t debugfs debugfs /sys/kernel/debug' as root")
    assert called == []


def test_no_mount_when_not_asked(tmp_path, monkeypatch):
    mounts = write_mounts(tmp_path, [])
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    called = []
    with pytest.raises(NotAvailable):
        Paths(mounts_file=mounts, mount=lambda *a: called.append(a)).find_tracefs(mount=False)
    assert called == []


def test_root_mounts_and_notifies(tmp_path, monkeypatch):
    mounts = write_mounts(tmp_path, [])
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    called = []
    notes = []
    p = Paths(mounts_file=mounts, mount=lambda *a: called.append(a))
    assert p.find_tracefs(notify=notes.append) == "/sys/kernel/tracing"
    assert p.find_debugfs(notify=notes.append) == "/sys/kernel/debug"
    assert called == [("tracefs", "/sys/kernel/tracing", "tracefs"),
                      ("debugfs", "/sys/kernel/debug", "debugfs")]
    assert notes == ["mounted tracefs at /sys/kernel/tracing",
                     "mounted debugfs at /sys/kernel/debug"]


@pytest.mark.parametrize("err, exc", [(1, AccessDenied), (13, AccessDenied), (2, NotAvailable),
                                      (19, NotAvailable)])
def test_mount_failure(tmp_path, monkeypatch, err, exc):
    mounts = write_mounts(tmp_path, [])
    monkeypatch.setattr(os, "geteuid", lambda: 0)

    def fail(source, target, fstype):
        raise OSError(err, os.strerror(err), target)

    with pytest.raises(exc) as e:
        Paths(mounts_file=mounts, mount=fail).find_tracefs()
    msg = str(e.value)
    assert "\n" not in msg
    assert "mount -t tracefs tracefs /sys/kernel/tracing" in msg
    assert os.strerror(err) in msg


def test_the_default_mount_reports_errno(tmp_path):
    # Mounting onto a missing directory fails (ENOENT, or EPERM without root)
    # and must surface as OSError, never crash.
    with pytest.raises(OSError):
        Paths().mount("tracefs", str(tmp_path / "missing"), "tracefs")
