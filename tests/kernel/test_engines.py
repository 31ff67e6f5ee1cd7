"""Both tracepoint engines (--engine bpf, --engine perf) on the real kernel.

Test guests make exact numbers of exits (``pio``: one kvm_pio and one
kvm_userspace_exit(IO) per run; ``hlt``: one kvm_userspace_exit(HLT)), so
both engines must report exactly those counts, per reason and per VM,
through the library and through every mode of ``kvm_stat``.  Other VMs may
run on the host at the same time: host totals are only checked as lower
bounds, exact counts through our guests' pids.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import kvmstat
from kvmstat.frontends import cli
from kvmstat.counting.bpf import bpf_supported
from kvmstat.host.paths import Paths
from kvmstat.providers.tracepoints import online_cpus

from conftest import _skip_or_fail
from helpers.batchwindow import start_batch
from helpers.exporter import ExporterProcess, series, total, value

ENGINES = ["bpf", "perf"]
FIELDS = r"kvm_(pio|userspace_exit)"


@pytest.fixture(autouse=True)
def bpf_works():
    usable, why = bpf_supported()
    if not usable:
        _skip_or_fail(f"the BPF engine cannot be used here: {why}")


def parse_batch(lines):
    return {line[:42].rstrip(): (int(line[42:52]), int(line[52:62])) for line in lines}


def parse_by_guest(text):
    """{pid: {field: (total, delta)}} of ``kvm_stat -1 --by-guest``."""
    out = {}
    for block in text.strip("\n").split("\n\n"):
        heading, *rows = block.splitlines()
        pid = int(heading.split("(pid ", 1)[1].split(")", 1)[0])
        out[pid] = parse_batch(rows)
    return out


# -- the library ---------------------------------------------------------------

@pytest.mark.parametrize("engine", ENGINES)
def test_exact_counts_per_reason_for_one_vm(guest_process, engine):
    pio = guest_process("pio")
    hlt = guest_process("hlt")
    with kvmstat.open_sampler(fields=FIELDS, pid=pio.pid, engine=engine) as a, \
            kvmstat.open_sampler(fields=FIELDS, pid=hlt.pid, engine=engine) as b:
        assert a.engine == b.engine == engine
        a.sample()
        b.sample()
        pio.run(1000)
        pio.run(234)
        hlt.run(77)
        first, second = a.sample().values, b.sample().values
    assert first["kvm_pio"] == first["kvm_userspace_exit(IO)"] == (1234, 1234)
    assert first["kvm_userspace_exit"] == (1234, 1234)
    assert first["kvm_userspace_exit(HLT)"] == (0, 0)
    assert second["kvm_userspace_exit(HLT)"] == second["kvm_userspace_exit"] == (77, 77)
    assert second["kvm_userspace_exit(IO)"] == second["kvm_pio"] == (0, 0)


def test_both_engines_agree_per_vm_with_several_guests(guest_process):
    guests = [guest_process("pio"), guest_process("pio"), guest_process("hlt")]
    with kvmstat.open_sampler(fields=FIELDS, by_vm=True, engine="bpf") as bpf, \
            kvmstat.open_sampler(fields=FIELDS, by_vm=True, engine="perf") as perf:
        guests[0].run(500)
        guests[1].run(123)
        guests[2].run(55)
        guests[0].run(20)
        on_bpf, on_perf = bpf.sample(), perf.sample()
    expected = {guests[0].pid: (520, 520, 0, 520), guests[1].pid: (123, 123, 0, 123),
                guests[2].pid: (0, 55, 55, 0)}
    for sample in (on_bpf, on_perf):
        for pid, (pio, exits, halts, io) in expected.items():
            values = sample.by_vm[pid]
            assert values["kvm_pio"][0] == pio
            assert values["kvm_userspace_exit"][0] == exits
            assert values["kvm_userspace_exit(HLT)"][0] == halts
            assert values["kvm_userspace_exit(IO)"][0] == io
            assert values == on_perf.by_vm[pid]
        # Other VMs may add to the totals, never take away.
        assert sample.values["kvm_pio"][0] >= 643


def test_bpf_counts_new_threads_and_vms_without_any_action(guest_process):
    first = guest_process("pio")
    with kvmstat.open_sampler(fields=FIELDS, by_vm=True, engine="bpf") as sampler:
        provider = sampler.providers[0]
        fds = provider.fds
        tids = {first.thread(10) for _ in range(3)}  # each in a new thread that ended
        assert len(tids) == 3
        later = guest_process("hlt")  # a VM started after the sampler
        later.run(4)  # counted before any refresh noticed the VM
        sample = sampler.sample()
        assert sample.by_vm[first.pid]["kvm_userspace_exit(IO)"] == (30, 30)
        assert sample.by_vm[later.pid]["kvm_userspace_exit(HLT)"] == (4, 4)
        assert provider.fds == fds
        # An exited VM: read once more with its final counts, then it leaves
        # the breakdown; its counts stay in the totals.
        total = sample.values["kvm_pio"][0]
        first.close()
        sample = sampler.sample()
        assert sample.by_vm[first.pid]["kvm_pio"] == (30, 0)
        sample = sampler.sample()
        assert first.pid not in sample.by_vm and later.pid in sample.by_vm
        assert sample.values["kvm_pio"][0] >= total


def test_bpf_descriptors_do_not_grow_with_cpus_or_threads(guest_process):
    guest = guest_process("pio")
    before = len(os.listdir("/proc/self/fd"))
    with kvmstat.open_sampler(engine="bpf") as host, \
            kvmstat.open_sampler(by_vm=True, engine="bpf") as per_vm:
        events = len({name.split("(")[0] for name in host.fields})
        # One program and one perf event per tracepoint, two maps: no CPU factor.
        for sampler in (host, per_vm):
            assert sampler.providers[0].fds == 2 * events + 2
        # Following VMs: a pidfd per VM and one epoll instance waiting on them
        # (their exits are polled, not read from /proc).
        assert per_vm.providers[0].watch_fds == len(per_vm.providers[0].vms) + 1 >= 2
        assert host.providers[0].watch_fds == 0
        assert len(os.listdir("/proc/self/fd")) - before == \
            2 * (2 * events + 2) + per_vm.providers[0].watch_fds
        for _ in range(8):
            guest.thread(5)
        guest.add_vcpu()
        per_vm.sample()
        assert per_vm.providers[0].fds == 2 * events + 2
    with kvmstat.open_sampler(fields=FIELDS, engine="perf") as perf:
        # Perf groups for comparison: one event per field per online CPU.
        assert perf.providers[0].fds == len(perf.fields) * len(online_cpus())


@pytest.mark.parametrize("engine", ENGINES)
def test_reset_starts_from_zero(guest_process, engine):
    guest = guest_process("pio")
    with kvmstat.open_sampler(fields=FIELDS, pid=guest.pid, engine=engine) as sampler:
        guest.run(20)
        assert sampler.sample().values["kvm_pio"][0] == 20
        sampler.reset()
        assert sampler.sample().values["kvm_pio"] == (0, 0)
        guest.run(7)
        assert sampler.sample().values["kvm_userspace_exit(IO)"] == (7, 7)


def test_bpf_field_filter_loads_programs_for_the_matching_tracepoints_only(guest_process):
    guest = guest_process("hlt")
    with kvmstat.open_sampler(fields=r"kvm_userspace_exit\(HLT", pid=guest.pid,
                              engine="bpf") as sampler:
        provider = sampler.providers[0]
        # -f keeps the parent of a matching child; one tracepoint, one program.
        assert provider.fields == ["kvm_userspace_exit", "kvm_userspace_exit(HLT)"]
        assert provider.fds == 2 * 1 + 3  # with a pid: a third map
        guest.run(9)
        assert sampler.sample().values == {"kvm_userspace_exit": (9, 9),
                                           "kvm_userspace_exit(HLT)": (9, 9)}


def test_bpf_vm_exit_is_reported_and_releases_the_programs(guest_process):
    guest = guest_process("pio")
    with kvmstat.open_sampler(fields=FIELDS, pid=guest.pid, by_vm=True,
                              engine="bpf") as sampler:
        sampler.sample()
        guest.run(40)
        guest.close()
        last = sampler.sample()
        assert sampler.done and list(last.ended) == [guest.pid]
        assert last.values["kvm_pio"] == (40, 40)
        assert last.by_vm[guest.pid]["kvm_userspace_exit(IO)"] == (40, 40)
        assert sampler.providers[0].fds == 0


# -- a BPF program that cannot be loaded ------------------------------------------

@pytest.fixture
def bad_offset_tracefs(tmp_path, tracefs):
    """A tracefs tree whose kvm_userspace_exit (the real tracepoint id) has
    its reason field at a misaligned offset: the verifier refuses to load."""
    src = os.path.join(tracefs, "events", "kvm", "kvm_userspace_exit")
    dst = tmp_path / "events" / "kvm" / "kvm_userspace_exit"
    dst.mkdir(parents=True)
    shutil.copy(os.path.join(src, "id"), dst / "id")
    with open(os.path.join(src, "format")) as f:
        text = f.read()
    line = next(l for l in text.splitlines() if "field:__u32 reason;" in l or " reason;" in l)
    start = line.index("offset:") + len("offset:")
    end = line.index(";", start)
    bad = line[:start] + str(int(line[start:end]) + 1) + line[end:]
    (dst / "format").write_text(text.replace(line, bad))
    return str(tmp_path)


def run_batch_in_process(monkeypatch, capsys, paths, argv, work):
    """``kvm_stat -1 ARGV`` in this process on *paths*, *work* in its second."""
    monkeypatch.setattr("kvmstat.frontends.cli.time.sleep", lambda seconds: work())
    status = cli.main(["-1", *argv], paths=paths)
    out, err = capsys.readouterr()
    return status, out, err


def test_a_failing_load_is_an_error_with_bpf_and_auto_falls_back(
        guest_process, bad_offset_tracefs, monkeypatch, capsys):
    # Programs that read the reason from the record (as where the reason is
    # not a known tracepoint argument): the bad offset reaches the verifier.
    monkeypatch.setattr("kvmstat.providers.bpf_tracepoints.REASON_ARGS", {})
    guest = guest_process("pio")
    paths = Paths(tracefs=bad_offset_tracefs)
    argv = ["-p", str(guest.pid), "-f", r"kvm_userspace_exit\(IO"]
    status, out, err = run_batch_in_process(monkeypatch, capsys, paths,
                                            [*argv, "--engine", "bpf"], lambda: guest.run(5))
    assert status == 1 and out == ""
    assert err.startswith("Error: the kernel's verifier rejected the BPF program for "
                          "kvm_userspace_exit (reason field at offset ")
    assert err.count("\n") == 1
    status, out, err = run_batch_in_process(monkeypatch, capsys, paths, argv,
                                            lambda: guest.run(5))
    assert status == 0
    assert err.startswith("kvm_stat: the BPF engine failed (the kernel's verifier rejected")
    assert err.endswith("): counting with perf groups\n") and err.count("\n") == 1
    # Perf groups filter by the field's name: the counts are right.
    assert parse_batch(out.splitlines())["kvm_userspace_exit(IO)"] == (5, 5)


# -- kvm_stat ------------------------------------------------------------------------

@pytest.mark.parametrize("engine", ENGINES)
def test_kvm_stat_once_by_guest_is_exact_on_both_engines(guest_process, engine):
    guests = [guest_process("pio", name=f"eng-{engine}-a"), guest_process("hlt")]
    proc = start_batch(["--by-guest", "--engine", engine, "-f", FIELDS])
    guests[0].run(321)
    guests[1].run(12)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert err == ""
    rows = parse_by_guest(out)
    assert f"(pid {guests[0].pid}) eng-{engine}-a" in out.splitlines()
    assert rows[guests[0].pid]["kvm_pio"] == (321, 321)
    assert rows[guests[0].pid]["kvm_userspace_exit(IO)"] == (321, 321)
    assert rows[guests[1].pid]["kvm_userspace_exit(HLT)"] == (12, 12)
    assert rows[guests[1].pid]["kvm_userspace_exit"] == (12, 12)


@pytest.mark.parametrize("engine", ENGINES)
def test_kvm_stat_once_json_names_the_engine(guest_process, engine):
    guest = guest_process("pio")
    proc = start_batch(["--json", "-p", str(guest.pid), "--engine", engine, "-f", FIELDS])
    guest.run(44)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and err == ""
    obj = json.loads(out)
    assert obj["engine"] == engine
    assert obj["fields"]["kvm_userspace_exit(IO)"] == {"total": 44, "delta": 44}


@pytest.mark.parametrize("engine", ENGINES)
def test_log_mode_rows_and_vm_exit_on_both_engines(guest_process, engine):
    guest = guest_process("pio")
    proc = subprocess.Popen([sys.executable, "-m", "kvmstat", "-l", "-c", "-s", "0.3",
                             "-p", str(guest.pid), "-f", "kvm_pio", "--engine", engine],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "timestamp,kvm_pio\n"
        guest.run(41)
        counted = 0
        while counted < 41:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            counted += int(line.rsplit(",", 1)[1])
        assert counted == 41
        guest.close()  # the watched VM exits: a note, status 0
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert all(line.endswith(",0") for line in out.splitlines())
    assert err == f"kvm_stat: VM process {guest.pid} has exited\n"


@pytest.mark.parametrize("engine", ENGINES)
def test_exporter_on_both_engines(guest_process, engine):
    guest = guest_process("pio", name=f"exp-{engine}")
    with ExporterProcess(["-f", FIELDS, "--engine", engine]) as exporter:
        guest.run(321)
        families = exporter.scrape()
        vm = {"pid": str(guest.pid), "guest": f"exp-{engine}"}
        assert value(families, "kvm_tracepoint_pio_total", **vm) == 321
        assert value(families, "kvm_tracepoint_userspace_exit_total", **vm, reason="IO") == 321
        assert total(families, "kvm_tracepoint_pio_total") >= 321
        (info,) = series(families, "kvmstat_exporter_info")
        assert dict(info)["engine"] == engine
        assert exporter.stop() == 0


def test_check_shows_which_engine_auto_picks():
    out = subprocess.run([sys.executable, "-m", "kvmstat", "--check"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    [row] = [line for line in out.stdout.splitlines() if line.startswith("BPF engine ")]
    assert row.split()[2] == "available"
    assert "--engine auto uses it: BPF programs load and attach to the kvm tracepoints" in row


# -- killed ----------------------------------------------------------------------------

_BPF_PROG_GET_FD_BY_ID = 13


def _prog_ids(pid: int) -> set:
    """Ids of the BPF programs process *pid* holds (from its fdinfo)."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
        except OSError:
            pass
    return ids


