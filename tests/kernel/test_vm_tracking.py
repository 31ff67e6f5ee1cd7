"""Following VMs on the real kernel: per-VM counts, new threads, VMs that exit.

Test guests (tests/helpers/kvmguest.py) make exact numbers of port writes:
``run(n)`` is n kvm_pio and n kvm_userspace_exit(IO).  Other VMs may run on
the host at the same time: every check is about our own pids, or allows for
the others exactly.
"""

import os
import threading
import time
import uuid

import pytest

import kvmstat
from kvmstat.host.vms import find_vm_by_name, list_vms

from helpers.batchwindow import start_batch
from helpers.commands import kvm_stat, wait_for

FIELDS = r"kvm_(pio|userspace_exit)$"
COUNTS = (300, 500, 700)


def unique(tag):
    return f"kvmstat-t5-{tag}-{uuid.uuid4().hex[:8]}"


def wait_until_gone(path, timeout=5.0):
    wait_for(lambda: not os.path.exists(path), f"{path} to go", timeout, interval=0.002)


def parse_rows(lines):
    rows = {}
    for line in lines:
        assert len(line) == 62, line
        rows[line[:42].rstrip()] = (int(line[42:52]), int(line[52:62]))
    return rows


def parse_by_guest(text):
    """{heading: {field: (total, delta)}} from -1 --by-guest output."""
    blocks = {}
    for block in text.split("\n\n"):
        lines = block.strip("\n").split("\n")
        if lines != [""]:
            blocks[lines[0]] = parse_rows(lines[1:])
    return blocks


@pytest.fixture
def three_guests(guest_process):
    names = [unique("a"), unique("b") + ",,x", unique("c")]
    return [guest_process("pio", name=name) for name in names]


def test_guests_are_found_by_name_with_their_threads(three_guests):
    by_pid = {vm.pid: vm for vm in list_vms()}
    for guest in three_guests:
        vm = by_pid[guest.pid]
        assert vm.name == guest.name.replace(",,", ",")
        assert set(vm.tids) == set(guest.tids())
        assert find_vm_by_name(vm.name).pid == guest.pid
        assert all(d.startswith(f"{guest.pid}-") for d in vm.debugfs_dirs) and vm.debugfs_dirs


def test_by_vm_counts_each_guest_exactly_and_totals_are_the_sum(three_guests):
    last = {}  # pid -> last reported per-VM totals (VMs that exit leave)
    with kvmstat.open_sampler(fields=FIELDS, by_vm=True) as sampler:
        first = sampler.sample()
        last.update({pid: v["kvm_pio"][0] for pid, v in first.by_vm.items()})
        for guest, n in zip(three_guests, COUNTS):
            guest.run(n)
        sample = sampler.sample()
    last.update({pid: v["kvm_pio"][0] for pid, v in sample.by_vm.items()})
    for guest, n in zip(three_guests, COUNTS):
        values = sample.by_vm[guest.pid]
        assert values["kvm_pio"] == (n, n)
        assert values["kvm_userspace_exit"] == (n, n)
        assert sample.vm_names[guest.pid] == guest.name.replace(",,", ",")
    # Host totals: our guests plus what other VMs did, exactly (a VM that
    # exited is reported once more with its final counts before it leaves).
    total = sample.values["kvm_pio"][0]
    assert total >= sum(COUNTS)
    assert total == sum(last.values())


def test_kvm_stat_by_guest_reports_each_guest_exactly(three_guests):
    proc = start_batch(["--by-guest", "-f", FIELDS])
    for guest, n in zip(three_guests, COUNTS):
        guest.run(n)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert err == ""
    blocks = parse_by_guest(out)
    for guest, n in zip(three_guests, COUNTS):
        rows = blocks[f"(pid {guest.pid}) {guest.name.replace(',,', ',')}"]
        assert rows == {"kvm_pio": (n, n), "kvm_userspace_exit": (n, n)}


@pytest.mark.parametrize("by_vm", [False, True])
def test_a_vcpu_thread_started_after_monitoring_began_is_counted(guest_process, by_vm):
    guest = guest_process("pio", name=unique("thread"))
    with kvmstat.open_sampler(fields=FIELDS, pid=None if by_vm else guest.pid,
                              by_vm=by_vm) as sampler:
        guest.run(10)
        tid = guest.thread(250)  # a new vCPU in a new thread, ended on return
        wait_until_gone(f"/proc/{guest.pid}/task/{tid}")
        sample = sampler.sample()
        values = sample.by_vm[guest.pid] if by_vm else sample.values
        assert values["kvm_pio"] == (260, 260)
        # The thread has ended: its counts stay, totals never go backwards.
        later = sampler.sample()
        values = later.by_vm[guest.pid] if by_vm else later.values
        assert values["kvm_pio"] == (260, 0)
        guest.run(5)
        values = sampler.sample().by_vm[guest.pid] if by_vm else sampler.sample().values
        assert values["kvm_pio"][0] == 265


