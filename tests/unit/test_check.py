"""``--check`` on fake hosts: rows, reasons, fixes, notes, exit status; the pure table."""

import dataclasses
import errno
import os

import pytest

from kvmstat.counting.factories import CounterFactories
from kvmstat.frontends import check as check_mod
from kvmstat.frontends import cli
from kvmstat.frontends.check import HostCheck, ProviderCheck, check_host, format_check
from kvmstat.errors import AccessDenied, NativeError, NotAvailable
from kvmstat.host.paths import Paths

import fake_native
from fake_debugfs import HOST, lock_down, make_debugfs
from test_tracepoint_provider import make_sys, make_tracefs


def fake_proc(root, paranoid="2", cap_eff="0000000000000000"):
    (root / "sys" / "kernel").mkdir(parents=True)
    (root / "sys" / "kernel" / "perf_event_paranoid").write_text(paranoid + "\n")
    (root / "self").mkdir()
    (root / "self" / "status").write_text(f"Name:\tx\nCapEff:\t{cap_eff}\n")
    (root / "self" / "mounts").write_text("")
    return str(root)


def no_kvm_host(tmp_path):
    (tmp_path / "trace").mkdir()
    (tmp_path / "debug").mkdir()
    return Paths(proc=fake_proc(tmp_path / "proc"), sys=make_sys(tmp_path / "sys"),
                 tracefs=str(tmp_path / "trace"), debugfs=str(tmp_path / "debug"))


def test_host_without_kvm(tmp_path):
    result = check_host(no_kvm_host(tmp_path), dev_kvm=str(tmp_path / "kvm"))
    assert not result.usable
    by_name = {row.name: row for row in result.rows}
    assert list(by_name) == ["tracepoints", "debugfs", "binary stats", "BPF engine",
                             "per-VM attribution"]
    assert not any(row.available for row in result.rows)
    assert by_name["BPF engine"].reason == "no kvm tracepoints to count"
    assert "KVM is not loaded" in by_name["tracepoints"].reason
    assert "modprobe" in by_name["tracepoints"].fix
    assert "no KVM" in by_name["debugfs"].reason
    assert "does not exist: no KVM" in by_name["binary stats"].reason
    assert any("perf_event_paranoid is 2" in note for note in result.notes)


def test_cli_check_exit_status(tmp_path, monkeypatch, capsys):
    paths = no_kvm_host(tmp_path)
    monkeypatch.setattr(check_mod, "check_host", lambda p: check_host(p, dev_kvm=str(tmp_path / "x")))
    assert cli.main(["--check"], paths=paths) == 1
    out, err = capsys.readouterr()
    assert out.startswith("provider ")
    assert err == ""

    monkeypatch.setattr(check_mod, "check_host", lambda p: HostCheck(
        [ProviderCheck("debugfs", True, "fine")], ProviderCheck("per-VM attribution", True, "x")))
    assert cli.main(["--check"], paths=paths) == 0


#: the fake counting core with a BPF probe that says yes (the provider itself is replaced)
BPF_WORKS = dataclasses.replace(fake_native.counters()[0],
                                bpf_supported=lambda tracepoint_id=None: (True, ""))


def NO_BPF(tracepoint_id=None):
    return False, "no BPF in this test"


def working_host(tmp_path, monkeypatch, **proc):
    fake_native.install(monkeypatch)
    return Paths(proc=fake_proc(tmp_path / "proc", **proc), sys=make_sys(tmp_path / "sys"),
                 tracefs=make_tracefs(tmp_path / "trace"),
                 debugfs=make_debugfs(tmp_path / "debug"))


def test_working_host_with_lockdown(tmp_path, monkeypatch):
    paths = working_host(tmp_path, monkeypatch)
    lock_down(monkeypatch, ["exits", "halt_wait_ns"])
    result = check_host(paths, dev_kvm=str(tmp_path / "kvm"))
    assert result.usable
    tracepoints, debugfs, binstats = result.providers
    assert tracepoints.available and "perf counting works" in tracepoints.reason
    assert debugfs.available
    assert debugfs.reason.endswith("2 of 5 statistics files in "
                                   f"{paths.debugfs}/kvm readable; 2 refused by kernel "
                                   "lockdown (Operation not permitted)")
    assert "--binstats" in debugfs.fix
    assert not binstats.available
    assert result.attribution.available
    assert "debugfs" in result.attribution.reason and "tracepoints" in result.attribution.reason
    notes = "\n".join(result.notes)
    assert "kernel lockdown: 2 debugfs statistics files refuse reads" in notes
    assert "readable: max_mmu_rmap_size, pages_4k" in notes
    # 4 events in the fake tracefs; their children counted from the real formats
    assert "x 4 CPUs" in notes


def test_engine_row_without_bpf(tmp_path, monkeypatch):
    paths = working_host(tmp_path, monkeypatch)  # the fake core has no BPF
    result = check_host(paths, dev_kvm=str(tmp_path / "kvm"))
    assert result.engine == ProviderCheck(
        "BPF engine", False, "--engine auto counts with perf groups: the BPF engine cannot "
        "be used: the fake counting core has no BPF")
    assert "per-thread counting of VM processes" in result.attribution.reason
    assert "BPF engine" in "\n".join(format_check(result))


