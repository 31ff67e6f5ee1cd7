"""``kvm_stat --binstats`` against real QEMU: QEMU 10 and Debian 12's QEMU 7.2.

QEMU 8.1 and newer keep a statistics descriptor open for each vCPU (not the
VM's own); older QEMU (Debian 12 ships 7.2) opens them only while answering
the QMP command query-stats, so there is nothing to borrow and kvm_stat must
say why.  QEMU 10 comes from tests/helpers/qemu10.sh (bookworm-backports,
cached); without it these tests skip, and fail under KVMSTAT_REQUIRE_KVM=1.

The guests boot tests/helpers/qemuguest.py's boot sector: every PIT tick
(about 18 a second) it writes one mark to QEMU's debugcon file, runs cpuid
and halts.  Its work between two points is known exactly from the marks
while its vCPUs are paused (QMP stop) in the halt at both points: each loop is exactly
one ``halt_exits`` of vCPU 0, and at least two ``exits`` (the port write
goes to QEMU, the halt to KVM's halt handling; cpuid adds one where it is
intercepted, and host interrupts add a few).  vCPU 1 never starts (it waits
for a start-up IPI the boot sector never sends): it counts nothing.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid

import pytest

import kvmstat
from conftest import require_kvm_env
from helpers.batchwindow import start_batch
from helpers.commands import fd_links, kvm_stat, wait_for
from helpers.qemu10 import Unavailable, qemu10, system_qemu
from helpers.qemuguest import QemuGuest
from kvmstat.providers.binstats import BinstatsProvider

pytestmark = pytest.mark.qemu

NOTE = "kvm_stat: binary statistics: "
HISTOGRAMS = {"halt_poll_success_hist", "halt_poll_fail_hist", "halt_wait_hist"}
#: loops of the boot sector in kvm_stat -1's window: about 18, more when
#: kvm_stat's second stretches on a loaded host or missed ticks are reinjected
PLAUSIBLE_LOOPS = 200


@pytest.fixture(scope="module")
def qemu_10():
    """How to start QEMU 10 (skips without it, fails under KVMSTAT_REQUIRE_KVM=1)."""
    try:
        return qemu10()
    except Unavailable as exc:
        if require_kvm_env():
            pytest.fail(f"KVMSTAT_REQUIRE_KVM=1 but {exc}", pytrace=False)
        pytest.skip(str(exc))


@pytest.fixture
def guests():
    """Factory: guests(qemu, vcpus=2) -> a running QemuGuest, closed at teardown."""
    started = []

    def start(qemu, vcpus=2):
        guest = QemuGuest(f"kvmstat-bs-{uuid.uuid4().hex[:8]}", vcpus=vcpus, qemu=qemu.argv)
        started.append(guest)
        return guest

    yield start
    for guest in started:
        guest.close()


def stats_links(pid):
    return sorted(link for link in fd_links(pid) if "-stats" in link)


def paused_reading(guest_list, read):
    """(*read*(), loops of each guest) with every guest's vCPUs paused in
    the boot sector's halt."""
    for guest in guest_list:
        guest.pause_halted()
    try:
        return read(), [guest.loops() for guest in guest_list]
    finally:
        for guest in guest_list:
            guest.resume()


def debugfs_counters_readable():
    """Whether this host's debugfs gives KVM's counters (not under lockdown)."""
    try:
        with open("/sys/kernel/debug/kvm/exits") as f:
            f.read()
        return True
    except OSError:
        return False


# -- QEMU 10 ------------------------------------------------------------------------

def test_qemu10_holds_its_vcpus_statistics_descriptors_not_the_vms(qemu_10, guests):
    assert qemu_10.version >= (8, 1)
    guest = guests(qemu_10)
    assert stats_links(guest.pid) == ["anon_inode:kvm-vcpu-stats:0",
                                      "anon_inode:kvm-vcpu-stats:1"]


def test_qemu10_exact_halt_exits_per_vcpu_against_the_guests_loops(qemu_10, guests):
    guest = guests(qemu_10)
    notes = []
    with BinstatsProvider(pid=guest.pid, notify=notes.append) as provider:
        assert provider.fds == 2

        def read():
            provider.refresh()
            reading = provider.snapshot(histograms=True, by_vcpu=True)
            return reading.totals, reading.by_vcpu[guest.pid], reading.histograms

        (_, before, hist_before), [loops_before] = paused_reading([guest], read)
        time.sleep(1.5)
        (totals, after, hist_after), [loops_after] = paused_reading([guest], read)
    loops = loops_after - loops_before
    assert loops >= 10, "the PIT ticks about 18 times a second"
    delta = {vcpu: {name: after[vcpu][name] - before[vcpu][name] for name in after[vcpu]}
             for vcpu in after}
    assert delta[0]["halt_exits"] == loops
    assert delta[0]["exits"] >= 2 * loops
    assert delta[1]["exits"] == 0 and delta[1]["halt_exits"] == 0
    # Per-vCPU values add up to the totals.
    assert totals["exits"] == after[0]["exits"] + after[1]["exits"]
    # Histograms: each loop's halt is at least one wait in the kernel; the
    # vCPU resumed halted waits once more, and a wake-up with nothing to
    # deliver (the pause's kick, say) sends it back to wait: a few more.
    waits = sum(hist_after["halt_wait_hist"].counts) - sum(hist_before["halt_wait_hist"].counts)
    assert loops <= waits <= loops + 4
    assert set(hist_after) == HISTOGRAMS
    # QEMU 10 does not hold the VM's own descriptor: said once.
    assert notes == [f"binary statistics: VM process '{guest.name}' (pid {guest.pid}) does "
                     f"not hold the VM's own statistics descriptor (VM-wide statistics): "
                     f"those statistics are missing for it, the others are read"]


