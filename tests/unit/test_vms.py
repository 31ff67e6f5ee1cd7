"""VM discovery, helper threads, liveness and following VMs, on fake /proc trees."""

import os
import time

import pytest

from kvmstat.host import vms

from kvmstat.errors import NoSuchVM
from kvmstat.host.vms import (VM, GuestNames, KernelThreads, VMWatch, describe_vm, find_vm,
                         find_vm_by_name, list_vms, process_alive, start_time, thread_exiting,
                         vm_name)

from fakeproc import FakeProc


@pytest.fixture
def proc(tmp_path):
    return FakeProc(tmp_path / "proc")


def test_list_vms_finds_processes_holding_a_kvm_vm_fd(proc):
    proc.add_vm(300, "web", tids=[300, 301, 305])
    proc.add_vm(128, None, vm_fd=9)
    proc.add_process(200, "bash", fds=[(0, "/dev/pts/0"), (3, "/dev/kvm")])
    proc.add_process(8, "qemu-not-yet", fds=[(3, "/dev/kvm"), (4, "anon_inode:kvm-vcpu:0")])
    vms = list_vms(proc.path)
    assert [vm.pid for vm in vms] == [128, 300]
    web = vms[1]
    assert web == VM(300, "web", (11,), (300, 301, 305), ())
    assert web.debugfs_dirs == ("300-11",)
    assert vms[0].name is None and vms[0].label == "128" and vms[0].debugfs_dirs == ("128-9",)


def test_find_vm_matches_the_pid_exactly(proc):
    proc.add_vm(128, "a")
    proc.add_vm(8123, "b")
    with pytest.raises(NoSuchVM, match="no process with pid 8$"):
        find_vm(8, proc.path)
    proc.add_process(8, "bash")
    with pytest.raises(NoSuchVM, match="process 8 is not a KVM VM"):
        find_vm(8, proc.path)
    assert find_vm(128, proc.path).name == "a"


def test_guest_by_name_unique_none_or_several(proc):
    proc.add_vm(300, "web")
    proc.add_vm(301, "db")
    proc.add_vm(302, "db")
    proc.add_vm(303, None)
    assert find_vm_by_name("web", proc.path).pid == 300
    with pytest.raises(NoSuchVM) as none:
        find_vm_by_name("mail", proc.path)
    assert str(none.value) == ("no VM named 'mail'; running VMs: 'web' (pid 300), "
                               "'db' (pid 301), 'db' (pid 302), pid 303 (no name)")
    assert none.value.candidates == [(300, "web"), (301, "db"), (302, "db"), (303, None)]
    with pytest.raises(NoSuchVM) as several:
        find_vm_by_name("db", proc.path)
    assert str(several.value) == ("2 VMs are named 'db': 'db' (pid 301), 'db' (pid 302); "
                                  "choose one by pid")
    assert several.value.candidates == [(301, "db"), (302, "db")]


def test_no_vm_at_all(proc):
    with pytest.raises(NoSuchVM, match="no VM named 'x'; running VMs: none"):
        find_vm_by_name("x", proc.path)


def test_describe_vm():
    assert describe_vm(VM(5, "a b")) == "'a b' (pid 5)"
    assert describe_vm(VM(5, None)) == describe_vm(VM(5, "")) == "pid 5 (no name)"


# -- kernel threads working for VMs --------------------------------------------

def test_helper_threads_named_after_the_vm_process(proc):
    proc.add_vm(300, "web", tids=[300, 301, 302])
    proc.add_vm(400, "db")
    proc.add_kthread(310, "kvm-pit/300")
    proc.add_kthread(311, "kworker/0:1-events")
    proc.add_kthread(410, "vhost-400")
    proc.add_kthread(999, "kvm-pit/12345")  # a VM pid that is not running: kept apart
    assert KernelThreads(proc.path).scan() == {300: {310}, 400: {410}, 12345: {999}}
    vms = {vm.pid: vm for vm in list_vms(proc.path)}
    assert vms[300].helper_tids == (310,) and vms[400].helper_tids == (410,)
    assert find_vm(300, proc.path).helper_tids == (310,)


