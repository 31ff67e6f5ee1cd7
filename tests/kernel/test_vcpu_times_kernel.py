"""Where each vCPU's time goes, on the real kernel (``Durations.vcpus``).

A vCPU thread is in KVM_RUN from the marker (the start of KVM_RUN) until
its next exit to user space, then in the VMM until the next marker.  Once
the engine knows the thread, the two add up to the whole interval: the
tests check that to within READ_SLACK_NS, the time the engine's read and
the sampler's own work take between the two clocks it compares (a few
hundred microseconds here, on a busy host more).  Where the time goes
between them is known exactly from what the test guest does.
"""

import json
import os
import time

import pytest

import kvmstat
from kvmstat.counting.duration_engine import DurationCounter, durations_layout
from kvmstat.counting.durations import KIND_VMM
from kvmstat.sampling.duration_source import open_durations
from kvmstat.tracefs.events import load_events

from helpers.batchwindow import start_batch
from helpers.qemuguest import QemuGuest
from test_durations_kernel import HOLD, N, SLACK_NS, mine, realtime, stand_in_layout

READ_SLACK_NS = 5_000_000


def my_vcpu(durations, tid):
    found = [v for v in durations.vcpus if v.tid == tid]
    assert len(found) == 1, durations.vcpus
    return found[0]


def test_held_exits_are_vmm_time_and_the_rest_is_in_kvm_run(guest_process):
    guest = guest_process("pio")
    realtime(guest.pid)
    with kvmstat.open_sampler(fields="kvm_userspace_exit", pid=guest.pid,
                              durations=True) as sampler:
        guest.run(1)  # the engine knows the thread from here on
        sampler.sample()
        guest.run(N + 1, hold=HOLD)
        v = my_vcpu(sampler.sample().durations, guest.pid)
    assert v.name == "python3" or v.name  # the thread's own name
    assert v.guest_ns is None and v.kernel_ns is None  # kvm_entry/kvm_exit never fire here
    assert v.halt_ns == 0
    assert abs(v.run_ns + v.vmm_ns - v.interval_ns) <= READ_SLACK_NS, v
    # N + 1 holds of HOLD each, plus the Python around them (see test_durations_kernel).
    assert (N + 1) * HOLD * 1e9 <= v.vmm_ns <= v.interval_ns
    assert 0 < v.run_ns < (N + 1) * SLACK_NS


def test_a_guest_looping_in_the_kernel_is_all_in_kvm_run(guest_process):
    """cpuid-loop: KVM_RUN never returns while the loop runs (cpuid is
    handled in the kernel), so the thread's whole interval is in KVM_RUN."""
    guest = guest_process("cpuid-loop")
    with kvmstat.open_sampler(fields="kvm_userspace_exit", pid=guest.pid,
                              durations=True) as sampler:
        tid = guest.start_loop()
        try:
            time.sleep(0.05)
            sampler.sample()
            time.sleep(0.5)
            v = my_vcpu(sampler.sample().durations, tid)
        finally:
            guest.stop_loop()
    assert v.vmm_ns == 0
    assert abs(v.run_ns - v.interval_ns) <= READ_SLACK_NS, v
    assert v.interval_ns >= 0.5e9


def test_an_ended_thread_leaves_the_table_and_the_engine(guest_process):
    """A thread that ends in user space has its VMM state open for ever:
    the source drops its entry from the engine instead of showing it."""
    guest = guest_process("pio")
    source = open_durations(pid=guest.pid)
    try:
        tid = guest.thread(3)
        assert tid != guest.pid
        engine = source._counter  # what the kernel side still holds
        assert tid in [e.tid for e in engine.read_vcpus()[0]]
        durations = source.sample()
        assert tid not in [v.tid for v in durations.vcpus]
        assert tid not in [e.tid for e in engine.read_vcpus()[0]]
        guest.run(1)
        assert guest.pid in [v.tid for v in source.sample().vcpus]
    finally:
        source.close()


