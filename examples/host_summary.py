#!/usr/bin/env python3
"""Host summary: the VMs running on this host and the busiest KVM events.

Lists every VM process with its guest name, counts every kvm event host-wide
for a few seconds and prints the busiest ones, with their busiest reasons::

    sudo python3 examples/host_summary.py --interval 2 --top 10

Needs root (perf events on tracepoints) and a mounted tracefs.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import kvmstat


def busiest(sample: kvmstat.Sample, top: int) -> List[Tuple[str, int, List[Tuple[str, int]]]]:
    """The *top* parents by count in this sample, each with its non-zero reasons."""
    reasons: Dict[str, List[Tuple[str, int]]] = {}
    for name, (_, delta) in sample.values.items():
        reason = kvmstat.reason_of(name)
        if reason is not None and delta:
            reasons.setdefault(kvmstat.parent_of(name), []).append((reason, delta))
    parents = [(name, sample.values[name][1]) for name in sample.parents()]
    parents.sort(key=lambda item: (-item[1], item[0]))
    return [(name, delta, sorted(reasons.get(name, []), key=lambda r: -r[1]))
            for name, delta in parents[:top] if delta]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval", type=float, default=1.0,
                        help="seconds to count for (default 1)")
    parser.add_argument("--top", type=int, default=10, help="how many events to show")
    parser.add_argument("--fields", default=None,
                        help="only fields matching this regex (like kvm_stat -f)")
    args = parser.parse_args(argv)
    try:
        vms = kvmstat.list_vms()
        print(f"{len(vms)} VM(s) running")
        for vm in vms:
            print(f"  pid {vm.pid:<8} {vm.name or '(no name)'}")
        with kvmstat.open_sampler(fields=args.fields) as sampler:
            sampler.sample()
            print(f"counting for {args.interval:g} s ...", file=sys.stderr, flush=True)
            time.sleep(args.interval)
            sample = sampler.sample()
    except kvmstat.Error as exc:
        print(f"host_summary: {exc}", file=sys.stderr)
        return 1
    rows = busiest(sample, args.top)
    print(f"busiest events over {sample.interval:.1f} s, host-wide:")
    if not rows:
        print("  (no kvm events)")
    for name, delta, reasons in rows:
        detail = ", ".join(f"{reason} {count}" for reason, count in reasons[:4])
        print(f"  {name:<30} {delta:>10} {delta / sample.interval:>12.1f}/s"
              + (f"   ({detail})" if detail else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
