"""The BPF counting engine against the real kernel, with test guests.

The guests' exits are exact (``pio``: one kvm_pio and one
kvm_userspace_exit(IO) per run; ``hlt``: one kvm_userspace_exit(HLT)), so
every count is checked for equality.  Other VMs may run on the host at the
same time: totals are only checked through our guests' buckets, through
``only_pid``, or through raw entries of our own pids.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys

import pytest

from kvmstat.counting.bpf import (BpfCounter, BpfEventSpec, BpfLoadError,
                               BpfTableFull, bpf_supported)
from kvmstat.errors import InvalidArgument, NativeError
from kvmstat.tracefs.events import load_events, parse_format
from kvmstat.counting.native import PER_THREAD, EventSpec, open_counter_set
from kvmstat.providers.tracepoints import online_cpus

pytestmark = pytest.mark.kernel

KVM_EXIT_IO = 2
KVM_EXIT_HLT = 5


def _format(tracefs: str, name: str):
    with open(os.path.join(tracefs, "events", "kvm", name, "format")) as f:
        return parse_format(f.read())


@pytest.fixture
def uexit(tracefs) -> BpfEventSpec:
    """kvm_userspace_exit with its reason field, from this kernel's format."""
    fmt = _format(tracefs, "kvm_userspace_exit")
    return BpfEventSpec.for_field("kvm_userspace_exit", fmt.id, fmt.fields["reason"])


@pytest.fixture
def pio(tracefs) -> BpfEventSpec:
    return BpfEventSpec("kvm_pio", _format(tracefs, "kvm_pio").id)


# Columns used by most tests: userspace exits (all, IO, HLT) and kvm_pio.
FIELDS = [(0, None), (0, (KVM_EXIT_IO,)), (0, (KVM_EXIT_HLT,)), (1, None)]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rows(flat: list[int], nfields: int) -> list[list[int]]:
    return [flat[i:i + nfields] for i in range(0, len(flat), nfields)]


def _entries_of(counter: BpfCounter, pid: int) -> dict:
    return {(e.event, e.reason): e.count for e in counter.dump() if e.tgid == pid}


def _possible_cpus() -> int:
    """The number of CPUs in /sys/devices/system/cpu/possible."""
    with open("/sys/devices/system/cpu/possible") as f:
        ranges = [part.partition("-") for part in f.read().strip().split(",")]
    return sum(int(hi or lo) - int(lo) + 1 for lo, _, hi in ranges)


def _last_cpu(pid: int, tid: int) -> int:
    """The CPU a thread last ran on (field 39 of /proc/PID/task/TID/stat)."""
    with open(f"/proc/{pid}/task/{tid}/stat") as f:
        stat = f.read()
    return int(stat.rsplit(")", 1)[1].split()[36])


def test_probe_succeeds(uexit):
    assert bpf_supported() == (True, "")
    assert bpf_supported(uexit.tracepoint_id) == (True, "")


def test_exact_counts_per_reason_and_per_guest(guest_process, uexit, pio):
    a = guest_process("pio")
    b = guest_process("pio")
    h = guest_process("hlt")
    with BpfCounter([uexit, pio], FIELDS) as c:
        c.set_buckets({a.pid: 0, b.pid: 1, h.pid: 2})
        a.run(777)
        b.run(123)
        h.run(55)
        totals, flat = c.read(3)
        rows = _rows(flat, len(FIELDS))
        assert rows[0] == [777, 777, 0, 777]
        assert rows[1] == [123, 123, 0, 123]
        assert rows[2] == [55, 0, 55, 0]
        # Other VMs may add to the totals, never take away.
        assert all(t >= sum(col) for t, col in zip(totals, zip(*rows)))
        # The raw table: one entry per (event, reason) of each guest.
        assert _entries_of(c, a.pid) == {(0, KVM_EXIT_IO): 777, (1, 0): 777}
        assert _entries_of(c, h.pid) == {(0, KVM_EXIT_HLT): 55}
        # A bucket table that leaves b out: b counts only in the totals.
        c.set_buckets({h.pid: 0, a.pid: 1})
        _, flat = c.read(2)
        assert _rows(flat, len(FIELDS)) == [[55, 0, 55, 0], [777, 777, 0, 777]]
        # Buckets beyond nbuckets count only in the totals too.
        _, flat = c.read(1)
        assert flat == [55, 0, 55, 0]


