"""The exporter without a kernel: names, labels, per-VM series, drops, HTTP (SPEC §3.4)."""

import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from hypothesis import given, strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from kvmstat.frontends import cli
from kvmstat.errors import AccessDenied, InvalidArgument, NotAvailable
from kvmstat.frontends.exporter import (KvmCollector, MetricsServer, ServeAddress, family_name,
                              parse_serve_address, serve_until_stopped, stop_on_signals)
from kvmstat.providers.base import Provider, Reading
from kvmstat.sampling.sampler import Sampler
from kvmstat.host.vms import VM


class FakeProvider(Provider):
    """Counts set by the test; optional per-VM counts; the watched VM (4242
    with *watched*) can be set gone."""

    def __init__(self, counts, by_vm=None, name="tracepoints", levels=(), watched=None):
        self.name = name
        self.watched = watched
        self.said_gone = False
        self.counts = dict(counts)
        self._levels = frozenset(levels)
        self.by_vm = by_vm
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
        self.active += 1
        self.overlapped |= self.active > 1
        time.sleep(self.delay)
        self.reads += 1
        self.active -= 1
        ended = frozenset({4242}) if self.gone and not self.said_gone else frozenset()
        self.said_gone |= self.gone
        per_vm = {pid: dict(c) for pid, c in (self.by_vm or {}).items()} if by_vm else {}
        return Reading(dict(self.counts), per_vm, ended=ended)

    def reset(self):
        pass

    def close(self):
        self.closed += 1


def scrape(collector, openmetrics=False):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    if openmetrics:
        text = generate_openmetrics(registry).decode()
        families = parse_openmetrics(text)
    else:
        text = generate_latest(registry).decode()
        families = text_string_to_metric_families(text)
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
# Names and labels

@pytest.mark.parametrize("field, family", [
    ("kvm_pio", "kvm_pio"),
    ("exits", "kvm_exits"),
    ("kvm_exit(HLT)", "kvm_exit"),
    ("kvm_userspace_exit(IO)", "kvm_userspace_exit"),
    ("halt_poll_success_ns", "kvm_halt_poll_success_ns"),
    ("weird-name.x", "kvm_weird_name_x"),
    ("flushes_total", "kvm_flushes"),
])
def test_family_names(field, family):
    assert family_name(field) == family


def test_host_series_children_get_a_reason_label_and_the_parent_has_none():
    provider = FakeProvider({"kvm_exit": 10, "kvm_exit(HLT)": 7, "kvm_exit(IO)": 3,
                             "kvm_pio": 5})
    families, text = scrape(KvmCollector(Sampler([provider])))
    assert series(families, "kvm_exit_total") == {
        labels(): 10, labels(reason="HLT"): 7, labels(reason="IO"): 3}
    assert series(families, "kvm_pio_total") == {labels(): 5}
    assert families["kvm_exit"].type == "counter"
    assert "# TYPE kvm_exit_total counter" in text
    assert "kvm_exit events counted by the tracepoints provider" in families["kvm_exit"].documentation
    assert "reason" in families["kvm_exit"].documentation
    assert "reason" not in families["kvm_pio"].documentation


def test_debugfs_style_names_get_the_kvm_prefix():
    provider = FakeProvider({"exits": 3, "halt_exits": 1}, name="debugfs")
    families, _ = scrape(KvmCollector(Sampler([provider])))
    assert series(families, "kvm_exits_total") == {labels(): 3}
    assert series(families, "kvm_halt_exits_total") == {labels(): 1}
    assert "debugfs provider" in families["kvm_exits"].documentation


@pytest.mark.parametrize("openmetrics", [False, True])
def test_levels_are_gauges_without_the_total_suffix(openmetrics):
    provider = FakeProvider({"exits": 3, "pages_4k": 512, "max_mmu_rmap_size": 9},
                            by_vm={7: {"exits": 3, "pages_4k": 500, "max_mmu_rmap_size": 9}},
                            name="debugfs", levels={"pages_4k", "max_mmu_rmap_size"})
    sampler = Sampler([provider], by_vm=True, names={7: "vm"}.get)
    families, text = scrape(KvmCollector(sampler), openmetrics=openmetrics)
    assert families["kvm_exits"].type == "counter"
    assert series(families, "kvm_exits_total") == {labels(): 3, labels(pid="7", guest="vm"): 3}
    for name in ("kvm_pages_4k", "kvm_max_mmu_rmap_size"):
        assert families[name].type == "gauge"
        assert "current" in families[name].documentation
    assert series(families, "kvm_pages_4k") == {labels(): 512, labels(pid="7", guest="vm"): 500}
    assert "kvm_pages_4k_total" not in text


