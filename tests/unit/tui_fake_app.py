"""The real kvmstat display on fake counters, for the pty tests without KVM.

Run as a script: ``python tests/unit/tui_fake_app.py [--pid PID] [--proc DIR]
[--die-after N] [--delay S] [--regex R] [--vm-name NAME]``.  It runs
:class:`kvmstat.frontends.tui.Display` with an opener that builds real
:class:`~kvmstat.sampling.sampler.Sampler` objects over :class:`FakeProvider`: every
read adds fixed steps to the counters, and the sampler's clock advances
exactly 2 s per sample, so every number on the screen is known in advance.
Each open is logged as one line to the file named by ``$FAKE_APP_LOG``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # the worktree's kvmstat

from kvmstat.counting.durations import BUCKETS, DurationHistogram, Durations, VcpuTimes  # noqa: E402
from kvmstat.errors import InvalidArgument  # noqa: E402
from kvmstat.providers.base import Provider, Reading  # noqa: E402
from kvmstat.sampling.sampler import Sampler  # noqa: E402
from kvmstat.frontends.tui import Display  # noqa: E402

#: field -> count added by every read (host-wide)
STEPS = {
    "kvm_pio": 100,
    "kvm_exit": 30,
    "kvm_exit(HLT)": 20,
    "kvm_exit(IO_INSTRUCTION)": 10,
    "kvm_exit(CPUID)": 0,
    "kvm_msr": 0,
    "kvm_userspace_exit": 5,
    "kvm_userspace_exit(IO)": 5,
    # Never counts (never shown); long enough for a backtracking regex to hang on.
    "kvm_nested_vmenter_failed_for_long": 0,
}
#: VM pid -> (guest name, share of every step in fifths)
VMS = {1001: ("alpha", 3), 1002: ("beta", 1), 1003: (None, 1)}
SECONDS_PER_SAMPLE = 2.0


class FakeProvider(Provider):
    """Counters that grow by :data:`STEPS` on every read."""

    name = "fake"

    def __init__(self, fields, die_after, pid=None):
        self._fields = list(fields)
        self._pid = pid
        self._dead = self._ended = False
        self._reads = 0
        self._die_after = die_after

    @property
    def fields(self):
        return list(self._fields)

    @property
    def supports_by_vm(self):
        return True

    @property
    def pid(self):
        return self._pid

    def refresh(self):
        if self._die_after is not None and self._reads >= self._die_after \
                and not self._dead:
            self._dead = self._ended = True

    def snapshot(self, *, by_vm=False, histograms=False, by_vcpu=False):
        if not self._dead:
            self._reads += 1  # a VM that has exited counts nothing more
        ended = frozenset({self._pid}) if self._ended else frozenset()
        self._ended = False
        totals = {f: STEPS[f] * self._reads for f in self._fields}
        per_vm = {pid: {f: STEPS[f] * share // 5 * self._reads for f in self._fields}
                  for pid, (_, share) in VMS.items()} if by_vm else {}
        return Reading(totals, per_vm, ended=ended)

    def reset(self):
        self._reads = 0

    def close(self):
        pass


class FakeDurations:
    """Durations of known histograms (the ``t`` view): 4 port exits of 3 ms
    and one MMIO exit of 40 us for VM 1001, kvm_exit unavailable; its vCPU
    thread 1002 spent 60% of a second in KVM_RUN (half of it halted) and
    40% in the VMM."""

    def __init__(self, by_vm):
        self._by_vm = by_vm

    def sample(self):
        io = DurationHistogram(4, 12_000_000, 3_000_000, _buckets({21: 4}))
        mmio = DurationHistogram(1, 40_000, 40_000, _buckets({15: 1}))
        total = {"kvm_userspace_exit": io + mmio, "kvm_userspace_exit(IO)": io,
                 "kvm_userspace_exit(MMIO)": mmio}
        vms = {1001: total} if self._by_vm else None
        vcpus = [VcpuTimes(1002, 1001, 10**9, 600_000_000, 400_000_000, 300_000_000, None,
                           "CPU 0/KVM")]
        return Durations(total, total, vms, vms, {"kvm_exit": "it never fires here"},
                         vcpus=vcpus, vcpus_total=vcpus)

    def reset(self):
        pass

    def close(self):
        pass


def _buckets(filled):
    return tuple(filled.get(i, 0) for i in range(BUCKETS))


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--pid", type=int)
    p.add_argument("--proc", default="/proc")
    p.add_argument("--die-after", type=int)
    p.add_argument("--delay", type=float, default=3.0)
    p.add_argument("--regex")
    p.add_argument("--vm-name", help="the guest name of VM 1001 (instead of alpha)")
    args = p.parse_args(argv)
    if args.vm_name is not None:
        VMS[1001] = (args.vm_name, VMS[1001][1])
    log_path = os.environ.get("FAKE_APP_LOG")

    def opener(selection, pid, by_vm, durations=False):
        fields = selection.select(STEPS)
        if not fields:  # as sources.open_sampler does
            raise InvalidArgument(f"no field matches '{selection.regex}'")
        if log_path:
            with open(log_path, "a") as log:
                log.write(json.dumps({"fields": fields, "pid": pid, "by_vm": by_vm,
                                      "durations": durations}) + "\n")
        ticks = itertools.count()
        return Sampler([FakeProvider(fields, args.die_after, pid)], by_vm=by_vm,
                       names=lambda vm: VMS[vm][0],
                       durations=FakeDurations(by_vm) if durations else None,
                       clock=lambda: next(ticks) * SECONDS_PER_SAMPLE)

    display = Display(opener, delay=args.delay,
                      regex=args.regex, pid=args.pid, proc=args.proc)
    return display.run()


if __name__ == "__main__":
    sys.exit(main())
