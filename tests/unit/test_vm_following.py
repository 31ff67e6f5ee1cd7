"""The tracepoint provider following VMs (-p, -g, by VM) on fake /proc trees
and a fake counting core."""

import errno

import pytest

from kvmstat.counting import native
from kvmstat.errors import NativeError, NoSuchVM, VMGone
from kvmstat.host.paths import Paths
from kvmstat.providers.tracepoints import TracepointProvider
from kvmstat.sampling.options import SamplerOptions
from kvmstat.sampling.sources import sampler_for

import fake_native
from fakeproc import FakeProc
from test_tracepoint_provider import make_sys, make_tracefs

FIELDS = ["kvm_pio", "kvm_fpu"]


@pytest.fixture
def proc(tmp_path):
    return FakeProc(tmp_path / "proc")


@pytest.fixture
def fake_core():
    """(counter factories of the fake core, the counter sets it made)."""
    return fake_native.counters()


@pytest.fixture
def created(fake_core):
    return fake_core[1]


@pytest.fixture
def open_provider(tmp_path, proc, fake_core):
    tracefs = make_tracefs(tmp_path / "t")
    sys_root = make_sys(tmp_path / "s")

    def opener(counters=None, **kwargs):
        return TracepointProvider(tracefs, fields=FIELDS, vendor="vmx", proc=proc.path,
                                  sys=sys_root, counters=counters or fake_core[0], **kwargs)
    return opener


def groups(counter_set):
    """{target: bucket} of the live groups."""
    return {target: bucket for target, bucket in counter_set.slots.values()}


def test_pid_mode_counts_every_thread_and_helper_and_follows_them(proc, created, open_provider):
    proc.add_vm(300, "web", tids=[300, 301, 302])
    proc.add_vm(400, "db")
    proc.add_kthread(310, "kvm-pit/300")
    provider = open_provider(pid=300)
    cs = created[0]
    assert cs.mode == native.PER_THREAD_INHERIT and cs.enabled
    assert groups(cs) == {300: 0, 301: 0, 302: 0, 310: 0}
    assert provider.supports_by_vm and list(provider.vms) == [300]
    cs.counts[(301, "kvm_pio")] = 5
    cs.counts[(310, "kvm_pio")] = 2
    assert provider.snapshot().totals == {"kvm_pio": 7, "kvm_fpu": 0}
    reading = provider.snapshot(by_vm=True)
    assert (reading.totals, reading.by_vm) == ({"kvm_pio": 7, "kvm_fpu": 0},
                                               {300: {"kvm_pio": 7, "kvm_fpu": 0}})

    # New threads of the process inherit the counters: no new group.
    proc.add_thread(300, 303)
    provider.refresh()
    assert groups(cs) == {300: 0, 301: 0, 302: 0, 310: 0}
    # Ended threads keep their group (it also counts the threads they started).
    proc.remove_thread(300, 302)
    provider.refresh()
    assert 302 in groups(cs)
    # Kernel helper threads come and go: groups follow, counts stay.
    proc.add_kthread(311, "vhost-300")
    provider.refresh()
    assert groups(cs)[311] == 0
    proc.remove(310)
    provider.refresh()
    assert 310 not in groups(cs)
    assert provider.snapshot().totals["kvm_pio"] == 7

    # The VM exits: the next reading says so (once), every group retired,
    # its counts still readable; nothing more is followed.
    proc.remove(300)
    provider.refresh()
    assert cs.groups == 0
    reading = provider.snapshot(by_vm=True)
    assert reading.ended == {300}
    assert reading.totals == {"kvm_pio": 7, "kvm_fpu": 0}
    assert reading.by_vm == {300: {"kvm_pio": 7, "kvm_fpu": 0}}
    provider.refresh()
    reading = provider.snapshot(by_vm=True)
    assert reading.ended == frozenset()
    assert reading.by_vm == {300: {"kvm_pio": 7, "kvm_fpu": 0}}
    provider.close()
    assert cs.closed


