"""The exporter's answer on this host in every provider and mode: ``promtool check
metrics`` says nothing, both formats parse, and every family partitions (all of its
series carry the same label names, so ``sum()`` never adds a total to its parts).
See docs/metrics.md."""

import uuid

import pytest

from helpers.exporter import ExporterProcess, series, total, value
from helpers.promtool import check_metrics

pytestmark = pytest.mark.prometheus

MODES = {
    "tracepoints-bpf": ["--engine", "bpf"],
    "tracepoints-perf": ["--engine", "perf", "-f", "kvm_(pio|userspace_exit|exit|fpu|msr)"],
    "no-vm-series": ["--no-vm-series", "-f", "kvm_(pio|userspace_exit)"],
    "debugfs": ["-d"],
    "debugfs-and-tracepoints": ["-d", "-t", "-f", "kvm_(pio|userspace_exit)|pages|exits"],
    "binstats": ["--binstats"],
    "binstats-vcpus": ["--binstats", "--vcpu-series"],
    "watched-pid": ["-p", "{pid}", "-f", "kvm_(pio|userspace_exit|exit)"],
    "watched-name": ["-g", "{name}", "--binstats", "--vcpu-series"],
}


def label_names(family):
    """The label names of each series of *family*, histograms without ``le``."""
    return {frozenset(k for k in s.labels if k != "le") for s in family.samples}


@pytest.mark.parametrize("mode", MODES)
def test_promtool_is_silent_and_families_partition(guest_process, mode):
    name = f"conv-{uuid.uuid4().hex[:8]}"
    guest = guest_process("pio", vcpus=2, name=name)
    guest.stats()  # statistics descriptors for --binstats
    args = [a.format(pid=guest.pid, name=name) for a in MODES[mode]]
    with ExporterProcess(args) as exporter:
        guest.run(40, vcpu=0)
        guest.run(2, vcpu=1)
        _, _, text = exporter.get()
        assert check_metrics(text) == "", text[:2000]
        families = exporter.scrape()
        exporter.scrape(openmetrics=True)  # parses
        kvm = {n: f for n, f in families.items() if n.startswith("kvm_")}
        assert kvm, exporter.stderr()
        for family_name, family in kvm.items():
            assert len(label_names(family) - {frozenset({"reason"})}) <= 1 or \
                family.type == "histogram", (family_name, label_names(family))
            if family.samples:
                # one level per family: per-VM labels on every series or on none
                levels = {("pid" in names) for names in label_names(family)}
                assert len(levels) == 1, (family_name, label_names(family))
        vm = {"pid": str(guest.pid), "guest": name}
        if "binstats" in args or "--binstats" in args:
            assert value(families, "kvm_stats_exits_total", **vm) == 42
            if "--vcpu-series" in args:
                assert value(families, "kvm_stats_vcpu_exits_total", **vm, vcpu="0") == 40
                assert value(families, "kvm_stats_vcpu_exits_total", **vm, vcpu="1") == 2
        elif "-d" not in args or "-t" in args:
            pio = "kvm_tracepoint_pio_total"
            if "--no-vm-series" in args:
                assert total(families, pio) >= 42
            else:
                assert value(families, pio, **vm) == 42
        (info,) = series(families, "kvmstat_exporter_info")
        assert dict(info)["providers"]
        assert exporter.stop() == 0
        assert "Traceback" not in exporter.stderr()