def test_kvm_stat_pid_counts_a_thread_started_during_the_second(guest_process):
    guest = guest_process("pio", name=unique("thread-cli"))
    proc = start_batch(["-p", str(guest.pid), "-f", FIELDS])
    guest.thread(123)
    guest.run(7)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and err == ""
    assert parse_rows(out.splitlines()) == {"kvm_pio": (130, 130),
                                            "kvm_userspace_exit": (130, 130)}


def test_library_pid_mode_guest_exits(guest_process):
    guest = guest_process("pio", name=unique("exit"))
    with kvmstat.open_sampler(fields=FIELDS, pid=guest.pid, by_vm=True) as sampler:
        sampler.sample()
        guest.run(40)
        guest.close()
        last = sampler.sample()  # finds it exited: its counts up to the exit
        assert sampler.done and set(last.ended) == {guest.pid}
        assert last.ended[guest.pid]["kvm_pio"] == (40, 40)
        assert last.values["kvm_pio"] == (40, 40)
        assert last.by_vm[guest.pid]["kvm_pio"] == (40, 40)
        assert sampler.providers[0].fds == 0  # its groups are closed
        with pytest.raises(kvmstat.VMGone) as info:
            sampler.sample()
        assert info.value.pid == guest.pid and str(info.value) == \
            f"VM process {guest.pid} has exited"
        assert sampler.sample(refresh=False).values["kvm_pio"] == (40, 0)


def test_library_by_vm_guest_exits_is_reported_once_more(guest_process):
    staying = guest_process("pio", name=unique("stay"))
    leaving = guest_process("pio", name=unique("leave"))
    with kvmstat.open_sampler(fields=FIELDS, by_vm=True) as sampler:
        sampler.sample()
        staying.run(11)
        leaving.run(22)
        leaving.close()
        after_exit = sampler.sample()
        # Only our own VMs: other processes on the host may end theirs meanwhile.
        ours = {pid: values for pid, values in after_exit.ended.items()
                if pid in (leaving.pid, staying.pid)}
        assert ours == {leaving.pid: after_exit.by_vm[leaving.pid]}
        assert not sampler.done  # no one VM watched: nothing is over
        assert after_exit.by_vm[leaving.pid]["kvm_pio"] == (22, 22)
        assert after_exit.vm_names[leaving.pid] == leaving.name
        staying.run(1)
        later = sampler.sample()
    assert leaving.pid not in later.by_vm
    assert later.by_vm[staying.pid]["kvm_pio"] == (12, 1)
    assert later.values["kvm_pio"][0] >= after_exit.values["kvm_pio"][0] + 1


def test_kvm_stat_pid_guest_exits_during_the_second(guest_process):
    guest = guest_process("pio", name=unique("exit-cli"))
    proc = start_batch(["-p", str(guest.pid), "-f", FIELDS])
    guest.run(77)
    guest.close()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert err == f"kvm_stat: VM process {guest.pid} has exited: the counts end at its exit\n"
    assert parse_rows(out.splitlines()) == {"kvm_pio": (77, 77),
                                            "kvm_userspace_exit": (77, 77)}


def test_kvm_stat_guest_by_name(guest_process):
    guest = guest_process("pio", name=unique("byname"))
    proc = start_batch(["-g", guest.name, "-f", FIELDS])
    guest.run(31)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and err == ""
    assert parse_rows(out.splitlines())["kvm_pio"] == (31, 31)


def test_kvm_stat_unknown_or_ambiguous_guest_name(guest_process):
    name = unique("twin")
    twins = [guest_process("pio", name=name) for _ in range(2)]
    out = kvm_stat(["-1", "-g", name])
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.startswith(f"Error: 2 VMs are named '{name}': ")
    for twin in twins:
        assert f"'{name}' (pid {twin.pid})" in out.stderr
    missing = unique("missing")
    out = kvm_stat(["-1", "-g", missing])
    assert out.returncode == 1
    assert out.stderr.startswith(f"Error: no VM named '{missing}'; running VMs: ")
    assert f"'{name}' (pid {twins[0].pid})" in out.stderr
    assert out.stderr.count("\n") == 1


def test_opening_while_the_vm_starts_threads_non_stop_counts_its_threads(guest_process):
    # While a thread starts threads, opening its group fails now and then
    # (ENODEV, EINVAL); each sampler must still count that thread.
    guest = guest_process("pio", name=unique("churn"))
    churner = threading.Thread(target=guest.churn, args=(2.0,))
    churner.start()
    samplers = []
    try:
        time.sleep(0.1)
        for _ in range(4):
            samplers.append(kvmstat.open_sampler(pid=guest.pid))
        churner.join()
        guest.run(7)  # in the guest's main thread, whose groups were opened while it churned
        for sampler in samplers:
            assert sampler.sample().values["kvm_pio"][0] == 7
    finally:
        churner.join()
        for sampler in samplers:
            sampler.close()