def test_pid_mode_refresh_is_one_stat_and_one_children_read(proc, created, open_provider,
                                                           monkeypatch):
    proc.add_vm(300, "web", tids=[300, 301])
    provider = open_provider(pid=300)
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: opened.append(str(path))
                        or real_open(path, *a, **k))
    monkeypatch.setattr("os.listdir", lambda path: pytest.fail(f"listed {path}"))
    provider.refresh()
    assert sorted(opened) == sorted([f"{proc.path}/300/stat", f"{proc.path}/2/task/2/children"])


def test_pid_mode_vm_whose_threads_all_vanished(proc, open_provider, monkeypatch):
    counters, created = fake_native.counters(gone={300, 301})
    proc.add_vm(300, "web", tids=[300, 301])
    proc.set_state(300, "Z")  # every thread has ended (301 has no /proc entry left)
    with pytest.raises(NoSuchVM, match="VM process 300 has exited"):
        open_provider(pid=300, counters=counters)


@pytest.mark.parametrize("exiting", [True, False])
def test_a_thread_on_its_way_out_may_refuse_with_any_errno(proc, open_provider, monkeypatch,
                                                          exiting):
    # The kernel refuses perf_event_open with EINVAL when the thread's perf
    # context was torn down while its /proc entry still shows it running.
    counters, created = fake_native.counters(refuse={301: [errno.EINVAL] * 10})
    proc.add_vm(300, "web", tids=[300, 301])
    proc.set_thread_stat(301, "R", flags=0x4 if exiting else 0)
    if not exiting:
        with pytest.raises(NativeError, match="thread 301 refused"):
            open_provider(by_vm=True, counters=counters)
        return
    provider = open_provider(by_vm=True, counters=counters)
    assert groups(created[0]) == {300: 0}
    provider.close()


@pytest.mark.parametrize("refusals, opened", [
    ([errno.EINVAL], True),                    # it was starting a thread: again
    ([errno.ENODEV, errno.EINVAL, errno.ENODEV], True),
    ([errno.ESRCH] * 9, True),
    ([errno.ENODEV] * 10, False),              # always: a real error
    ([errno.EACCES], False),                   # another errno: not retried
])
def test_a_live_thread_refusing_for_a_moment_is_opened_again(proc, open_provider, monkeypatch,
                                                            refusals, opened):
    counters, created = fake_native.counters(refuse={301: refusals})
    proc.add_vm(300, "web", tids=[300, 301])
    proc.set_thread_stat(301, "R")
    if not opened:
        with pytest.raises(NativeError, match="thread 301 refused"):
            open_provider(pid=300, counters=counters)
        return
    provider = open_provider(pid=300, counters=counters)
    assert groups(created[0]) == {300: 0, 301: 0}
    provider.close()


def test_a_live_helper_thread_refusing_is_an_error(proc, open_provider, monkeypatch):
    counters, created = fake_native.counters(refuse={310: [errno.EACCES]})
    proc.add_vm(300, "web")
    proc.add_kthread(310, "kvm-pit/300")  # not in the VM's thread group
    with pytest.raises(NativeError, match="thread 310 refused"):
        open_provider(pid=300, counters=counters)


def test_host_mode_has_no_breakdown(proc, created, open_provider):
    proc.add_vm(300, "web")
    provider = open_provider()
    assert created[0].mode == native.PER_CPU
    assert not provider.supports_by_vm and provider.snapshot(by_vm=True).by_vm == {} and provider.vms == {}
    provider.refresh()  # nothing to follow