def test_same_counts_as_perf_groups(guest_process, uexit, pio):
    """Both engines on the same tracepoints at once agree.  This also shows
    that the BPF programs do not hide hits from perf users of the
    tracepoint (a program returning 0 would)."""
    guests = [guest_process("pio"), guest_process("hlt")]
    perf_events = [EventSpec("kvm_userspace_exit", uexit.tracepoint_id),
                   EventSpec("kvm_userspace_exit(IO)", uexit.tracepoint_id, f"reason=={KVM_EXIT_IO}"),
                   EventSpec("kvm_userspace_exit(HLT)", uexit.tracepoint_id, f"reason=={KVM_EXIT_HLT}"),
                   EventSpec("kvm_pio", pio.tracepoint_id)]
    with open_counter_set(perf_events, PER_THREAD) as perf, BpfCounter([uexit, pio], FIELDS) as bpf:
        for bucket, g in enumerate(guests):
            for tid in g.tids():
                perf.add(tid, bucket)
        perf.enable()
        bpf.set_buckets({g.pid: i for i, g in enumerate(guests)})
        guests[0].run(500)
        guests[1].run(300)
        guests[0].run(42)
        _, perf_flat = perf.read(2)
        _, bpf_flat = bpf.read(2)
    assert bpf_flat == perf_flat == [542, 542, 0, 542, 300, 0, 300, 0]


def test_descriptors_do_not_grow_with_threads(guest_process, uexit, pio):
    g = guest_process("pio")
    before = _open_fds()
    with BpfCounter([uexit, pio], FIELDS, only_pid=g.pid) as c:
        # One program and one perf event per tracepoint, and three maps
        # (counts, dropped hits, processes counted besides the pid).
        assert c.fds == 2 * 2 + 3
        assert _open_fds() - before == c.fds
        tids = {g.thread(10) for _ in range(16)}  # 16 new vCPUs, each in a new thread
        assert len(tids) == 16
        assert _open_fds() - before == c.fds
        totals, _ = c.read()
        assert totals == [160, 160, 0, 160]
    assert _open_fds() == before


def test_counts_hits_on_every_cpu(guest_process, uexit, pio):
    cpus = online_cpus()
    if len(cpus) < 2:
        pytest.skip("needs two online CPUs to show that one perf event serves all")
    g = guest_process("pio")
    tid = g.pid  # the guest runs its vCPU in the main thread
    expected = 0
    with BpfCounter([uexit, pio], FIELDS, only_pid=g.pid) as c:
        try:
            for i, cpu in enumerate(cpus):
                os.sched_setaffinity(tid, {cpu})
                n = 100 + 7 * i
                g.run(n)
                assert _last_cpu(g.pid, tid) == cpu
                expected += n
                totals, _ = c.read()
                assert totals == [expected, expected, 0, expected], f"after CPU {cpu}"
        finally:
            os.sched_setaffinity(tid, cpus)


def test_only_pid_counts_one_process(guest_process, uexit, pio):
    a = guest_process("pio")
    b = guest_process("pio")
    with BpfCounter([uexit, pio], FIELDS, only_pid=a.pid) as c:
        a.run(30)
        b.run(40)
        totals, _ = c.read()
        assert totals == [30, 30, 0, 30]
        assert {e.tgid for e in c.dump()} == {a.pid}


def test_processes_counted_besides_the_pid(guest_process, uexit, pio):
    """What -p uses for kernel threads working for a VM in their own thread
    group (kvm-pit/<pid>): they are counted with the pid, others are not."""
    a, b, c_ = guest_process("pio"), guest_process("hlt"), guest_process("pio")
    with BpfCounter([uexit, pio], FIELDS, only_pid=a.pid) as c:
        c.also_count([b.pid])
        a.run(30)
        b.run(5)
        c_.run(40)
        assert c.read()[0] == [35, 30, 5, 30]
        assert {e.tgid for e in c.dump()} == {a.pid, b.pid}
        c.also_count([c_.pid])  # b leaves the set, its counts stay
        b.run(6)
        c_.run(4)
        a.run(1)
        assert c.read()[0] == [40, 35, 5, 35]


