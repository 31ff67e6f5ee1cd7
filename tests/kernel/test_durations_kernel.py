"""Exit durations on the real kernel, exact where the kernel allows.

The test guest makes N + 1 port writes and holds each exit D ms in user
space (busy-waiting, so the thread stays on its CPU) before it enters
KVM_RUN again, all in one command: the first N exits end at the next
KVM_RUN, the last one stays open.  So kvm_userspace_exit(IO) has exactly N
durations, each at least D.  Each is also a little longer:
the guest helper's Python between the exit and the start of the wait and
between its end and the next ioctl (about 40 us here), and whatever time a
busy 2-CPU host would take the thread off its CPU: the guest's thread runs
as a real-time (SCHED_FIFO) thread while it holds, so that other helpers'
work cannot preempt it (without that, several ms per exit were seen on the
shared development machine).  SLACK allows 1 ms per exit on average: 25
times the overhead measured, and still far below D, so a duration measured
from the wrong event (e.g. from one exit to the next) cannot pass.
"""

import json
import os
import signal
import time

import pytest

import kvmstat
from kvmstat.counting.duration_engine import (DurationCounter, DurationTracepoint,
                                              durations_layout)
from kvmstat.counting.durations import (KIND_GUEST, KIND_KERNEL, KIND_VMM, bucket_of,
                                        upper_bound_ns)
from kvmstat.sampling.duration_source import open_durations
from kvmstat.tracefs.events import Field, load_events

from helpers.batchwindow import start_batch
from helpers.commands import start_kvm_stat, wait_for
from helpers.exporter import ExporterProcess, series, value
from helpers.qemuguest import QemuGuest

N = 40
HOLD = 0.005          # seconds
SLACK_NS = 1_000_000  # per exit, see the module
IO = "kvm_userspace_exit(IO)"


def realtime(*tids):
    """Make these threads SCHED_FIFO: nothing of normal priority preempts them."""
    for tid in tids:
        os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(10))


def check_holds(hist_count, sum_ns, buckets, n, hold):
    """N durations, all in buckets above the hold, the sum within the slack."""
    hold_ns = int(hold * 1e9)
    assert hist_count == n
    assert sum(count for _, count in buckets) == n
    for upper, count in buckets:
        assert upper is None or upper > hold_ns, buckets
    assert n * hold_ns <= sum_ns <= n * (hold_ns + SLACK_NS)


def buckets_of(hist):
    return [(upper_bound_ns(i), c) for i, c in enumerate(hist.buckets) if c]


def test_kvm_stat_once_json_durations_for_a_pid_are_exact(guest_process):
    guest = guest_process("pio")
    realtime(guest.pid)
    proc = start_batch(["--durations", "--json", "-p", str(guest.pid),
                        "-f", "kvm_userspace_exit"])
    guest.run(N + 1, hold=HOLD)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    durations = json.loads(out)["durations"]
    io = durations[IO]
    check_holds(io["count"], io["sum_ns"], [tuple(b) for b in io["buckets"]], N, HOLD)
    assert io["max_ns"] >= HOLD * 1e9
    assert durations["kvm_userspace_exit"] == io
    assert set(durations) == {"kvm_userspace_exit", IO}


def test_kvm_stat_once_durations_table_for_a_pid(guest_process):
    guest = guest_process("pio")
    realtime(guest.pid)
    proc = start_batch(["--durations", "-p", str(guest.pid)])
    guest.run(N + 1, hold=HOLD)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["field", "count", "time%"]
    table = lines[1:lines.index("")]  # the vCPU table follows (test_vcpu_times_kernel)
    rows = {line.split()[0]: line.split() for line in table}
    assert rows[IO][1:3] == [str(N), "100.0"]
    avg, p50, p99, peak = (float(v) for v in rows[IO][3:])
    assert HOLD * 1e6 <= avg <= peak
    assert HOLD * 1e6 <= p50 <= p99 <= peak
    # This host never fires kvm_exit: the table says so rather than showing zeros.
    if os.path.isdir("/sys/module/kvm_pvm"):
        assert any(line.startswith("no durations for kvm_entry, kvm_exit:") for line in lines)
        assert "kvm_exit" not in rows


