"""The debugfs provider on fake ``<debugfs>/kvm`` trees: every file kind and edge."""

import os
import shutil

import pytest

from kvmstat.errors import AccessDenied, NoSuchVM, NotAvailable
from kvmstat.providers import debugfs as debugfs_mod
from kvmstat.providers.debugfs import (COUNTER, HISTOGRAM, INSTANT, PEAK, TABLE, TIME,
                                       DebugfsProvider, list_vm_directories, parse_histogram,
                                       parse_value, probe_debugfs, stat_kind, vm_directory_pid)

from kvmstat.providers.base import SINCE_CREATION, HistogramValues

from fake_debugfs import HOST, lock_down, make_debugfs, set_value

U64_MAX = 2 ** 64 - 1


# -- kinds and parsing ---------------------------------------------------------

@pytest.mark.parametrize("name, read_only, kind", [
    ("exits", False, COUNTER),
    ("io_exits", False, COUNTER),
    ("halt_wait_ns", False, TIME),
    ("halt_poll_success_ns", False, TIME),
    ("pages_4k", True, INSTANT),
    ("pages_1g", False, INSTANT),      # known name, whatever the mode
    ("blocking", False, INSTANT),
    ("guest_mode", True, INSTANT),
    ("max_mmu_rmap_size", False, PEAK),
    ("halt_poll_fail_hist", False, HISTOGRAM),
    ("mmu_rmaps_stat", False, TABLE),
    ("some_new_level", True, INSTANT),  # unknown and read-only: a level
    ("some_new_count", False, COUNTER),
])
def test_stat_kind(name, read_only, kind):
    assert stat_kind(name, read_only) == kind


@pytest.mark.parametrize("raw, value", [
    (b"12\n", 12), (b"0\n", 0), (b"  7 \n", 7), (b"-5\n", -5),
    (b"18446744073709551615\n", U64_MAX), (b"-9223372036854775808", -(2 ** 63)),
    (b"", None), (b"\n", None), (b"abc\n", None), (b"1 2\n", None), (b"+5", None),
    (b"0x10", None), (b"1_000", None), (b"12abc", None), (b"\xff\xfe", None),
    (b"18446744073709551616\n", None), (b"9" * 5000, None),
])
def test_parse_value(raw, value):
    assert parse_value(raw) == value


@pytest.mark.parametrize("raw, buckets", [
    (b"1 2 3\n", (1, 2, 3)), (b"42\n", (42,)), (b"", None), (b"1 x 3", None),
    (b"1 18446744073709551616", None),
])
def test_parse_histogram(raw, buckets):
    assert parse_histogram(raw) == buckets


@pytest.mark.parametrize("entry, pid", [
    ("123-11", 123), ("8-3", 8), ("vcpu0", None), ("12-", None), ("-3", None),
    ("a-1", None), ("123-11-1", None), ("exits", None), ("123", None),
])
def test_vm_directory_pid(entry, pid):
    assert vm_directory_pid(entry) == pid


def test_pid_is_matched_exactly(tmp_path):
    vms = {name: {"exits": "1\n"} for name in ("8-3", "8-7", "128-11", "8123-9", "18-4", "80-8")}
    debugfs = make_debugfs(tmp_path, vms=vms)
    kvm = os.path.join(debugfs, "kvm")
    assert list_vm_directories(kvm, 8) == {"8-3": 8, "8-7": 8}
    assert list_vm_directories(kvm, 128) == {"128-11": 128}
    assert list_vm_directories(kvm, 12) == {}
    assert set(list_vm_directories(kvm)) == set(vms)
    assert list_vm_directories(str(tmp_path / "missing")) == {}


# -- probing -------------------------------------------------------------------

