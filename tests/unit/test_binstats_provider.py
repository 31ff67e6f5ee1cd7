"""The binary-stats provider on a fake host.

The fake host is a /proc tree whose ``fd`` links carry KVM's link names,
statistics "descriptors" that are real files in the KVM_GET_STATS_FD format
(so ``os.pread`` reads them), and pidfd_open/pidfd_getfd replaced: a pidfd is
a pipe that becomes readable when the fake VM process exits, and borrowing
a descriptor opens its file.
"""

from __future__ import annotations

import errno
import json
import os
import time

import pytest

import kvmstat
from kvmstat.frontends import cli
from kvmstat.host import pidfd
from kvmstat.errors import AccessDenied, NoSuchVM, NotAvailable
from kvmstat.host.paths import Paths
from kvmstat.providers import binstats as binstats_module
from kvmstat.providers.base import SINCE_CREATION, SINCE_START, HistogramValues
from kvmstat.host.vms import VM
from kvmstat.providers.binstats import (BinstatsProvider, NoStatsDescriptors, StatsCoverage,
                                        alternative_providers, coverage_notes,
                                        binstats_fields, stats_fd_refs)
from kvmstat.providers.binstats_format import (TYPE_CUMULATIVE, TYPE_INSTANT, TYPE_LOG_HIST,
                                               TYPE_PEAK, StatDesc, StatsFormatError,
                                               encode_stats)

VM_DESCS = [
    StatDesc("remote_tlb_flush", TYPE_CUMULATIVE, 0, 1, 0),
    StatDesc("pages_4k", TYPE_INSTANT, 0, 1, 8),
    StatDesc("max_mmu_rmap_size", TYPE_PEAK, 0, 1, 16),
]
VCPU_DESCS = [
    StatDesc("exits", TYPE_CUMULATIVE, 0, 1, 0),
    StatDesc("io_exits", TYPE_CUMULATIVE, 0, 1, 8),
    StatDesc("blocking", TYPE_INSTANT | 4 << 4, 0, 1, 16),
    StatDesc("halt_wait_hist", TYPE_LOG_HIST | 2 << 4, -9, 4, 24),
    StatDesc("halt_poll_max", TYPE_PEAK, 0, 1, 56),
]
VM_LINK = "anon_inode:kvm-vm-stats"
ALL_FIELDS = sorted(d.name for d in VM_DESCS + VCPU_DESCS if d.size == 1)


