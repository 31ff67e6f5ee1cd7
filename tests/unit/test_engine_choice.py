"""--engine auto|bpf|perf with fake engines: what auto picks and why, the
fallback to perf groups, and the engine named in samples, JSON and the CLI."""

import dataclasses
import json

import pytest

from kvmstat.counting.factories import CounterFactories
from kvmstat.frontends import cli
from kvmstat.sampling.engine import choose_engine, open_tracepoints
from kvmstat.errors import InvalidArgument, NativeError, NoSuchVM, NotAvailable
from kvmstat.tracefs.events import load_events
from kvmstat.host.paths import Paths
from kvmstat.providers.bpf_tracepoints import BpfTracepointProvider
from kvmstat.providers.tracepoints import TracepointProvider
from kvmstat.sampling.options import SamplerOptions
from kvmstat.sampling.sources import open_sampler, sampler_for

import fake_bpf
import fake_native
from fakeproc import FakeProc
from test_tracepoint_provider import make_sys, make_tracefs


@pytest.fixture
def perf(monkeypatch):
    return fake_native.install(monkeypatch)


@pytest.fixture
def paths(tmp_path):
    proc = FakeProc(tmp_path / "proc")
    proc.add_vm(300, "web")
    return Paths(proc=proc.path, sys=make_sys(tmp_path / "s"),
                 tracefs=make_tracefs(tmp_path / "t"))


def probe_says(answer, probed=None):
    """Counter factories whose BPF probe gives *answer* (and records its argument)."""
    def bpf_supported(tracepoint_id=None):
        if probed is None:
            pytest.fail("probed")
        probed.append(tracepoint_id)
        return answer
    return CounterFactories(bpf_supported=bpf_supported)


def test_auto_picks_bpf_where_the_probe_works(monkeypatch):
    probed = []
    monkeypatch.delenv("KVMSTAT_BACKEND", raising=False)
    choice = choose_engine("auto", tracepoint_id=42, counters=probe_says((True, ""), probed))
    assert (choice.engine, probed) == ("bpf", [42])
    assert choice.reason.startswith("BPF programs load and attach to the kvm tracepoints: "
                                    "raw tracepoints where the kernel allows")
    per_vm = choose_engine("auto", tracepoint_id=42, by_vm=True)
    assert per_vm.engine == "bpf" and "one table entry per event, process and reason" \
        in per_vm.reason


def test_auto_picks_perf_and_says_why(monkeypatch):
    monkeypatch.delenv("KVMSTAT_BACKEND", raising=False)
    choice = choose_engine("auto", counters=probe_says(
        (False, "loading a BPF program denied: x"), []))
    assert choice.engine == "perf"
    assert choice.reason == "the BPF engine cannot be used: loading a BPF program denied: x"


@pytest.mark.parametrize("backend, env", [("python", None), (None, "python")])
def test_the_python_perf_backend_means_perf_groups(monkeypatch, backend, env):
    if env:
        monkeypatch.setenv("KVMSTAT_BACKEND", env)
    assert choose_engine("auto", backend=backend, counters=probe_says(None)).engine == "perf"


def test_explicit_engines_are_not_probed():
    counters = probe_says(None)
    assert choose_engine("bpf", counters=counters).engine == "bpf"
    assert choose_engine("perf", counters=counters).reason == "the perf engine was asked for"
    with pytest.raises(InvalidArgument, match="unknown engine 'ebpf' \\(known: auto, bpf, perf\\)"):
        choose_engine("ebpf", counters=counters)


def engines(supported=(True, ""), fail=None):
    """Fake perf and BPF engines: (factories, perf sets made, BPF counters made);
    with *fail*, opening the BPF engine raises it."""
    perf_counters, perf = fake_native.counters()
    counters, bpf = fake_bpf.counters(supported, base=perf_counters)
    if fail is not None:
        def failing(*args, **kwargs):
            raise fail
        counters = dataclasses.replace(counters, open_bpf_counter=failing)
    return counters, perf, bpf


def open_with(paths, counters, fields=("kvm_pio",), engine="auto", pid=None, notify=None):
    events = load_events(paths.tracefs, "vmx")
    options = SamplerOptions(engine=engine, pid=pid, paths=paths, counters=counters)
    return open_tracepoints(paths.tracefs, events, list(fields), options, notify=notify)


