"""``kvm_stat --serve`` as a real process on a loopback port, scraped over HTTP (docs/metrics.md).

Counts are checked exactly for a test guest's N port writes; scrapes go on
while guests start and stop; the exporter's file descriptors stay stable.
"""

import os
import signal
import socket
import threading
import uuid

from kvmstat.host.vms import list_vms

from helpers.commands import wait_for
from helpers.exporter import ExporterProcess, series, total, value, value_or_zero

FIELDS = r"kvm_(pio|userspace_exit)"
DEBUGFS_KVM = "/sys/kernel/debug/kvm"
PERF_EVENT = "anon_inode:[perf_event]"
#: one per VM of the host the exporter follows (their exits are polled)
PIDFD = "anon_inode:[pidfd]"
# The one epoll instance that waits on the VMs' pidfds: opened at the first VM
# watched, kept until the exporter stops.
EVENTPOLL = "anon_inode:[eventpoll]"


def vm_pids(families):
    """The pid labels of the per-VM kvm_pio series of a scrape."""
    return {dict(labels)["pid"] for labels in series(families, "kvm_tracepoint_pio_total")
            if dict(labels).get("pid", "none") != "none"}


def free_loopback_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_watched_guest_exact_counts_text_and_openmetrics_then_the_vm_is_dropped(guest_process):
    guest = guest_process("pio", name="exporter-test")
    port = free_loopback_port()
    with ExporterProcess(["-p", str(guest.pid)], address=f"127.0.0.1:{port}") as exporter:
        assert exporter.url == f"http://127.0.0.1:{port}/metrics"
        vm = {"pid": str(guest.pid), "guest": "exporter-test"}
        before = exporter.scrape()
        assert value(before, "kvm_tracepoint_pio_total", **vm) == 0
        assert value(before, "kvmstat_vm_running", **vm) == 1
        guest.run(1000)
        guest.run(234)
        for openmetrics in (False, True):
            families = exporter.scrape(openmetrics=openmetrics)
            assert value(families, "kvm_tracepoint_pio_total", **vm) == 1234
            exits = "kvm_tracepoint_userspace_exit_total"
            assert value(families, exits, **vm, reason="IO") == 1234
            assert total(families, exits) == 1234  # sum without (reason): every reason
            assert value(families, exits, **vm, reason="HLT") == 0
            # Every event is there, and every series is this VM's.
            assert len([n for n in families if n.startswith("kvm_")]) > 50
            for name, family in families.items():
                for sample in family.samples:
                    if name.startswith("kvm_"):
                        assert sample.labels["pid"] == str(guest.pid), sample
        assert exporter.perf_fds() > 0

        guest.close()
        wait_for(lambda: value(exporter.scrape(), "kvmstat_vm_running", **vm) == 0,
                 "the exporter to drop the exited VM", interval=0.1)
        families = exporter.scrape()
        assert not [n for n in families if n.startswith("kvm_")]
        wait_for(lambda: exporter.perf_fds() == 0, "the perf events to be released",
                 interval=0.1)
        assert exporter.scrape() is not None  # still serving
        assert exporter.stop(signal.SIGTERM) == 0
        assert exporter.stdout == b""
        assert exporter.stderr().splitlines() == [
            f"kvm_stat: serving metrics at {exporter.url}",
            f"kvm_stat: VM process {guest.pid} has exited: dropped it, still serving"]


def test_host_wide_totals_include_the_guest_and_sigint_exits_0(guest_process):
    guest = guest_process("pio")
    with ExporterProcess(["-f", FIELDS]) as exporter:
        before = exporter.scrape()
        guest.run(500)
        after = exporter.scrape()
        # sum() of a family is the host count; other VMs on the host may add more.
        for name, labels in (("kvm_tracepoint_pio_total", {}),
                             ("kvm_tracepoint_userspace_exit_total", {"reason": "IO"})):
            assert total(after, name, **labels) - total(before, name, **labels) >= 500
        assert {n for n in after if n.startswith("kvm_")} == {
            "kvm_tracepoint_pio", "kvm_tracepoint_userspace_exit"}
        assert exporter.stop(signal.SIGINT) == 0
        assert "Traceback" not in exporter.stderr()