class FakeHost:
    """A /proc tree with VM processes holding statistics descriptors."""

    def __init__(self, tmp_path, monkeypatch):
        self.root = tmp_path
        self.proc = str(tmp_path / "proc")
        os.makedirs(f"{self.proc}/self/fd")
        self.pidfds = {}       # pidfd (read end) -> pid
        self.exit_pipes = {}   # pid -> [write ends]
        self.getfd_error = None
        monkeypatch.setattr(pidfd, "pidfd_open", self._pidfd_open)
        monkeypatch.setattr(pidfd, "pidfd_getfd", self._pidfd_getfd)

    # -- building the host ------------------------------------------------------
    def add_vm(self, pid, started_after=False):
        os.makedirs(f"{self.proc}/{pid}/fd")
        os.symlink("anon_inode:kvm-vm", f"{self.proc}/{pid}/fd/4")
        ticks = os.sysconf("SC_CLK_TCK")
        boot = time.clock_gettime(time.CLOCK_BOOTTIME)
        start = int((boot + 3600) * ticks) if started_after else 1
        fields = ["0"] * 18 + [str(start), "0", "0"]  # starttime is field 22
        with open(f"{self.proc}/{pid}/stat", "w") as f:
            f.write(f"{pid} (kvm guest) S " + " ".join(fields) + "\n")
        with open(f"{self.proc}/{pid}/cmdline", "wb") as f:
            f.write(b"qemu\0-name\0vm%d\0" % pid)

    def stats_file(self, pid, fd):
        return str(self.root / f"stats-{pid}-{fd}")

    def add_stats(self, pid, fd, vcpu=None, **values):
        """Give process *pid* a statistics descriptor *fd* (vCPU *vcpu*, or the VM's)."""
        link = VM_LINK if vcpu is None else f"anon_inode:kvm-vcpu-stats:{vcpu}"
        self.set_stats(pid, fd, vcpu, **values)
        os.symlink(link, f"{self.proc}/{pid}/fd/{fd}")

    def set_stats(self, pid, fd, vcpu=None, **values):
        """Rewrite the values of descriptor *fd* in place (same file, as KVM does)."""
        descs = VM_DESCS if vcpu is None else VCPU_DESCS
        stats_id = f"kvm-{pid}" if vcpu is None else f"kvm-{pid}/vcpu-{vcpu}"
        blob = encode_stats(stats_id, descs, {k: v if isinstance(v, list) else [v]
                                              for k, v in values.items()})
        path = self.stats_file(pid, fd)
        mode = "r+b" if os.path.exists(path) else "wb"
        with open(path, mode) as f:
            f.write(blob)

    def close_fd(self, pid, fd):
        os.unlink(f"{self.proc}/{pid}/fd/{fd}")

    def exit(self, pid):
        """The VM process exits: its /proc entry goes, its pidfds become readable."""
        for name in os.listdir(f"{self.proc}/{pid}/fd"):
            os.unlink(f"{self.proc}/{pid}/fd/{name}")
        os.rmdir(f"{self.proc}/{pid}/fd")
        for name in os.listdir(f"{self.proc}/{pid}"):
            os.unlink(f"{self.proc}/{pid}/{name}")
        os.rmdir(f"{self.proc}/{pid}")
        for w in self.exit_pipes.get(pid, []):
            os.write(w, b"x")

    # -- the fake system calls ------------------------------------------------------
    def _pidfd_open(self, pid):
        if not os.path.isdir(f"{self.proc}/{pid}"):
            raise OSError(errno.ESRCH, "No such process")
        r, w = os.pipe()
        self.pidfds[r] = pid
        self.exit_pipes.setdefault(pid, []).append(w)
        return r

    def _pidfd_getfd(self, pfd, target):
        if self.getfd_error is not None:
            raise OSError(self.getfd_error, os.strerror(self.getfd_error))
        pid = self.pidfds[pfd]
        link_path = f"{self.proc}/{pid}/fd/{target}"
        if not os.path.islink(link_path):
            raise OSError(errno.EBADF, "Bad file descriptor")
        fd = os.open(self.stats_file(pid, target), os.O_RDONLY | os.O_CLOEXEC)
        mirror = f"{self.proc}/self/fd/{fd}"
        if os.path.lexists(mirror):
            os.unlink(mirror)
        os.symlink(os.readlink(link_path), mirror)
        return fd

    # -- checks ------------------------------------------------------------------
    def open_stats_files(self):
        """The fake statistics files this process still has open."""
        held = set()
        for name in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{name}")
            except OSError:
                continue
            if target.startswith(str(self.root / "stats-")):
                held.add(os.path.basename(target))
        return held

    def close(self):
        for pipes in self.exit_pipes.values():
            for w in pipes:
                os.close(w)


@pytest.fixture
def host(tmp_path, monkeypatch):
    fake = FakeHost(tmp_path, monkeypatch)
    yield fake
    fake.close()


@pytest.fixture
def two_vms(host):
    """VM 100 (VM stats + 2 vCPUs) and VM 200 (1 vCPU), with some history."""
    host.add_vm(100)
    host.add_stats(100, 10, None, remote_tlb_flush=5, pages_4k=50, max_mmu_rmap_size=3)
    host.add_stats(100, 11, 0, exits=100, io_exits=40, blocking=1, halt_poll_max=7,
                   halt_wait_hist=[1, 2, 3, 4])
    host.add_stats(100, 12, 1, exits=10, io_exits=4, halt_poll_max=9)
    host.add_vm(200)
    host.add_stats(200, 20, 0, exits=1000, io_exits=1, blocking=1, halt_poll_max=2,
                   halt_wait_hist=[10, 0, 0, 0])
    return host