def test_the_pid_filter_works_in_the_kernel(guest_process, tracefs):
    """With a process given, the programs record nothing for others: no
    histogram and no thread entry of the other VM exists."""
    mine_vm, other = guest_process("pio"), guest_process("pio")
    events = {e.name: e for e in load_events(tracefs, None)}
    layout = durations_layout(tracefs, events, kernel_times=False)
    marker = 1 if layout["marker"].name == "kvm_fpu" else 0xAE80
    with DurationCounter(layout, marker_value=marker, tgid=mine_vm.pid) as filtered, \
            DurationCounter(layout, marker_value=marker) as everything:
        mine_vm.run(N + 1)
        other.run(N + 1)
        kept, _ = filtered.read()
        assert {e.tgid for e in kept} == {mine_vm.pid}
        assert mine(kept, mine_vm.pid)[(KIND_VMM, 2)].count == N
        assert {e.pid for e in filtered.read_vcpus()[0]} == {mine_vm.pid}
        seen, _ = everything.read()
        assert mine(seen, other.pid)[(KIND_VMM, 2)].count == N  # the other VM did exit


def test_guest_time_with_stand_in_entry_and_exit(guest_process, tracefs):
    """Where kvm_entry/kvm_exit fire the thread's guest time is measured
    too: here kvm_fpu (entry) and kvm_pio (exit) stand in for them (see
    test_durations_kernel), so guest time is a part of KVM_RUN and the VMM
    holds stay outside it."""
    if not os.path.isdir(f"{tracefs}/events/kvm/kvm_fpu"):
        pytest.skip("this kernel has no kvm_fpu tracepoint to stand in for kvm_entry")
    guest = guest_process("pio")
    realtime(guest.pid)
    layout, marker_value = stand_in_layout(tracefs, "kvm_fpu")
    with DurationCounter(layout, marker_value=marker_value, tgid=guest.pid) as counter:
        guest.run(N + 1, hold=HOLD)
        v, = counter.read_vcpus()[0]
    assert (v.tid, v.pid) == (guest.pid, guest.pid)
    assert 0 < v.guest_ns < v.run_ns < N * SLACK_NS
    assert v.vmm_ns >= N * HOLD * 1e9


@pytest.mark.qemu
def test_a_halting_qemu_vcpu_is_mostly_halted_in_kvm_run():
    """SeaBIOS's boot sector guest halts until each PIT tick: its vCPU is in
    KVM_RUN nearly all the time, most of it halted, and the halts the
    wakeups report fit inside KVM_RUN."""
    with QemuGuest("kvmstat-vcpu-times", vcpus=1, pit_hz=1000) as vm:
        cpu0 = next(tid for tid, name in vm.threads().items() if name == "CPU 0/KVM")
        realtime(vm.pit_thread(), cpu0)
        with kvmstat.open_sampler(fields="kvm_vcpu_wakeup", pid=vm.pid,
                                  durations=True) as sampler:
            time.sleep(0.2)
            sampler.sample()
            time.sleep(1)
            v = my_vcpu(sampler.sample().durations, cpu0)
    assert v.name == "CPU 0/KVM"
    assert abs(v.run_ns + v.vmm_ns - v.interval_ns) <= READ_SLACK_NS, v
    assert v.halt_ns <= v.run_ns + READ_SLACK_NS
    assert v.halt_ns >= 0.5 * v.interval_ns, v
    assert v.vmm_ns < 0.2 * v.interval_ns, v


def run_batch(guest, *args):
    proc = start_batch(["--durations", "-p", str(guest.pid), *args])
    guest.run(N + 1, hold=HOLD)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return out


def test_kvm_stat_once_shows_the_vcpu_table_and_json(guest_process):
    guest = guest_process("pio")
    realtime(guest.pid)
    guest.run(1)
    lines = run_batch(guest).splitlines()
    head = lines.index(next(line for line in lines if line.startswith("vcpu ")))
    row = lines[head + 1].split()
    assert row[-7:-5] == [str(guest.pid), str(guest.pid)], lines
    run, guest_share, kernel, halted, vmm = row[-5:]
    assert (guest_share, kernel) == ("-", "-")  # not measured on this host, not zero
    assert float(vmm) >= 100 * (N + 1) * HOLD / 1.2  # of a one-second window at most + slack
    # The engine learns the thread at its first KVM_RUN, a command's round
    # trip (about a millisecond) after the window began: from then on
    # KVM_RUN and the VMM cover all of it (20 ms of slack for a busy host).
    assert abs(float(run) + float(vmm) - 100) <= 2.0

    obj = json.loads(run_batch(guest, "--json"))
    v, = [v for v in obj["vcpus"] if v["tid"] == guest.pid]
    assert v["guest_ns"] is None and v["kernel_ns"] is None
    assert v["vmm_ns"] >= (N + 1) * HOLD * 1e9