def test_per_vm_series_carry_pid_and_guest_and_host_totals_have_neither():
    provider = FakeProvider(
        {"kvm_pio": 30, "kvm_exit": 9, "kvm_exit(HLT)": 9},
        by_vm={101: {"kvm_pio": 10, "kvm_exit": 9, "kvm_exit(HLT)": 9},
               202: {"kvm_pio": 20, "kvm_exit": 0, "kvm_exit(HLT)": 0}})
    names = {101: "web", 202: None}
    sampler = Sampler([provider], by_vm=True, names=names.get)
    families, _ = scrape(KvmCollector(sampler))
    assert series(families, "kvm_pio_total") == {
        labels(): 30,
        labels(pid="101", guest="web"): 10,
        labels(pid="202", guest=""): 20}
    assert series(families, "kvm_exit_total") == {
        labels(): 9, labels(reason="HLT"): 9,
        labels(pid="101", guest="web"): 9, labels(pid="101", guest="web", reason="HLT"): 9,
        labels(pid="202", guest=""): 0, labels(pid="202", guest="", reason="HLT"): 0}
    # The documented queries do not double count.
    pio = series(families, "kvm_pio_total")
    assert sum(v for k, v in pio.items() if dict(k).get("pid", "") != "") == 30


def test_vms_coming_and_going_between_scrapes():
    provider = FakeProvider({"kvm_pio": 1}, by_vm={1: {"kvm_pio": 1}})
    collector = KvmCollector(Sampler([provider], by_vm=True))
    assert set(series(scrape(collector)[0], "kvm_pio_total")) == {labels(), labels(pid="1", guest="")}
    provider.by_vm = {2: {"kvm_pio": 4}, 3: {"kvm_pio": 5}}
    assert set(series(scrape(collector)[0], "kvm_pio_total")) == {
        labels(), labels(pid="2", guest=""), labels(pid="3", guest="")}
    provider.by_vm = {}
    assert set(series(scrape(collector)[0], "kvm_pio_total")) == {labels()}


def test_watched_vm_labels_every_series_and_is_dropped_when_it_exits():
    provider = FakeProvider({"kvm_pio": 12, "kvm_userspace_exit": 12, "kvm_userspace_exit(IO)": 12},
                            watched=4242)
    released, notes = [], []
    collector = KvmCollector(Sampler([provider]), vm=VM(4242, "db", (11,)),
                             release=released.append, notify=notes.append)
    families, _ = scrape(collector)
    assert series(families, "kvm_pio_total") == {labels(pid="4242", guest="db"): 12}
    assert series(families, "kvm_userspace_exit_total") == {
        labels(pid="4242", guest="db"): 12, labels(pid="4242", guest="db", reason="IO"): 12}
    assert series(families, "kvmstat_vm_running") == {labels(pid="4242", guest="db"): 1}

    provider.gone = True
    for _ in range(3):
        families, text = scrape(collector)
        assert series(families, "kvmstat_vm_running") == {labels(pid="4242", guest="db"): 0}
        assert not [n for n in families if n.startswith("kvm_")]
    assert len(released) == 1 and collector.dropped
    assert notes == ["VM process 4242 has exited: dropped it, still serving"]
    collector.close()
    assert provider.closed == 0  # handed to release, not closed twice


def test_a_vm_ending_without_a_watched_vm_drops_nothing():
    provider = FakeProvider({"kvm_pio": 1}, by_vm={4242: {"kvm_pio": 1}})
    collector = KvmCollector(Sampler([provider], by_vm=True))
    provider.gone = True
    assert series(scrape(collector)[0], "kvm_pio_total")[labels()] == 1
    assert not collector.dropped
    assert series(scrape(collector)[0], "kvm_pio_total")[labels()] == 1


def test_sample_seconds_is_reported():
    provider = FakeProvider({"kvm_pio": 1})
    families, _ = scrape(KvmCollector(Sampler([provider])))
    (value,) = series(families, "kvmstat_sample_seconds").values()
    assert 0 <= value < 5


def test_clashing_names_keep_the_first_and_say_so_once():
    one = FakeProvider({"exits": 5}, name="debugfs")
    two = FakeProvider({"kvm_exits": 7}, name="binstats")
    notes = []
    collector = KvmCollector(Sampler([one, two]), notify=notes.append)
    for _ in range(2):
        families, _ = scrape(collector)
        assert series(families, "kvm_exits_total") == {labels(): 5}
    assert notes == ["left out of the metrics (their names clash with other fields): kvm_exits"]


def test_openmetrics_output_parses():
    provider = FakeProvider({"kvm_exit": 2, "kvm_exit(HLT)": 2})
    families, text = scrape(KvmCollector(Sampler([provider])), openmetrics=True)
    assert text.endswith("# EOF\n")
    assert series(families, "kvm_exit_total") == {labels(): 2, labels(reason="HLT"): 2}


def test_describe_reads_nothing_and_close_closes_the_sampler():
    provider = FakeProvider({"kvm_pio": 1})
    collector = KvmCollector(Sampler([provider]))
    CollectorRegistry(auto_describe=True).register(collector)
    assert provider.reads == 0
    collector.close()
    assert provider.closed == 1
    families, _ = scrape(collector)
    assert not [n for n in families if n.startswith("kvm")]
    other = FakeProvider({"kvm_pio": 1})
    with KvmCollector(Sampler([other])) as collector:
        scrape(collector)
    assert other.closed == 1