def test_reset_starts_from_zero(guest_process, uexit, pio):
    g = guest_process("pio")
    with BpfCounter([uexit, pio], FIELDS, only_pid=g.pid) as c:
        g.run(20)
        assert c.read()[0] == [20, 20, 0, 20]
        c.reset()
        assert c.read()[0] == [0, 0, 0, 0]
        assert c.dump() == []
        g.run(7)
        assert c.read()[0] == [7, 7, 0, 7]


def test_forget_keeps_totals_of_exited_processes(guest_process, uexit, pio):
    a = guest_process("pio")
    b = guest_process("hlt")
    with BpfCounter([uexit, pio], FIELDS) as c:
        c.set_buckets({a.pid: 0, b.pid: 1})
        a.run(11)
        b.run(13)
        before, flat = c.read(2)
        assert flat == [11, 11, 0, 11, 13, 0, 13, 0]
        a.close()
        assert c.forget([a.pid]) == 2  # its kvm_userspace_exit(IO) and kvm_pio entries
        assert _entries_of(c, a.pid) == {}
        after, flat = c.read(2)
        assert flat == [0, 0, 0, 0, 13, 0, 13, 0]
        assert all(x >= y for x, y in zip(after, before))
        assert c.forget([a.pid]) == 0
        c.reset()
        b.run(2)
        assert c.read(2)[1] == [0, 0, 0, 0, 2, 0, 2, 0]


def test_key_iteration_reads_the_same(guest_process, uexit, pio):
    g = guest_process("hlt")
    with BpfCounter([uexit, pio], FIELDS, only_pid=g.pid) as c:
        assert c.batch_reads  # this kernel (>= 5.6) has BPF_MAP_LOOKUP_BATCH
        g.run(64)
        batch = c.read()
        c.use_key_iteration()
        assert not c.batch_reads
        assert c.read() == batch == ([64, 0, 64, 0], None)


def test_many_entries_need_several_batches(guest_process, uexit, pio):
    """More table entries than one batch call returns (256): the read must
    follow the batch token to the end, and key iteration must find them all."""
    guests = [guest_process("pio") for _ in range(4)]
    # Each tracepoint 36 times (the kernel allows 64 programs per
    # tracepoint): every run of a guest makes 72 entries, 288 in all.
    events = [uexit] * 36 + [pio] * 36
    with BpfCounter(events, [(i, None) for i in range(72)]) as c:
        c.set_buckets({g.pid: i for i, g in enumerate(guests)})
        for i, g in enumerate(guests):
            g.run(i + 1)
        expected = [n for i in range(4) for n in [i + 1] * 72]
        assert c.read(4)[1] == expected
        pids = {g.pid for g in guests}
        ours = [e for e in c.dump() if e.tgid in pids]
        assert len(ours) == 288
        c.use_key_iteration()
        assert c.read(4)[1] == expected


def test_full_table_is_an_error_with_the_lost_hits(guest_process, uexit, pio):
    g = guest_process("pio")
    # Room for one entry: kvm_pio (first in each exit) gets it, every
    # kvm_userspace_exit of the run is lost.
    with BpfCounter([pio, uexit], [(0, None), (1, None)], only_pid=g.pid, max_entries=1) as c:
        g.run(5)
        with pytest.raises(BpfTableFull) as info:
            c.read()
        assert info.value.dropped == 5
        assert "table is full (1 entries): 5 hits were not counted" in str(info.value)
        c.reset()
        assert c.read()[0] == [0, 0]