def open_provider(host, **kwargs):
    return BinstatsProvider(proc=host.proc, **kwargs)


# ---------------------------------------------------------------------------

def test_finds_statistics_descriptors_by_link_name(two_vms):
    refs = stats_fd_refs(100, two_vms.proc)
    assert [(r.fd, r.vcpu) for r in refs] == [(10, None), (11, 0), (12, 1)]
    assert stats_fd_refs(999, two_vms.proc) == []


def test_fields_are_the_single_valued_statistics(two_vms):
    assert binstats_fields(two_vms.proc) == ALL_FIELDS
    with open_provider(two_vms) as provider:
        assert provider.fields == ALL_FIELDS
        assert provider.supports_by_vm
        assert provider.descriptors["halt_wait_hist"].type == TYPE_LOG_HIST
        assert provider.levels == {"pages_4k", "max_mmu_rmap_size", "blocking",
                                   "halt_poll_max"}
        assert two_vms.open_stats_files() == {"stats-100-10", "stats-100-11", "stats-100-12",
                                              "stats-200-20"}
    assert two_vms.open_stats_files() == set()


def test_counters_count_from_open_summed_over_vcpus_and_vms(two_vms):
    with open_provider(two_vms) as provider:
        first = provider.snapshot().totals
        assert first["exits"] == 0 and first["io_exits"] == 0
        # Instant values are current values, summed; peaks are the largest.
        assert first["pages_4k"] == 50 and first["blocking"] == 2
        assert first["halt_poll_max"] == 9 and first["max_mmu_rmap_size"] == 3
        two_vms.set_stats(100, 11, 0, exits=130, io_exits=41, halt_poll_max=7)
        two_vms.set_stats(100, 12, 1, exits=17, io_exits=4, halt_poll_max=30)
        two_vms.set_stats(200, 20, 0, exits=1005, io_exits=1)
        totals = provider.snapshot().totals
        assert totals["exits"] == 30 + 7 + 5
        assert totals["io_exits"] == 1
        assert totals["blocking"] == 0 and totals["halt_poll_max"] == 30
        by_vm = provider.snapshot(by_vm=True).by_vm
        assert by_vm[100]["exits"] == 37 and by_vm[200]["exits"] == 5
        assert by_vm[100]["halt_poll_max"] == 30 and by_vm[200]["halt_poll_max"] == 0
        assert set(by_vm[100]) == set(ALL_FIELDS)
        by_vcpu = provider.snapshot(by_vcpu=True).by_vcpu
        assert {pid: {cpu: v["exits"] for cpu, v in cpus.items()}
                for pid, cpus in by_vcpu.items()} == {100: {0: 30, 1: 7}, 200: {0: 5}}


def test_include_past_counts_from_vm_creation(two_vms):
    with open_provider(two_vms, include_past=True) as provider:
        assert provider.snapshot().totals["exits"] == 100 + 10 + 1000


def test_histograms_since_open_summed_and_per_vm(two_vms):
    with open_provider(two_vms) as provider:
        assert provider.snapshot(histograms=True).histograms["halt_wait_hist"].counts == (0, 0, 0, 0)
        two_vms.set_stats(100, 11, 0, exits=100, halt_wait_hist=[1, 3, 3, 9])
        two_vms.set_stats(200, 20, 0, exits=1000, halt_wait_hist=[12, 0, 0, 1])
        provider.refresh()
        provider.snapshot().totals
        hist = provider.snapshot(histograms=True).histograms["halt_wait_hist"]
        assert hist == HistogramValues((2, 1, 0, 6), SINCE_START, kind="log",
                                       bounds=((0, 1), (1, 2), (2, 4), (4, None)),
                                       unit="seconds", base=10, exponent=-9)
        per_vm = provider.snapshot(by_vm=True, histograms=True).vm_histograms
        assert per_vm[100]["halt_wait_hist"].counts == (0, 1, 0, 5)
        assert per_vm[200]["halt_wait_hist"].counts == (2, 0, 0, 1)


