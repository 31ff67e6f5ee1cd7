"""The exporter without a kernel: names, partitioned series, histograms, health, HTTP,
TLS and authentication (docs/metrics.md)."""

import base64
import gzip
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest
from hypothesis import given, strategies as st
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from helpers.promtool import check_metrics
from kvmstat.errors import AccessDenied, InvalidArgument, NotAvailable
from kvmstat.frontends import cli
from kvmstat.frontends.exporter import (DEFAULT_VM_SERIES, KvmCollector, MetricsServer,
                                        ServeAddress, compile_series_regex, parse_serve_address)
from kvmstat.frontends.exporter_names import family_name
from kvmstat.frontends.exporter_web import load_web_config
from kvmstat.host.vms import VM
from kvmstat.providers.base import SINCE_CREATION, HistogramValues, Provider, Reading
from kvmstat.sampling.sampler import Sampler

ALL_VM = compile_series_regex("", "--vm-series")


class FakeProvider(Provider):
    """Counts set by the test; optional per-VM counts, histograms and per-vCPU
    values; the watched VM (4242 with *watched*) can be set gone; *broken*
    makes reading fail."""

    def __init__(self, counts, by_vm=None, name="tracepoints", levels=(), histograms=None,
                 vm_histograms=None, by_vcpu=None, watched=None):
        self.name = name
        self.watched = watched
        self.said_gone = False
        self.broken = None
        self.counts = dict(counts)
        self._levels = frozenset(levels)
        self.by_vm = by_vm
        self.histograms = histograms or {}
        self.vm_histograms = vm_histograms or {}
        self.by_vcpu = by_vcpu
        self.gone = False
        self.reads = self.closed = 0
        self.active = 0
        self.overlapped = False
        self.delay = 0.0

    @property
    def fields(self):
        return list(self.counts)

    @property
    def supports_by_vm(self):
        return self.by_vm is not None

    @property
    def levels(self):
        return self._levels

    @property
    def pid(self):
        return self.watched

    def snapshot(self, *, by_vm=False, histograms=False, by_vcpu=False):
        if self.broken is not None:
            raise self.broken
        self.active += 1
        self.overlapped |= self.active > 1
        time.sleep(self.delay)
        self.reads += 1
        self.active -= 1
        ended = frozenset({4242}) if self.gone and not self.said_gone else frozenset()
        self.said_gone |= self.gone
        per_vm = {pid: dict(c) for pid, c in (self.by_vm or {}).items()} if by_vm else {}
        return Reading(dict(self.counts), per_vm,
                       dict(self.histograms) if histograms else {},
                       {pid: dict(h) for pid, h in self.vm_histograms.items()}
                       if histograms and by_vm else {}, ended=ended)

    def reset(self):
        pass

    def close(self):
        self.closed += 1


class VcpuProvider(FakeProvider):
    def snapshot(self, *, by_vm=False, histograms=False, by_vcpu=False):
        reading = super().snapshot(by_vm=by_vm, histograms=histograms)
        return Reading(reading.totals, reading.by_vm, reading.histograms,
                       reading.vm_histograms, self.by_vcpu if by_vcpu else {})


def collector_for(provider, *, by_vm=False, vm_series=ALL_VM, **kw):
    return KvmCollector(Sampler([provider], by_vm=by_vm), vm_series=vm_series,
                        histograms=lambda name: True, **kw)


def scrape(collector, openmetrics=False):
    text = collector.render(openmetrics).decode()
    families = parse_openmetrics(text) if openmetrics else text_string_to_metric_families(text)
    return {f.name: f for f in families}, text


def series(families, name):
    """{frozenset(labels.items()): value} of the samples named *name*."""
    out = {}
    for family in families.values():
        for s in family.samples:
            if s.name == name:
                key = frozenset(s.labels.items())
                assert key not in out, f"duplicate series {name}{s.labels}"
                out[key] = s.value
    return out


def labels(**kw):
    return frozenset(kw.items())


# ---------------------------------------------------------------------------
# [HOST:]PORT

@pytest.mark.parametrize("text, host, port", [
    ("9000", "127.0.0.1", 9000),
    ("0", "127.0.0.1", 0),
    ("0.0.0.0:9100", "0.0.0.0", 9100),
    ("127.0.0.1:65535", "127.0.0.1", 65535),
    ("localhost:80", "localhost", 80),
    ("metrics.example.org:9177", "metrics.example.org", 9177),
    ("[::1]:9000", "::1", 9000),
    ("[::]:9000", "::", 9000),
    ("[fe80::1%lo]:9000", "fe80::1%lo", 9000),
])
def test_serve_addresses(text, host, port):
    assert parse_serve_address(text) == ServeAddress(host, port)


