"""Where each vCPU's time goes: the interval arithmetic and the forms
(table, display, JSON, Prometheus), on made-up engine reads."""

import json

from hypothesis import given, strategies as st
from prometheus_client.parser import text_string_to_metric_families

from kvmstat.counting.durations import Durations, VcpuEntry, VcpuTimes, vcpu_times
from kvmstat.frontends import formats
from kvmstat.frontends.exporter_durations import VCPU_TIME_FAMILY, render_vcpu_times
from kvmstat.frontends.formats import durations as fmt
from kvmstat.frontends.formats.json import sample_object
from kvmstat.frontends.tui_durations import durations_screen
from kvmstat.frontends.tui_layout import View
from kvmstat.sampling.duration_source import _not_below
from kvmstat.sampling.sampler import Sample

MS = 1_000_000


def entry(tid, pid, run, vmm, guest=0, halt=0):
    return VcpuEntry(tid, pid, run * MS, vmm * MS, guest * MS, halt * MS)


# -- the interval arithmetic ------------------------------------------------------------

def test_times_are_the_difference_of_two_reads():
    before = {11: entry(11, 10, 100, 50, halt=40)}
    now = [entry(11, 10, 900, 250, halt=700), entry(12, 10, 30, 0)]
    got = vcpu_times(now, before, 1000 * MS, False, {11: "CPU 0/KVM"})
    assert got[0] == VcpuTimes(11, 10, 1000 * MS, 800 * MS, 200 * MS, 660 * MS, None, "CPU 0/KVM")
    # A thread the previous read did not have began within the interval.
    assert (got[1].tid, got[1].run_ns, got[1].name) == (12, 30 * MS, "")
    assert got[0].kernel_ns is None and got[0].share(got[0].guest_ns) is None
    assert got[0].share(got[0].run_ns) == 80.0


def test_guest_and_kernel_shares_where_kvm_entry_fires():
    got, = vcpu_times([entry(11, 10, 900, 100, guest=600, halt=200)], {}, 1000 * MS, True)
    assert (got.guest_ns, got.kernel_ns) == (600 * MS, 300 * MS)
    assert [got.share(x) for x in (got.run_ns, got.guest_ns, got.kernel_ns, got.halt_ns,
                                   got.vmm_ns)] == [90.0, 60.0, 30.0, 20.0, 10.0]


def test_a_reused_tid_in_another_process_starts_from_zero():
    got, = vcpu_times([entry(11, 20, 5, 5)], {11: entry(11, 10, 500, 500)}, 100 * MS, False)
    assert (got.pid, got.run_ns, got.vmm_ns) == (20, 5 * MS, 5 * MS)


@given(st.lists(st.integers(0, 10**12), min_size=8, max_size=8), st.integers(0, 10**10))
def test_times_are_never_negative_nor_above_the_interval(values, interval_ns):
    a = VcpuEntry(1, 1, *values[:4])
    b = VcpuEntry(1, 1, *values[4:])
    got, = vcpu_times([a], {1: b}, interval_ns, True)
    for ns in (got.run_ns, got.vmm_ns, got.guest_ns, got.kernel_ns, got.halt_ns):
        assert 0 <= ns <= interval_ns


def test_a_read_racing_the_end_of_a_state_never_lowers_a_total():
    """The program clears the start before it adds the length: one read may
    miss the length, and must not make a counter go down."""
    previous = entry(11, 10, 900, 100, halt=50)
    racing = entry(11, 10, 400, 120, halt=60)  # run's open part missed
    assert _not_below(racing, previous) == entry(11, 10, 900, 120, halt=60)
    assert _not_below(racing, None) == racing
    assert _not_below(racing, entry(11, 99, 900, 900)) == racing  # another process


# -- the forms ------------------------------------------------------------------------------

def vcpus_sample(guest_measured=False, name="CPU 0/KVM", by_vm=False):
    raw = [entry(11, 10, 990, 10, guest=700 if guest_measured else 0, halt=200),
           entry(21, 20, 500, 250)]
    vcpus = vcpu_times(raw, {}, 1000 * MS, guest_measured, {11: name, 21: "CPU 1/KVM"})
    d = Durations({}, {}, {} if by_vm else None, {} if by_vm else None,
                  {} if guest_measured else {"kvm_exit": "they never fire here"},
                  vcpus=vcpus, vcpus_total=vcpus)
    return Sample(1_700_000_000.0, 1.0, {}, {10: {}, 20: {}} if by_vm else None,
                  {10: "web", 20: "db"} if by_vm else {}, "bpf", durations=d)


def test_vcpu_table_says_not_measured_rather_than_zero():
    lines = fmt.batch_duration_lines(vcpus_sample())
    head = lines.index(next(line for line in lines if line.startswith("vcpu")))
    assert lines[head].split() == ["vcpu", "pid", "tid", "run%", "guest%", "kernel%",
                                   "halted%", "VMM%"]
    assert lines[head + 1].split() == ["CPU", "0/KVM", "10", "11", "99.0", "-", "-", "20.0",
                                       "1.0"]
    assert lines[head + 2].split()[-5:] == ["50.0", "-", "-", "0.0", "25.0"]
    assert lines[-1] == "no durations for kvm_exit: they never fire here"