def test_histograms_since_creation_with_include_past(two_vms):
    with open_provider(two_vms, include_past=True) as provider:
        hist = provider.snapshot(histograms=True).histograms["halt_wait_hist"]
    assert hist.counts == (11, 2, 3, 4) and hist.since == SINCE_CREATION


def test_json_carries_the_histograms(two_vms, monkeypatch, capsys):
    def fake_sleep(seconds):
        two_vms.set_stats(100, 11, 0, exits=103, halt_wait_hist=[1, 2, 4, 4])

    monkeypatch.setattr(cli.time, "sleep", fake_sleep)
    opts = cli.parse_options(["-1", "--json", "--binstats", "-f", "exits|halt_wait"])
    assert cli.run(opts, Paths(proc=two_vms.proc)) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["fields"] == {"exits": {"total": 3, "delta": 3}}
    assert obj["histograms"] == {"halt_wait_hist": {
        "since": "start", "counts": [0, 0, 1, 0], "kind": "log",
        "bounds": [[0, 1], [1, 2], [2, 4], [4, None]],
        "unit": "seconds", "base": 10, "exponent": -9}}
    # -f selects histograms by name as it selects fields
    opts = cli.parse_options(["-1", "--json", "--binstats", "-f", "exits"])
    assert cli.run(opts, Paths(proc=two_vms.proc)) == 0
    assert "histograms" not in json.loads(capsys.readouterr().out)


def test_one_pread_per_descriptor_per_sample(two_vms, monkeypatch):
    calls = []
    real_pread = os.pread

    def counting_pread(fd, size, offset):
        calls.append(fd)
        return real_pread(fd, size, offset)

    with kvmstat.open_sampler(["binstats"], by_vm=True, paths=Paths(proc=two_vms.proc)) as sampler:
        provider = sampler.providers[0]
        monkeypatch.setattr(os, "pread", counting_pread)
        sample = sampler.sample()
        assert len(calls) == provider.fds == 4
        reading = provider.snapshot(by_vm=True, histograms=True, by_vcpu=True)
        assert len(calls) == 8  # every part from one more reading
        assert sorted(reading.by_vm) == sorted(reading.by_vcpu) == [100, 200]
        assert reading.histograms
    assert sorted(sample.by_vm) == [100, 200]
    assert sample.values["exits"] == (0, 0)


def test_sampler_deltas_and_reset(two_vms):
    with kvmstat.open_sampler(["binstats"], fields="exits|io_exits",
                              paths=Paths(proc=two_vms.proc)) as sampler:
        assert sampler.fields == ["exits", "io_exits"]
        sampler.sample()
        two_vms.set_stats(200, 20, 0, exits=1010, io_exits=1)
        assert sampler.sample().values == {"exits": (10, 10), "io_exits": (0, 0)}
        sampler.reset()
        two_vms.set_stats(200, 20, 0, exits=1013, io_exits=1)
        assert sampler.sample().values["exits"] == (3, 3)


def test_pid_restricts_to_that_vm(two_vms):
    with open_provider(two_vms, pid=200) as provider:
        assert provider.pids == [200]
        assert two_vms.open_stats_files() == {"stats-200-20"}
        two_vms.set_stats(100, 11, 0, exits=999)
        two_vms.set_stats(200, 20, 0, exits=1002)
        assert provider.snapshot().totals["exits"] == 2
        assert list(provider.snapshot(by_vm=True).by_vm) == [200]


