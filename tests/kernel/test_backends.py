"""Both counting backends against the real kernel.

The workload is os.getppid(): a system call nothing else in this process
makes, counted through a syscall tracepoint, so the expected counts are exact.
"""

from __future__ import annotations

import os
import platform
import threading
import time

import pytest

from kvmstat.errors import NativeError
from kvmstat.counting.native import (PER_CPU, PER_THREAD, PER_THREAD_INHERIT, EventSpec,
                            available_backends, open_counter_set)
from kvmstat.providers.tracepoints import online_cpus

pytestmark = pytest.mark.kernel

TRACEFS = "/sys/kernel/tracing"
GETPPID_NR = {"x86_64": 110, "aarch64": 173, "riscv64": 173}.get(platform.machine())
N = 1000


def _tp_id(path: str) -> int | None:
    try:
        with open(f"{TRACEFS}/events/{path}/id") as f:
            return int(f.read())
    except OSError:
        return None


def _getppid_event() -> EventSpec:
    tp = _tp_id("syscalls/sys_enter_getppid")
    if tp is not None:
        return EventSpec("sys_enter_getppid", tp)
    raw = _tp_id("raw_syscalls/sys_enter")
    if raw is None or GETPPID_NR is None:
        pytest.skip("no syscall tracepoint to count getppid with")
    return EventSpec("sys_enter(getppid)", raw, f"id=={GETPPID_NR}")


def _raw_events() -> tuple[EventSpec, EventSpec]:
    """raw_syscalls:sys_enter unfiltered, and a child that only counts getppid."""
    raw = _tp_id("raw_syscalls/sys_enter")
    if raw is None or GETPPID_NR is None:
        pytest.skip("raw_syscalls:sys_enter or getppid's number unknown here")
    return (EventSpec("sys_enter", raw),
            EventSpec("sys_enter(getppid)", raw, f"id=={GETPPID_NR}"))


def _work(n: int = N) -> None:
    for _ in range(n):
        os.getppid()


@pytest.fixture(params=available_backends())
def backend(request):
    return request.param


def _thread_set(backend, events=None, bucket=0):
    cs = open_counter_set(events or [_getppid_event()], PER_THREAD, backend)
    cs.add(threading.get_native_id(), bucket)
    return cs


def test_counts_exactly(backend):
    with _thread_set(backend) as cs:
        assert (cs.groups, cs.fds) == (1, 1)
        cs.enable()
        _work()
        cs.disable()
        assert cs.read() == ([N], None)
        assert cs.read(1) == ([N], [N])


def test_new_set_starts_disabled(backend):
    with _thread_set(backend) as cs:
        _work()
        assert cs.read()[0] == [0]


def test_filter_counts_only_matching(backend):
    parent, child = _raw_events()
    with _thread_set(backend, [parent, child]) as cs:
        assert cs.fds == 2
        cs.enable()
        _work()
        cs.disable()
        (all_calls, getppids), _ = cs.read()
        assert getppids == N
        assert all_calls >= N


def test_bad_filter_is_reported_and_nothing_leaks(backend):
    from kvmstat.errors import NativeError
    parent, _ = _raw_events()
    bad = EventSpec("sys_enter(bad)", parent.tracepoint_id, "no_such_field==1")
    with open_counter_set([parent, bad], PER_THREAD, backend) as cs:
        before = len(os.listdir("/proc/self/fd"))
        with pytest.raises(NativeError) as info:
            cs.add(threading.get_native_id())
        assert info.value.event == "sys_enter(bad)"
        assert "no_such_field==1" in str(info.value)
        assert len(os.listdir("/proc/self/fd")) == before
        assert cs.groups == 0


def test_vanished_thread(backend):
    tid = _in_new_thread(lambda: None)
    with open_counter_set([_getppid_event()], PER_THREAD, backend) as cs:
        with pytest.raises(NativeError) as info:
            cs.add(tid)
        assert info.value.target == tid and f"thread {tid}" in str(info.value)