def test_probe_lists_readable_fields_only(tmp_path):
    debugfs = make_debugfs(tmp_path, host={
        "exits": "100\n", "pages_4k": "3\n", "max_mmu_rmap_size": "2\n",
        "halt_wait_ns": "9\n", "halt_wait_hist": "1 2\n", "mmu_rmaps_stat": "a table\n",
        "empty": "", "garbage": "hello\n", "too_big": "18446744073709551616\n",
        "long": "1" * 5000,
    }, vms={"5-1": {"exits": "1\n", "vcpu0": {"pid": "5\n"}}})
    probe = probe_debugfs(debugfs)
    assert probe.fields == ["exits", "halt_wait_ns", "max_mmu_rmap_size", "pages_4k"]
    assert probe.kinds == {"exits": COUNTER, "halt_wait_ns": TIME,
                           "max_mmu_rmap_size": PEAK, "pages_4k": INSTANT}
    assert probe.histograms == ["halt_wait_hist"]
    assert probe.unreadable == {"empty": "empty", "garbage": "not a number",
                                "too_big": "not a number", "long": "too long"}
    assert probe.denied == []
    assert probe.files == 9  # the table is not a statistic
    [note] = probe.notes()
    assert "empty (empty)" in note and "garbage (not a number)" in note


def test_probe_read_only_file_is_an_instant(tmp_path):
    debugfs = make_debugfs(tmp_path, host={"new_level": "4\n", "new_count": "4\n"})
    os.chmod(os.path.join(debugfs, "kvm", "new_level"), 0o444)
    assert probe_debugfs(debugfs).kinds == {"new_level": INSTANT, "new_count": COUNTER}


def test_probe_lockdown(tmp_path, monkeypatch):
    debugfs = make_debugfs(tmp_path)
    lock_down(monkeypatch, ["exits", "halt_wait_ns", "max_mmu_rmap_size", "halt_poll_fail_hist"])
    probe = probe_debugfs(debugfs)
    assert probe.fields == ["pages_4k"]
    assert probe.denied == ["exits", "halt_poll_fail_hist", "halt_wait_ns", "max_mmu_rmap_size"]
    [note] = probe.notes()
    assert "\n" not in note
    assert "4 of 5 files" in note
    assert "lockdown" in note and "Operation not permitted" in note
    assert "exits, halt_poll_fail_hist, halt_wait_ns, max_mmu_rmap_size" in note
    assert "the tracepoint provider or the binary statistics provider" in note


def test_probe_names_the_lockdown_mode(tmp_path, monkeypatch):
    debugfs = make_debugfs(tmp_path / "d")
    security = tmp_path / "sys" / "kernel" / "security"
    security.mkdir(parents=True)
    (security / "lockdown").write_text("none [integrity] confidentiality\n")
    lock_down(monkeypatch, ["exits"])
    probe = probe_debugfs(debugfs, sys=str(tmp_path / "sys"))
    assert probe.lockdown == "integrity"
    assert "lockdown mode (integrity)" in probe.notes()[0]


def test_nothing_readable_is_an_error(tmp_path, monkeypatch):
    debugfs = make_debugfs(tmp_path)
    lock_down(monkeypatch, HOST)
    probe = probe_debugfs(debugfs)
    assert not probe.available
    message = str(probe.error())
    assert "none of the 5" in message and "lockdown" in message
    assert "the tracepoint provider or the binary statistics provider" in message
    with pytest.raises(NotAvailable):
        DebugfsProvider(debugfs)


def test_no_kvm_directory(tmp_path):
    with pytest.raises(NotAvailable, match="no KVM"):
        probe_debugfs(str(tmp_path))


def test_kvm_directory_not_readable(tmp_path, monkeypatch):
    debugfs = make_debugfs(tmp_path)
    real = os.listdir

    def listdir(path):
        if path == os.path.join(debugfs, "kvm"):
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(os, "listdir", listdir)
    with pytest.raises(AccessDenied, match="run kvm_stat as root"):
        probe_debugfs(debugfs)


# -- host-wide values ----------------------------------------------------------

