"""The tracepoint provider on a fake tracefs tree and a fake counting core."""

import os
import shutil

import pytest

from kvmstat.counting import native
from kvmstat.errors import NoSuchVM
from kvmstat.providers.tracepoints import TracepointProvider, online_cpus
from kvmstat.sampling.options import SamplerOptions
from kvmstat.sampling.sources import providers_for
from kvmstat.host.paths import Paths

import fake_native

DATA = os.path.join(os.path.dirname(__file__), "data")


def make_tracefs(root, names=("kvm_exit", "kvm_pio", "kvm_userspace_exit", "kvm_fpu")):
    """A tracefs tree holding the real format files of this project's test data."""
    for index, name in enumerate(names):
        d = root / "events" / "kvm" / name
        d.mkdir(parents=True)
        source = os.path.join(DATA, f"{name}.format")
        if os.path.exists(source):
            shutil.copy(source, d / "format")
            with open(source) as f:
                ident = next(l.split(":")[1].strip() for l in f if l.startswith("ID:"))
        else:
            ident = str(500 + index)
            (d / "format").write_text(f"name: {name}\nID: {ident}\nformat:\n\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\nprint fmt: \"x\"\n")
        (d / "id").write_text(ident + "\n")
    return str(root)


def make_sys(root, online="0-3"):
    cpu = root / "devices" / "system" / "cpu"
    cpu.mkdir(parents=True)
    (cpu / "online").write_text(online + "\n")
    (root / "module" / "kvm_intel").mkdir(parents=True)
    return str(root)


def make_proc(root, vms):
    """vms: {pid: [tids]}; each gets a kvm-vm fd link."""
    for pid, tids in vms.items():
        (root / str(pid) / "fd").mkdir(parents=True)
        os.symlink("anon_inode:kvm-vm", root / str(pid) / "fd" / "11")
        (root / str(pid) / "cmdline").write_bytes(b"qemu\0-name\0guest=vm%d\0" % pid)
        for tid in tids:
            (root / str(pid) / "task" / str(tid)).mkdir(parents=True)
    return str(root)


@pytest.mark.parametrize("text, cpus", [("0", [0]), ("0-3", [0, 1, 2, 3]), ("0,2-3,7", [0, 2, 3, 7])])
def test_online_cpus(tmp_path, text, cpus):
    assert online_cpus(make_sys(tmp_path, text)) == cpus


def test_host_wide_opens_one_group_per_cpu_and_reads_by_name(tmp_path, monkeypatch):
    counters, created = fake_native.counters()
    tracefs = make_tracefs(tmp_path / "t")
    sys_root = make_sys(tmp_path / "s", "0-3")
    provider = TracepointProvider(tracefs, sys=sys_root, vendor="vmx", counters=counters)
    counter_set = created[0]
    assert counter_set.mode == native.PER_CPU
    assert sorted(t for t, _ in counter_set.slots.values()) == [0, 1, 2, 3]
    assert counter_set.enabled
    assert "kvm_exit(HLT)" in provider.fields and "kvm_userspace_exit(IO)" in provider.fields
    hlt = next(e for e in counter_set.events if e.name == "kvm_exit(HLT)")
    assert hlt.filter == "exit_reason==12"
    counter_set.counts[(1, "kvm_pio")] = 5
    counter_set.counts[(3, "kvm_pio")] = 2
    totals = provider.snapshot().totals
    assert totals["kvm_pio"] == 7 and totals["kvm_fpu"] == 0
    assert counter_set.reads == 1  # one bulk read per sample
    provider.close()
    provider.close()
    assert counter_set.closed


def test_only_selected_fields_are_opened(tmp_path, monkeypatch):
    counters, created = fake_native.counters()
    paths = Paths(tracefs=make_tracefs(tmp_path / "t"), sys=make_sys(tmp_path / "s"),
                  proc=str(tmp_path))
    providers = providers_for(SamplerOptions(fields=r"kvm_userspace_exit\(IO\)", paths=paths,
                                             counters=counters))
    assert [e.name for e in created[0].events] == ["kvm_userspace_exit", "kvm_userspace_exit(IO)"]
    assert providers[0].fields == ["kvm_userspace_exit", "kvm_userspace_exit(IO)"]


def test_per_thread_groups_and_vanished_threads(tmp_path, monkeypatch):
    counters, created = fake_native.counters(gone={1002})
    proc = make_proc(tmp_path / "p", {1000: [1000, 1001, 1002]})
    provider = TracepointProvider(make_tracefs(tmp_path / "t"), pid=1000, proc=proc,
                                  counters=counters,
                                  sys=make_sys(tmp_path / "s"), vendor="vmx")
    counter_set = created[0]
    assert counter_set.mode == native.PER_THREAD_INHERIT  # threads started later count too
    assert sorted(t for t, _ in counter_set.slots.values()) == [1000, 1001]
    provider.close()


def test_pid_that_is_not_a_vm(tmp_path, monkeypatch):
    counters, _ = fake_native.counters()
    proc = tmp_path / "p"
    (proc / "77" / "fd").mkdir(parents=True)
    with pytest.raises(NoSuchVM, match="not a KVM VM"):
        TracepointProvider(make_tracefs(tmp_path / "t"), pid=77, proc=str(proc), counters=counters,
                           sys=make_sys(tmp_path / "s"), vendor="vmx")
    with pytest.raises(NoSuchVM, match="no process with pid 78"):
        TracepointProvider(make_tracefs(tmp_path / "t2"), pid=78, proc=str(proc), counters=counters,
                           sys=make_sys(tmp_path / "s2"), vendor="vmx")
