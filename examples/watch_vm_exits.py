#!/usr/bin/env python3
"""Per-VM exit-rate watcher: VM exits and exits to the VMM, per VM, every interval.

Watches one VM (``-p PID`` or ``-g NAME``) or every VM on the host, including
VMs that start while it runs; a VM that exits is reported and dropped.  Each
interval prints one line per VM with the rate of ``kvm_exit`` (exits handled
in the kernel) and ``kvm_userspace_exit`` (exits to the VMM, e.g. QEMU) and
the busiest reasons; at the end it prints every VM's totals::

    sudo python3 examples/watch_vm_exits.py --interval 1 --duration 30

Stops after --duration seconds (default: run until Ctrl-C).  Each VM gets its
own sampler opened with ``pid=``, which counts every thread of that process.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence

import kvmstat

EXIT_FIELDS = r"kvm_(exit|userspace_exit)(\(|$)"
PARENTS = ("kvm_exit", "kvm_userspace_exit")


class Watched:
    """One VM and its sampler."""

    def __init__(self, vm: kvmstat.VM):
        self.vm = vm
        self.sampler = kvmstat.open_sampler(fields=EXIT_FIELDS, pid=vm.pid)
        try:
            self.last: Optional[kvmstat.Sample] = self.sampler.sample()
        except BaseException:
            self.sampler.close()
            raise

    @property
    def label(self) -> str:
        return f"pid {self.vm.pid} ({self.vm.name or 'no name'})"

    def line(self, sample: kvmstat.Sample) -> str:
        rates = "  ".join(f"{parent} {sample.rate(parent):9.1f}/s" for parent in PARENTS
                          if parent in sample.values)
        reasons = sorted(((delta, name) for name, (_, delta) in sample.values.items()
                          if kvmstat.is_child(name) and delta), reverse=True)
        top = ", ".join(f"{name} {delta / sample.interval:.0f}/s" for delta, name in reasons[:3])
        return f"{time.strftime('%H:%M:%S')}  {self.label:<30} {rates}" + (f"  [{top}]" if top else "")

    def totals(self) -> str:
        values = self.last.values if self.last else {}
        counts = " ".join(f"{name}={total}" for name, (total, _) in sorted(values.items()) if total)
        return f"total {self.label}: {counts or 'no exits'}"


def choose_vms(pid: Optional[int], guest: Optional[str]) -> List[kvmstat.VM]:
    if pid is not None:
        return [kvmstat.find_vm(pid)]
    if guest is not None:
        return [kvmstat.find_vm_by_name(guest)]
    return kvmstat.list_vms()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("-p", "--pid", type=int, help="watch only this VM process")
    which.add_argument("-g", "--guest", help="watch only the VM with this guest name")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between lines")
    parser.add_argument("--duration", type=float, default=None,
                        help="stop after this many seconds (default: until Ctrl-C)")
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    watched: Dict[int, Watched] = {}
    finished: List[Watched] = []
    follow_new = args.pid is None and args.guest is None
    try:
        for vm in choose_vms(args.pid, args.guest):
            try:
                watched[vm.pid] = Watched(vm)
            except kvmstat.NoSuchVM:
                continue  # exited while we were starting
        print("watching " + (", ".join(w.label for w in watched.values()) or "no VM yet"),
              flush=True)
        deadline = None if args.duration is None else time.monotonic() + args.duration
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            wait = args.interval if deadline is None else min(args.interval, deadline - time.monotonic())
            if stop.wait(max(wait, 0)):
                break
            if follow_new:
                for vm in kvmstat.list_vms():
                    if vm.pid not in watched:
                        try:
                            watched[vm.pid] = Watched(vm)
                            print(f"new VM: {watched[vm.pid].label}", flush=True)
                        except kvmstat.NoSuchVM:
                            pass  # gone already
            for pid, w in list(watched.items()):
                if w.sampler.done:  # it exited as it was opened
                    sample = w.last
                else:
                    sample = w.sampler.sample()
                    w.last = sample
                    print(w.line(sample), flush=True)
                if w.sampler.done:
                    # The sample that says so holds its counts up to the exit.
                    print(f"{w.label} exited", flush=True)
                    w.sampler.close()
                    finished.append(watched.pop(pid))
    except kvmstat.Error as exc:
        print(f"watch_vm_exits: {exc}", file=sys.stderr)
        return 1
    finally:
        for w in watched.values():
            w.sampler.close()
    for w in finished + list(watched.values()):
        print(w.totals())
    return 0


if __name__ == "__main__":
    sys.exit(main())