def test_counters_count_from_start_up(tmp_path):
    debugfs = make_debugfs(tmp_path)
    with DebugfsProvider(debugfs) as provider:
        assert provider.fields == ["exits", "halt_wait_ns", "max_mmu_rmap_size", "pages_4k"]
        assert provider.snapshot().totals == {"exits": 0, "halt_wait_ns": 0, "max_mmu_rmap_size": 4,
                                   "pages_4k": 10}
        set_value(debugfs, "exits", "150\n")
        set_value(debugfs, "halt_wait_ns", "7000\n")
        set_value(debugfs, "pages_4k", "6\n")
        set_value(debugfs, "max_mmu_rmap_size", "9\n")
        assert provider.snapshot().totals == {"exits": 50, "halt_wait_ns": 2000, "max_mmu_rmap_size": 9,
                                   "pages_4k": 6}


def test_include_past_counts_from_creation(tmp_path):
    debugfs = make_debugfs(tmp_path)
    with DebugfsProvider(debugfs, include_past=True) as provider:
        assert provider.snapshot().totals["exits"] == 100
        set_value(debugfs, "exits", "130\n")
        assert provider.snapshot().totals == {"exits": 130, "halt_wait_ns": 5000,
                                   "max_mmu_rmap_size": 4, "pages_4k": 10}


def test_counters_never_go_backwards(tmp_path):
    # A VM exits (its counts leave the host-wide file) or someone clears the file.
    debugfs = make_debugfs(tmp_path)
    provider = DebugfsProvider(debugfs, fields=["exits"])
    totals = []
    for text in ("150", "120", "130", "0", "5"):
        set_value(debugfs, "exits", text + "\n")
        totals.append(provider.snapshot().totals["exits"])
    assert totals == [50, 50, 60, 60, 65]


def test_huge_values(tmp_path):
    debugfs = make_debugfs(tmp_path, host={"exits": f"{U64_MAX - 10}\n", "pages_4k": f"{U64_MAX}\n"})
    provider = DebugfsProvider(debugfs, include_past=True)
    set_value(debugfs, "exits", f"{U64_MAX}\n")
    assert provider.snapshot().totals == {"exits": U64_MAX, "pages_4k": U64_MAX}


def test_unreadable_value_keeps_the_previous_one(tmp_path):
    debugfs = make_debugfs(tmp_path)
    provider = DebugfsProvider(debugfs)
    set_value(debugfs, "exits", "110\n")
    set_value(debugfs, "pages_4k", "12\n")
    assert provider.snapshot().totals["exits"] == 10
    for text in ("", "garbage\n", "1 2\n"):
        set_value(debugfs, "exits", text)
        set_value(debugfs, "pages_4k", text)
        values = provider.snapshot().totals
        assert values["exits"] == 10 and values["pages_4k"] == 12
    os.unlink(os.path.join(debugfs, "kvm", "exits"))
    assert provider.snapshot().totals["exits"] == 10
    set_value(debugfs, "exits", "115\n")
    assert provider.snapshot().totals["exits"] == 15


def test_field_selection_and_lockdown_leave_fields_out(tmp_path, monkeypatch):
    debugfs = make_debugfs(tmp_path)
    lock_down(monkeypatch, ["exits"])
    provider = DebugfsProvider(debugfs, fields=["exits", "pages_4k", "nonexistent"])
    assert provider.fields == ["pages_4k"]
    assert provider.snapshot().totals == {"pages_4k": 10}  # never exits = 0


def test_levels_are_the_instant_and_peak_fields(tmp_path):
    provider = DebugfsProvider(make_debugfs(tmp_path))
    assert provider.levels == {"pages_4k", "max_mmu_rmap_size"}
    assert DebugfsProvider(make_debugfs(tmp_path), fields=["exits"]).levels == set()