def test_enable_disable(backend):
    with _thread_set(backend) as cs:
        cs.enable()
        _work()
        cs.disable()
        _work()
        assert cs.read()[0] == [N]
        cs.enable()
        _work(10)
        cs.disable()
        assert cs.read()[0] == [N + 10]


def test_reset_zeroes_live_and_retired(backend):
    with _thread_set(backend) as cs:
        cs.enable()
        _work()
        cs.reset()
        assert cs.read(1) == ([0], [0])
        _work(7)
        assert cs.read()[0] == [7]
        slot2 = cs.add(threading.get_native_id())
        _work(5)
        cs.retire(slot2)
        assert cs.read()[0] == [7 + 5 + 5]
        cs.reset()
        assert cs.read(1) == ([0], [0])


def test_retire_keeps_counts_and_reuses_slot(backend):
    ev = _getppid_event()
    with open_counter_set([ev], PER_THREAD, backend) as cs:
        tid = threading.get_native_id()
        a = cs.add(tid, 0)
        b = cs.add(tid, 1)
        cs.enable()
        _work()
        assert cs.read(2) == ([2 * N], [N, N])
        cs.retire(a)
        assert (cs.groups, cs.fds) == (1, 1)
        assert cs.read(2) == ([2 * N], [N, N])  # totals don't go backwards
        _work()
        assert cs.read(2) == ([3 * N], [N, 2 * N])
        c = cs.add(tid, 0)  # added while enabled: counts at once
        assert c == a  # the freed slot is reused
        _work(10)
        cs.disable()
        assert cs.read(2) == ([3 * N + 20], [N + 10, 2 * N + 10])
        cs.retire(b)
        cs.retire(c)
        assert cs.groups == 0
        assert cs.read(2) == ([3 * N + 20], [N + 10, 2 * N + 10])
        assert cs.read(1) == ([3 * N + 20], [N + 10])


def test_buckets_split_threads(backend):
    ev = _getppid_event()
    go = threading.Event()
    ready = threading.Barrier(4)
    counts = {0: 300, 1: 500, 2: 70}

    def worker(n):
        ready.wait()
        go.wait()
        _work(n)

    threads = [threading.Thread(target=worker, args=(counts[b],)) for b in range(3)]
    for t in threads:
        t.start()
    ready.wait()
    with open_counter_set([ev], PER_THREAD, backend) as cs:
        slots = [cs.add(t.native_id, b) for b, t in enumerate(threads)]
        cs.enable()
        go.set()
        for t in threads:
            t.join()
        total = sum(counts.values())
        # Bucket 2 is beyond nbuckets=2: it counts only in the totals.
        assert cs.read(2) == ([total], [300, 500])
        assert cs.read(3) == ([total], [300, 500, 70])
        # The threads have ended; their groups can still be read and retired.
        for s in slots:
            cs.retire(s)
        assert cs.read(4) == ([total], [300, 500, 70, 0])


def test_per_cpu_counts_all_cpus(backend):
    cpus = online_cpus()
    with open_counter_set([_getppid_event()], PER_CPU, backend) as cs:
        for cpu in cpus:
            cs.add(cpu, cpu)
        assert cs.groups == len(cpus)
        cs.enable()
        _work()
        cs.disable()
        totals, per_cpu = cs.read(max(cpus) + 1)
        assert totals[0] >= N
        assert sum(per_cpu) == totals[0]


@pytest.mark.skipif("c" not in available_backends(), reason="C extension not built")
def test_backends_agree():
    parent, child = _raw_events()
    events = [_getppid_event(), child]
    tid = threading.get_native_id()
    c = open_counter_set(events, PER_THREAD, "c")
    py = open_counter_set(events, PER_THREAD, "python")
    with c, py:
        for cs in (c, py):
            cs.add(tid, 1)
            cs.add(tid, 0)
        c.enable()
        py.enable()
        _work(N + 3)
        c.disable()
        py.disable()
        # Both sets saw the same system calls: identical numbers.
        assert c.read(2) == py.read(2) == ([2 * (N + 3)] * 2, [N + 3] * 4)