def test_host_wide_per_vm_series_are_exact(guest_process):
    guest = guest_process("pio", name="per-vm-test")
    with ExporterProcess(["-f", FIELDS]) as exporter:
        vm = {"pid": str(guest.pid), "guest": "per-vm-test"}
        # Idle: no series of its own.  Busy: its series at the next scrape.
        idle = exporter.scrape()
        assert not [labels for labels in series(idle, "kvm_tracepoint_pio_total")
                    if dict(labels).get("pid") == vm["pid"]]
        guest.run(321)
        families = exporter.scrape()
        assert value(families, "kvm_tracepoint_pio_total", **vm) == 321
        assert value(families, "kvm_tracepoint_userspace_exit_total", **vm, reason="IO") == 321
        assert total(families, "kvm_tracepoint_pio_total") >= 321


def test_scrapes_while_guests_start_and_stop_keep_fds_stable(guest_process):
    """Every kvm event host-wide; a scraper runs all the time while guests come and go."""
    with ExporterProcess() as exporter:
        baseline_vms = vm_pids(exporter.scrape())
        baseline = sorted(fd for fd in exporter.fds() if fd not in (PERF_EVENT, PIDFD, EVENTPOLL))
        baseline_perf = exporter.perf_fds()
        failures, scraped, churned = [], [], set()
        done = threading.Event()

        def scraper():
            last = 0.0
            while not done.is_set():
                try:
                    host = total(exporter.scrape(), "kvm_tracepoint_pio_total")
                    if host < last:
                        failures.append(f"sum(kvm_tracepoint_pio_total) went back from "
                                        f"{last} to {host}")
                    last = host
                    scraped.append(host)
                except Exception as exc:  # collected and reported below
                    failures.append(repr(exc))

        thread = threading.Thread(target=scraper)
        thread.start()
        try:
            for round_ in range(4):
                guests = [guest_process("pio", name=f"churn-{round_}-{i}") for i in range(2)]
                churned.update(str(g.pid) for g in guests)
                for g in guests:
                    g.run(50)
                for g in guests:
                    g.close()
        finally:
            done.set()
            thread.join()
        assert not failures, failures[:5]
        assert len(scraped) >= 4
        # Sockets of finished scrapes are closed; the exited VMs are dropped, and
        # their pidfds closed (the host's other VMs may come and go meanwhile:
        # at most one pidfd per VM running now).
        wait_for(lambda: sorted(fd for fd in exporter.fds()
                                if fd not in (PERF_EVENT, PIDFD, EVENTPOLL)) == baseline
                 and not churned & vm_pids(exporter.scrape())
                 and exporter.fds().count(PIDFD) <= len(list_vms())
                 and exporter.fds().count(EVENTPOLL) <= 1,
                 "the exporter's sockets and VMs to return to their baseline", 60, interval=0.1)
        # Their perf events are released.  Host-wide, the exporter counts every
        # VM of the host per thread: when other VMs came or went meanwhile
        # (other users' tests), its perf event count is theirs to explain.
        if vm_pids(exporter.scrape()) == baseline_vms:
            wait_for(lambda: exporter.perf_fds() == baseline_perf,
                     "the exporter's perf events to return to their baseline", 60,
                     interval=0.1)
        assert exporter.stop() == 0


def test_concurrent_scrapes_of_a_guest_chosen_by_name(guest_process):
    guest = guest_process("pio", name="concurrent-test")
    with ExporterProcess(["-g", "concurrent-test", "-f", FIELDS]) as exporter:
        guest.run(77)
        results, failures = [], []
        start = threading.Barrier(8)

        def worker():
            try:
                start.wait()
                for _ in range(5):
                    results.append(value(exporter.scrape(), "kvm_tracepoint_pio_total",
                                         pid=str(guest.pid), guest="concurrent-test"))
            except Exception as exc:  # collected and reported below
                failures.append(repr(exc))

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failures, failures[:5]
        assert results == [77] * 40
        assert exporter.stop() == 0


