"""A real QEMU guest (Debian's qemu-system-x86, -accel kvm) found by name and counted.

The guest boots a 512-byte boot sector (tests/helpers/qemuguest.py) that loops
on out/cpuid/hlt, woken by the in-kernel PIT, whose kernel thread
``kvm-pit/<pid>`` injects the timer interrupts (kvm_set_irq).  A tracefs
instance is the referee: per thread, what happened in the window kvmstat
measured must be what kvmstat counted for the VM.
"""

import dataclasses
import subprocess
import sys
import time
import uuid

import pytest

import kvmstat
from kvmstat.host.vms import find_vm_by_name

from helpers.commands import kvm_stat
from helpers.qemuguest import QemuGuest
from helpers.tracecount import TraceCounter

pytestmark = pytest.mark.qemu

EVENTS = ["kvm_pio", "kvm_cpuid", "kvm_set_irq"]


@pytest.fixture(scope="module")
def qemu():
    with QemuGuest(f"kvmstat-t5-qemu-{uuid.uuid4().hex[:8]}", vcpus=2) as guest:
        yield guest


def test_qemu_is_found_by_name_with_vcpu_and_helper_threads(qemu):
    vm = find_vm_by_name(qemu.name)
    assert vm.pid == qemu.pid and vm.name == qemu.name
    threads = qemu.threads()
    vcpus = {tid for tid, name in threads.items() if name in ("CPU 0/KVM", "CPU 1/KVM")}
    assert len(vcpus) == 2 and vcpus <= set(vm.tids)
    # Kernel workers inside the VM process (here kvm-nx-lpage-re) are its threads.
    assert {tid for tid, name in threads.items() if name.startswith("kvm-")} <= set(vm.tids)
    # The in-kernel PIT's kernel thread lives outside it and is attributed by name.
    assert vm.helper_tids == (qemu.pit_thread(),)


@pytest.mark.parametrize("engine, per_vm", [("perf", False), ("bpf", False), ("bpf", True)])
def test_qemu_counts_are_its_vcpu_and_helper_threads_events(qemu, tracefs, engine, per_vm):
    """For one VM (-p), or its row of the per-VM breakdown: the BPF engine
    counts the kvm-pit thread, a process of its own, with the VM."""
    pit = qemu.pit_thread()
    # The referee traces QEMU's threads (and those they start) and the PIT thread.
    mine = sorted(qemu.threads()) + [pit]
    pid = find_vm_by_name(qemu.name).pid
    with kvmstat.open_sampler(fields="|".join(f"{e}$" for e in EVENTS), engine=engine,
                              pid=None if per_vm else pid, by_vm=per_vm) as sampler:
        assert sampler.engine == engine
        with TraceCounter(tracefs, EVENTS, pid=mine) as outer:
            first = sampler.sample()
            with TraceCounter(tracefs, EVENTS, pid=mine) as inner:
                time.sleep(1.0)
            second = sampler.sample()
    if per_vm:
        first, second = (dataclasses.replace(s, values=s.by_vm[pid]) for s in (first, second))
    assert outer.overrun == 0 and inner.overrun == 0
    for event in EVENTS:
        delta = second.values[event][0] - first.values[event][0]
        low, high = inner.count(event), outer.count(event)
        assert low <= delta <= high, (event, low, delta, high)
    vcpu0 = next(tid for tid, name in qemu.threads().items() if name == "CPU 0/KVM")
    assert inner.count("kvm_pio", tid=vcpu0) > 0      # the boot sector runs
    assert inner.count("kvm_set_irq", tid=pit) > 0    # the helper's events count


def test_kvm_stat_finds_qemu_by_guest_name(qemu):
    out = kvm_stat(["-1", "-g", qemu.name, "-f", "kvm_(pio|cpuid)$"])
    assert out.returncode == 0, out.stderr
    rows = {line[:42].rstrip(): int(line[42:52]) for line in out.stdout.splitlines()}
    assert set(rows) == {"kvm_pio", "kvm_cpuid"}
    assert rows["kvm_pio"] > 0 and rows["kvm_cpuid"] > 0