def test_engine_row_with_bpf(tmp_path, monkeypatch):
    paths = working_host(tmp_path, monkeypatch)
    opened = []

    class Works:
        def __init__(self, tracefs, *, fields, events, proc, counters):
            opened.append(fields)

        def close(self):
            pass

    monkeypatch.setattr(check_mod, "BpfTracepointProvider", Works)
    result = check_host(paths, dev_kvm=str(tmp_path / "kvm"), counters=BPF_WORKS)
    assert result.engine.available
    # 4 events in the fake tracefs: 2 descriptors each, and 2 maps
    from kvmstat.sampling.engine import _BPF_WHY
    assert result.engine.reason == (
        f"--engine auto uses it: {_BPF_WHY[False]}; per VM (--by-guest, the exporter): "
        f"{_BPF_WHY[True].split(': ', 1)[1]}; every "
        "kvm tracepoint with 10 descriptors, whatever the number of CPUs")
    # the programs that read a reason field are loaded
    assert opened == [["kvm_exit", "kvm_exit(EXCEPTION_NMI)", "kvm_userspace_exit(UNKNOWN)"]]
    assert "BPF programs count per process" in result.attribution.reason


def test_engine_row_names_events_attached_through_perf(tmp_path, monkeypatch):
    paths = working_host(tmp_path, monkeypatch)

    class Attached:
        attached = {"kvm_exit": "perf", "kvm_userspace_exit": "raw"}

        def __init__(self, tracefs, *, fields, events, proc, counters):
            pass

        def close(self):
            pass

    monkeypatch.setattr(check_mod, "BpfTracepointProvider", Attached)
    reason = check_host(paths, dev_kvm=str(tmp_path / "kvm"), counters=BPF_WORKS).engine.reason
    assert reason.endswith("; kvm_exit through perf (its reason is not one of the "
                           "tracepoint's arguments, so the trace record is read)")


def test_engine_row_when_loading_fails(tmp_path, monkeypatch):
    paths = working_host(tmp_path, monkeypatch)

    def rejected(*args, **kwargs):
        raise NativeError("the kernel's verifier rejected the BPF program", 13)

    monkeypatch.setattr(check_mod, "BpfTracepointProvider", rejected)
    engine = check_host(paths, dev_kvm=str(tmp_path / "kvm"), counters=BPF_WORKS).engine
    assert engine == ProviderCheck("BPF engine", False, "--engine auto counts with perf "
                                   "groups: the BPF engine failed: the kernel's verifier "
                                   "rejected the BPF program")


def test_everything_locked_down(tmp_path, monkeypatch):
    paths = working_host(tmp_path, monkeypatch)
    lock_down(monkeypatch, HOST)
    debugfs = check_host(paths, dev_kvm=str(tmp_path / "kvm")).providers[1]
    assert not debugfs.available
    assert "none of the 5" in debugfs.reason and "lockdown" in debugfs.reason


def test_perf_denied_names_paranoid(tmp_path, monkeypatch):
    paths = working_host(tmp_path, monkeypatch, paranoid="3")

    def denied(*args, **kwargs):
        raise AccessDenied("perf_event_open denied")

    tracepoints = check_host(paths, dev_kvm=str(tmp_path / "kvm"),
                             counters=CounterFactories(open_counter_set=denied,
                                                       bpf_supported=NO_BPF)).providers[0]
    assert not tracepoints.available
    assert "perf_event_paranoid is 3" in tracepoints.reason
    assert "CAP_PERFMON" in tracepoints.fix


def test_paravirtual_host_note(tmp_path, monkeypatch):
    paths = working_host(tmp_path, monkeypatch)
    (tmp_path / "sys" / "module" / "kvm_pvm").mkdir(parents=True)
    notes = check_host(paths, dev_kvm=str(tmp_path / "kvm")).notes
    assert any(n.startswith("kvm_exit never fires on this host: paravirtual KVM (module "
                            "kvm_pvm)") for n in notes)


def test_privileged_paranoid_note(tmp_path, monkeypatch):
    # CapEff with CAP_PERFMON (bit 38)
    paths = working_host(tmp_path, monkeypatch, cap_eff=f"{1 << 38:016x}")
    notes = check_host(paths, dev_kvm=str(tmp_path / "kvm")).notes
    assert "perf_event_paranoid is 2: it does not limit this process (CAP_PERFMON or " \
           "CAP_SYS_ADMIN)" in notes


def test_open_files_note(monkeypatch, tmp_path):
    monkeypatch.setattr(check_mod, "_open_files_limits", lambda: (10, 10))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    paths = working_host(tmp_path, monkeypatch)
    notes = check_host(paths, dev_kvm=str(tmp_path / "kvm")).notes
    [note] = [n for n in notes if n.startswith("open files")]
    assert "the limit is 10 (hard 10): too low: run 'ulimit -n" in note