def test_a_burst_of_new_entries_loses_no_hit(guest_process, tracefs):
    """Guests starting together make many new entries at once (every kvm
    tracepoint, per process), on whatever CPU: none is lost to an
    allocation in the program (a table allocated on use lost some here:
    the kernel refills its per-CPU element cache only later)."""
    events = [BpfEventSpec(e.name, e.id) for e in load_events(tracefs, None)]
    with BpfCounter(events, [(i, None) for i in range(len(events))]) as c:
        for _ in range(4):
            guests = [guest_process("pio") for _ in range(3)]
            for g in guests:
                g.run(20)
            for g in guests:
                g.close()
            c.read()  # raises BpfTableFull if a hit was lost
        assert c.entries > 3 * 4 * 2


def test_possible_cpus_and_misses(uexit):
    with BpfCounter([uexit], [(0, None)]) as c:
        assert c.ncpus == _possible_cpus()
        # The default table: 16384 entries up to 128 possible CPUs.
        assert c.max_entries == max(1024, min(16384, (16 << 20) // (8 * c.ncpus)))
        assert c.missed >= 0


@pytest.mark.parametrize("offset", [30000, 9, 4])
def test_verifier_rejection_shows_its_log(uexit, offset):
    """Beyond the largest record the verifier allows, misaligned, or inside
    the common fields the program may not read: the verifier says why."""
    before = _open_fds()
    bad = BpfEventSpec("kvm_userspace_exit", uexit.tracepoint_id, offset, 4)
    with pytest.raises(BpfLoadError) as info:
        # A child field: only a breakdown reads the reason.
        BpfCounter([bad], [(0, (KVM_EXIT_IO,))])
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("the kernel's verifier rejected the BPF program for kvm_userspace_exit "
                          f"(reason field at offset {offset}, 4 bytes)")
    assert f"invalid bpf_context access off={offset} size=4" in msg
    assert f"invalid bpf_context access off={offset} size=4" in info.value.log
    assert _open_fds() == before


def test_field_beyond_the_record_is_refused_at_attach(uexit):
    before = _open_fds()
    bad = BpfEventSpec("kvm_userspace_exit", uexit.tracepoint_id, 200, 4)
    with pytest.raises(NativeError) as info:
        BpfCounter([bad], [(0, (KVM_EXIT_IO,))])
    assert not isinstance(info.value, BpfLoadError)
    assert str(info.value) == ("attaching the BPF program to kvm_userspace_exit failed: its "
                               "reason field at offset 200, 4 bytes lies beyond the tracepoint's record")
    assert _open_fds() == before


def test_size_without_a_load_instruction_is_refused_before_loading(uexit):
    bad = BpfEventSpec("kvm_userspace_exit", uexit.tracepoint_id, 8, 3)
    with pytest.raises(InvalidArgument, match="fields of 1, 2, 4 or 8 bytes"):
        BpfCounter([bad], [(0, None)])


def test_unknown_tracepoint_is_a_clear_error():
    with pytest.raises(NativeError, match=r"^perf_event_open failed for nope on CPU 0: "):
        BpfCounter([BpfEventSpec("nope", 2**40)], [(0, None)])


KILLED_CHILD = """
import sys, time
from kvmstat.counting.bpf import BpfCounter, BpfEventSpec
c = BpfCounter([BpfEventSpec("kvm_pio", {tp})] * {n}, [])
print("ready", flush=True)
time.sleep(60)
"""


def test_everything_is_released_when_the_process_is_killed(pio):
    """The kernel allows 64 programs per tracepoint: while a process holds 59
    of them, 6 more do not fit; once it is killed, they do (nothing pinned,
    nothing left behind)."""
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CHILD.format(tp=pio.tracepoint_id, n=59)],
        stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    try:
        assert child.stdout.readline().strip() == "ready"
        with pytest.raises(NativeError, match="most BPF programs the kernel allows"):
            BpfCounter([pio] * 6, [])
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    with BpfCounter([pio] * 6, []) as c:
        assert c.fds == 14


# -- layouts and attachments -------------------------------------------------------

def _raw(spec: BpfEventSpec, arg: int | None = None) -> BpfEventSpec:
    """The same event, attachable as a raw tracepoint (reason argument *arg*)."""
    return BpfEventSpec(spec.name, spec.tracepoint_id, spec.reason_offset, spec.reason_size,
                        tracepoint=spec.name, reason_arg=arg)


@pytest.mark.parametrize("layout", ["slots", "by-process"])
@pytest.mark.parametrize("attach", ["raw", "perf", "auto"])
def test_every_layout_and_attachment_counts_exactly(guest_process, uexit, pio, layout, attach):
    g = guest_process("pio")
    h = guest_process("hlt")
    events = [_raw(uexit, 0), _raw(pio)]
    with BpfCounter(events, FIELDS, only_pid=g.pid, layout=layout, attach=attach) as c:
        c.also_count([h.pid])
        c.set_buckets({g.pid: 0, h.pid: 0})
        assert c.attached == (("perf",) * 2 if attach == "perf" else ("raw",) * 2)
        g.run(321)
        h.run(17)
        totals, flat = c.read(1)
        assert totals == flat == [338, 321, 17, 321]
        c.reset()
        g.run(5)
        assert c.read()[0] == [5, 5, 0, 5]


def test_slots_layout_keeps_no_process_and_counts_unnamed_reasons_in_the_parent(
        guest_process, uexit, pio):
    g = guest_process("pio")
    h = guest_process("hlt")
    # Only IO is broken down: HLT exits land in the "other reasons" slot.
    fields = [(0, None), (0, (KVM_EXIT_IO,)), (1, None)]
    with BpfCounter([_raw(uexit, 0), _raw(pio)], fields, only_pid=g.pid,
                    layout="slots") as c:
        c.also_count([h.pid])
        g.run(40)
        h.run(3)
        assert c.read()[0] == [43, 40, 40]
        entries = {(e.event, e.tgid, e.reason): e.count for e in c.dump()}
        assert entries == {(0, 0, KVM_EXIT_IO): 40, (0, 2**32 - 1, 0): 3, (1, 0, 0): 40}
        assert c.forget([g.pid]) == 0
        # Fields naming a reason without a slot are refused by the core.
        cfields = c._ffi.new("struct kvmstat_bpf_field[]", 1)
        codes = c._ffi.new("uint64_t[]", [KVM_EXIT_HLT])
        cfields[0].event, cfields[0].codes, cfields[0].ncodes = 0, codes, 1
        assert c._lib.kvmstat_bpf_set_fields(c._eng, cfields, 1) == -errno.EINVAL


def test_an_event_without_a_raw_tracepoint_falls_back_to_perf(guest_process, uexit, pio):
    g = guest_process("pio")
    misnamed = BpfEventSpec("kvm_pio", pio.tracepoint_id, tracepoint="kvm_no_such_tracepoint")
    with BpfCounter([_raw(uexit, 0), misnamed], FIELDS, only_pid=g.pid, layout="slots") as c:
        assert c.attached == ("raw", "perf")
        g.run(9)
        assert c.read()[0] == [9, 9, 0, 9]
    with pytest.raises(NativeError):
        BpfCounter([misnamed], [(0, None)], attach="raw")


def test_a_breakdown_without_a_reason_argument_reads_the_record(guest_process, uexit):
    g = guest_process("pio")
    with BpfCounter([_raw(uexit)], FIELDS[:3], only_pid=g.pid, layout="slots") as c:
        assert c.attached == ("perf",)
        g.run(6)
        assert c.read()[0] == [6, 6, 0]
    # Parents only: no reason to read, so a raw tracepoint will do.
    with BpfCounter([_raw(uexit)], [(0, None)], only_pid=g.pid, layout="slots") as c:
        assert c.attached == ("raw",)


def test_empty_programs_attach_and_count_nothing(guest_process, uexit, pio):
    g = guest_process("pio")
    with BpfCounter([_raw(uexit, 0), _raw(pio)], FIELDS, only_pid=g.pid, layout="empty") as c:
        assert c.attached == ("raw", "raw")
        g.run(10)
        assert c.read()[0] == [0, 0, 0, 0]
        assert c.dump() == []