def test_two_vms_each_show_their_own_hold(guest_process):
    holds = {guest_process("pio", name="short"): 0.002, guest_process("pio", name="long"): 0.008}
    realtime(*(guest.pid for guest in holds))
    with kvmstat.open_sampler(fields="kvm_userspace_exit", by_vm=True, durations=True) as sampler:
        sampler.sample()
        for guest, hold in holds.items():
            guest.run(N // 2 + 1, hold=hold)
        sample = sampler.sample()
    per_vm = sample.durations.by_vm_delta
    for guest, hold in holds.items():
        io = per_vm[guest.pid][IO]
        check_holds(io.count, io.sum_ns, buckets_of(io), N // 2, hold)
    short, long_ = (per_vm[g.pid][IO] for g in holds)
    assert bucket_of(short.max_ns) < bucket_of(long_.max_ns)
    assert sample.durations.by_vm_total[next(iter(holds)).pid][IO].count == N // 2


@pytest.mark.parametrize("marker,raw", [("ioctl", True), ("kvm_fpu", False)])
def test_other_markers_and_attachments_give_the_same_durations(guest_process, tracefs,
                                                              marker, raw):
    """The ioctl marker (through perf), and every program attached through
    perf (reading the trace record) instead of as raw tracepoints."""
    if marker == "kvm_fpu" and not os.path.isdir(f"{tracefs}/events/kvm/kvm_fpu"):
        pytest.skip("this kernel has no kvm_fpu tracepoint")
    guest = guest_process("pio")
    realtime(guest.pid)
    source = open_durations(marker=marker, raw=raw, pid=guest.pid)
    try:
        assert source.marker == ("sys_enter_ioctl" if marker == "ioctl" else marker)
        if not raw:
            assert set(source.attachments.values()) == {"perf"}
        source.sample()
        guest.run(N + 1, hold=HOLD)
        io = source.sample().delta[IO]
    finally:
        source.close()
    check_holds(io.count, io.sum_ns, buckets_of(io), N, HOLD)


def test_auto_marker_is_kvm_fpu_and_programs_attach_raw(guest_process, tracefs):
    guest = guest_process("pio")
    source = open_durations(pid=guest.pid)
    try:
        expected = "kvm_fpu" if os.path.isdir(f"{tracefs}/events/kvm/kvm_fpu") else "sys_enter_ioctl"
        assert source.marker == expected
        # Raw tracepoints where the kernel allows them (5.x kernels with
        # module tracepoints by name); kvm_exit's program reads the record.
        attached = source.attachments
        assert attached["kvm_userspace_exit"] == "raw"
        assert attached["kvm_vcpu_wakeup"] == "raw"
        assert attached["marker"] == ("raw" if expected == "kvm_fpu" else "perf")
    finally:
        source.close()


def test_reads_by_key_iteration_give_the_same_histograms(guest_process, tracefs):
    """The read path of kernels without batch lookups (BPF_MAP_LOOKUP_BATCH,
    5.6), and a reset: the counts start again from zero."""
    guest = guest_process("pio")
    realtime(guest.pid)
    events = {e.name: e for e in load_events(tracefs, None)}
    layout = durations_layout(tracefs, events, kernel_times=False)
    marker = 1 if layout["marker"].name == "kvm_fpu" else 0xAE80
    with DurationCounter(layout, marker_value=marker) as counter:
        guest.run(N + 1, hold=HOLD)
        batch = mine(counter.read()[0], guest.pid)[(KIND_VMM, 2)]
        counter.use_key_iteration()
        walked = mine(counter.read()[0], guest.pid)[(KIND_VMM, 2)]
        assert (walked.count, walked.sum_ns, walked.buckets) == \
            (batch.count, batch.sum_ns, batch.buckets)
        check_holds(walked.count, walked.sum_ns, buckets_of(walked), N, HOLD)
        counter.reset()
        assert (KIND_VMM, 2) not in mine(counter.read()[0], guest.pid)
        # The reset forgot the exit left open too: of 3 more exits, the first
        # two end at the next KVM_RUN, the last stays open.
        guest.run(3)
        assert mine(counter.read()[0], guest.pid)[(KIND_VMM, 2)].count == 2


# -- the kvm_exit/kvm_entry programs, on stand-in tracepoints ---------------------------
#
# kvm_exit and kvm_entry never fire on the development host, so their
# programs are attached to tracepoints that fire in the same order around a
# port write: kvm_pio stands in for kvm_exit (its port as the reason) and
# kvm_fpu (fired when KVM_RUN loads and unloads the guest's FPU state) or a
# tracepoint the test guest never fires (an SMM transition) for kvm_entry.

def stand_in_layout(tracefs, entry_name):
    events = {e.name: e for e in load_events(tracefs, None)}
    layout = dict(durations_layout(tracefs, events, kernel_times=False))
    pio = events["kvm_pio"]
    with open(f"{tracefs}/events/kvm/kvm_pio/format") as f:
        port = next(line for line in f if "port;" in line)
    offset = int(port.split("offset:")[1].split(";")[0])
    layout["kvm_exit"] = DurationTracepoint("kvm_pio", pio.id, Field("port", offset, 4, False))
    layout["kvm_entry"] = DurationTracepoint(entry_name, events[entry_name].id)
    return layout, (1 if layout["marker"].name == "kvm_fpu" else 0xAE80)


def mine(entries, pid):
    return {(e.kind, e.reason): e.histogram for e in entries if e.tgid == pid}


def test_exit_entry_pairing_with_kvm_fpu_as_kvm_entry(guest_process, tracefs):
    """Per run: fpu load (entry) -> pio (exit: guest time ends, kernel time
    starts) -> fpu unload (entry: kernel time ends) -> user space (held) ->
    the next run's fpu load (the VMM's time ends)."""
    if not os.path.isdir(f"{tracefs}/events/kvm/kvm_fpu"):
        pytest.skip("this kernel has no kvm_fpu tracepoint to stand in for kvm_entry")
    guest = guest_process("pio")
    realtime(guest.pid)
    layout, marker_value = stand_in_layout(tracefs, "kvm_fpu")
    with DurationCounter(layout, marker_value=marker_value) as counter:
        guest.run(N + 1, hold=HOLD)
        got = mine(counter.read()[0], guest.pid)
    assert set(got) == {(KIND_GUEST, 0), (KIND_KERNEL, 0x3F8), (KIND_VMM, 2)}
    assert got[(KIND_GUEST, 0)].count == N + 1
    assert got[(KIND_KERNEL, 0x3F8)].count == N + 1
    assert got[(KIND_KERNEL, 0x3F8)].max_ns < HOLD * 1e9  # never the user-space hold
    io = got[(KIND_VMM, 2)]
    check_holds(io.count, io.sum_ns, buckets_of(io), N, HOLD)


def test_kernel_time_ends_at_the_exit_to_user_space(guest_process, tracefs):
    """Without a kvm_entry in between, the kernel's time of an exit ends when
    it goes on to user space, so kernel and VMM times never overlap."""
    guest = guest_process("pio")
    layout, marker_value = stand_in_layout(tracefs, "kvm_smm_transition")
    with DurationCounter(layout, marker_value=marker_value) as counter:
        guest.run(N, hold=HOLD)
        got = mine(counter.read()[0], guest.pid)
    assert got[(KIND_KERNEL, 0x3F8)].count == N
    assert got[(KIND_VMM, 2)].count == N - 1
    assert got[(KIND_KERNEL, 0x3F8)].max_ns < HOLD * 1e9
    assert (KIND_GUEST, 0) not in got


# -- halts: a QEMU guest halting until each tick of the PIT --------------------------------
#
# The guest boots the helper's halt sector: woken by a tick, it stays awake
# until the PIT's counter says a quarter of the period has gone, then halts
# until the next tick.  Its halts last 3/4 of the 1 ms period plus the time
# the vCPU takes to wake up for the tick that ends them (0.78 to 0.82 ms on
# average here), in the middle of the log2 bucket [0.52 ms, 1.05 ms) that
# holds the period.  Halts leave that bucket only when the host is late:
# - a wake-up more than ~0.25 ms late makes its halt longer (the next
#   buckets up); the halt after it starts at the same point of the PIT's
#   period as ever, unless the lateness passed that point;
# - when the host holds up the PIT's timer or its kernel thread, the
#   in-kernel PIT injects the ticks it owes one after the other, each as
#   soon as the guest acknowledges the last: each gives a halt of tens of us;
# - the pause at either end of the window cuts a halt in two.
# Measured, 36 windows of 1 s: 99.3% to 100% in the period's bucket with
# the host idle, 99.5% to 99.9% beside busy loops on both CPUs, 97.2% to
# 99.9% at load 10 (six busy loops, a fork loop, a memory copier; the
# misses were the short halts of owed ticks).  90% leaves room for three
# times the worst seen, while a duration measured from the wrong event, in
# the wrong unit or for the wrong thread misses that bucket.  (Halting
# right after each tick instead puts the halts at 0.985 ms, 60 us under
# the bucket's upper bound: wake-up jitter sent up to 14% of them to the
# next bucket under load.)  The vCPU and the PIT's kernel thread run as
# real-time threads, so the other helpers' work does not make ticks late.

TICK_HZ = 1000
TICK_BUCKET_SHARE = 0.9

def _stopped(pid):
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] not in "tT":
                return False
    return True


def _pause(pid):
    """SIGSTOP the VM and wait until every thread is stopped: nothing
    happens while the sampler reads, so counts and durations agree."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while not _stopped(pid):
        assert time.monotonic() < deadline, "QEMU did not stop"
        time.sleep(0.005)


@pytest.mark.qemu
def test_halt_durations_match_wakeups_and_sit_in_the_tick_period_bucket():
    with QemuGuest("kvmstat-halts", vcpus=1, pit_hz=TICK_HZ, halt_only=True) as vm:
        # The vCPU and the PIT's kernel thread wake on time on a busy host.
        realtime(vm.pit_thread(), *(tid for tid, name in vm.threads().items() if "/KVM" in name))
        with kvmstat.open_sampler(fields="kvm_vcpu_wakeup", pid=vm.pid,
                                  durations=True) as sampler:
            try:
                _pause(vm.pid)
                sampler.sample()
                os.kill(vm.pid, signal.SIGCONT)
                time.sleep(1)
                _pause(vm.pid)
                sample = sampler.sample()
            finally:
                os.kill(vm.pid, signal.SIGCONT)
    wakeups = sample.values["kvm_vcpu_wakeup"][1]
    halts = sample.durations.delta["kvm_vcpu_wakeup"]
    assert wakeups > TICK_HZ // 4
    assert halts.count == wakeups
    parts = [h for name, h in sample.durations.delta.items() if name != "kvm_vcpu_wakeup"]
    assert sum(h.count for h in parts) == wakeups  # waited + polled
    tick = bucket_of(10**9 // TICK_HZ)
    assert halts.buckets[tick] >= TICK_BUCKET_SHARE * halts.count, buckets_of(halts)


# -- log mode and the exporter, end to end ---------------------------------------------

def test_log_csv_rows_carry_the_holds(guest_process, tmp_path):
    guest = guest_process("pio", name="logged")
    realtime(guest.pid)
    log = tmp_path / "durations.csv"
    proc = start_kvm_stat("-L", str(log), "-c", "--durations", "-s", "0.5", "-p", str(guest.pid),
                          "-f", "kvm_userspace_exit")
    try:
        wait_for(lambda: log.exists() and log.stat().st_size > 0, "the CSV header", proc=proc)
        guest.run(N + 1, hold=HOLD)
        wait_for(lambda: f",{IO}," in log.read_text(), "a row with the holds", proc=proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = log.read_text().splitlines()
    assert lines[0] == "timestamp,field,count,time_share,avg_us,p50_us,p99_us,max_us"
    rows = [line.split(",") for line in lines[1:] if line.split(",")[1] == IO]
    assert sum(int(row[2]) for row in rows) == N
    for row in rows:
        assert float(row[4]) >= HOLD * 1e6 and float(row[7]) >= HOLD * 1e6


def test_exporter_serves_duration_histograms_in_seconds(guest_process):
    guest = guest_process("pio", name="scraped")
    realtime(guest.pid)
    with ExporterProcess(["--durations", "-p", str(guest.pid), "-f", "kvm_userspace_exit"]) as exporter:
        exporter.scrape()
        guest.run(N + 1, hold=HOLD)
        families = exporter.scrape()
    labels = {"pid": str(guest.pid), "guest": "scraped", "reason": "IO"}
    family = "kvm_tracepoint_userspace_exit_duration_seconds"
    assert families[family].type == "histogram"
    assert value(families, family + "_count", **labels) == N
    total = value(families, family + "_sum", **labels)
    assert N * HOLD <= total <= N * (HOLD + SLACK_NS * 1e-9)
    buckets = {dict(key)["le"]: v for key, v in series(families, family + "_bucket").items()
               if dict(key).get("reason") == "IO"}
    assert buckets["+Inf"] == N
    below = [v for le, v in buckets.items() if le != "+Inf" and float(le) <= HOLD]
    assert below and max(below) == 0  # every hold is above D: no bucket at or below it counts
    # Where the vCPU's time went, as counters whose states partition it: the
    # holds are VMM time; on this host guest and kernel are one state, kvm_run.
    vcpu = {"pid": str(guest.pid), "guest": "scraped", "vcpu": "", "tid": str(guest.pid)}
    times = {dict(key)["state"]: v for key, v in
             series(families, "kvm_tracepoint_vcpu_time_seconds_total").items()
             if set(vcpu.items()) <= set(key)}
    assert families["kvm_tracepoint_vcpu_time_seconds"].type == "counter"
    assert times["vmm"] >= N * HOLD
    if os.path.isdir("/sys/module/kvm_pvm"):
        assert set(times) == {"kvm_run", "halted", "vmm"} and times["kvm_run"] > 0