def test_kvm_stat_once_binstats_with_qemu10(qemu_10, guests):
    guest = guests(qemu_10)
    proc = start_batch(["--binstats", "-p", str(guest.pid)])
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    rows = {line[:42].rstrip(): (int(line[42:52]), int(line[52:62]))
            for line in out.splitlines()}
    # One second of a guest looping about 18 times: plausible, not exact here
    # (on a loaded host the PIT reinjects the ticks a late vCPU missed).
    assert 1 <= rows["halt_exits"][1] <= PLAUSIBLE_LOOPS, rows["halt_exits"]
    assert rows["exits"][1] >= 2 * rows["halt_exits"][1] - 2
    assert rows["halt_wait_ns"][1] > 0
    assert err == (f"{NOTE}VM process '{guest.name}' (pid {guest.pid}) does not hold the VM's "
                   f"own statistics descriptor (VM-wide statistics): those statistics are "
                   f"missing for it, the others are read\n")


def test_kvm_stat_json_histograms_with_qemu10(qemu_10, guests):
    guest = guests(qemu_10)
    proc = start_batch(["--json", "--binstats", "-p", str(guest.pid)])
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    obj = json.loads(out)
    assert set(obj["histograms"]) == HISTOGRAMS
    wait = obj["histograms"]["halt_wait_hist"]
    assert wait["kind"] == "log" and wait["unit"] == "seconds" and wait["since"] == "start"
    assert len(wait["bounds"]) == len(wait["counts"])
    # Waits of a PIT period (about 55 ms) at most: no count beyond 2^26 ns.
    assert 1 <= sum(wait["counts"]) <= PLAUSIBLE_LOOPS + 10
    assert sum(wait["counts"][27:]) == 0
    assert obj["fields"]["halt_exits"]["total"] > 0


def test_check_lists_qemu10_with_what_is_missing(qemu_10, guests):
    guest = guests(qemu_10)
    result = kvm_stat(["--check"])
    assert result.returncode == 0, result.stderr
    [row] = [line for line in result.stdout.splitlines() if line.startswith("binary stats")]
    assert row.split()[2] == "available", row
    assert (f"VM process '{guest.name}' (pid {guest.pid}) does not hold the VM's own "
            f"statistics descriptor") in result.stdout


def test_by_guest_with_two_qemu10_guests_and_one_qemu72(qemu_10, guests):
    old = system_qemu()
    if old.version >= (8, 1):
        pytest.skip(f"the system's QEMU is {old.version}: no QEMU without descriptors here")
    new = [guests(qemu_10), guests(qemu_10, vcpus=1)]
    legacy = guests(old, vcpus=1)
    # Exact, per VM, through the library: both QEMU 10 guests paused at both ends.
    with kvmstat.open_sampler(["binstats"], fields="halt_exits$", by_vm=True) as sampler:
        first, loops_before = paused_reading(new, sampler.sample)
        time.sleep(1.5)
        second, loops_after = paused_reading(new, sampler.sample)
    for guest, before, after in zip(new, loops_before, loops_after):
        halts = second.by_vm[guest.pid]["halt_exits"][0] - first.by_vm[guest.pid]["halt_exits"][0]
        assert halts == after - before >= 10
    assert legacy.pid not in second.by_vm
    # The command line: a block per QEMU 10 guest, the QEMU 7.2 one named on stderr.
    proc = start_batch(["--by-guest", "--binstats", "-f", "(halt_)?exits$"])
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    for guest in new:
        heading = f"(pid {guest.pid}) {guest.name}\n"
        assert heading in out, out
        block = out[out.index(heading) + len(heading):].split("\n\n", 1)[0].splitlines()
        rows = {line[:42].rstrip(): int(line[52:62]) for line in block}
        assert set(rows) == {"exits", "halt_exits"}
        assert 1 <= rows["halt_exits"] <= PLAUSIBLE_LOOPS and rows["exits"] >= rows["halt_exits"]
    assert f"(pid {legacy.pid})" not in out
    left_out = [line for line in err.splitlines() if "left out, holding no statistics" in line]
    # Named once (other VMs on this shared host may be named too).
    assert sum(f"'{legacy.name}' (pid {legacy.pid})" in line for line in left_out) == 1, err
    for guest in new:
        assert err.count(f"'{guest.name}' (pid {guest.pid}) does not hold the VM's own") == 1
    assert all(line.startswith(NOTE) for line in err.splitlines()), err


# -- QEMU 7.2 (the system's) ------------------------------------------------------------

def test_kvm_stat_binstats_with_the_systems_qemu(guests):
    qemu = system_qemu()
    guest = guests(qemu, vcpus=1)
    result = kvm_stat(["-1", "--binstats", "-p", str(guest.pid)])
    if qemu.version >= (8, 1):
        assert result.returncode == 0, result.stderr
        assert re.search(r"^exits +\d+ +\d+$", result.stdout, re.M), result.stdout
        return
    assert stats_links(guest.pid) == []
    assert result.returncode == 1
    assert result.stdout == ""
    # The message names the cause and the fix, on one line, and only
    # providers that work on this host: debugfs not under lockdown.
    alternatives = r"the tracepoint provider \(-t\)"
    if debugfs_counters_readable():
        alternatives += r" or the debugfs provider \(-d\)"
    assert re.fullmatch(
        rf"Error: (VM process {guest.pid} holds no|no VM process holds) KVM binary statistics file descriptors: "
        r"only a VM's own process can create them .*QEMU keeps them open from version 8\.1 "
        rf"on.*; use {alternatives} instead\n", result.stderr), result.stderr
