"""The binary-stats provider on the real kernel, watching test guest processes.

The guest process creates its own VM and vCPU statistics descriptors and
keeps them open (``GuestProcess.stats()``), as QEMU 8.1+ does; kvmstat, in
this test process, borrows them with pidfd_getfd.  (tests/kernel/test_binstats_qemu.py
runs them against real QEMU 10 and QEMU 7.2.)

What the kernel counts for one port write (a KVM_RUN that returns
KVM_EXIT_IO): one ``exits``; ``io_exits`` too with VMX and SVM, while the
paravirtual kvm_pvm module handles the exit without counting ``io_exits``.
One HLT exit (no in-kernel irqchip) is one ``halt_exits`` everywhere.
A host interrupt that lands in the guest's few instructions adds one
``exits`` (measured here: about once in 50,000 runs), so the counts stay
small.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import time
import uuid

import pytest

import kvmstat
from kvmstat.errors import NotAvailable
from kvmstat.providers.binstats import BinstatsProvider

from helpers.batchwindow import start_batch
from helpers.commands import fd_links, killed_on_failure, kvm_stat, start_kvm_stat, wait_for
from helpers.exporter import ExporterProcess, total, value
from helpers.logfiles import complete_lines

PVM = os.path.isdir("/sys/module/kvm_pvm")


#: KVM's ``exits`` counts every exit, also one that a host interrupt causes
#: when it lands in the microsecond the vCPU runs guest code: the guest did not
#: ask for it, and which run it hits is chance.  Each exit the guest makes is
#: counted exactly, so a count is right when it is the guest's, or at most this
#: many more (``halt_exits`` and the tracepoints stay exact).
EXTRA_EXITS = 2


class Exits:
    """Equal to a count of exits for *n* exits the guest made (see EXTRA_EXITS)."""

    def __init__(self, n):
        self.n = n

    def __eq__(self, other):
        return isinstance(other, (int, float)) and self.n <= other <= self.n + EXTRA_EXITS

    def __repr__(self):
        return f"Exits({self.n}..{self.n + EXTRA_EXITS})"


def io_exits_for(port_writes: int) -> int:
    """``io_exits`` the running kernel counts for that many port writes."""
    return 0 if PVM else port_writes


def check_notes_on_other_vms(err, *guests):
    """Host-wide, kvm_stat names the VMs whose statistics it cannot read fully
    (other tests' VMs, on this shared host): *err* may hold those notes, and
    nothing else, and none about *guests*."""
    for line in err.splitlines():
        assert line.startswith("kvm_stat: binary statistics: "), err
        assert not any(f"(pid {guest.pid})" in line for guest in guests), err


def stats_links(pid="self"):
    """Statistics descriptors held by process *pid* (link names)."""
    return sorted(link for link in fd_links(pid)
                  if link.startswith(("anon_inode:kvm-vm-stats", "anon_inode:kvm-vcpu-stats")))


def test_exact_exits_per_vcpu_for_n_port_writes(guest_process):
    guest = guest_process("pio", vcpus=2)
    assert guest.stats() == 3  # the VM's and one per vCPU
    with BinstatsProvider(pid=guest.pid) as provider:
        assert provider.fds == 3
        guest.run(23, vcpu=0)
        guest.run(9, vcpu=1)
        provider.refresh()
        totals = provider.snapshot().totals
        per_vcpu = provider.snapshot(by_vcpu=True).by_vcpu[guest.pid]
    assert per_vcpu[0]["exits"] == Exits(23)
    assert per_vcpu[1]["exits"] == Exits(9)
    assert per_vcpu[0]["io_exits"] == io_exits_for(23)
    assert per_vcpu[1]["io_exits"] == io_exits_for(9)
    assert totals["exits"] == Exits(32)
    assert totals["io_exits"] == io_exits_for(32)
    assert totals["halt_exits"] == 0


def test_exact_halt_exits(guest_process):
    guest = guest_process("hlt")
    guest.stats()
    with kvmstat.open_sampler(["binstats"], fields="(halt_exits|exits)$",
                              pid=guest.pid) as sampler:
        sampler.sample()
        guest.run(41)
        sample = sampler.sample()
    assert sample.values == {"exits": (Exits(41), Exits(41)), "halt_exits": (41, 41)}


def test_host_wide_totals_and_per_vm_split(guest_process):
    one = guest_process("pio")
    two = guest_process("pio", vcpus=2)
    one.stats()
    two.stats()
    with kvmstat.open_sampler(["binstats"], fields="exits$", by_vm=True) as sampler:
        sampler.sample()
        one.run(11)
        two.run(5, vcpu=0)
        two.run(6, vcpu=1)
        sample = sampler.sample()
    assert sample.by_vm[one.pid]["exits"] == (Exits(11), Exits(11))
    assert sample.by_vm[two.pid]["exits"] == (Exits(11), Exits(11))
    # Other VMs on the host may add more, never less.
    assert sample.values["exits"][0] >= 22


def test_vcpu_added_later_is_picked_up(guest_process):
    guest = guest_process("pio")
    guest.stats()
    with BinstatsProvider(pid=guest.pid) as provider:
        guest.run(4)
        index = guest.add_vcpu()
        guest.stats()  # the new vCPU's descriptor
        provider.refresh()
        assert provider.fds == 3
        guest.run(7, vcpu=index)
        per_vcpu = provider.snapshot(by_vcpu=True).by_vcpu[guest.pid]
    assert per_vcpu[0]["exits"] == Exits(4)
    assert per_vcpu[index]["exits"] == Exits(7)


def test_vm_exit_mid_read_closes_the_duplicates(guest_process):
    guest = guest_process("pio", vcpus=2)
    guest.stats()
    before = stats_links()
    provider = BinstatsProvider(pid=guest.pid)
    try:
        assert len(stats_links()) == len(before) + 3
        guest.run(5)
        provider.refresh()
        guest._proc.kill()  # dies between refresh and read
        guest._proc.wait()
        # The borrowed descriptors still read (they hold the VM), no crash.
        assert provider.snapshot().totals["exits"] == Exits(5)
        provider.refresh()
        assert stats_links() == before
        reading = provider.snapshot()
        assert reading.ended == {guest.pid} and reading.totals["exits"] == Exits(5)
    finally:
        provider.close()
    assert stats_links() == before


def test_host_wide_provider_lets_exited_vms_go(guest_process):
    stays = guest_process("pio")
    goes = guest_process("pio")
    stays.stats()
    goes.stats()
    with BinstatsProvider(fields=["exits"]) as provider:
        assert {stays.pid, goes.pid} <= set(provider.pids)
        goes.run(8)
        before = provider.snapshot().totals["exits"]
        goes.close()  # the guest closes everything and exits
        provider.refresh()
        assert goes.pid not in provider.pids
        reading = provider.snapshot(by_vm=True)
        assert reading.ended == {goes.pid}  # reported once, with its final counts
        assert reading.by_vm[goes.pid]["exits"] == Exits(8)
        assert goes.pid not in provider.snapshot(by_vm=True).by_vm
        assert not any(f"kvm-{goes.pid}" in link for link in stats_links())
        assert provider.snapshot().totals["exits"] >= before  # its counts stay in the totals
        stays.run(3)
        provider.refresh()  # a new sample, a new reading
        assert provider.snapshot(by_vm=True).by_vm[stays.pid]["exits"] == Exits(3)


def test_vm_without_statistics_descriptors_is_explained(guest_process):
    with_stats = guest_process("pio")
    with_stats.stats()  # so that the host has some
    without = guest_process("pio")
    with pytest.raises(NotAvailable, match=f"VM process {without.pid} holds no KVM binary "
                                           "statistics file descriptors.*QEMU"):
        BinstatsProvider(pid=without.pid)


def test_kvm_stat_once_binstats_for_a_pid(guest_process):
    guest = guest_process("pio", vcpus=2)
    guest.stats()
    # Once kvm_stat sleeps between its two samples it holds its copies of the
    # guest's 3 descriptors and has taken its baseline.
    proc = start_batch(["--binstats", "-p", str(guest.pid)])
    assert len(stats_links(proc.pid)) == 3
    guest.run(20, vcpu=0)
    guest.run(7, vcpu=1)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert err == ""
    rows = {}
    for line in out.splitlines():
        assert len(line) == 62, line
        rows[line[:42].rstrip()] = (int(line[42:52]), int(line[52:62]))
    assert list(rows) == sorted(rows)
    assert rows["exits"][0] == Exits(27)
    assert rows["io_exits"][0] == io_exits_for(27)
    assert rows["halt_exits"] == (0, 0)
    assert {"halt_wait_ns", "blocking", "pages_4k"} <= set(rows)


# -- histograms in the JSON output -----------------------------------------------
# This host's KVM offers three histograms per vCPU (all log-2 histograms of
# nanoseconds): halt_poll_success_hist, halt_poll_fail_hist and
# halt_wait_hist.  One halt wait inside the kernel (program "idle") adds one
# sample to halt_wait_hist; whether KVM polls first depends on the host.
HOST_HISTOGRAMS = {"halt_poll_success_hist", "halt_poll_fail_hist", "halt_wait_hist"}


def check_log2_nanoseconds(hist):
    """The shape of a KVM log-2 histogram of nanoseconds in the JSON output."""
    assert hist["kind"] == "log" and hist["unit"] == "seconds"
    assert (hist["base"], hist["exponent"]) == (10, -9)
    bounds = hist["bounds"]
    assert len(bounds) == len(hist["counts"]) > 2
    assert bounds[0] == [0, 1] and bounds[1] == [1, 2] and bounds[-1][1] is None
    assert all(isinstance(c, int) and c >= 0 for c in hist["counts"])


def test_once_json_has_the_histograms_with_exact_halt_waits(guest_process):
    guest = guest_process("idle")
    guest.stats()
    proc = start_batch(["--json", "--binstats", "-p", str(guest.pid)])
    guest.halt_waits(6)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and err == ""
    obj = json.loads(out)
    assert set(obj["histograms"]) == HOST_HISTOGRAMS
    for hist in obj["histograms"].values():
        check_log2_nanoseconds(hist)
        assert hist["since"] == "start"
    assert sum(obj["histograms"]["halt_wait_hist"]["counts"]) == 6
    # Histograms are not fields.
    assert not HOST_HISTOGRAMS & set(obj["fields"])


def test_json_log_by_guest_carries_each_guests_histograms(guest_process, tmp_path):
    idle = guest_process("idle")
    busy = guest_process("pio")
    idle.stats()
    busy.stats()
    log = tmp_path / "kvm_stat.json"
    proc = start_kvm_stat("-L", str(log), "--json", "--by-guest", "-s", "0.2", "--binstats",
                          "-f", "exits|halt_wait")
    with killed_on_failure(proc):
        # The first row comes after kvm_stat has borrowed the descriptors
        # (it counts from then on).
        wait_for(lambda: len(complete_lines(log)) >= 1, "the first row", proc=proc)
        idle.halt_waits(3)
        busy.run(10)
        idle.halt_waits(2)

        def last_guests():
            lines = complete_lines(log)
            return json.loads(lines[-1])["guests"] if lines else {}

        wait_for(lambda: sum(last_guests().get(str(idle.pid), {}).get("histograms", {})
                             .get("halt_wait_hist", {}).get("counts", [0])) == 5,
                 "the halt waits to be logged", proc=proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out == ""
    check_notes_on_other_vms(err, idle, busy)
    last = json.loads(complete_lines(log)[-1])
    mine = last["guests"][str(idle.pid)]["histograms"]
    assert set(mine) == {"halt_wait_hist"}  # -f selects histograms by name too
    check_log2_nanoseconds(mine["halt_wait_hist"])
    assert sum(mine["halt_wait_hist"]["counts"]) == 5
    assert sum(last["guests"][str(busy.pid)]["histograms"]["halt_wait_hist"]["counts"]) == 0
    assert last["guests"][str(busy.pid)]["fields"]["exits"]["total"] == Exits(10)
    # Host-wide: the sum over every VM holding descriptors (others may add more).
    assert sum(last["histograms"]["halt_wait_hist"]["counts"]) >= 5


# -- --check, --by-guest and the exporter with --binstats --------------------------

def test_check_finds_binary_stats_where_a_guest_holds_descriptors(guest_process):
    guest = guest_process("pio")
    guest.stats()
    result = kvm_stat(["--check"])
    assert result.returncode == 0, result.stderr
    [row] = [line for line in result.stdout.splitlines() if line.startswith("binary stats")]
    assert row.split()[2] == "available", row
    assert "statistics read from the descriptors VM processes hold" in row
    [attribution] = [line for line in result.stdout.splitlines()
                     if line.startswith("per-VM attribution")]
    assert "binary stats (stats fds held by VM processes)" in attribution


def named_guests(guest_process):
    """Two guests with statistics descriptors: one vCPU, and two vCPUs."""
    tag = uuid.uuid4().hex[:8]
    one = guest_process("pio", name=f"bs-one-{tag}")
    two = guest_process("pio", vcpus=2, name=f"bs-two-{tag}")
    one.stats()
    two.stats()
    return one, two


@pytest.mark.parametrize("json_output", [False, True], ids=["text", "json"])
def test_once_by_guest_binstats_exact_exits_per_vm(guest_process, json_output):
    one, two = named_guests(guest_process)
    proc = start_batch(["--by-guest", "--binstats", "-f", "exits$"]
                       + (["--json"] if json_output else []))
    one.run(13)
    two.run(4, vcpu=0)
    two.run(5, vcpu=1)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    check_notes_on_other_vms(err, one, two)
    if json_output:
        guests = json.loads(out)["guests"]
        for guest, n in ((one, 13), (two, 9)):
            assert guests[str(guest.pid)] == {
                "name": guest.name, "fields": {"exits": {"total": Exits(n), "delta": Exits(n)}}}
    else:
        for guest, n in ((one, 13), (two, 9)):
            heading = f"(pid {guest.pid}) {guest.name}\n"
            block = out[out.index(heading) + len(heading):].split("\n", 1)[0]
            assert len(block) == 62 and block[:42].rstrip() == "exits", block
            assert (int(block[42:52]), int(block[52:62])) == (Exits(n), Exits(n)), block


def test_csv_log_by_guest_binstats_exact_exits_per_vm(guest_process, tmp_path):
    one, two = named_guests(guest_process)
    log = tmp_path / "by-guest.csv"
    proc = start_kvm_stat("-L", str(log), "-c", "--by-guest", "--binstats", "-s", "0.2",
                          "-f", "exits$")
    with killed_on_failure(proc):
        wait_for(lambda: len(complete_lines(log)) >= 1, "the CSV header", proc=proc)
        for n in (5, 20, 1):
            one.run(n)
            two.run(n, vcpu=1)
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out == ""
    check_notes_on_other_vms(err, one, two)
    with open(log, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["timestamp", "pid", "guest", "exits"]
    for guest in (one, two):
        mine = [row for row in rows[1:] if row[1] == str(guest.pid)]
        assert all(row[2] == guest.name for row in mine)
        assert sum(int(row[3]) for row in mine) == Exits(26)


def test_exporter_binstats_exact_exits_for_a_watched_guest_and_per_vm(guest_process):
    one, two = named_guests(guest_process)
    with ExporterProcess(["--binstats", "-p", str(one.pid)]) as watched, \
            ExporterProcess(["--binstats", "-f", "exits$"]) as host:
        vm_one = {"pid": str(one.pid), "guest": one.name}
        vm_two = {"pid": str(two.pid), "guest": two.name}
        assert value(watched.scrape(), "kvm_stats_exits_total", **vm_one) == 0
        before = total(host.scrape(), "kvm_stats_exits_total")
        one.run(77)
        two.run(30, vcpu=0)
        two.run(3, vcpu=1)
        families = watched.scrape()
        assert value(families, "kvm_stats_exits_total", **vm_one) == Exits(77)
        assert value(families, "kvm_stats_halt_exits_total", **vm_one) == 0
        families = host.scrape()
        assert value(families, "kvm_stats_exits_total", **vm_one) == Exits(77)
        assert value(families, "kvm_stats_exits_total", **vm_two) == Exits(33)
        # sum() is the host count: other VMs may add more
        assert total(families, "kvm_stats_exits_total") - before >= 110
        assert watched.stop() == 0 and host.stop() == 0
