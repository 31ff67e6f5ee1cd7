#!/usr/bin/env python3
"""The floor of the BPF engine's cost per hit: programs that do nothing.

Attaches, to every kvm tracepoint, a BPF program that returns at once and
counts nothing, the way kvm_stat attaches its counting programs (raw
tracepoints where the kernel allows, else a perf event of the tracepoint),
and holds them until SIGINT or SIGTERM::

    python benchmarks/empty_programs.py [--attach auto|perf|raw]

What a guest's exit costs under this process is what entering any BPF
program from those tracepoints costs: the counting programs cannot cost
less.  bench_guest_cost.py runs it as one of its monitors.
"""

from __future__ import annotations

import argparse
import signal
import sys

import support  # noqa: F401  (puts the repository on sys.path)

from kvmstat.counting.bpf import ATTACH_MODES, BpfCounter
from kvmstat.host.paths import Paths
from kvmstat.providers.bpf_tracepoints import bpf_layout
from kvmstat.tracefs.events import detect_vendor, load_events


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attach", choices=ATTACH_MODES, default="auto")
    args = parser.parse_args(argv)
    paths = Paths()
    events = load_events(paths.find_tracefs(), detect_vendor(paths.sys, paths.proc))
    specs, _, _ = bpf_layout(events)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with BpfCounter(specs, [], layout="empty", attach=args.attach):
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