def test_reset_zeroes_counters_not_levels(tmp_path):
    debugfs = make_debugfs(tmp_path)
    provider = DebugfsProvider(debugfs, include_past=True)
    set_value(debugfs, "exits", "120\n")
    provider.reset()
    assert provider.snapshot().totals["exits"] == 0
    assert provider.snapshot().totals["pages_4k"] == 10
    set_value(debugfs, "exits", "125\n")
    assert provider.snapshot().totals["exits"] == 5
    # files are never written
    with open(os.path.join(debugfs, "kvm", "exits")) as f:
        assert f.read() == "125\n"


def test_histograms_are_not_fields_but_readable(tmp_path):
    debugfs = make_debugfs(tmp_path)
    provider = DebugfsProvider(debugfs)
    assert "halt_poll_fail_hist" not in provider.fields
    assert "halt_poll_fail_hist" not in provider.snapshot().totals
    # Bare bucket values since VM creation: debugfs tells nothing about the buckets.
    assert provider.snapshot(histograms=True).histograms == {
        "halt_poll_fail_hist": HistogramValues((1, 2, 3), SINCE_CREATION)}


def test_close_is_idempotent(tmp_path):
    provider = DebugfsProvider(make_debugfs(tmp_path))
    provider.close()
    provider.close()
    assert provider.snapshot().totals == {}


# -- per-VM values -------------------------------------------------------------

def vm_stats(exits, pages, rmap="1"):
    return {"exits": f"{exits}\n", "pages_4k": f"{pages}\n", "max_mmu_rmap_size": f"{rmap}\n",
            "halt_wait_ns": "0\n", "vcpu0": {"pid": "1\n", "guest_mode": "0\n"},
            "vcpu1": {"pid": "2\n"}}


def three_vms(tmp_path):
    return make_debugfs(tmp_path, vms={
        "8-11": vm_stats(10, 1, rmap="3"),
        "8-12": vm_stats(20, 2, rmap="7"),
        "128-11": vm_stats(1000, 100),
        "8123-9": vm_stats(5000, 500),
    })


def test_pid_mode_sums_the_vms_of_that_process_only(tmp_path):
    debugfs = three_vms(tmp_path)
    provider = DebugfsProvider(debugfs, pid=8, include_past=True)
    assert provider.snapshot().totals == {"exits": 30, "pages_4k": 3, "max_mmu_rmap_size": 7,
                               "halt_wait_ns": 0}
    set_value(debugfs, "exits", "15\n", vm="8-11")
    set_value(debugfs, "exits", "9999\n", vm="128-11")
    assert provider.snapshot().totals["exits"] == 35
    assert set(provider.snapshot(by_vm=True).by_vm) == {8}


def test_pid_mode_counts_from_start_up(tmp_path):
    debugfs = three_vms(tmp_path)
    provider = DebugfsProvider(debugfs, pid=8)
    assert provider.snapshot().totals["exits"] == 0
    set_value(debugfs, "exits", "14\n", vm="8-11")
    assert provider.snapshot().totals["exits"] == 4


def test_pid_without_directory(tmp_path):
    with pytest.raises(NoSuchVM, match="no 12-<fd> directory"):
        DebugfsProvider(three_vms(tmp_path), pid=12)


def test_by_vm_groups_per_process(tmp_path):
    debugfs = three_vms(tmp_path)
    provider = DebugfsProvider(debugfs)
    assert provider.supports_by_vm
    by_vm = provider.snapshot(by_vm=True).by_vm
    assert by_vm[8] == {"exits": 0, "pages_4k": 3, "max_mmu_rmap_size": 7, "halt_wait_ns": 0}
    assert by_vm[128]["exits"] == 0 and by_vm[128]["pages_4k"] == 100
    assert set(by_vm) == {8, 128, 8123}
    set_value(debugfs, "exits", "1003\n", vm="128-11")
    assert provider.snapshot(by_vm=True).by_vm[128]["exits"] == 3


