"""The tracepoint provider on the BPF engine, on fake /proc trees and a fake
engine: fields, -f, host-wide, -p with helper threads, per-VM rows, VMs that
come and go, the sweep of exited processes."""

import dataclasses

import pytest

from kvmstat.errors import NotAvailable
from kvmstat.tracefs.events import load_events
from kvmstat.providers.bpf_tracepoints import BpfTracepointProvider, bpf_layout
from kvmstat.providers.tracepoints import event_fields, event_specs

import fake_bpf
from test_tracepoint_provider import make_tracefs
from test_vm_following import proc  # noqa: F401  (the fake /proc fixture)

IO, HLT = 2, 5


@pytest.fixture
def tracefs(tmp_path):
    """A tracefs tree with kvm_exit, kvm_pio, kvm_userspace_exit, kvm_fpu."""
    return make_tracefs(tmp_path / "t")


@pytest.fixture
def open_provider(tracefs, proc):
    """opener(fields=..., **options) -> provider; its fake engines are in
    ``opener.created``."""
    counters, created = fake_bpf.counters()

    def opener(fields=("kvm_pio", "kvm_userspace_exit", "kvm_userspace_exit(IO)",
                       "kvm_userspace_exit(HLT)"), **kwargs):
        return BpfTracepointProvider(tracefs, fields=fields, vendor="vmx", proc=proc.path,
                                     counters=counters, **kwargs)
    opener.created = created
    return opener


def test_same_fields_as_perf_groups_in_the_same_order(tracefs):
    events = load_events(tracefs, "vmx")
    specs, columns, names = bpf_layout(events)
    assert names == event_fields(events) == [s.name for s in event_specs(events)]
    assert [s.name for s in specs] == [e.name for e in events]
    # Each child counts its reason codes, read at the format file's offset.
    uexit = [s.name for s in specs].index("kvm_userspace_exit")
    assert (specs[uexit].reason_offset, specs[uexit].reason_size) == (8, 4)
    assert columns[names.index("kvm_userspace_exit(IO)")] == (uexit, (IO,))
    assert columns[names.index("kvm_userspace_exit")] == (uexit, None)


def test_only_the_selected_tracepoints_get_a_program(tracefs):
    events = load_events(tracefs, "vmx")
    specs, columns, names = bpf_layout(events, ["kvm_userspace_exit(HLT)", "kvm_fpu"])
    assert [s.name for s in specs] == ["kvm_fpu", "kvm_userspace_exit"]
    assert names == ["kvm_fpu", "kvm_userspace_exit(HLT)"]
    assert columns == [(0, None), (1, (HLT,))]


def test_a_child_without_a_known_field_offset_is_refused(tracefs):
    events = [dataclasses.replace(e, reason_field=None) for e in load_events(tracefs, "vmx")]
    with pytest.raises(NotAvailable, match=r"^the BPF engine cannot count kvm_exit\(.*\): the "
                                           r"format file of kvm_exit does not say where its "
                                           r"exit_reason field is \(use the perf engine\)$"):
        bpf_layout(events)
    # Parents need no field.
    assert bpf_layout(events, ["kvm_exit"])[2] == ["kvm_exit"]


def test_host_wide_counts_every_process(open_provider, proc):
    proc.add_vm(300, "web")
    provider = open_provider()
    counter = open_provider.created[0]
    assert counter.only_pid is None and provider.engine == "bpf"
    assert not provider.supports_by_vm and provider.vms == {}
    counter.hit(300, "kvm_userspace_exit", IO, 5)
    counter.hit(300, "kvm_pio", n=5)
    counter.hit(9999, "kvm_userspace_exit", HLT, 2)  # any process
    assert provider.snapshot().totals == {"kvm_pio": 5, "kvm_userspace_exit": 7,
                               "kvm_userspace_exit(IO)": 5, "kvm_userspace_exit(HLT)": 2}
    assert provider.snapshot(by_vm=True).by_vm == {}
    provider.refresh()
    provider.reset()
    assert set(provider.snapshot().totals.values()) == {0}
    provider.close()
    assert counter.closed and provider.fds == 0