def _prog_exists(prog_id: int) -> bool:
    """Whether the kernel still has BPF program *prog_id* (bpf(2) GET_FD_BY_ID)."""
    libc = ctypes.CDLL(None, use_errno=True)
    attr = ctypes.create_string_buffer(128)  # union bpf_attr; prog_id is its first u32
    ctypes.c_uint32.from_buffer(attr).value = prog_id
    fd = libc.syscall(321, _BPF_PROG_GET_FD_BY_ID, attr, len(attr))  # __NR_bpf on x86_64
    if fd >= 0:
        os.close(fd)
        return True
    return False


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="bpf(2) number of x86_64")
def test_everything_is_released_when_kvm_stat_is_killed(guest_process):
    guest = guest_process("pio")
    proc = subprocess.Popen([sys.executable, "-m", "kvmstat", "-l", "-s", "0.2", "--engine",
                             "bpf", "-p", str(guest.pid), "-f", FIELDS],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        proc.stdout.readline()  # the banner: the programs are attached
        ids = _prog_ids(proc.pid)
        assert len(ids) == 2 and all(_prog_exists(i) for i in ids)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    deadline = time.monotonic() + 30
    while any(_prog_exists(i) for i in ids):
        assert time.monotonic() < deadline, "the programs outlived the killed kvm_stat"
        time.sleep(0.1)