def test_vcpu_table_with_guest_time():
    lines = fmt.batch_duration_lines(vcpus_sample(guest_measured=True))
    row = next(line for line in lines if line.startswith("CPU 0/KVM"))
    assert row.split()[-5:] == ["99.0", "70.0", "29.0", "20.0", "1.0"]


def test_vcpu_table_by_guest_has_headings():
    lines = fmt.by_guest_duration_lines(vcpus_sample(by_vm=True))
    assert "(pid 10) web" in lines and "(pid 20) db" in lines
    assert lines.index("(pid 10) web") < lines.index("(pid 20) db")


def test_hostile_thread_names_are_made_safe():
    lines = fmt.batch_duration_lines(vcpus_sample(name="\x1b[2J\nevil"))
    assert not any("\x1b" in line or "\n" in line for line in lines)
    obj = fmt.vcpus_object(vcpus_sample(name="\x1b[2J").durations.vcpus)
    assert "\x1b" not in obj[0]["thread"]


def test_json_vcpus_for_the_interval_and_per_guest():
    obj = json.loads(json.dumps(sample_object(vcpus_sample(by_vm=True), by_guest=True)))
    assert obj["vcpus"][0] == {"pid": 10, "tid": 11, "thread": "CPU 0/KVM",
                               "interval_ns": 1000 * MS, "run_ns": 990 * MS, "guest_ns": None,
                               "kernel_ns": None, "halt_ns": 200 * MS, "vmm_ns": 10 * MS}
    assert [v["tid"] for v in obj["guests"]["20"]["vcpus"]] == [21]


def test_display_shows_vcpus_busiest_first_under_the_events():
    screen = durations_screen(vcpus_sample(), View(durations=True), 100, 24)
    texts = [line.text for line in screen]
    header = next(i for i, t in enumerate(texts) if t.startswith("vCPU (last interval)"))
    assert texts[header + 1].startswith("CPU 0/KVM") and texts[header + 2].startswith("CPU 1/KVM")
    assert texts[-1].startswith("no durations for kvm_exit")


def test_display_keeps_room_for_the_events_on_a_small_screen():
    sample = vcpus_sample()
    many = vcpu_times([entry(100 + i, 10, i, 1) for i in range(50)], {}, 1000 * MS, False)
    sample.durations.vcpus = many
    screen = durations_screen(sample, View(durations=True), 100, 16)
    assert max(line.y for line in screen) < 16
    texts = [line.text for line in screen]
    assert "No durations measured yet" in texts  # the event part keeps its line
    assert any(t.startswith("vCPU (last interval)") for t in texts)


def prometheus(vcpus, openmetrics=False, vm_labels=None):
    lines = []
    written = render_vcpu_times(lines, vcpus, "", vm_labels or {}, openmetrics)
    return "".join(lines), written


def test_prometheus_states_partition_each_vcpus_time():
    text, written = prometheus(vcpus_sample().durations.vcpus_total,
                               vm_labels={10: 'pid="10",guest="web"'})
    family = VCPU_TIME_FAMILY + "_total"
    assert written == 6
    assert (f'{family}{{pid="10",guest="web",vcpu="0",tid="11",state="kvm_run"}} 0.79'
            in text)
    assert f'{family}{{pid="10",guest="web",vcpu="0",tid="11",state="halted"}} 0.2' in text
    assert f'{family}{{pid="20",guest="",vcpu="1",tid="21",state="vmm"}} 0.25' in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families[VCPU_TIME_FAMILY].type == "counter"


def test_prometheus_guest_kernel_halted_vmm_where_measured():
    text, _ = prometheus(vcpus_sample(guest_measured=True).durations.vcpus_total)
    states = {}
    for line in text.splitlines():
        if 'tid="11"' in line:
            states[line.split('state="')[1].split('"')[0]] = float(line.split()[-1])
    want = {"guest": 0.7, "kernel": 0.09, "halted": 0.2, "vmm": 0.01}
    assert states.keys() == want.keys()
    assert all(abs(states[k] - want[k]) < 1e-12 for k in want)
    assert abs(sum(states.values()) - 1.0) < 1e-9  # the whole interval, once


def test_prometheus_openmetrics_names_the_family_without_total():
    text, _ = prometheus(vcpus_sample().durations.vcpus_total, openmetrics=True)
    assert f"# TYPE {VCPU_TIME_FAMILY} counter" in text
    assert prometheus([])[1] == 0


def test_formats_package_exports_stay_importable():
    assert formats.durations is fmt


def test_thread_names_and_existence_come_from_proc(tmp_path):
    from kvmstat.host.vms import thread_exists, thread_name

    task = tmp_path / "10" / "task" / "11"
    task.mkdir(parents=True)
    (task / "comm").write_bytes(b"CPU 0/KVM\xff\n")
    assert thread_exists(10, 11, str(tmp_path)) and not thread_exists(10, 12, str(tmp_path))
    assert thread_name(10, 11, str(tmp_path)) == "CPU 0/KVM\ufffd"
    assert thread_name(10, 12, str(tmp_path)) is None