def test_pid_mode_counts_the_vm_and_its_helper_threads(open_provider, proc):
    proc.add_vm(300, "web", tids=[300, 301])
    proc.add_vm(400, "db")
    proc.add_kthread(310, "kvm-pit/300")
    provider = open_provider(pid=300)
    counter = open_provider.created[0]
    assert counter.only_pid == 300 and counter.also == {310}
    assert counter.buckets == {300: 0, 310: 0}
    assert provider.supports_by_vm and list(provider.vms) == [300]
    counter.hit(300, "kvm_pio", n=4)
    counter.hit(310, "kvm_pio", n=1)
    counter.hit(400, "kvm_pio", n=50)  # another VM: not counted
    expected = {"kvm_pio": 5, "kvm_userspace_exit": 0, "kvm_userspace_exit(IO)": 0,
                "kvm_userspace_exit(HLT)": 0}
    reading = provider.snapshot(by_vm=True)
    assert (reading.totals, reading.by_vm) == (expected, {300: expected})

    # Helper threads that appear later are counted too; ended ones keep their counts.
    proc.add_kthread(311, "vhost-300")
    provider.refresh()
    assert counter.also == {310, 311}
    proc.remove(310)
    provider.refresh()
    counter.hit(311, "kvm_pio", n=2)
    assert provider.snapshot().totals["kvm_pio"] == 7

    # The VM exits: the reading says so; the programs are released, the counts stay.
    proc.remove(300)
    provider.refresh()
    assert counter.closed and provider.fds == 0
    reading = provider.snapshot(by_vm=True)
    assert reading.ended == {300} and reading.totals["kvm_pio"] == 7
    assert reading.by_vm == {300: {**expected, "kvm_pio": 7}}
    provider.refresh()  # nothing left to follow
    assert not provider.snapshot().ended
    provider.reset()
    assert provider.snapshot().totals["kvm_pio"] == 0
    provider.close()


def test_by_vm_rows_per_process_with_nothing_per_thread(open_provider, proc):
    proc.add_vm(300, "web", tids=[300, 301])
    proc.add_vm(400, "db")
    proc.add_kthread(410, "kvm-pit/400")
    proc.add_process(77, "kworker/0:1")
    provider = open_provider(fields=["kvm_pio"], by_vm=True)
    counter = open_provider.created[0]
    assert counter.only_pid is None
    assert counter.buckets == {300: 0, 400: 1, 410: 1}
    counter.hit(300, "kvm_pio", n=3)
    counter.hit(410, "kvm_pio", n=2)
    counter.hit(77, "kvm_pio", n=1)  # a kworker: in the totals only
    reading = provider.snapshot(by_vm=True)
    totals, per_vm = reading.totals, reading.by_vm
    assert counter.reads == 1
    assert totals == {"kvm_pio": 6}
    assert per_vm == {300: {"kvm_pio": 3}, 400: {"kvm_pio": 2}}

    # New threads need nothing; a new VM gets a row; an exited VM is read
    # once more, then forgotten (its counts stay in the totals) and its row
    # serves the next VM.
    proc.add_thread(300, 302)
    proc.add_vm(500, "new")
    proc.remove(400)
    proc.remove(410)
    provider.refresh()
    assert counter.buckets == {300: 0, 400: 1, 410: 1, 500: 2}
    counter.hit(300, "kvm_pio", n=1)  # thread 302 belongs to process 300
    reading = provider.snapshot(by_vm=True)
    totals, per_vm = reading.totals, reading.by_vm
    assert reading.ended == {400}
    assert per_vm == {300: {"kvm_pio": 4}, 400: {"kvm_pio": 2}, 500: {"kvm_pio": 0}}
    provider.refresh()
    assert counter.forgotten == [[400, 410]]
    assert counter.buckets == {300: 0, 500: 2}
    proc.add_vm(600, "next")
    provider.refresh()
    assert counter.buckets == {300: 0, 500: 2, 600: 1}
    reading = provider.snapshot(by_vm=True)
    totals, per_vm = reading.totals, reading.by_vm
    assert totals == {"kvm_pio": 7}  # never backwards
    assert per_vm == {300: {"kvm_pio": 4}, 500: {"kvm_pio": 0}, 600: {"kvm_pio": 0}}
    provider.close()