def debugfs_value(pid, name):
    """The sum of *name* over the debugfs VM directories of process *pid*."""
    total = 0
    for entry in os.listdir(DEBUGFS_KVM):
        if entry.split("-")[0] == str(pid):
            with open(f"{DEBUGFS_KVM}/{entry}/{name}") as f:
                total += int(f.read())
    return total


def test_debugfs_series_per_vm_directory_then_the_vm_leaves(guest_process):
    guest = guest_process("pio", name=f"serve-d-{uuid.uuid4().hex[:8]}")
    vm = {"pid": str(guest.pid), "guest": guest.name}
    with ExporterProcess(["-d", "--vm-series", ""]) as exporter:
        families = exporter.scrape()
        # Whatever this host lets debugfs read (under lockdown: the instant
        # values only, which are gauges), each VM directory gives its series
        # (from their first non-zero value).
        samples = {name[len("kvm_stats_"):]: name + ("_total" if family.type == "counter" else "")
                   for name, family in families.items() if name.startswith("kvm_stats_")}
        assert samples, exporter.stderr()
        for field, sample_name in samples.items():
            assert value_or_zero(families, sample_name, **vm) == debugfs_value(guest.pid, field)
        if "pages_4k" in samples:
            assert families["kvm_stats_pages_4k"].type == "gauge"
        # The values that are zero (under lockdown: all of this idle VM's) have no
        # series; the others go when the VM exits.
        shown = [name for name in samples.values()
                 if frozenset(vm.items()) in series(families, name)]
        assert len(shown) == len([f for f in samples if debugfs_value(guest.pid, f)])
        guest.close()
        wait_for(lambda: not any(frozenset(vm.items()) in series(exporter.scrape(), name)
                                 for name in shown),
                 "the exited VM's series to go", interval=0.1)
        assert exporter.stop() == 0
        assert "Traceback" not in exporter.stderr()


def test_debugfs_and_tracepoints_together_per_vm(guest_process):
    guest = guest_process("pio", name=f"serve-dt-{uuid.uuid4().hex[:8]}")
    vm = {"pid": str(guest.pid), "guest": guest.name}
    with ExporterProcess(["-d", "-t", "-f", "kvm_pio|pages_4k",
                          "--vm-series", "kvm_pio|pages_4k"]) as exporter:
        before = total(exporter.scrape(), "kvm_tracepoint_pio_total")
        guest.run(25)
        families = exporter.scrape()
        assert value(families, "kvm_tracepoint_pio_total", **vm) == 25      # tracepoints
        assert total(families, "kvm_tracepoint_pio_total") - before >= 25
        assert families["kvm_stats_pages_4k"].type == "gauge"               # debugfs
        assert value_or_zero(families, "kvm_stats_pages_4k", **vm) == debugfs_value(
            guest.pid, "pages_4k")
        assert exporter.stop() == 0


def test_tls_and_basic_auth_from_a_web_config_file(guest_process, tmp_path):
    """kvm_stat --serve --web-config: HTTPS with a password, exact counts through it."""
    import base64
    import ssl
    import subprocess
    import urllib.error
    import urllib.request

    import bcrypt

    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True)
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    (tmp_path / "web.yml").write_text(
        "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n"
        f"basic_auth_users:\n  prom: '{hashed}'\n")
    guest = guest_process("pio", name="tls-test")
    with ExporterProcess(["-p", str(guest.pid), "-f", FIELDS,
                          "--web-config", str(tmp_path / "web.yml")]) as exporter:
        assert exporter.url.startswith("https://127.0.0.1:")
        guest.run(55)
        context = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        request = urllib.request.Request(exporter.url, headers={
            "Authorization": "Basic " + base64.b64encode(b"prom:pw").decode()})
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            body = response.read().decode()
        assert f'kvm_tracepoint_pio_total{{pid="{guest.pid}",guest="tls-test"}} 55' in body
        try:
            urllib.request.urlopen(exporter.url, context=context, timeout=30)
            raise AssertionError("answered without a password")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
        assert exporter.stop() == 0