@pytest.mark.parametrize("text, message", [
    ("", "is not a port number"),
    ("http", "'http' is not a port number"),
    ("70000", "out of range"),
    ("-1", "is not a port number"),
    ("9000 ", "is not a port number"),
    ("١٢٣", "is not a port number"),       # non-ASCII digits
    (":9000", "the host is empty"),
    ("::1:9000", "in brackets"),
    ("::1", "in brackets"),
    ("[::1]9000", "[ADDRESS]:PORT"),
    ("[::1]", "[ADDRESS]:PORT"),
    ("[::1:9000", "[ADDRESS]:PORT"),
    ("[127.0.0.1]:9000", "not an IPv6 address"),
    ("[::1]:", "is not a port number"),
    ("1.2.3.999:9000", "not an IPv4 address"),
    ("my host:9000", "not a host name or address"),
    ("127.0.0.1:", "is not a port number"),
])
def test_bad_serve_addresses_are_one_line_errors(text, message):
    with pytest.raises(InvalidArgument) as info:
        parse_serve_address(text)
    assert message in str(info.value) and "\n" not in str(info.value)


@given(st.ip_addresses(), st.integers(0, 65535))
def test_serve_address_round_trip(ip, port):
    address = ServeAddress(str(ip), port)
    assert parse_serve_address(str(address)) == address


@given(st.text(max_size=30))
def test_serve_address_parser_never_crashes(text):
    try:
        parse_serve_address(text)
    except InvalidArgument:
        pass