def _in_new_thread(fn, *args) -> int:
    """Run fn in a new thread, wait until the kernel has reaped it; its tid."""
    t = threading.Thread(target=fn, args=args)
    t.start()
    tid = t.native_id
    t.join()
    # join() returns before the kernel has reaped the thread; wait for that.
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/self/task/{tid}") and time.monotonic() < deadline:
        time.sleep(0.001)
    return tid


def test_inherit_counts_threads_created_later_also_after_they_end(backend):
    with open_counter_set([_getppid_event()], PER_THREAD_INHERIT, backend) as cs:
        cs.add(threading.get_native_id(), 3)
        cs.enable()
        _in_new_thread(_work, 300)
        # A thread started by a thread started after the group was opened.
        _in_new_thread(_in_new_thread, _work, 40)
        _work(5)
        cs.disable()
        assert cs.read(4) == ([345], [0, 0, 0, 345])
        assert (cs.groups, cs.fds) == (1, 1)  # new threads cost no descriptors


def test_plain_per_thread_does_not_count_new_threads(backend):
    with _thread_set(backend) as cs:
        cs.enable()
        _in_new_thread(_work, 300)
        _work(5)
        assert cs.read()[0] == [5]


def test_inherit_does_not_follow_forked_processes(backend):
    with open_counter_set([_getppid_event()], PER_THREAD_INHERIT, backend) as cs:
        cs.add(threading.get_native_id())
        cs.enable()
        pid = os.fork()
        if pid == 0:  # child: counted only where the kernel lacks inherit_thread
            _work(200)
            os._exit(0)
        os.waitpid(pid, 0)
        _work(7)
        cs.disable()
        assert cs.read()[0] == [7]


def test_reset_also_forgets_what_ended_inherited_threads_counted(backend):
    with open_counter_set([_getppid_event()], PER_THREAD_INHERIT, backend) as cs:
        cs.add(threading.get_native_id(), 1)
        cs.enable()
        _in_new_thread(_work, 100)
        cs.reset()
        assert cs.read(2) == ([0], [0, 0])
        _in_new_thread(_work, 20)
        _work(3)
        assert cs.read(2) == ([23], [0, 23])
        cs.reset()
        cs.reset()  # twice in a row: still zero, never negative
        assert cs.read(2) == ([0], [0, 0])


def test_clear_bucket_forgets_retired_sums_but_not_totals(backend):
    ev = _getppid_event()
    with open_counter_set([ev], PER_THREAD, backend) as cs:
        tid = threading.get_native_id()
        slot = cs.add(tid, 1)
        cs.enable()
        _work(50)
        with pytest.raises(NativeError, match="bucket 1"):
            cs.clear_bucket(1)  # a live group still uses it
        cs.retire(slot)
        assert cs.read(2) == ([50], [0, 50])
        cs.clear_bucket(1)
        assert cs.read(2) == ([50], [0, 0])
        cs.add(tid, 1)  # the bucket number serves a new group
        _work(4)
        cs.disable()
        assert cs.read(2) == ([54], [0, 4])


def test_a_read_refused_while_a_thread_exits_keeps_the_last_values(monkeypatch):
    """ECHILD/ESRCH/ENODEV from read() while a target exits: the group's last
    values stand in (the C core does the same; here the refusal is injected)."""
    import errno

    from kvmstat.counting import pybackend as pyperf

    with _thread_set("python") as cs:
        cs.enable()
        _work()
        assert cs.read()[0] == [N]
        real_read = pyperf.os.read
        for err in (errno.ECHILD, errno.ESRCH, errno.ENODEV):
            def refusing(fd, size, err=err):
                raise OSError(err, os.strerror(err))
            monkeypatch.setattr(pyperf.os, "read", refusing)
            assert cs.read()[0] == [N]
        monkeypatch.setattr(pyperf.os, "read", real_read)
        _work()
        assert cs.read()[0] == [2 * N]