def test_concurrent_scrapes_read_one_at_a_time():
    provider = FakeProvider({"kvm_pio": 3})
    provider.delay = 0.02
    collector = KvmCollector(Sampler([provider]))
    errors = []

    def worker():
        try:
            for _ in range(5):
                assert series(scrape(collector)[0], "kvm_pio_total") == {labels(): 3}
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and provider.reads == 30 and not provider.overlapped


# ---------------------------------------------------------------------------
# HTTP

def get(url, accept=None):
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.headers["Content-Type"], response.read().decode()


@pytest.fixture
def served():
    """served(provider, **collector kw) -> (server, notes); closed at teardown."""
    made = []

    def start(provider, **kw):
        notes = []
        server = MetricsServer(ServeAddress("127.0.0.1", 0), notify=notes.append)
        made.append(server)
        server.register(KvmCollector(Sampler([provider]), **kw))
        server.start()
        return server, notes

    yield start
    for server in made:
        server.close()


def test_http_text_openmetrics_landing_page_and_404(served):
    server, _ = served(FakeProvider({"kvm_pio": 8}))
    assert server.address.host == "127.0.0.1" and server.address.port > 0
    assert server.url == f"http://127.0.0.1:{server.address.port}/metrics"
    status, ctype, body = get(server.url)
    assert status == 200 and ctype.startswith("text/plain")
    assert series({f.name: f for f in text_string_to_metric_families(body)}, "kvm_pio_total") == {labels(): 8}
    status, ctype, body = get(server.url, "application/openmetrics-text; version=1.0.0")
    assert ctype.startswith("application/openmetrics-text") and body.endswith("# EOF\n")
    status, ctype, body = get(server.url.replace("/metrics", "/"))
    assert status == 200 and "/metrics" in body
    with pytest.raises(urllib.error.HTTPError) as info:
        get(server.url.replace("/metrics", "/other"))
    assert info.value.code == 404


def test_a_failing_read_is_a_500_with_one_line_and_no_traceback(served, capsys):
    provider = FakeProvider({"kvm_pio": 1})
    server, notes = served(provider)

    def broken():
        raise NotAvailable("tracefs went away")
    provider.snapshot = lambda **parts: broken()
    with pytest.raises(urllib.error.HTTPError) as info:
        get(server.url)
    assert info.value.code == 500
    assert info.value.read().decode() == "scrape failed: tracefs went away\n"
    assert notes == ["scrape failed: tracefs went away"]
    assert "Traceback" not in capsys.readouterr().err


def test_server_over_ipv6_loopback(served):
    if not socket.has_ipv6 or not os.path.exists("/proc/net/if_inet6"):
        pytest.skip("no IPv6 on this host")
    server = MetricsServer(ServeAddress("::1", 0))
    try:
        server.register(KvmCollector(Sampler([FakeProvider({"kvm_pio": 2})])))
        server.start()
        assert server.url.startswith("http://[::1]:")
        assert "kvm_pio_total 2.0" in get(server.url)[2]
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


def test_stop_on_signals_sets_the_event_and_restores_handlers(served):
    server, _ = served(FakeProvider({"kvm_pio": 1}))
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals() as stop:
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
        started = time.monotonic()
        serve_until_stopped(server, stop)
        assert stop.is_set() and time.monotonic() - started < 5
    assert signal.getsignal(signal.SIGTERM) is before
    with pytest.raises(urllib.error.URLError):
        get(server.url)



def test_kvm_stat_serve_end_to_end_with_per_vm_data(monkeypatch):
    """cli.main(["--serve", ...]) with fake providers: per-VM labels, SIGTERM -> 0."""
    import kvmstat.sampling.sources

    provider = FakeProvider({"kvm_pio": 30, "kvm_exit": 4, "kvm_exit(HLT)": 4},
                            by_vm={7: {"kvm_pio": 10, "kvm_exit": 4, "kvm_exit(HLT)": 4},
                                   8: {"kvm_pio": 20, "kvm_exit": 0, "kvm_exit(HLT)": 0}})
    opened = {}

    def fake_sampler_for(options, notify=None):
        opened.update(by_vm=options.by_vm, pid=options.pid)
        return Sampler([provider], by_vm=options.by_vm, names={7: "alpha"}.get)

    notes, scraped = [], []
    monkeypatch.setattr(kvmstat.sampling.sources, "sampler_for", fake_sampler_for)
    monkeypatch.setattr(cli, "_notify", notes.append)
    monkeypatch.setattr(cli, "close_detached", lambda resource: resource.close())

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
    assert series(families, "kvm_pio_total") == {
        labels(): 30, labels(pid="7", guest="alpha"): 10, labels(pid="8", guest=""): 20}
    assert series(families, "kvm_exit_total")[labels(pid="7", guest="alpha", reason="HLT")] == 4
    assert provider.closed == 1