def test_format_check_table():
    result = HostCheck(
        [ProviderCheck("tracepoints", True, "works"),
         ProviderCheck("debugfs", False, "locked", "use -t")],
        ProviderCheck("per-VM attribution", True, "by tracepoints"),
        ["a note"])
    assert format_check(result) == [
        "provider            status         reason",
        "tracepoints         available      works",
        "debugfs             not available  locked",
        "                                   fix: use -t",
        "per-VM attribution  available      by tracepoints",
        "",
        "notes:",
        "  - a note",
    ]


def test_format_check_without_notes():
    result = HostCheck([ProviderCheck("tracepoints", False, "why", "how")],
                       ProviderCheck("per-VM attribution", False, "none", "x"))
    lines = format_check(result)
    assert "notes:" not in lines
    assert not result.usable


# -- binary stats: what --binstats would find --------------------------------------

@pytest.fixture
def binstats_host(tmp_path, monkeypatch):
    """A fake host whose kernel has binary statistics (VMs added by the tests)."""
    from test_binstats_provider import FakeHost

    host = FakeHost(tmp_path / "bs", monkeypatch)
    # CapEff with CAP_SYS_PTRACE (bit 19)
    with open(f"{host.proc}/self/status", "w") as f:
        f.write("Name:\tx\nCapEff:\t0000000000080000\n")
    monkeypatch.setattr(check_mod, "_binstats_kernel_support", lambda dev_kvm: None)
    yield host
    host.close()


def binstats_row(host, notes=None):
    vms = check_mod.list_vms(host.proc)
    return check_mod._check_binstats(Paths(proc=host.proc), "/dev/kvm", vms,
                                     [] if notes is None else notes)


def test_binstats_check_agrees_with_the_provider_when_no_vm_holds_descriptors(
        binstats_host, capsys):
    binstats_host.add_vm(100)  # a VM without statistics descriptors (QEMU 7.2)
    row = binstats_row(binstats_host)
    assert not row.available
    # The very message --binstats gives.
    opts = cli.parse_options(["-1", "--binstats"])
    with pytest.raises(NotAvailable) as info:
        cli.run(opts, Paths(proc=binstats_host.proc))
    assert row.reason == str(info.value)
    assert row.reason.startswith("no VM process holds KVM binary statistics file descriptors")
    # Only the providers that work here: no debugfs mounted in this fake host.
    assert row.reason.endswith("; use the tracepoint provider instead")


def test_binstats_check_reads_what_the_provider_reads(binstats_host):
    from test_binstats_provider import ALL_FIELDS

    binstats_host.add_vm(100)
    binstats_host.add_stats(100, 10, None, remote_tlb_flush=1)
    binstats_host.add_stats(100, 11, 0, exits=3)
    binstats_host.add_vm(200)  # holds none
    notes = []
    row = binstats_row(binstats_host, notes)
    assert notes == ["binary statistics: left out, holding no statistics descriptors (only a "
                     "VM's own process can create them (KVM_GET_STATS_FD); QEMU keeps them "
                     "open from version 8.1 on, QEMU 7.2 and older open them only while "
                     "answering the QMP command query-stats): VM process 'vm200' (pid 200)"]
    assert row.available
    assert row.reason == (f"{len(ALL_FIELDS)} statistics read from the descriptors VM "
                          f"processes hold (borrowed with pidfd_getfd); 1 of 2 VM processes "
                          f"hold them")
    assert binstats_host.open_stats_files() == set()  # nothing kept open


def test_binstats_check_borrowing_refused(binstats_host):
    binstats_host.add_vm(100)
    binstats_host.add_stats(100, 11, 0, exits=3)
    binstats_host.getfd_error = errno.EPERM
    row = binstats_row(binstats_host)
    assert not row.available
    assert "borrowing the statistics descriptors of VM process 100" in row.reason
    assert "denied (Operation not permitted): pidfd_getfd needs root or CAP_SYS_PTRACE" \
        in row.reason
    assert row.fix == "run kvm_stat as root"


def test_binstats_check_without_ptrace_capability(binstats_host):
    with open(f"{binstats_host.proc}/self/status", "w") as f:
        f.write("Name:\tx\nCapEff:\t0000000000000000\n")
    row = binstats_row(binstats_host)
    assert not row.available and "CAP_SYS_PTRACE" in row.reason


def test_binstats_check_lists_a_vm_holding_its_vcpus_descriptors_but_not_its_own(binstats_host):
    # QEMU 10 keeps each vCPU's statistics descriptor open, not the VM's.
    binstats_host.add_vm(300)
    for vcpu in (0, 1):
        os.symlink(f"anon_inode:kvm-vcpu:{vcpu}", f"{binstats_host.proc}/300/fd/{20 + vcpu}")
        binstats_host.add_stats(300, 30 + vcpu, vcpu, exits=1)
    notes = []
    row = binstats_row(binstats_host, notes)
    assert row.available
    assert notes == ["binary statistics: VM process 'vm300' (pid 300) does not hold the VM's "
                     "own statistics descriptor (VM-wide statistics): those statistics are "
                     "missing for it, the others are read"]
    text = "\n".join(check_mod.format_check(check_mod.HostCheck([row], row, notes)))
    assert "does not hold the VM's own statistics descriptor" in text