def test_helper_named_after_a_thread_of_the_vm_belongs_to_its_process(proc):
    # vhost and nx-lpage recovery kthreads were named after the creating thread.
    proc.add_vm(300, "web", tids=[300, 301])
    proc.add_process(301, "CPU 0/KVM", tgid=300)
    proc.add_kthread(320, "vhost-301")
    proc.add_kthread(321, "kvm-nx-lpage-recovery-301")  # comm shows 15 characters
    assert (proc.root / "321" / "comm").read_text() == "kvm-nx-lpage-re\n"
    assert KernelThreads(proc.path).scan() == {300: {320, 321}}


def test_helper_names_must_match_exactly(proc):
    proc.add_vm(300, "web")
    for tid, name in [(330, "kvm-pit/300x"), (331, "vhost-"), (332, "kvm-pit/ 300"),
                      (333, "xvhost-300"), (334, "kvm-nx-lpage-re")]:
        proc.add_kthread(tid, name)
    assert KernelThreads(proc.path).scan() == {}


def test_helper_scan_reads_each_name_once_and_follows_changes(proc, monkeypatch):
    proc.add_vm(300, "web")
    proc.add_kthread(310, "kvm-pit/300")
    proc.add_kthread(311, "kworker/1:0")
    kthreads = KernelThreads(proc.path)
    assert kthreads.scan() == {300: {310}}
    opened = []
    real_open = open

    def counting_open(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", counting_open)
    assert kthreads.scan() == {300: {310}}
    assert opened == [f"{proc.path}/2/task/2/children"]  # nothing else read
    monkeypatch.undo()
    proc.remove(310)
    proc.add_kthread(312, "vhost-300")
    assert kthreads.scan() == {300: {312}}


def test_helper_scan_reuses_its_answer_while_no_kernel_thread_comes_or_goes(proc):
    proc.add_vm(300, "web")
    proc.add_kthread(310, "kvm-pit/300")
    kthreads = KernelThreads(proc.path)
    first = kthreads.scan()
    first[300].add(999)  # the caller's copy: the next answer is unchanged
    first[400] = {401}
    assert kthreads.scan() == {300: {310}}
    proc.add_kthread(311, "kvm-pit/300")
    assert kthreads.scan() == {300: {310, 311}}


def test_helper_scan_without_the_children_file(proc):
    proc.add_vm(300, "web")
    proc.add_kthread(310, "kvm-pit/300")
    os.remove(proc.root / "2" / "task" / "2" / "children")
    kthreads = KernelThreads(proc.path)
    assert kthreads.scan() == {300: {310}}
    proc.remove(310)
    proc.add_kthread(313, "kvm-pit/300")
    os.remove(proc.root / "2" / "task" / "2" / "children")
    assert kthreads.scan() == {300: {313}}


# -- liveness ----------------------------------------------------------------

def test_process_alive_exit_zombie_and_reused_pid(proc):
    proc.add_vm(300, "web", tids=[300, 301])
    started = start_time(300, proc.path)
    assert started is not None and process_alive(300, started, proc.path)
    proc.set_state(300, "Z")  # the leader ended, another thread still runs
    assert process_alive(300, started, proc.path)
    proc.remove_thread(300, 301)  # all ended, nobody reaped it yet
    assert not process_alive(300, started, proc.path)
    proc.remove(300)
    assert not process_alive(300, started, proc.path) and start_time(300, proc.path) is None
    proc.add_vm(300, "other")  # the pid names another process now
    assert not process_alive(300, started, proc.path)


def test_thread_exiting_by_flag_state_and_absence(proc):
    proc.add_vm(300, "web", tids=[300, 301])
    proc.set_thread_stat(301, "R", flags=0x400040)
    assert not thread_exiting(301, proc.path)
    proc.set_thread_stat(301, "R", flags=0x400044)  # PF_EXITING, still running
    assert thread_exiting(301, proc.path)
    proc.set_thread_stat(301, "Z")
    assert thread_exiting(301, proc.path)
    proc.remove_thread_stat(301)
    assert thread_exiting(301, proc.path)
    proc.add_kthread(310, "kvm-pit/300")  # a helper thread outside the process
    assert not thread_exiting(310, proc.path)


def test_stat_with_spaces_and_parentheses_in_the_name(proc):
    proc.add_process(77, "CPU 0/KVM) (x", start=4242)
    assert start_time(77, proc.path) == 4242


def test_guest_names_remember_an_exited_vm_and_notice_a_reused_pid(proc):
    proc.add_vm(300, "web")
    names = GuestNames(proc.path)
    assert names(300) == "web" == vm_name(300, proc.path)
    proc.remove(300)
    assert names(300) == "web"  # just exited: its last counts keep its name
    assert vm_name(300, proc.path) is None
    proc.add_vm(300, "mail")
    assert names(300) == "mail"
    assert names(999) is None


# -- following VMs -------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_watch_one_vm_reports_its_exit_and_its_helpers(proc):
    proc.add_vm(300, "web", tids=[300, 301])
    proc.add_vm(400, "db")
    watch = VMWatch(proc.path, pid=300)
    assert list(watch.vms) == [300] and watch.vms[300].tids == (300, 301)
    assert not watch.update()
    proc.add_thread(300, 302)  # threads are the process's business
    proc.add_vm(500, "new")    # other VMs are not watched
    assert not watch.update()
    proc.add_kthread(310, "kvm-pit/300")
    changes = watch.update()
    assert changes.helpers_started == {300: [310]} and not changes.started
    proc.remove(310)
    assert watch.update().helpers_ended == {300: [310]}
    proc.remove(300)
    changes = watch.update()
    assert changes.ended == [300] and watch.pids == [] and watch.vms == {}
    assert not watch.update()


def test_watch_one_vm_that_is_not_one(proc):
    proc.add_process(200, "bash")
    with pytest.raises(NoSuchVM):
        VMWatch(proc.path, pid=200)


def test_watch_every_vm_without_debugfs_scans_proc_each_time(proc):
    proc.add_vm(300, "web")
    proc.add_kthread(310, "kvm-pit/300")
    watch = VMWatch(proc.path)
    assert watch.pids == [300] and watch.vms[300].helper_tids == (310,)
    proc.add_vm(400, "db", tids=[400, 401])
    proc.add_kthread(410, "kvm-pit/400")
    changes = watch.update()
    assert [(vm.pid, vm.name, vm.tids, vm.helper_tids) for vm in changes.started] == [
        (400, "db", (400, 401), (410,))]
    assert not changes.helpers_started  # a new VM brings its helpers along
    proc.remove(300)
    proc.remove(310)
    changes = watch.update()
    assert changes.ended == [300] and not changes.helpers_ended
    assert watch.pids == [400]


def test_watch_every_vm_with_debugfs_inspects_only_the_new_entries(proc, tmp_path, monkeypatch):
    """Under churn, discovery costs per new VM, not per process of the host
    (issue 18, case 10): a new ``<pid>-<fd>`` debugfs entry makes only that
    process be inspected; /proc is scanned in full only periodically."""
    debugfs = tmp_path / "debug"
    (debugfs / "kvm").mkdir(parents=True)
    (debugfs / "kvm" / "exits").write_text("0\n")
    clock = Clock()
    proc.add_vm(300, "web")
    (debugfs / "kvm" / "300-11").mkdir()
    watch = VMWatch(proc.path, debugfs=str(debugfs), rescan_interval=30, clock=clock)
    assert watch.pids == [300]
    scans, inspected = [], []
    monkeypatch.setattr("kvmstat.host.vms._pids", lambda p: scans.append(p) or
                        [int(e) for e in os.listdir(p) if e.isdigit()])
    real_vm_fds = vms._vm_fds
    monkeypatch.setattr("kvmstat.host.vms._vm_fds", lambda pid, p: inspected.append(pid) or
                        real_vm_fds(pid, p))
    # A VM without a debugfs directory is not looked for until the rescan.
    proc.add_vm(400, "quiet")
    assert not watch.update() and scans == [] and inspected == []
    # A new debugfs directory: its process is inspected, nothing else; the
    # VM's descriptor shows in /proc a moment after its directory, so a
    # process without it yet is looked at once more.
    (debugfs / "kvm" / "500-12").mkdir()
    assert not watch.update() and inspected == [500]
    proc.add_vm(500, "late")
    assert [vm.pid for vm in watch.update().started] == [500] and inspected == [500, 500]
    assert not watch.update() and inspected == [500, 500] and scans == []
    proc.add_vm(600, "no-debugfs-dir")
    clock.now = 31.0  # the periodic rescan finds 400 and 600
    assert [vm.pid for vm in watch.update().started] == [400, 600] and len(scans) == 1


def test_watch_does_not_report_a_reused_pid_as_the_same_vm(proc):
    proc.add_vm(300, "web")
    watch = VMWatch(proc.path)
    proc.remove(300)
    proc.add_vm(300, "other")
    changes = watch.update()
    assert changes.ended == [300]
    assert [vm.name for vm in changes.started] == ["other"]


def test_watch_with_pidfds_finds_exits_by_poll_not_by_proc(proc, monkeypatch):
    """With pidfds, an update reads no ``/proc/<pid>/stat`` of a VM that goes on
    running: the exit of the real process behind the (fake) VM entry shows on its
    pidfd, once, zombie or reaped."""
    import subprocess
    child = subprocess.Popen(["sleep", "60"])
    try:
        proc.add_vm(child.pid, "real")
        watch = VMWatch(proc.path, pidfds=True)
        assert watch.pids == [child.pid]
        reads = []
        real_stat_fields = vms._stat_fields
        monkeypatch.setattr("kvmstat.host.vms._stat_fields",
                            lambda pid, p: reads.append(pid) or real_stat_fields(pid, p))
        assert not watch.update() and not watch.update()
        assert child.pid not in reads
        child.kill()  # a zombie until reaped below: it has exited all the same
        proc.remove(child.pid)  # (an exited process holds no kvm-vm descriptor)
        for _ in range(200):
            changes = watch.update()
            if changes.ended:
                break
            time.sleep(0.01)
        assert changes.ended == [child.pid] and watch.pids == [] and child.pid not in reads
        assert not watch.update()
        watch.close()
        watch.close()
    finally:
        child.kill()
        child.wait()


def test_watch_lists_debugfs_only_when_an_entry_came_or_went(proc, tmp_path, monkeypatch):
    """Between changes, an update stats ``<debugfs>/kvm`` and does not list it:
    an entry created raises its link count, one removed sets its mtime."""
    debugfs = tmp_path / "debug"
    kvm = debugfs / "kvm"
    kvm.mkdir(parents=True)
    (kvm / "300-11").mkdir()
    proc.add_vm(300, "web")

    def settle():  # a change long ago, as on a quiet host
        os.utime(kvm, ns=(1, 10**9))

    settle()
    watch = VMWatch(proc.path, debugfs=str(debugfs), rescan_interval=1e9, pidfds=False)
    listed = []
    real_listdir = os.listdir
    monkeypatch.setattr("kvmstat.host.vms.os.listdir",
                        lambda p: (listed.append(p) if p == str(kvm) else None) or real_listdir(p))
    assert not watch.update() and not watch.update() and listed == []
    (kvm / "400-11").mkdir()
    proc.add_vm(400, "db")
    settle()  # the same mtime as before: the link count tells
    assert [vm.pid for vm in watch.update().started] == [400] and listed == [str(kvm)]
    assert not watch.update() and len(listed) == 1
    (kvm / "400-11").rmdir()
    (kvm / "500-11").mkdir()  # one gone, one come: same link count, a new mtime
    proc.add_vm(500, "new")
    assert [vm.pid for vm in watch.update().started] == [500] and len(listed) == 2
