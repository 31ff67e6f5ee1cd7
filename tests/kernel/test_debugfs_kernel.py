"""The debugfs provider on this host's real debugfs, with live test guests.

Under kernel lockdown most ``<debugfs>/kvm`` files fail with EPERM; the
probe must agree file by file with what the kernel allows, and ``-d`` must
show exactly the readable ones (never a refused one as 0).
"""

import errno
import os
import stat

import pytest

import kvmstat
from kvmstat.errors import VMGone
from kvmstat.host.paths import Paths
from kvmstat.providers.debugfs import FIELD_KINDS, list_vm_directories, probe_debugfs, stat_kind

from helpers.commands import kvm_stat


@pytest.fixture(scope="module")
def debugfs():
    return Paths().find_debugfs()


def kernel_verdicts(directory):
    """name -> "ok" or "EPERM" for every regular file, by opening it directly."""
    verdicts = {}
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if not stat.S_ISREG(os.stat(path).st_mode):
            continue
        try:
            with open(path, "rb") as f:
                f.read()
            verdicts[name] = "ok"
        except PermissionError as exc:
            assert exc.errno == errno.EPERM, (name, exc)
            verdicts[name] = "EPERM"
    return verdicts


def readable_fields(directory, verdicts):
    """The readable files that are single values (not histograms or tables)."""
    fields = []
    for name, verdict in verdicts.items():
        read_only = not os.stat(os.path.join(directory, name)).st_mode & 0o222
        if verdict == "ok" and stat_kind(name, read_only) in FIELD_KINDS:
            fields.append(name)
    return sorted(fields)


def test_probe_agrees_with_the_kernel(debugfs):
    kvm_dir = os.path.join(debugfs, "kvm")
    verdicts = kernel_verdicts(kvm_dir)
    probe = probe_debugfs(debugfs)
    assert sorted(probe.denied) == sorted(n for n, v in verdicts.items() if v == "EPERM")
    assert probe.fields == readable_fields(kvm_dir, verdicts)
    assert probe.unreadable == {}


def test_batch_prints_exactly_the_readable_fields(debugfs):
    probe = probe_debugfs(debugfs)
    result = kvm_stat(["-1", "-d"])
    assert result.returncode == 0, result.stderr
    names = [line[:42].rstrip() for line in result.stdout.splitlines()]
    assert names == probe.fields
    assert not set(names) & set(probe.denied)
    notes = result.stderr.splitlines()
    if probe.denied:
        assert len(notes) == 1, result.stderr
        assert "lockdown" in notes[0] and "(-t)" in notes[0] and "(--binstats)" in notes[0]
        for name in probe.denied:
            assert name in notes[0]
    else:
        assert notes == []


def test_live_guest_has_its_own_directory(debugfs, guest_process):
    guest = guest_process("pio", vcpus=2)
    other = guest_process("pio")
    guest.run(10)
    [vm_fd] = kvmstat.find_vm(guest.pid).vm_fds
    kvm_dir = os.path.join(debugfs, "kvm")
    assert list_vm_directories(kvm_dir, guest.pid) == {f"{guest.pid}-{vm_fd}": guest.pid}
    assert sorted(os.listdir(os.path.join(kvm_dir, f"{guest.pid}-{vm_fd}")))  # has vcpu dirs
    probe = probe_debugfs(debugfs)

    with kvmstat.open_sampler(["debugfs"], pid=guest.pid, by_vm=True) as sampler:
        sampler.sample()
        guest.run(10)
        sample = sampler.sample()
    assert sorted(sample.values) == probe.fields
    assert set(sample.by_vm) == {guest.pid}
    assert all(isinstance(total, int) for total, _ in sample.values.values())

    with kvmstat.open_sampler(["debugfs"], by_vm=True) as sampler:
        sample = sampler.sample()
    assert {guest.pid, other.pid} <= set(sample.by_vm)
    assert sorted(sample.by_vm[guest.pid]) == probe.fields


def test_exit_counts_when_readable(debugfs, guest_process):
    probe = probe_debugfs(debugfs)
    if "io_exits" not in probe.fields:
        pytest.skip("io_exits is unreadable on this host (kernel lockdown): "
                    "exact debugfs counts cannot be checked here")
    guest = guest_process("pio")
    with kvmstat.open_sampler(["debugfs"], fields="io_exits", pid=guest.pid) as sampler:
        sampler.sample()
        guest.run(321)
        sample = sampler.sample()
    assert sample.values["io_exits"] == (321, 321)


def test_cli_pid_mode_on_a_live_guest(debugfs, guest_process):
    guest = guest_process("pio")
    probe = probe_debugfs(debugfs)
    result = kvm_stat(["-1", "-d", "-p", str(guest.pid)])
    assert result.returncode == 0, result.stderr
    assert [line[:42].rstrip() for line in result.stdout.splitlines()] == probe.fields
    assert "Traceback" not in result.stderr


def test_guest_exit_is_reported(debugfs, guest_process):
    guest = guest_process("pio")
    with kvmstat.open_sampler(["debugfs"], pid=guest.pid) as sampler:
        sampler.sample()
        guest.close()
        assert list(sampler.sample().ended) == [guest.pid] and sampler.done
        with pytest.raises(VMGone):
            sampler.sample()
