#!/usr/bin/env python3
"""One configuration of bench_scale, measured in a process of its own.

    python benchmarks/scale_child.py PID BACKEND SAMPLES

Counts every kvm event of VM process PID the way ``kvm_stat -p PID`` does
(the command's imports, then :func:`kvmstat.sampling.sources.open_sampler`), with the
counting backend BACKEND ("c" or "python"), takes SAMPLES samples, then
SAMPLES reads of the provider alone, and prints one JSON object: CPU times
(user and system, seconds) of each phase, peak RSS, open descriptors and
perf events (or ``{"error": message}`` when kvm_stat could not open the
events).  Only the standard library is imported before the
measurement starts, so the first figure is the interpreter's own start-up.
"""

import json
import os
import resource
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu() -> tuple:
    """(user, system) CPU seconds this process has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def since(start: tuple) -> dict:
    now = cpu()
    return {"user": now[0] - start[0], "sys": now[1] - start[1]}


def main(pid: int, backend: str, samples: int) -> dict:
    out = {"interpreter": since((0.0, 0.0))}
    mark = cpu()
    sys.path.insert(0, REPO_ROOT)
    import kvmstat.frontends.cli  # noqa: F401  (what the kvm_stat command imports)
    from kvmstat.errors import Error
    from kvmstat.sampling.sources import open_sampler
    out["imports"] = since(mark)

    mark = cpu()
    try:
        sampler = open_sampler(pid=pid, backend=backend, engine="perf")
    except Error as exc:  # what kvm_stat would say, e.g. too many open files
        return {"error": str(exc)}
    out["open"] = since(mark)
    provider = sampler.providers[0]

    mark = cpu()
    sampler.sample()
    out["first_sample"] = since(mark)

    mark = cpu()
    for _ in range(samples):
        sampler.sample()
    out["samples"] = since(mark)

    mark = cpu()
    for _ in range(samples):
        provider.snapshot().totals
    out["reads"] = since(mark)

    out["count"] = samples
    out["events"] = len(provider.fields)
    out["perf_events"] = provider.fds
    out["fds"] = len(os.listdir("/proc/self/fd"))
    out["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sampler.close()
    return out


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))))