def test_cli_rejects_a_bad_serve_address_before_opening_anything(capsys):
    assert cli.main(["--serve", "[::1]9000"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: --serve '[::1]9000'") and err.count("\n") == 1


def test_cli_busy_port_is_a_one_line_error(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli.main(["--serve", f"127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err
    assert err == (f"Error: cannot listen on 127.0.0.1:{port}: the port is already in use "
                   f"(stop the other program or choose another port)\n")


# ---------------------------------------------------------------------------
# Names

@pytest.mark.parametrize("field, provider, family, scaled", [
    ("kvm_pio", "tracepoints", "kvm_tracepoint_pio", False),
    ("kvm_exit(HLT)", "tracepoints", "kvm_tracepoint_exit", False),
    ("kvm_userspace_exit(IO)", "tracepoints", "kvm_tracepoint_userspace_exit", False),
    ("kvm_halt_poll_ns", "tracepoints", "kvm_tracepoint_halt_poll_interval_changes", False),
    ("vcpu_match_mmio", "tracepoints", "kvm_tracepoint_vcpu_match_mmio", False),
    ("exits", "binstats", "kvm_stats_exits", False),
    ("exits", "debugfs", "kvm_stats_exits", False),
    ("halt_wait_ns", "binstats", "kvm_stats_halt_wait_seconds", True),
    ("halt_poll_success_ns", "debugfs", "kvm_stats_halt_poll_success_seconds", True),
    ("weird-name.x", "debugfs", "kvm_stats_weird_name_x", False),
    ("flushes_total", "debugfs", "kvm_stats_flushes", False),
])
def test_family_names(field, provider, family, scaled):
    assert family_name(field, provider) == (family, scaled)


def test_help_says_what_the_number_means():
    provider = FakeProvider({"kvm_exit": 10, "kvm_exit(HLT)": 7, "kvm_pio": 5})
    families, text = scrape(collector_for(provider))
    assert "VM exits" in families["kvm_tracepoint_exit"].documentation
    assert 'reason="other"' in families["kvm_tracepoint_exit"].documentation
    assert "Port I/O" in families["kvm_tracepoint_pio"].documentation
    assert "# TYPE kvm_tracepoint_exit_total counter" in text


# ---------------------------------------------------------------------------
# Series that partition

def test_reasons_partition_their_event_with_other_for_the_rest():
    provider = FakeProvider({"kvm_exit": 10, "kvm_exit(HLT)": 6, "kvm_exit(IO)": 3,
                             "kvm_pio": 5})
    families, _ = scrape(collector_for(provider))
    exits = series(families, "kvm_tracepoint_exit_total")
    assert exits == {labels(reason="HLT"): 6, labels(reason="IO"): 3, labels(reason="other"): 1}
    assert sum(exits.values()) == 10  # sum without (reason) is the event
    assert series(families, "kvm_tracepoint_pio_total") == {labels(): 5}


def test_per_vm_series_partition_the_host_and_idle_vms_have_none():
    provider = FakeProvider(
        {"kvm_pio": 35, "kvm_exit": 9, "kvm_exit(HLT)": 9, "kvm_fpu": 4},
        by_vm={101: {"kvm_pio": 10, "kvm_exit": 9, "kvm_exit(HLT)": 9, "kvm_fpu": 4},
               202: {"kvm_pio": 20, "kvm_exit": 0, "kvm_exit(HLT)": 0, "kvm_fpu": 0},
               303: {"kvm_pio": 0, "kvm_exit": 0, "kvm_exit(HLT)": 0, "kvm_fpu": 0}})
    names = {101: "web", 202: None, 303: "idle"}
    collector = collector_for(provider, by_vm=True, names=names.get,
                              vm_series=compile_series_regex("kvm_(pio|exit)$", "x"))
    families, _ = scrape(collector)
    assert series(families, "kvm_tracepoint_pio_total") == {
        labels(pid="101", guest="web"): 10, labels(pid="202", guest=""): 20,
        labels(pid="none", guest=""): 5}
    assert series(families, "kvm_tracepoint_exit_total") == {
        labels(pid="101", guest="web", reason="HLT"): 9,
        labels(pid="none", guest="", reason="HLT"): 0,
        labels(pid="none", guest="", reason="other"): 0}
    # Not selected for per-VM series: one host series.
    assert series(families, "kvm_tracepoint_fpu_total") == {labels(): 4}
    for family, field in (("kvm_tracepoint_pio_total", "kvm_pio"),
                          ("kvm_tracepoint_exit_total", "kvm_exit")):
        assert sum(series(families, family).values()) == provider.counts[field]
    assert series(families, "kvmstat_vms") == {labels(): 3}


def test_a_vm_gets_its_series_at_its_first_event_keeps_them_and_loses_them_when_it_exits():
    provider = FakeProvider({"kvm_pio": 5}, by_vm={1: {"kvm_pio": 0}, 2: {"kvm_pio": 5}})
    collector = collector_for(provider, by_vm=True)
    assert series(scrape(collector)[0], "kvm_tracepoint_pio_total") == {
        labels(pid="2", guest=""): 5, labels(pid="none", guest=""): 0}
    provider.counts, provider.by_vm = {"kvm_pio": 8}, {1: {"kvm_pio": 3}, 2: {"kvm_pio": 5}}
    assert series(scrape(collector)[0], "kvm_tracepoint_pio_total") == {
        labels(pid="1", guest=""): 3, labels(pid="2", guest=""): 5, labels(pid="none", guest=""): 0}
    # VM 2 exits: its events stay in the host count, now outside the running VMs.
    provider.by_vm = {1: {"kvm_pio": 3}}
    assert series(scrape(collector)[0], "kvm_tracepoint_pio_total") == {
        labels(pid="1", guest=""): 3, labels(pid="none", guest=""): 5}


def test_guest_names_are_asked_once_per_vm():
    asked = []
    provider = FakeProvider({"kvm_pio": 2}, by_vm={7: {"kvm_pio": 2}})
    collector = collector_for(provider, by_vm=True, names=lambda pid: asked.append(pid) or "n")
    for _ in range(3):
        scrape(collector)
    assert asked == [7]
    provider.by_vm = {}
    scrape(collector)
    provider.by_vm = {7: {"kvm_pio": 2}}
    scrape(collector)
    assert asked == [7, 7]  # gone, then back: asked again (the pid may be another VM)


def test_no_vm_series_means_host_series_only():
    provider = FakeProvider({"kvm_pio": 5}, by_vm={1: {"kvm_pio": 5}})
    families, _ = scrape(collector_for(provider, by_vm=True, vm_series=None))
    assert series(families, "kvm_tracepoint_pio_total") == {labels(): 5}


def test_a_provider_without_a_breakdown_keeps_host_series():
    tracepoints = FakeProvider({"kvm_pio": 5}, by_vm={1: {"kvm_pio": 5}})
    stats = FakeProvider({"exits": 3}, name="debugfs")
    sampler = Sampler([tracepoints, stats], by_vm=True)
    families, _ = scrape(KvmCollector(sampler, vm_series=ALL_VM))
    assert series(families, "kvm_stats_exits_total") == {labels(): 3}
    assert series(families, "kvm_tracepoint_pio_total") == {
        labels(pid="1", guest=""): 5, labels(pid="none", guest=""): 0}


@pytest.mark.parametrize("openmetrics", [False, True])
def test_levels_are_gauges_per_vm_from_their_first_non_zero_value(openmetrics):
    provider = FakeProvider({"exits": 3, "pages_4k": 512, "max_mmu_rmap_size": 9},
                            by_vm={7: {"exits": 3, "pages_4k": 512, "max_mmu_rmap_size": 9},
                                   8: {"exits": 0, "pages_4k": 0, "max_mmu_rmap_size": 0}},
                            name="debugfs", levels={"pages_4k", "max_mmu_rmap_size"})
    collector = collector_for(provider, by_vm=True, names={7: "vm"}.get)
    families, text = scrape(collector, openmetrics=openmetrics)
    assert families["kvm_stats_exits"].type == "counter"
    for name in ("kvm_stats_pages_4k", "kvm_stats_max_mmu_rmap_size"):
        assert families[name].type == "gauge"
    assert series(families, "kvm_stats_pages_4k") == {labels(pid="7", guest="vm"): 512}
    assert "kvm_stats_pages_4k_total" not in text
    provider.by_vm[7]["pages_4k"] = 0
    assert series(scrape(collector)[0], "kvm_stats_pages_4k") == {labels(pid="7", guest="vm"): 0}


def test_nanoseconds_are_served_as_seconds():
    provider = FakeProvider({"halt_wait_ns": 1_500_000_000}, name="binstats")
    families, text = scrape(collector_for(provider))
    assert series(families, "kvm_stats_halt_wait_seconds_total") == {labels(): 1.5}
    assert "in seconds" in families["kvm_stats_halt_wait_seconds"].documentation


# ---------------------------------------------------------------------------
# Histograms and vCPUs

def _log_histogram(counts, since="start"):
    n = len(counts)
    bounds = tuple((0 if i == 0 else 1 << (i - 1), (1 << i) if i < n - 1 else None)
                   for i in range(n))
    return HistogramValues(tuple(counts), since, "log", bounds, "seconds", 10, -9)


@pytest.mark.parametrize("openmetrics", [False, True])
def test_histograms_in_seconds_with_the_time_counter_as_sum(openmetrics):
    provider = FakeProvider(
        {"halt_wait_ns": 10, "exits": 1},
        by_vm={5: {"halt_wait_ns": 6, "exits": 1}},
        name="binstats",
        histograms={"halt_wait_hist": _log_histogram([1, 2, 0, 1])},
        vm_histograms={5: {"halt_wait_hist": _log_histogram([1, 1, 0, 0])}})
    families, text = scrape(collector_for(provider, by_vm=True), openmetrics=openmetrics)
    family = families["kvm_stats_halt_wait_duration_seconds"]
    assert family.type == "histogram"
    buckets = series(families, "kvm_stats_halt_wait_duration_seconds_bucket")
    vm = {"pid": "5", "guest": ""}
    outside = {"pid": "none", "guest": ""}
    assert buckets[labels(**vm, le="1e-09")] == 1
    assert buckets[labels(**vm, le="2e-09")] == 2
    assert buckets[labels(**vm, le="4e-09")] == 2
    assert buckets[labels(**vm, le="+Inf")] == 2
    assert buckets[labels(**outside, le="2e-09")] == 1
    assert buckets[labels(**outside, le="+Inf")] == 2
    assert series(families, "kvm_stats_halt_wait_duration_seconds_count") == {
        labels(**vm): 2, labels(**outside): 2}
    sums = series(families, "kvm_stats_halt_wait_duration_seconds_sum")
    assert sums[labels(**vm)] == pytest.approx(6e-9)
    assert sums[labels(**outside)] == pytest.approx(4e-9)


def test_debugfs_halt_histograms_without_bounds_are_kvms_log2_nanoseconds():
    provider = FakeProvider({"exits": 1}, name="debugfs",
                            histograms={"halt_poll_fail_hist": HistogramValues(
                                (0, 3, 1), SINCE_CREATION),
                                "odd_hist": HistogramValues((1, 2), SINCE_CREATION)})
    families, _ = scrape(collector_for(provider))
    assert series(families, "kvm_stats_halt_poll_fail_duration_seconds_bucket") == {
        labels(le="1e-09"): 0, labels(le="2e-09"): 3, labels(le="+Inf"): 4}
    # Counted since VM creation, unlike the time counters: no _sum.
    assert series(families, "kvm_stats_halt_poll_fail_duration_seconds_sum") == {}
    assert not [n for n in families if n.startswith("kvm_stats_odd")]


def test_per_vcpu_series_only_when_asked_and_only_non_zero():
    by_vcpu = {9: {0: {"exits": 4, "halt_wait_ns": 2_000_000_000}, 1: {"exits": 0,
                                                                      "halt_wait_ns": 0}}}
    provider = VcpuProvider({"exits": 4, "halt_wait_ns": 2_000_000_000},
                            by_vm={9: {"exits": 4, "halt_wait_ns": 2_000_000_000}},
                            name="binstats", by_vcpu=by_vcpu)
    families, _ = scrape(collector_for(provider, by_vm=True, names={9: "g"}.get))
    assert not [n for n in families if "vcpu" in n]
    collector = collector_for(provider, by_vm=True, names={9: "g"}.get,
                              vcpu_series=compile_series_regex(DEFAULT_VM_SERIES, "x"))
    families, _ = scrape(collector)
    assert series(families, "kvm_stats_vcpu_exits_total") == {
        labels(pid="9", guest="g", vcpu="0"): 4}
    assert series(families, "kvm_stats_vcpu_halt_wait_seconds_total") == {
        labels(pid="9", guest="g", vcpu="0"): 2.0}


# ---------------------------------------------------------------------------
# Watched VM, errors, health

def test_watched_vm_labels_every_series_and_is_dropped_when_it_exits():
    provider = FakeProvider({"kvm_pio": 12, "kvm_userspace_exit": 12,
                             "kvm_userspace_exit(IO)": 12}, watched=4242)
    released, notes = [], []
    collector = collector_for(provider, vm=VM(4242, "db", (11,)),
                              release=released.append, notify=notes.append)
    families, _ = scrape(collector)
    vm = {"pid": "4242", "guest": "db"}
    assert series(families, "kvm_tracepoint_pio_total") == {labels(**vm): 12}
    assert series(families, "kvm_tracepoint_userspace_exit_total") == {
        labels(**vm, reason="IO"): 12, labels(**vm, reason="other"): 0}
    assert series(families, "kvmstat_vm_running") == {labels(**vm): 1}

    provider.gone = True
    for _ in range(3):
        families, text = scrape(collector)
        assert series(families, "kvmstat_vm_running") == {labels(**vm): 0}
        assert not [n for n in families if n.startswith("kvm_")]
    assert len(released) == 1 and collector.dropped
    assert notes == ["VM process 4242 has exited: dropped it, still serving"]
    collector.close()
    assert provider.closed == 0  # handed to release, not closed twice


def test_a_failed_read_serves_the_health_metrics_and_counts_the_error():
    provider = FakeProvider({"kvm_pio": 1})
    notes = []
    collector = collector_for(provider, notify=notes.append)
    provider.broken = NotAvailable("tracefs went away")
    families, _ = scrape(collector)
    assert not [n for n in families if n.startswith("kvm_")]
    assert series(families, "kvmstat_read_errors_total") == {labels(): 1}
    assert notes == ["reading the counters failed: tracefs went away"]
    provider.broken = None
    families, _ = scrape(collector)
    assert series(families, "kvm_tracepoint_pio_total") == {labels(): 1}
    assert series(families, "kvmstat_read_errors_total") == {labels(): 1}


def test_health_metrics():
    provider = FakeProvider({"kvm_pio": 1, "kvm_exit": 0}, by_vm={3: {"kvm_pio": 1,
                                                                      "kvm_exit": 0}})
    collector = collector_for(provider, by_vm=True, version="9.9")
    scrape(collector)
    families, _ = scrape(collector)
    (info,) = series(families, "kvmstat_exporter_info")
    assert dict(info) == {"engine": "none", "providers": "tracepoints", "version": "9.9"}
    (read,) = series(families, "kvmstat_read_duration_seconds").values()
    (last,) = series(families, "kvmstat_last_scrape_duration_seconds").values()
    assert 0 <= read < 5 and 0 < last < 5
    # KVM series: pio for VM 3 and outside, exit (no event in VM 3) outside.
    assert series(families, "kvmstat_last_scrape_series") == {labels(): 3}
    assert series(families, "kvmstat_vms") == {labels(): 1}


def test_more_families_from_another_source():
    provider = FakeProvider({"kvm_pio": 3}, by_vm={5: {"kvm_pio": 3}})
    collector = collector_for(provider, by_vm=True, names={5: "g"}.get)

    def durations(lines, openmetrics, vm_labels):
        lines.append("# HELP kvm_exit_duration_seconds test\n"
                     "# TYPE kvm_exit_duration_seconds histogram\n")
        for labels in vm_labels.values():
            lines.append(f'kvm_exit_duration_seconds_bucket{{{labels},le="+Inf"}} 1\n'
                         f'kvm_exit_duration_seconds_count{{{labels}}} 1\n')
        return len(vm_labels)
    collector.add_families(durations)
    families, _ = scrape(collector)
    assert series(families, "kvm_exit_duration_seconds_count") == {labels(pid="5", guest="g"): 1}
    families, _ = scrape(collector)
    assert series(families, "kvmstat_last_scrape_series") == {labels(): 3}


def test_clashing_names_keep_the_first_and_say_so_once():
    one = FakeProvider({"exits": 5}, name="debugfs")
    two = FakeProvider({"exits_total": 7}, name="binstats")
    notes = []
    collector = KvmCollector(Sampler([one, two]), notify=notes.append)
    for _ in range(2):
        families, _ = scrape(collector)
        assert series(families, "kvm_stats_exits_total") == {labels(): 5}
    assert notes == ["left out of the metrics (their names clash with other fields): "
                     "exits_total"]


def test_hostile_guest_names_and_reasons_are_escaped():
    name = 'evil"} 1\nkvm_fake_total 9\n\\'
    provider = FakeProvider({"kvm_pio": 1, "kvm_exit": 1, 'kvm_exit(A"B)': 1},
                            by_vm={5: {"kvm_pio": 1, "kvm_exit": 1, 'kvm_exit(A"B)': 1}})
    families, text = scrape(collector_for(provider, by_vm=True, names={5: name}.get))
    assert "kvm_fake" not in families
    # The label holds the name as every output shows it (kvmstat.textsafe):
    # the line feeds visibly escaped, then escaped again for the format.
    shown = 'evil"} 1\\nkvm_fake_total 9\\n\\'
    assert series(families, "kvm_tracepoint_pio_total")[labels(pid="5", guest=shown)] == 1
    assert series(families, "kvm_tracepoint_exit_total")[
        labels(pid="5", guest=shown, reason='A"B')] == 1


def test_openmetrics_output_parses_and_ends_with_eof():
    provider = FakeProvider({"kvm_exit": 2, "kvm_exit(HLT)": 2})
    families, text = scrape(collector_for(provider), openmetrics=True)
    assert text.endswith("# EOF\n")
    assert "# TYPE kvm_tracepoint_exit counter" in text
    assert series(families, "kvm_tracepoint_exit_total") == {labels(reason="HLT"): 2,
                                                             labels(reason="other"): 0}


@pytest.mark.prometheus
def test_promtool_check_metrics_is_silent_for_every_kind_of_family():
    provider = VcpuProvider(
        {"exits": 4, "halt_wait_ns": 7, "pages_4k": 3, "max_mmu_rmap_size": 2},
        by_vm={9: {"exits": 4, "halt_wait_ns": 7, "pages_4k": 3, "max_mmu_rmap_size": 2}},
        name="binstats", levels={"pages_4k", "max_mmu_rmap_size"},
        histograms={"halt_wait_hist": _log_histogram([1, 2, 0])},
        vm_histograms={9: {"halt_wait_hist": _log_histogram([1, 2, 0])}},
        by_vcpu={9: {0: {"exits": 4, "halt_wait_ns": 7, "pages_4k": 3}}})
    tracepoints = FakeProvider({"kvm_exit": 3, "kvm_exit(HLT)": 2, "kvm_halt_poll_ns": 1,
                                "kvm_pio": 1},
                               by_vm={9: {"kvm_exit": 3, "kvm_exit(HLT)": 2,
                                          "kvm_halt_poll_ns": 1, "kvm_pio": 1}})
    collector = KvmCollector(Sampler([tracepoints, provider], by_vm=True), vm_series=ALL_VM,
                             names={9: "g"}.get, vcpu_series=ALL_VM,
                             histograms=lambda name: True)
    text = collector.render(False).decode()
    assert "kvm_stats_vcpu_exits_total" in text and "_bucket" in text
    assert check_metrics(text) == ""


def test_close_closes_the_sampler_and_later_scrapes_serve_health_only():
    provider = FakeProvider({"kvm_pio": 1})
    collector = collector_for(provider)
    collector.close()
    assert provider.closed == 1
    families, _ = scrape(collector)
    assert not [n for n in families if n.startswith("kvm_")]
    other = FakeProvider({"kvm_pio": 1})
    with collector_for(other) as collector:
        scrape(collector)
    assert other.closed == 1


def test_concurrent_scrapes_read_one_at_a_time():
    provider = FakeProvider({"kvm_pio": 3})
    provider.delay = 0.02
    collector = collector_for(provider)
    errors = []

    def worker():
        try:
            for _ in range(5):
                assert series(scrape(collector)[0], "kvm_tracepoint_pio_total") == {labels(): 3}
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and provider.reads == 30 and not provider.overlapped


# ---------------------------------------------------------------------------
# HTTP, TLS, authentication

def get(url, accept=None, headers=None, context=None):
    request = urllib.request.Request(url, headers={**({"Accept": accept} if accept else {}),
                                                   **(headers or {})})
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        body = response.read()
        if response.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return response.status, response.headers["Content-Type"], body.decode()


@pytest.fixture
def served():
    """served(provider, web=None, **collector kw) -> (server, notes); closed at teardown."""
    made = []

    def start(provider, web=None, **kw):
        notes = []
        server = MetricsServer(ServeAddress("127.0.0.1", 0), notify=notes.append, web=web)
        made.append(server)
        server.register(collector_for(provider, **kw))
        server.start()
        return server, notes

    yield start
    for server in made:
        server.close()


def test_http_text_openmetrics_gzip_landing_page_and_404(served):
    server, _ = served(FakeProvider({"kvm_pio": 8}))
    assert server.address.host == "127.0.0.1" and server.address.port > 0
    assert server.url == f"http://127.0.0.1:{server.address.port}/metrics"
    status, ctype, body = get(server.url)
    assert status == 200 and ctype == "text/plain; version=0.0.4; charset=utf-8"
    assert series({f.name: f for f in text_string_to_metric_families(body)},
                  "kvm_tracepoint_pio_total") == {labels(): 8}
    status, ctype, body = get(server.url, "application/openmetrics-text; version=1.0.0")
    assert ctype.startswith("application/openmetrics-text") and body.endswith("# EOF\n")
    _, _, zipped = get(server.url, headers={"Accept-Encoding": "gzip"})
    assert "kvm_tracepoint_pio_total 8" in zipped
    status, ctype, body = get(server.url.replace("/metrics", "/"))
    assert status == 200 and "/metrics" in body
    with pytest.raises(urllib.error.HTTPError) as info:
        get(server.url.replace("/metrics", "/other"))
    assert info.value.code == 404


def test_an_unexpected_failure_is_a_500_with_one_line_and_no_traceback(served, capsys):
    provider = FakeProvider({"kvm_pio": 1})
    server, notes = served(provider)

    provider.broken = RuntimeError("a bug")
    with pytest.raises(urllib.error.HTTPError) as info:
        get(server.url)
    assert info.value.code == 500
    assert info.value.read().decode() == "scrape failed: RuntimeError: a bug\n"
    assert notes == ["scrape failed: RuntimeError: a bug"]
    assert "Traceback" not in capsys.readouterr().err


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """(directory, cert, key) of a self-signed certificate for 127.0.0.1."""
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "server.crt", where / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return where, cert, key


def _hash(password):
    import bcrypt

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$")


def test_tls_and_basic_auth_from_a_web_config_file(served, certificate):
    where, cert, key = certificate
    config = where / "web.yml"
    config.write_text(f"tls_server_config:\n  cert_file: server.crt\n  key_file: {key}\n"
                      f"basic_auth_users:\n  prom: '{_hash('s3cret')}'\n")
    server, _ = served(FakeProvider({"kvm_pio": 8}), web=load_web_config(str(config)))
    assert server.url.startswith("https://127.0.0.1:")
    context = ssl.create_default_context(cafile=str(cert))
    good = {"Authorization": "Basic " + base64.b64encode(b"prom:s3cret").decode()}
    for _ in range(2):  # the second check is the remembered one
        status, _, body = get(server.url, headers=good, context=context)
        assert status == 200 and "kvm_tracepoint_pio_total 8" in body
    for bad in ({}, {"Authorization": "Basic " + base64.b64encode(b"prom:wrong").decode()},
                {"Authorization": "Basic " + base64.b64encode(b"other:s3cret").decode()},
                {"Authorization": "Basic !!!"}):
        with pytest.raises(urllib.error.HTTPError) as info:
            get(server.url, headers=bad, context=context)
        assert info.value.code == 401
        assert info.value.headers["WWW-Authenticate"] == 'Basic realm="kvmstat"'
    # Plain HTTP on the TLS port gets nothing.
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        get(server.url.replace("https:", "http:"))


@pytest.mark.parametrize("text, message", [
    ("tls_server_config: [", "not valid YAML"),
    ("- a\n- b\n", "must be a YAML mapping"),
    ("tls_config: {}\n", "unknown key tls_config"),
    ("tls_server_config:\n  cert_file: server.crt\n", "needs both cert_file and key_file"),
    ("tls_server_config:\n  cert_file: nope.crt\n  key_file: server.key\n",
     "nope.crt: no such file"),
    ("tls_server_config:\n  cert_file: server.key\n  key_file: server.key\n",
     "cannot use the certificate"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
     "  min_version: SSL3\n", "min_version must be one of"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
     "  client_auth_type: RequireAndVerifyClientCert\n", "needs client_ca_file"),
    ("basic_auth_users:\n  prom: plaintext\n", "not a bcrypt hash"),
    ("basic_auth_users: [prom]\n", "must be a mapping"),
])
def test_bad_web_config_files_are_one_line_errors(certificate, text, message):
    where, _, _ = certificate
    config = where / "bad.yml"
    config.write_text(text)
    with pytest.raises(InvalidArgument) as info:
        load_web_config(str(config))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith(f"--web-config {config}: ")


def test_cli_web_config_errors_come_before_anything_is_opened(tmp_path, capsys):
    assert cli.main(["--serve", "127.0.0.1:0", "--web-config", str(tmp_path / "none.yml")]) == 1
    err = capsys.readouterr().err
    assert err == f"Error: --web-config {tmp_path / 'none.yml'}: No such file or directory\n"


@pytest.mark.parametrize("argv, message", [
    (["-1", "--web-config", "x"], "--web-config works with --serve only"),
    (["-1", "--vm-series", "x"], "--vm-series works with --serve only"),
    (["--serve", "0", "--vm-series", "x", "--no-vm-series"], "exclude each other"),
    (["--serve", "0", "--vcpu-series"], "--vcpu-series needs --binstats"),
    (["--serve", "0", "--vm-series", "("], '--vm-series "(": not a valid regular expression'),
])
def test_cli_serve_options_are_checked(argv, message, capsys):
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_server_over_ipv6_loopback(served):
    if not socket.has_ipv6 or not os.path.exists("/proc/net/if_inet6"):
        pytest.skip("no IPv6 on this host")
    server = MetricsServer(ServeAddress("::1", 0))
    try:
        server.register(KvmCollector(Sampler([FakeProvider({"kvm_pio": 2})])))
        server.start()
        assert server.url.startswith("http://[::1]:")
        assert "kvm_tracepoint_pio_total 2\n" in get(server.url)[2]
    finally:
        server.close()


def test_busy_port_and_unknown_host_and_foreign_address():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(NotAvailable, match="already in use"):
            MetricsServer(ServeAddress("127.0.0.1", port))
    with pytest.raises(InvalidArgument, match="unknown host 'no-such-host.invalid'"):
        MetricsServer(ServeAddress("no-such-host.invalid", 0))
    with pytest.raises(InvalidArgument, match="not an address of this host"):
        MetricsServer(ServeAddress("192.0.2.1", 0))  # TEST-NET-1: never local


def test_low_port_without_privilege_is_access_denied(monkeypatch):
    # Simulate the kernel's refusal: root may bind low ports here.
    import kvmstat.frontends.exporter as exporter

    def refuse(self, *a, **kw):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(exporter._ThreadingServer, "server_bind", refuse)
    with pytest.raises(AccessDenied, match="ports below 1024"):
        MetricsServer(ServeAddress("127.0.0.1", 80))


def test_kvm_stat_serve_end_to_end_with_per_vm_data(monkeypatch):
    """cli.main(["--serve", ...]) with fake providers: per-VM labels, SIGTERM -> 0."""
    import kvmstat.sampling.sources

    provider = FakeProvider({"kvm_pio": 30, "kvm_exit": 4, "kvm_exit(HLT)": 4},
                            by_vm={7: {"kvm_pio": 10, "kvm_exit": 4, "kvm_exit(HLT)": 4},
                                   8: {"kvm_pio": 20, "kvm_exit": 0, "kvm_exit(HLT)": 0}})
    opened = {}

    def fake_open(options, notify=None):
        opened.update(by_vm=options.by_vm, pid=options.pid)
        return Sampler([provider], by_vm=options.by_vm)

    notes, scraped = [], []
    monkeypatch.setattr(kvmstat.sampling.sources, "sampler_for", fake_open)
    monkeypatch.setattr(cli, "_notify", notes.append)
    monkeypatch.setattr(cli, "close_detached", lambda resource: resource.close())
    monkeypatch.setattr("kvmstat.host.vms.GuestNames.__call__",
                        lambda self, pid: {7: "alpha"}.get(pid))

    def scraper():
        try:
            deadline = time.monotonic() + 30
            while not notes and time.monotonic() < deadline:
                time.sleep(0.01)
            url = notes[0].split("serving metrics at ", 1)[1]
            scraped.append(get(url)[2])
        finally:
            if notes:  # the handler is in place once the exporter has spoken
                os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=scraper)
    thread.start()
    assert cli.main(["--serve", "127.0.0.1:0"]) == 0
    thread.join()
    assert opened["by_vm"] is True and opened["pid"] is None
    families = {f.name: f for f in text_string_to_metric_families(scraped[0])}
    assert series(families, "kvm_tracepoint_pio_total") == {
        labels(pid="7", guest="alpha"): 10, labels(pid="8", guest=""): 20,
        labels(pid="none", guest=""): 0}
    assert series(families, "kvm_tracepoint_exit_total")[
        labels(pid="7", guest="alpha", reason="HLT")] == 4
    assert provider.closed == 1