def test_a_vm_that_ran_and_exited_between_refreshes_is_reported_once(open_provider, proc):
    """Under churn a VM may start, make exits and exit before any refresh
    sees it (issue 18, case 10): it still gets one row, by pid."""
    proc.add_vm(300, "web")
    proc.add_process(77, "kworker/0:1")
    provider = open_provider(fields=["kvm_pio"], by_vm=True)
    counter = open_provider.created[0]
    counter.hit(300, "kvm_pio", n=1)
    counter.hit(888, "kvm_pio", n=5)  # never listed, gone now
    counter.hit(77, "kvm_pio", n=1)   # alive, not a VM: in the totals only
    assert provider.snapshot(by_vm=True).by_vm == {300: {"kvm_pio": 1}}
    provider.refresh()
    reading = provider.snapshot(by_vm=True)
    assert reading.totals == {"kvm_pio": 7}
    assert reading.by_vm == {300: {"kvm_pio": 1}, 888: {"kvm_pio": 5}}
    assert reading.ended == {888}
    provider.refresh()
    assert counter.forgotten == [[888]]
    reading = provider.snapshot(by_vm=True)
    assert reading.totals == {"kvm_pio": 7} and reading.by_vm == {300: {"kvm_pio": 1}}
    provider.refresh()  # nothing new in the table: not looked at again
    assert provider.snapshot(by_vm=True).by_vm == {300: {"kvm_pio": 1}}
    provider.close()


def test_entries_of_exited_processes_are_swept_when_the_table_is_half_full(
        open_provider, proc):
    # kvm_fpu is no proof of a vCPU having run (see VCPU_EVENTS): the dead
    # processes are not VMs that were missed, just entries to sweep.
    proc.add_vm(300, "web")
    proc.add_process(700, "worker")
    provider = open_provider(fields=["kvm_fpu"], by_vm=True, max_entries=8)
    counter = open_provider.created[0]
    counter.hit(300, "kvm_fpu")
    counter.hit(700, "kvm_fpu")
    for dead in (801, 802, 803):  # processes that have exited since
        counter.hit(dead, "kvm_fpu")
    provider.snapshot().totals
    provider.refresh()
    assert counter.forgotten == [[801, 802, 803]]  # not the VM, not the live process
    assert provider.snapshot().totals == {"kvm_fpu": 5}
    # The next sweep waits until the table is halfway between the live
    # entries (2) and its capacity (8).
    counter.hit(804, "kvm_fpu")
    provider.snapshot().totals
    provider.refresh()
    assert counter.forgotten == [[801, 802, 803]]
    counter.hit(805, "kvm_fpu")
    counter.hit(806, "kvm_fpu")
    provider.snapshot().totals
    provider.refresh()
    assert counter.forgotten[-1] == [804, 805, 806]


def test_no_field_selected_opens_nothing(open_provider):
    provider = open_provider(fields=[])
    assert open_provider.created == [] and provider.snapshot().totals == {} and provider.fds == 0
    provider.refresh()
    provider.close()


def test_per_vm_counting_is_refused_inside_a_pid_namespace(open_provider, proc):
    proc.add_vm(300, "web")
    (proc.root / "self").mkdir()
    (proc.root / "self" / "status").write_text("Name:\tkvm_stat\nNSpid:\t48213\t7\n")
    message = "the BPF engine tells VMs apart by the host's process ids, and kvmstat runs " \
              "in a PID namespace: use the perf engine"
    with pytest.raises(NotAvailable, match=message):
        open_provider(pid=300)
    with pytest.raises(NotAvailable, match=message):
        open_provider(by_vm=True)
    open_provider().close()  # host-wide counts do not depend on process ids
    (proc.root / "self" / "status").write_text("Name:\tkvm_stat\nNSpid:\t48213\n")
    open_provider(pid=300).close()


def test_raw_tracepoint_names_and_reason_arguments(tracefs):
    specs, _, _ = bpf_layout(load_events(tracefs, "vmx"))
    by_name = {s.name: s for s in specs}
    # Every program may attach by the tracepoint's name.
    assert all(s.tracepoint == s.name for s in specs)
    # kvm_userspace_exit's reason is its first argument; x86 kvm_exit
    # computes its reason while building the record: no argument.
    assert by_name["kvm_userspace_exit"].reason_arg == 0
    assert by_name["kvm_exit"].reason_arg is None
    assert by_name["kvm_exit"].reason_offset is not None


@pytest.mark.parametrize("options, layout", [
    ({}, "slots"), ({"pid": 1000}, "slots"), ({"by_vm": True}, "by-process")])
def test_per_process_counts_only_for_per_vm_rows(open_provider, proc, options, layout):
    if "pid" in options or options.get("by_vm"):
        proc.add_vm(1000, "vm", tids=[1001])
    p = open_provider(**options)
    try:
        assert p.layout == layout
        assert open_provider.created[-1].layout == layout
    finally:
        p.close()