def test_vm_created_after_start_up_counts_from_creation(tmp_path):
    debugfs = three_vms(tmp_path)
    provider = DebugfsProvider(debugfs)
    provider.snapshot(by_vm=True).by_vm
    make_debugfs(tmp_path, host={}, vms={"42-5": vm_stats(77, 4)})
    assert provider.snapshot(by_vm=True).by_vm[42]["exits"] == 77


def test_vm_directory_vanishing_between_listing_and_reading(tmp_path, monkeypatch):
    debugfs = three_vms(tmp_path)
    provider = DebugfsProvider(debugfs)
    real = debugfs_mod.list_vm_directories

    def list_then_vanish(kvm_dir, pid=None):
        listing = real(kvm_dir, pid)
        shutil.rmtree(os.path.join(kvm_dir, "128-11"), ignore_errors=True)
        return listing

    monkeypatch.setattr(debugfs_mod, "list_vm_directories", list_then_vanish)
    by_vm = provider.snapshot(by_vm=True).by_vm
    assert 128 not in by_vm
    assert set(by_vm) == {8, 8123}


def test_one_vm_of_a_process_exits(tmp_path):
    # Counts already made by the gone VM stay; its levels go.
    debugfs = three_vms(tmp_path)
    provider = DebugfsProvider(debugfs, pid=8)
    set_value(debugfs, "exits", "12\n", vm="8-11")
    set_value(debugfs, "exits", "25\n", vm="8-12")
    assert provider.snapshot().totals["exits"] == 7
    shutil.rmtree(os.path.join(debugfs, "kvm", "8-12"))
    provider.refresh()
    values = provider.snapshot().totals
    assert values["exits"] == 7
    assert values["pages_4k"] == 1 and values["max_mmu_rmap_size"] == 3


def test_watched_vm_exits(tmp_path):
    debugfs = three_vms(tmp_path)
    provider = DebugfsProvider(debugfs, pid=8)
    for name in ("8-11", "8-12"):
        shutil.rmtree(os.path.join(debugfs, "kvm", name))
    provider.refresh()
    reading = provider.snapshot()
    assert reading.ended == {8}
    assert reading.totals == {"exits": 0, "halt_wait_ns": 0}  # no crash, no levels
    provider.refresh()
    assert not provider.snapshot().ended  # said once


def test_per_vm_histograms_sum_bucket_by_bucket(tmp_path):
    vm_a = dict(vm_stats(1, 1), halt_poll_fail_hist="1 2\n")
    vm_b = dict(vm_stats(1, 1), halt_poll_fail_hist="10 20 30\n")
    debugfs = make_debugfs(tmp_path, vms={"8-1": vm_a, "8-2": vm_b})
    provider = DebugfsProvider(debugfs, pid=8)
    assert provider.snapshot(histograms=True).histograms["halt_poll_fail_hist"].counts == (11, 22, 30)
    assert provider.snapshot(by_vm=True, histograms=True).vm_histograms == {
        8: {"halt_poll_fail_hist": HistogramValues((11, 22, 30), SINCE_CREATION)}}


def test_histograms_of_every_vm_by_pid(tmp_path):
    debugfs = make_debugfs(tmp_path, vms={
        "8-1": dict(vm_stats(1, 1), halt_poll_fail_hist="1 2\n"),
        "8-2": dict(vm_stats(1, 1), halt_poll_fail_hist="10 20 30\n"),
        "128-11": dict(vm_stats(1, 1), halt_poll_fail_hist="5\n"),
        "9-3": vm_stats(1, 1),  # no histogram file: nothing for it
    })
    provider = DebugfsProvider(debugfs)
    by_vm = provider.snapshot(by_vm=True, histograms=True).vm_histograms
    assert {pid: {n: h.counts for n, h in hists.items()} for pid, hists in by_vm.items()} == {
        8: {"halt_poll_fail_hist": (11, 22, 30)}, 128: {"halt_poll_fail_hist": (5,)}, 9: {}}
    provider.close()
    assert provider.snapshot(histograms=True).histograms == {} and provider.snapshot(by_vm=True, histograms=True).vm_histograms == {}
