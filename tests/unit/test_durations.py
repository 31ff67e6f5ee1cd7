"""Exit durations without a kernel: bucket arithmetic, percentiles, folding
the engine's entries into fields, intervals, the text/JSON/log/Prometheus
forms, and what --durations says where the BPF engine cannot run."""

import json

import pytest
from hypothesis import given, strategies as st
from prometheus_client.parser import text_string_to_metric_families

from kvmstat.counting.durations import (BUCKETS, KIND_GUEST, KIND_HALT, KIND_KERNEL, KIND_VMM,
                                        DurationEntry, DurationHistogram, Durations, bucket_of,
                                        fold_entries, interval, lower_bound_ns, upper_bound_ns)
from kvmstat.errors import NotAvailable
from kvmstat.frontends import cli
from kvmstat.frontends.exporter_durations import render_durations
from kvmstat.frontends.formats import durations as fmt
from kvmstat.frontends.formats.json import sample_object
from kvmstat.sampling.duration_source import open_durations
from kvmstat.sampling.sampler import Sample, Sampler


def hist(*durations_ns, max_ns=None):
    """A histogram of these durations, as the engine would build it."""
    buckets = [0] * BUCKETS
    for d in durations_ns:
        buckets[bucket_of(d)] += 1
    return DurationHistogram(len(durations_ns), sum(durations_ns),
                             max(durations_ns, default=0) if max_ns is None else max_ns,
                             tuple(buckets))


# -- buckets ---------------------------------------------------------------------

def test_bucket_edges():
    assert [bucket_of(n) for n in (0, 1, 2, 3, 4, 1023, 1024)] == [0, 0, 1, 1, 2, 9, 10]
    assert bucket_of(2**60) == BUCKETS - 1
    assert upper_bound_ns(0) == 2 and upper_bound_ns(19) == 2**20
    assert upper_bound_ns(BUCKETS - 1) is None
    assert lower_bound_ns(0) == 0 and lower_bound_ns(5) == 32
    with pytest.raises(ValueError):
        bucket_of(-1)


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_every_duration_lies_within_its_bucket(ns):
    index = bucket_of(ns)
    upper = upper_bound_ns(index)
    assert lower_bound_ns(index) <= ns
    assert upper is None or ns < upper


def engine_bucket(ns):
    """The engine's program: six shift-and-test steps, then the cap."""
    index, rest = 0, ns
    for shift in (32, 16, 8, 4, 2, 1):
        if rest >> shift:
            rest >>= shift
            index += shift
    return min(index, BUCKETS - 1)


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_the_programs_bucket_steps_agree_with_bucket_of(ns):
    assert engine_bucket(ns) == bucket_of(ns)


# -- percentiles -------------------------------------------------------------------

def test_percentiles_are_bucket_upper_bounds_capped_at_the_maximum():
    h = hist(*([1000] * 98 + [5000, 3_000_000]))   # 98 x 1 us, 5 us, 3 ms
    assert h.count == 100 and h.avg_ns == pytest.approx((98_000 + 5000 + 3_000_000) / 100)
    assert h.percentile_ns(0.5) == 1024            # bucket [512, 1024)
    assert h.percentile_ns(0.98) == 1024
    assert h.percentile_ns(0.99) == 8192           # the 99th is 5 us: bucket [4096, 8192)
    assert h.percentile_ns(1.0) == 3_000_000       # bound 4194304, capped at the max
    assert DurationHistogram().percentile_ns(0.5) == 0
    with pytest.raises(ValueError):
        h.percentile_ns(0)


@given(st.lists(st.integers(min_value=0, max_value=2**40), min_size=1, max_size=200),
       st.sampled_from([0.5, 0.9, 0.99, 1.0]))
