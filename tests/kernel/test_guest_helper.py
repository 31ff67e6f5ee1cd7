"""The test guest is exact: checked with tracefs directly, no kvmstat code."""

from __future__ import annotations

import os
import threading
import time

import pytest

from helpers.kvmguest import Guest, GuestError, GuestProcess
from helpers.tracecount import TraceCounter

EVENTS = ["kvm_pio", "kvm_userspace_exit"]
N = 200


def test_pio_exact(tracefs):
    with Guest("pio") as g:
        g.run(3)  # warm-up outside the trace window
        tid = threading.get_native_id()
        with TraceCounter(tracefs, EVENTS, pid=tid) as tc:
            g.run(N)
    assert tc.overrun == 0
    assert tc.count("kvm_pio") == N
    assert tc.count("kvm_pio", "pio_write at 0x3f8 size 1 count 1 val 0x41") == N
    assert tc.count("kvm_userspace_exit") == N
    assert tc.count("kvm_userspace_exit", "KVM_EXIT_IO") == N
    assert tc.tids() == {tid}


def test_hlt_exact(tracefs):
    with Guest("hlt") as g:
        tid = threading.get_native_id()
        with TraceCounter(tracefs, EVENTS, pid=tid) as tc:
            g.run(N)
    assert tc.count("kvm_pio") == 0
    assert tc.count("kvm_userspace_exit") == N
    assert tc.count("kvm_userspace_exit", "KVM_EXIT_HLT") == N


def test_several_vcpus_and_new_thread(tracefs):
    with Guest("pio", vcpus=2) as g:
        tid = threading.get_native_id()
        with TraceCounter(tracefs, EVENTS, pid=tid) as tc:
            g.run(10, vcpu=0)
            g.run(20, vcpu=1)
            thread_tid = g.run_in_new_thread(30)
        assert g.vcpus == 3
    assert thread_tid != tid
    assert tc.count("kvm_pio", tid=tid) == 30
    assert tc.count("kvm_pio", tid=thread_tid) == 30
    assert tc.count("kvm_userspace_exit") == 60
    assert not os.path.exists(f"/proc/self/task/{thread_tid}")


def test_guest_process_exact(tracefs):
    with GuestProcess("pio", vcpus=1, name="kvmstat-test,,guest") as p:
        cmdline = open(f"/proc/{p.pid}/cmdline", "rb").read().split(b"\0")
        assert b"-name" in cmdline and b"kvmstat-test,,guest" in cmdline
        fds = os.listdir(f"/proc/{p.pid}/fd")
        assert "anon_inode:kvm-vm" in {os.readlink(f"/proc/{p.pid}/fd/{fd}") for fd in fds
                                       if os.path.exists(f"/proc/{p.pid}/fd/{fd}")}
        p.run(2)
        with TraceCounter(tracefs, EVENTS, pid=p.pid) as tc:
            p.run(N)
            thread_tid = p.thread(25)
            assert p.add_vcpu() == 2
            p.run(5, 2)
        assert p.stats() == 4  # vm + 3 vcpus
    assert p.returncode == 0
    assert tc.count("kvm_pio", tid=p.pid) == N + 5
    assert tc.count("kvm_pio", tid=thread_tid) == 25
    assert tc.count("kvm_pio") == N + 30
    assert tc.count("kvm_userspace_exit", "KVM_EXIT_IO") == N + 30


def test_guest_process_hlt(tracefs):
    with GuestProcess("hlt", vcpus=2) as p:
        with TraceCounter(tracefs, EVENTS, pid=p.pid) as tc:
            p.run(40, 1)
    assert tc.count("kvm_userspace_exit", "KVM_EXIT_HLT") == 40
    assert tc.count("kvm_userspace_exit") == 40


def test_cpuid_loop(tracefs):
    with Guest("cpuid-loop") as g:
        with TraceCounter(tracefs, ["kvm_cpuid", "kvm_userspace_exit"],
                          pid=threading.get_native_id(), buffer_kb=8192) as tc:
            loop_tid = g.start_loop()
            time.sleep(0.02)
            assert g.loop_iterations() > 0
            iterations = g.stop_loop()
        with pytest.raises(GuestError):
            g.stop_loop()
    assert iterations > 0
    assert tc.overrun == 0
    cpuid = tc.count("kvm_cpuid", tid=loop_tid)
    # The counter is incremented just before each cpuid; the loop may be
    # stopped between the two.
    assert cpuid in (iterations, iterations - 1)
    # KVM_RUN returned once, interrupted by the stop signal: errno -EINTR,
    # which the tracepoint prints as "reason restart (4)" (raw reason field 10).
    assert tc.count("kvm_userspace_exit", "restart", tid=loop_tid) == 1
    assert tc.count("kvm_userspace_exit") == 1


def test_cpuid_loop_counter_of_the_process_form():
    with GuestProcess("cpuid-loop") as p:
        p.start_loop()
        first = p.loop_iterations()
        time.sleep(0.05)
        second = p.loop_iterations()
        iterations = p.stop_loop()
        stopped = p.loop_iterations()
    assert 0 <= first < second <= stopped
    assert stopped == iterations  # the counter started at 0: one loop so far


def test_errors_are_clear(guest):
    with pytest.raises(GuestError, match="no vCPU 5"):
        guest.run(1, vcpu=5)
    with pytest.raises(GuestError, match="start_loop"):
        guest.start_loop()
    with pytest.raises(ValueError, match="unknown program"):
        Guest("nope")
    with GuestProcess("pio") as p:
        with pytest.raises(GuestError, match="bad command"):
            p.command("frobnicate")
        p.run(1)  # still alive after an error


def test_guest_process_death_is_loud():
    with GuestProcess("pio") as p:
        os.kill(p.pid, 9)
        with pytest.raises(GuestError, match="died"):
            p.run(1)