def test_auto_opens_the_bpf_provider(paths):
    counters, perf, bpf = engines()
    provider = open_with(paths, counters)
    assert isinstance(provider, BpfTracepointProvider) and provider.engine == "bpf"
    assert len(bpf) == 1 and perf == []


def test_auto_without_bpf_opens_perf_groups(paths):
    counters, perf, _ = engines(supported=(False, "no"))
    provider = open_with(paths, counters)
    assert isinstance(provider, TracepointProvider) and provider.engine == "perf"
    assert len(perf) == 1


def test_a_failing_bpf_engine_is_an_error_with_engine_bpf(paths):
    counters, perf, _ = engines(
        fail=NativeError("the kernel's verifier rejected the BPF program", 13))
    with pytest.raises(NativeError, match="verifier rejected"):
        open_with(paths, counters, engine="bpf")
    assert perf == []


def test_auto_falls_back_to_perf_groups_and_says_so(paths):
    counters, perf, _ = engines(
        fail=NativeError("the kernel's verifier rejected the BPF program", 13))
    notes = []
    provider = open_with(paths, counters, notify=notes.append)
    assert provider.engine == "perf" and len(perf) == 1
    assert notes == ["the BPF engine failed (the kernel's verifier rejected the BPF program): "
                     "counting with perf groups"]


def test_auto_does_not_fall_back_for_a_vm_that_is_gone(paths):
    counters, perf, _ = engines(fail=NoSuchVM("VM process 300 has exited"))
    with pytest.raises(NoSuchVM):
        open_with(paths, counters, pid=300)
    assert perf == []


def test_auto_falls_back_when_a_reason_offset_is_unknown(paths):
    counters, _, _ = engines()
    with open(f"{paths.tracefs}/events/kvm/kvm_userspace_exit/format", "w") as f:
        f.write("garbage\n")  # the reason table is built in, its offset unknown
    notes = []
    provider = open_with(paths, counters, fields=["kvm_userspace_exit(IO)"], notify=notes.append)
    assert provider.engine == "perf" and provider.fields == ["kvm_userspace_exit(IO)"]
    assert notes and "format file of kvm_userspace_exit does not say where" in notes[0]
    with pytest.raises(NotAvailable):
        open_with(paths, counters, fields=["kvm_userspace_exit(IO)"], engine="bpf")


def test_samples_name_the_engine(paths):
    counters, _, bpf = engines()
    with sampler_for(SamplerOptions(fields="kvm_pio", paths=paths, counters=counters)) as sampler:
        assert sampler.engine == "bpf"
        bpf[0].hit(300, "kvm_pio", n=3)
        assert sampler.sample().engine == "bpf"
        assert sampler.sample().values == {"kvm_pio": (3, 0)}
    with sampler_for(SamplerOptions(fields="kvm_pio", paths=paths, engine="perf",
                                    counters=counters)) as sampler:
        assert sampler.sample().engine == "perf"
    with pytest.raises(InvalidArgument, match="unknown engine"):
        open_sampler(fields="kvm_pio", paths=paths, engine="gpu")


@pytest.mark.parametrize("engine", ["bpf", "perf"])
def test_cli_batch_json_and_by_guest_on_either_engine(paths, perf, monkeypatch, capsys, engine):
    bpf = fake_bpf.install(monkeypatch)

    def work():
        if engine == "bpf":
            bpf[0].hit(300, "kvm_pio", n=6)
        else:
            perf[0].counts[(300, "kvm_pio")] = 6

    monkeypatch.setattr("kvmstat.frontends.cli.time.sleep", lambda seconds: work())
    argv = ["-1", "--json", "--by-guest", "-f", "kvm_pio", "--engine", engine]
    assert cli.run(cli.parse_options(argv), paths) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["engine"] == engine
    assert obj["fields"] == {"kvm_pio": {"total": 6, "delta": 6}}
    assert obj["guests"] == {"300": {"name": "web",
                                     "fields": {"kvm_pio": {"total": 6, "delta": 6}}}}