def test_new_vcpus_and_vms_are_picked_up_on_refresh(two_vms):
    with open_provider(two_vms) as provider:
        # A new vCPU of a VM that ran before we started: counted from discovery.
        two_vms.add_stats(200, 21, 1, exits=500)
        # A VM process started after us: everything it did is since our start.
        two_vms.add_vm(300, started_after=True)
        two_vms.add_stats(300, 30, 0, exits=8)
        provider.refresh()
        assert provider.fds == 6
        two_vms.set_stats(200, 21, 1, exits=502)
        totals = provider.snapshot(by_vm=True).by_vm
        assert totals[200]["exits"] == 2
        assert totals[300]["exits"] == 8


def test_vm_exit_closes_the_duplicates_and_keeps_the_counts(two_vms):
    with open_provider(two_vms) as provider:
        two_vms.set_stats(100, 11, 0, exits=104)
        two_vms.exit(100)
        # The VM exits between refresh and read: its descriptors still read.
        assert provider.snapshot().totals["exits"] == 4
        two_vms.set_stats(100, 12, 1, exits=13)  # counted at exit by the final read
        provider.refresh()
        assert two_vms.open_stats_files() == {"stats-200-20"}
        assert provider.pids == [200]
        reading = provider.snapshot(by_vm=True)
        assert reading.ended == {100}
        assert sorted(reading.by_vm) == [100, 200]  # its final counts, once more
        assert reading.by_vm[100]["exits"] == 4 + 3
        assert list(provider.snapshot(by_vm=True).by_vm) == [200]
        two_vms.set_stats(200, 20, 0, exits=1001)
        assert provider.snapshot().totals["exits"] == 4 + 3 + 1  # never backwards


def test_watched_vm_exit_is_reported_after_closing(two_vms):
    with open_provider(two_vms, pid=100) as provider:
        two_vms.set_stats(100, 11, 0, exits=101)
        two_vms.exit(100)
        provider.refresh()
        assert two_vms.open_stats_files() == set()
        reading = provider.snapshot()
        assert reading.ended == {100} and reading.totals["exits"] == 1
        provider.refresh()
        reading = provider.snapshot()
        assert not reading.ended and reading.totals["exits"] == 1


def test_descriptor_closed_by_the_vm_is_given_back_and_continued(two_vms):
    with open_provider(two_vms, pid=100) as provider:
        two_vms.set_stats(100, 12, 1, exits=15)
        two_vms.close_fd(100, 12)
        provider.refresh()
        assert "stats-100-12" not in two_vms.open_stats_files()
        assert provider.snapshot().totals["exits"] == 5
        # The VM opens vCPU 1's statistics again (QEMU's query-stats does):
        # counting continues where the old descriptor stopped.
        os.rename(two_vms.stats_file(100, 12), two_vms.stats_file(100, 13))
        two_vms.set_stats(100, 13, 1, exits=21)
        os.symlink("anon_inode:kvm-vcpu-stats:1", f"{two_vms.proc}/100/fd/13")
        provider.refresh()
        assert provider.snapshot().totals["exits"] == 11
        assert provider.snapshot(by_vcpu=True).by_vcpu[100][1]["exits"] == 11


def test_two_descriptors_of_one_vcpu_count_once(two_vms):
    two_vms.add_stats(200, 25, 0, exits=1000)
    with open_provider(two_vms, pid=200) as provider:
        assert provider.fds == 1
        two_vms.set_stats(200, 20, 0, exits=1003)
        two_vms.set_stats(200, 25, 0, exits=1003)
        assert provider.snapshot().totals["exits"] == 3


def test_no_vm_with_statistics_descriptors(host):
    with pytest.raises(NotAvailable, match="no VM process holds KVM binary statistics.*"
                                           "QEMU keeps them open from version 8.1"):
        binstats_fields(host.proc)
    host.add_vm(100)
    with pytest.raises(NotAvailable, match="no VM process holds"):
        open_provider(host)
    with pytest.raises(NotAvailable, match="VM process 100 holds no KVM binary statistics"):
        open_provider(host, pid=100)
    with pytest.raises(NoSuchVM):
        open_provider(host, pid=4242)