def test_by_vm_buckets_one_read_new_and_exited_vms(proc, created, open_provider):
    proc.add_vm(300, "web", tids=[300, 301])
    proc.add_vm(400, "db")
    proc.add_kthread(410, "kvm-pit/400")
    provider = open_provider(by_vm=True)
    cs = created[0]
    assert cs.mode == native.PER_THREAD_INHERIT
    assert groups(cs) == {300: 0, 301: 0, 400: 1, 410: 1}
    cs.counts.update({(300, "kvm_pio"): 3, (301, "kvm_pio"): 4, (410, "kvm_fpu"): 9})
    reading = provider.snapshot(by_vm=True)
    totals, per_vm = reading.totals, reading.by_vm
    assert cs.reads == 1  # totals and breakdown from one native read
    assert totals == {"kvm_pio": 7, "kvm_fpu": 9}
    assert per_vm == {300: {"kvm_pio": 7, "kvm_fpu": 0}, 400: {"kvm_pio": 0, "kvm_fpu": 9}}

    # A VM starts: its own bucket.  A VM exits: read once more with its final
    # counts, then it leaves the breakdown and its bucket serves the next VM.
    proc.add_vm(500, "new")
    proc.remove(300)
    provider.refresh()
    assert groups(cs) == {400: 1, 410: 1, 500: 2}
    cs.counts[(500, "kvm_pio")] = 1
    reading = provider.snapshot(by_vm=True)
    totals, per_vm = reading.totals, reading.by_vm
    assert reading.ended == {300}
    assert per_vm[300] == {"kvm_pio": 7, "kvm_fpu": 0} and per_vm[500]["kvm_pio"] == 1
    assert totals == {"kvm_pio": 8, "kvm_fpu": 9}
    provider.refresh()
    assert sorted(provider.snapshot(by_vm=True).by_vm) == [400, 500]
    proc.add_vm(600, "next")
    provider.refresh()
    assert groups(cs)[600] == 0  # the exited VM's bucket, cleared
    reading = provider.snapshot(by_vm=True)
    totals, per_vm = reading.totals, reading.by_vm
    assert not reading.ended
    assert per_vm[600] == {"kvm_pio": 0, "kvm_fpu": 0}
    assert totals == {"kvm_pio": 8, "kvm_fpu": 9}  # never backwards
    provider.close()


def test_by_vm_with_no_vm_yet(proc, created, open_provider):
    provider = open_provider(by_vm=True)
    reading = provider.snapshot(by_vm=True)
    assert (reading.totals, reading.by_vm) == ({"kvm_pio": 0, "kvm_fpu": 0}, {})
    assert created[0].enabled  # groups added later count at once
    proc.add_vm(300, "web")
    provider.refresh()
    assert groups(created[0]) == {300: 0}


def test_open_sampler_by_vm_gives_breakdown_and_names(tmp_path, proc, created, fake_core):
    proc.add_vm(300, "web")
    proc.add_vm(400, None)
    paths = Paths(proc=proc.path, sys=make_sys(tmp_path / "s"),
                  tracefs=make_tracefs(tmp_path / "t"))
    with sampler_for(SamplerOptions(fields="kvm_pio", by_vm=True, paths=paths,
                                    counters=fake_core[0])) as sampler:
        cs = created[0]
        cs.counts[(300, "kvm_pio")] = 2
        first = sampler.sample()
        cs.counts[(300, "kvm_pio")] = 5
        cs.counts[(400, "kvm_pio")] = 1
        second = sampler.sample()
    assert first.by_vm == {300: {"kvm_pio": (2, 2)}, 400: {"kvm_pio": (0, 0)}}
    assert second.by_vm == {300: {"kvm_pio": (5, 3)}, 400: {"kvm_pio": (1, 1)}}
    assert second.values == {"kvm_pio": (6, 4)}
    assert second.vm_names == {300: "web", 400: None}


def test_sampler_reports_the_watched_vm_ended_with_its_last_counts(tmp_path, proc, created,
                                                                 fake_core):
    proc.add_vm(300, "web")
    paths = Paths(proc=proc.path, sys=make_sys(tmp_path / "s"),
                  tracefs=make_tracefs(tmp_path / "t"))
    with sampler_for(SamplerOptions(fields="kvm_pio", pid=300, by_vm=True, paths=paths,
                                    counters=fake_core[0])) as sampler:
        sampler.sample()
        created[0].counts[(300, "kvm_pio")] = 4
        proc.remove(300)
        ended = sampler.sample()
        assert sampler.done and sampler.pid == 300
        assert ended.ended == {300: {"kvm_pio": (4, 4)}}
        assert ended.values == {"kvm_pio": (4, 4)}
        # Nothing is left to watch: sampling again is an error (VMGone) ...
        with pytest.raises(VMGone, match="VM process 300 has exited") as info:
            sampler.sample()
        assert info.value.pid == 300
        # ... but the counts it left are still readable.
        last = sampler.sample(refresh=False)
    assert last.values == {"kvm_pio": (4, 0)}
    assert last.by_vm == {300: {"kvm_pio": (4, 0)}}
    assert last.vm_names == {300: "web"}  # remembered after the exit
