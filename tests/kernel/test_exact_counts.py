"""Exact counts on the real kernel: the library and `kvm_stat -1 -p PID`.

A test guest process makes exactly N port writes (each one KVM_RUN that
returns KVM_EXIT_IO), so kvm_pio and kvm_userspace_exit(IO) must be exactly N.
"""

import os

import pytest

import kvmstat
from kvmstat.providers.tracepoints import TracepointProvider

from helpers.batchwindow import start_batch
from helpers.commands import kvm_stat

BACKENDS = ["c", "python"]
FIELDS = r"kvm_(pio|userspace_exit)"


def parse_batch(text):
    rows = {}
    for line in text.splitlines():
        name, total, delta = line[:42].rstrip(), line[42:52], line[52:62]
        assert len(line) == 62, line
        rows[name] = (int(total), int(delta))
    return rows


@pytest.mark.parametrize("backend", BACKENDS)
def test_library_counts_exactly_n_port_writes(guest_process, backend):
    guest = guest_process("pio")
    with kvmstat.open_sampler(fields=FIELDS, pid=guest.pid, backend=backend) as sampler:
        sampler.sample()
        guest.run(1000)
        guest.run(234)
        sample = sampler.sample()
    assert sample.values["kvm_pio"] == (1234, 1234)
    assert sample.values["kvm_userspace_exit(IO)"] == (1234, 1234)
    assert sample.values["kvm_userspace_exit"] == (1234, 1234)
    assert sample.values["kvm_userspace_exit(HLT)"] == (0, 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hlt_exits_are_their_own_child(guest_process, backend):
    guest = guest_process("hlt")
    with kvmstat.open_sampler(fields=r"kvm_userspace_exit", pid=guest.pid,
                              backend=backend) as sampler:
        guest.run(77)
        sample = sampler.sample()
    assert sample.values["kvm_userspace_exit(HLT)"][0] == 77
    assert sample.values["kvm_userspace_exit(IO)"][0] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_host_wide_counts_include_the_guest(guest_process, backend):
    guest = guest_process("pio")
    with kvmstat.open_sampler(fields=r"kvm_pio", backend=backend) as sampler:
        guest.run(500)
        total = sampler.sample().values["kvm_pio"][0]
    # Other VMs on the host may add more, never less.
    assert total >= 500


def test_backends_agree_on_the_same_live_guest(guest_process):
    guest = guest_process("pio")
    with kvmstat.open_sampler(fields=FIELDS, pid=guest.pid, backend="c") as c_side, \
            kvmstat.open_sampler(fields=FIELDS, pid=guest.pid, backend="python") as py_side:
        guest.run(4321)
        assert c_side.sample().values == py_side.sample().values


@pytest.mark.parametrize("backend", BACKENDS)
def test_kvm_stat_once_for_a_pid_reports_exact_counts(guest_process, backend):
    guest = guest_process("pio")
    env = dict(os.environ, KVMSTAT_BACKEND=backend)
    # Runs inside kvm_stat's one-second window, once its events are open.
    proc = start_batch(["-p", str(guest.pid)], env=env)
    guest.run(600)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert err == ""
    rows = parse_batch(out)
    assert rows["kvm_pio"][0] == 600
    assert rows["kvm_userspace_exit(IO)"][0] == 600
    assert rows["kvm_exit"] == (0, 0) or rows["kvm_exit"][0] >= 0


def test_every_kvm_tracepoint_and_the_kernels_reason_tables_are_listed(tracefs):
    out = kvm_stat(["-1", "-f", "kvm_(exit|userspace_exit|pio)"], timeout=30)
    assert out.returncode == 0, out.stderr
    rows = parse_batch(out.stdout)
    events = sorted(e for e in os.listdir(f"{tracefs}/events/kvm")
                    if os.path.isdir(f"{tracefs}/events/kvm/{e}"))
    assert {"kvm_exit", "kvm_pio", "kvm_userspace_exit", "kvm_userspace_exit(IO)"} <= set(rows)
    with open(f"{tracefs}/events/kvm/kvm_exit/format") as f:
        fmt = f.read()
    # Whatever table the running kernel lists: e.g. newer reasons appear by name.
    for reason in ("TDCALL", "MSR_READ_IMM", "HLT"):
        if f'"{reason}"' in fmt:
            assert f"kvm_exit({reason})" in rows


def test_batch_lists_every_tracepoint(tracefs):
    out = kvm_stat(["-1"])
    assert out.returncode == 0, out.stderr
    rows = parse_batch(out.stdout)
    events = {e for e in os.listdir(f"{tracefs}/events/kvm")
              if os.path.exists(f"{tracefs}/events/kvm/{e}/id")}
    assert events <= set(rows)
    assert list(rows) == sorted(rows)


def test_provider_fds_match_groups_times_events(guest_process):
    guest = guest_process("pio", vcpus=2)
    tids = os.listdir(f"/proc/{guest.pid}/task")
    with kvmstat.open_sampler(fields=FIELDS, pid=guest.pid, engine="perf") as sampler:
        provider = sampler.providers[0]
        assert isinstance(provider, TracepointProvider)
        assert provider.fds == len(tids) * len(provider.fields)