def test_borrowing_not_permitted_is_access_denied(two_vms):
    two_vms.getfd_error = errno.EPERM
    with pytest.raises(AccessDenied, match="CAP_SYS_PTRACE"):
        open_provider(two_vms)
    assert two_vms.open_stats_files() == set()


def test_malformed_statistics_are_a_clear_error(two_vms):
    with open(two_vms.stats_file(200, 20), "r+b") as f:
        f.write(b"\0" * 8)  # flags and name_size 0
    with pytest.raises(StatsFormatError, match=r"VM process 200 \(anon_inode:kvm-vcpu-stats:0\)"
                                               r": name size 0"):
        open_provider(two_vms)
    assert two_vms.open_stats_files() == set()


def test_close_is_idempotent(two_vms):
    provider = open_provider(two_vms)
    provider.close()
    provider.close()
    assert two_vms.open_stats_files() == set()


def test_kvm_stat_once_with_binstats(two_vms, monkeypatch, capsys):
    def fake_sleep(seconds):
        two_vms.set_stats(200, 20, 0, exits=1009, io_exits=1)

    monkeypatch.setattr(cli.time, "sleep", fake_sleep)
    opts = cli.parse_options(["-1", "--binstats", "-p", "200", "-f", "exits|io_exits"])
    assert cli.run(opts, Paths(proc=two_vms.proc)) == 0
    assert capsys.readouterr().out == (
        "exits                                              9         9\n"
        "io_exits                                           0         0\n")


def test_kvm_stat_binstats_without_vms_says_why(host, capsys):
    opts = cli.parse_options(["-1", "--binstats"])
    with pytest.raises(NotAvailable, match="8.1"):
        cli.run(opts, Paths(proc=host.proc))


def test_pidfd_exited_reports_readable_pidfds():
    r, w = os.pipe()
    r2, w2 = os.pipe()
    try:
        assert binstats_module.pidfd.exited([r, r2]) == []
        os.write(w2, b"x")
        assert binstats_module.pidfd.exited([r, r2]) == [r2]
        assert binstats_module.pidfd.exited([]) == []
    finally:
        for fd in (r, w, r2, w2):
            os.close(fd)


# -- what is missing, said once -------------------------------------------------------

def add_vcpus(host, pid, *vcpus, stats=True, fd=40):
    """vCPU descriptors of process *pid*, each with its statistics descriptor
    when *stats*."""
    for vcpu in vcpus:
        os.symlink(f"anon_inode:kvm-vcpu:{vcpu}", f"{host.proc}/{pid}/fd/{fd + vcpu}")
        if stats:
            host.add_stats(pid, fd + 20 + vcpu, vcpu, exits=0)


def test_incomplete_vms_are_told_once_each(host):
    notes = []
    host.add_vm(100)                      # everything (the test guests, QEMU with query-stats)
    host.add_stats(100, 10, None)
    add_vcpus(host, 100, 0)
    host.add_vm(200)                      # QEMU 10: its vCPUs' descriptors, not the VM's
    add_vcpus(host, 200, 0, 1)
    host.add_vm(300)                      # QEMU 7.2: none
    add_vcpus(host, 300, 0, stats=False)
    host.add_vm(400)                      # the VM's and vCPU 0's, not vCPU 1's
    host.add_stats(400, 10, None)
    add_vcpus(host, 400, 0)
    add_vcpus(host, 400, 1, stats=False, fd=50)
    with open_provider(host, notify=notes.append) as provider:
        assert provider.pids == [100, 200, 400]
        assert notes == [
            "binary statistics: VM process 'vm200' (pid 200) does not hold the VM's own "
            "statistics descriptor (VM-wide statistics): those statistics are missing for "
            "it, the others are read",
            "binary statistics: VM process 'vm400' (pid 400) does not hold the statistics "
            "descriptor of vCPU 1: those statistics are missing for it, the others are read",
            "binary statistics: left out, holding no statistics descriptors (only a VM's own "
            "process can create them (KVM_GET_STATS_FD); QEMU keeps them open from version "
            "8.1 on, QEMU 7.2 and older open them only while answering the QMP command "
            "query-stats): VM process 'vm300' (pid 300)"]
        del notes[:]
        provider.refresh()
        provider.refresh()
        assert notes == []                # once each
        host.add_vm(500)                  # a new VM that never opens any
        provider.refresh()
        assert notes == []                # it may still be opening them
        provider.refresh()
        assert notes == ["binary statistics: left out, holding no statistics descriptors "
                         "(only a VM's own process can create them (KVM_GET_STATS_FD); QEMU "
                         "keeps them open from version 8.1 on, QEMU 7.2 and older open them "
                         "only while answering the QMP command query-stats): VM process "
                         "'vm500' (pid 500)"]