def test_percentile_is_an_upper_estimate_within_twice_the_true_value(values, q):
    h = hist(*values)
    true = sorted(values)[max(0, -(-int(q * len(values) * 1000) // 1000) - 1)]
    estimate = h.percentile_ns(q)
    assert true <= estimate <= max(values)
    assert estimate <= max(2 * true, 2)


# -- folding, intervals ----------------------------------------------------------------

NAMES = {KIND_VMM: {2: "IO", 5: "HLT", 6: "MMIO"}, KIND_KERNEL: {30: "IO_INSTRUCTION",
                                                                   12: "HLT", 99: "HLT"},
         KIND_HALT: {1: "wait", 0: "poll"}}


def test_fold_makes_parents_children_aliases_and_per_vm_rows():
    entries = [
        DurationEntry(KIND_VMM, 100, 2, hist(5000, 7000)),
        DurationEntry(KIND_VMM, 200, 2, hist(9000)),
        DurationEntry(KIND_VMM, 200, 77, hist(100)),          # a code with no name
        DurationEntry(KIND_KERNEL, 100, 12, hist(300)),       # HLT and its alias 99
        DurationEntry(KIND_KERNEL, 100, 99, hist(500)),
        DurationEntry(KIND_GUEST, 100, 0, hist(40, 60)),
        DurationEntry(KIND_HALT, 200, 1, hist(1_000_000)),
        DurationEntry(KIND_HALT, 200, 0, hist(2000)),
    ]
    host, per_pid = fold_entries(entries, NAMES)
    assert host["kvm_userspace_exit(IO)"] == hist(5000, 7000, 9000)
    assert host["kvm_userspace_exit"] == hist(5000, 7000, 9000, 100)
    assert "kvm_userspace_exit(HLT)" not in host
    assert host["kvm_exit(HLT)"] == hist(300, 500) == host["kvm_exit"]
    assert host["kvm_entry"] == hist(40, 60)
    assert host["kvm_vcpu_wakeup(wait)"] == hist(1_000_000)
    assert host["kvm_vcpu_wakeup"] == hist(1_000_000, 2000)
    assert per_pid[100]["kvm_userspace_exit(IO)"] == hist(5000, 7000)
    assert per_pid[200]["kvm_userspace_exit"] == hist(9000, 100)
    assert set(per_pid[100]) == {"kvm_userspace_exit", "kvm_userspace_exit(IO)", "kvm_exit",
                                 "kvm_exit(HLT)", "kvm_entry"}
    only, _ = fold_entries(entries, NAMES, wanted=lambda n: n.startswith("kvm_exit"))
    assert set(only) == {"kvm_exit", "kvm_exit(HLT)"}


def test_kvm_exit_and_kvm_entry_pairing_fields():
    """What the programs record where kvm_exit and kvm_entry fire (faked
    here: they never fire on the development host): the kernel's time per
    exit reason under kvm_exit(REASON), the guest's time under kvm_entry,
    and the VMM's separately, so the three partition a vCPU's time."""
    entries = [DurationEntry(KIND_GUEST, 7, 0, hist(800, 900)),      # entry -> exit
               DurationEntry(KIND_KERNEL, 7, 30, hist(2000)),         # exit(IO) -> userspace
               DurationEntry(KIND_KERNEL, 7, 12, hist(50_000)),       # exit(HLT) -> entry
               DurationEntry(KIND_VMM, 7, 2, hist(30_000))]           # userspace -> KVM_RUN
    host, _ = fold_entries(entries, NAMES)
    guest, kernel, vmm = (host[n].sum_ns for n in ("kvm_entry", "kvm_exit", "kvm_userspace_exit"))
    assert (guest, kernel, vmm) == (1700, 52_000, 30_000)
    assert host["kvm_exit(IO_INSTRUCTION)"].count == 1
    lines = fmt.table_lines(host)
    row = next(line for line in lines if line.startswith("kvm_exit(HLT)"))
    assert row.split()[1:3] == ["1", "%.1f" % (100 * 50_000 / 52_000)]


def test_interval_subtracts_and_keeps_the_largest_maximum():
    first = {"a": hist(1000, 3000)}
    total1, delta1 = interval(first, {})
    assert delta1 == total1 == first
    # The engine's max_ns of a read covers only the time since the previous read.
    second = {"a": DurationHistogram(3, 4500, 500, hist(1000, 3000, 500).buckets)}
    total2, delta2 = interval(second, total1)
    assert delta2["a"] == hist(500)
    assert total2["a"].max_ns == 3000 and total2["a"].count == 3


# -- the forms --------------------------------------------------------------------------

def durations_sample(by_vm=False):
    total = {"kvm_userspace_exit": hist(5_000_000, 5_100_000, 20_000),
             "kvm_userspace_exit(IO)": hist(5_000_000, 5_100_000),
             "kvm_userspace_exit(MMIO)": hist(20_000)}
    vm = {4242: dict(total)} if by_vm else None
    d = Durations(total, total, vm, vm,
                  {"kvm_exit": "they never fire here", "kvm_entry": "they never fire here"})
    return Sample(1_700_000_000.0, 1.0, {"kvm_pio": (3, 3)}, {4242: {"kvm_pio": (3, 3)}}
                  if by_vm else None, {4242: "web"} if by_vm else {}, "bpf", durations=d)


def test_batch_table_and_notes():
    lines = fmt.batch_duration_lines(durations_sample())
    assert lines[0].split() == ["field", "count", "time%", "avg(us)", "p50(us)", "p99(us)",
                                "max(us)"]
    io = lines[2].split()
    assert io == ["kvm_userspace_exit(IO)", "2", "%.1f" % (100 * 10.1e6 / 10.12e6),
                  "5050.00", "5100.00", "5100.00", "5100.00"]
    assert lines[-1] == "no durations for kvm_entry, kvm_exit: they never fire here"


def test_by_guest_table_has_a_heading_per_vm():
    lines = fmt.by_guest_duration_lines(durations_sample(by_vm=True))
    assert lines[0] == "(pid 4242) web"
    assert lines[2].startswith("kvm_userspace_exit ")


def test_json_durations_object_for_the_interval_and_per_guest():
    obj = json.loads(json.dumps(sample_object(durations_sample(by_vm=True), by_guest=True)))
    io = obj["durations"]["kvm_userspace_exit(IO)"]
    assert io == {"count": 2, "sum_ns": 10_100_000, "max_ns": 5_100_000,
                  "buckets": [[2**23, 2]]}
    assert obj["guests"]["4242"]["durations"]["kvm_userspace_exit(MMIO)"]["buckets"] == \
        [[2**15, 1]]
    plain = sample_object(Sample(0.0, 0.0, {}))
    assert "durations" not in plain


def test_log_rows_plain_and_csv():
    sample = durations_sample()
    rows = fmt.plain_log_rows(sample, [])
    assert len(rows) == 3 and rows[1].split()[2:4] == ["kvm_userspace_exit(IO)", "2"]
    assert fmt.csv_log_header([]) == "timestamp,field,count,time_share,avg_us,p50_us,p99_us,max_us\n"
    assert fmt.csv_log_rows(sample, [])[2].split(",")[1:4] == ["kvm_userspace_exit(MMIO)", "1",
                                                              "0.2"]
    guest = fmt.csv_log_rows(durations_sample(by_vm=True), [], by_guest=True)
    assert guest[0].split(",")[1:4] == ["4242", "web", "kvm_userspace_exit"]


def test_tui_rows_sort_events_and_reasons_by_time():
    rows = fmt.tui_rows(durations_sample().durations.total, 120)
    assert [r.split()[0] for r in rows[1:]] == ["kvm_userspace_exit", "kvm_userspace_exit(IO)",
                                                "kvm_userspace_exit(MMIO)"]


def test_prometheus_histograms_partition_by_reason_in_seconds():
    total = dict(durations_sample().durations.total)
    total["kvm_userspace_exit"] = total["kvm_userspace_exit"] + hist(300)  # an unnamed code
    lines = []
    written = render_durations(lines, Durations(total, total), "", None, lambda event: True)
    text = "".join(lines)
    family = "kvm_tracepoint_userspace_exit_duration_seconds"
    assert f"# TYPE {family} histogram" in text
    assert f'{family}_bucket{{reason="IO",le="0.008388608"}} 2' in text
    assert f'{family}_bucket{{reason="IO",le="0.004194304"}} 0' in text
    assert f'{family}_bucket{{reason="MMIO",le="+Inf"}} 1' in text
    assert f'{family}_count{{reason="other"}} 1' in text
    assert f'{family}_sum{{reason="IO"}} 0.0101' in text
    assert 'reason=""' not in text and f"{family}_count{{}}" not in text
    assert written == 3  # IO, MMIO, other: the reasons partition the event
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families[family].type == "histogram"


def test_prometheus_histograms_per_vm_and_outside_add_up_to_the_host():
    vm = {"kvm_userspace_exit": hist(5000, 6000), "kvm_userspace_exit(IO)": hist(5000, 6000)}
    host = {"kvm_userspace_exit": hist(5000, 6000, 7000),
            "kvm_userspace_exit(IO)": hist(5000, 6000, 7000)}
    lines = []
    render_durations(lines, Durations(host, host, {4242: vm}, {4242: vm}), "",
                     {4242: 'pid="4242",guest="web"'}, lambda event: True)
    text = "".join(lines)
    family = "kvm_tracepoint_userspace_exit_duration_seconds"
    assert f'{family}_count{{pid="4242",guest="web",reason="IO"}} 2' in text
    assert f'{family}_count{{pid="none",guest="",reason="IO"}} 1' in text
    # Without per-VM series for the family: one host series (with -p: the watched VM's labels).
    lines = []
    render_durations(lines, Durations(host, host, {4242: vm}, {4242: vm}), 'pid="9",guest=""',
                     {4242: 'pid="4242",guest="web"'}, lambda event: False)
    assert f'{family}_count{{pid="9",guest="",reason="IO"}} 3' in "".join(lines)


# -- the sampler and --durations without BPF ---------------------------------------------

class FakeSource:
    def __init__(self):
        self.calls = []

    def sample(self):
        self.calls.append("sample")
        return durations_sample().durations

    def reset(self):
        self.calls.append("reset")

    def close(self):
        self.calls.append("close")


def test_sampler_reads_resets_and_closes_its_durations_source():
    source = FakeSource()
    sampler = Sampler([], durations=source)
    assert sampler.sample().durations.total["kvm_userspace_exit(IO)"].count == 2
    sampler.reset()
    sampler.close()
    assert source.calls == ["sample", "reset", "close"]
    assert Sampler([]).sample().durations is None


def test_durations_with_engine_perf_fail_with_one_line(tmp_path):
    with pytest.raises(NotAvailable) as caught:
        open_durations(engine="perf")
    assert "exit durations need the BPF engine" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_durations_with_the_python_backend_say_why(capsys):
    with pytest.raises(NotAvailable) as caught:
        open_durations(engine="auto", backend="python")
    assert "pure-Python" in str(caught.value)


def test_cli_durations_option():
    assert cli.parse_options(["-1", "--durations"]).durations is True
    assert cli.parse_options(["-1"]).durations is False


def test_lost_durations_are_said_under_the_table():
    sample = durations_sample()
    sample.durations.dropped = 7
    assert fmt.batch_duration_lines(sample)[-1] == (
        "7 durations were not recorded: the histogram table is full (reset, or count fewer "
        "events)")