def test_a_new_vm_opening_its_descriptors_is_not_reported(host):
    notes = []
    host.add_vm(100)
    host.add_stats(100, 10, None)
    with open_provider(host, notify=notes.append) as provider:
        host.add_vm(200)
        provider.refresh()                # found before it opened them
        host.add_stats(200, 10, None)
        add_vcpus(host, 200, 0)
        provider.refresh()
        provider.refresh()
        assert provider.pids == [100, 200]
    assert notes == []


def test_watching_one_incomplete_vm_tells_what_is_missing(host):
    notes = []
    host.add_vm(200)
    add_vcpus(host, 200, 0)
    with open_provider(host, pid=200, notify=notes.append) as provider:
        assert provider.fds == 1
    assert notes == ["binary statistics: VM process 'vm200' (pid 200) does not hold the VM's "
                     "own statistics descriptor (VM-wide statistics): those statistics are "
                     "missing for it, the others are read"]


def test_no_descriptors_names_only_the_providers_that_work_here(host, tmp_path):
    host.add_vm(100)
    with pytest.raises(NoStatsDescriptors) as info:
        open_provider(host)
    assert info.value.alternatives == ("tracepoints",)
    assert str(info.value).endswith("query-stats; use the tracepoint provider instead")
    # A debugfs whose counters read (no lockdown) can stand in too.
    debugfs = tmp_path / "debugfs"
    (debugfs / "kvm").mkdir(parents=True)
    (debugfs / "kvm" / "exits").write_text("0\n")
    with pytest.raises(NoStatsDescriptors) as info:
        binstats_fields(host.proc, str(debugfs))
    assert info.value.alternatives == ("tracepoints", "debugfs")
    assert str(info.value).endswith(
        "use the tracepoint provider or the debugfs provider instead")
    # Under lockdown reading kvm/exits fails (EPERM): debugfs is not offered.
    assert alternative_providers(str(tmp_path / "locked")) == ("tracepoints",)


def test_the_command_line_names_the_options_of_the_alternatives(host):
    from kvmstat.frontends.hints import with_flags

    error = NoStatsDescriptors("no VM process holds them", ("tracepoints", "debugfs"))
    assert "(-" not in str(error)  # the library speaks of providers, not options
    assert with_flags(str(error)) == ("no VM process holds them; use the tracepoint provider "
                                      "(-t) or the debugfs provider (-d) instead")


def test_a_long_list_of_vms_without_descriptors_is_cut_short():
    vms = [(VM(pid, None), StatsCoverage(pid, False, frozenset(), frozenset()))
           for pid in range(100, 125)]
    [note] = coverage_notes(vms)
    assert note.endswith("VM processes pid 100 (no name), pid 101 (no name), pid 102 (no name), "
                         "pid 103 (no name), pid 104 (no name), pid 105 (no name), pid 106 "
                         "(no name), pid 107 (no name), pid 108 (no name), pid 109 (no name) "
                         "and 15 more")
