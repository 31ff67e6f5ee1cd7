"""Choosing how tracepoints are counted: ``--engine auto|bpf|perf``.

``perf``: perf counting groups (:class:`~kvmstat.providers.tracepoints.TracepointProvider`),
one event per field per CPU or per thread.  ``bpf``: one BPF program per
tracepoint (:class:`~kvmstat.providers.bpf_tracepoints.BpfTracepointProvider`).
``auto``: BPF where this kernel and this process's privileges allow it
(:func:`kvmstat.counting.bpf.bpf_supported`), otherwise perf groups; if the
BPF provider still cannot be built (any :class:`~kvmstat.errors.Error`, e.g.
a program the verifier rejects), ``auto`` falls back to perf groups and
says why through *notify*, while ``bpf`` raises the error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Optional, Sequence

from ..counting.factories import CounterFactories, real_counters
from ..errors import Error, InvalidArgument, NoSuchVM
from ..tracefs.catalog import Event
from ..providers.bpf_tracepoints import BpfTracepointProvider
from ..providers.counting import CountingProvider
from ..providers.tracepoints import TracepointProvider

if TYPE_CHECKING:
    from .options import SamplerOptions

__all__ = ["ENGINES", "EngineChoice", "check_engine", "choose_engine", "open_tracepoints"]

#: the values of ``--engine``
ENGINES = ("auto", "bpf", "perf")

_PYTHON_BACKEND = "python"


@dataclass(frozen=True)
class EngineChoice:
    """The engine that counts (``bpf`` or ``perf``) and why, in one line."""

    engine: str
    reason: str


def check_engine(engine: str) -> str:
    """Return *engine* if it is one of :data:`ENGINES`, else raise InvalidArgument."""
    if engine not in ENGINES:
        raise InvalidArgument(f"unknown engine {engine!r} (known: {', '.join(ENGINES)})")
    return engine


def _python_backend(backend: Optional[str]) -> bool:
    """True when perf counting is asked to use the pure-Python backend."""
    chosen = backend if backend is not None else os.environ.get("KVMSTAT_BACKEND")
    return chosen == _PYTHON_BACKEND


#: Why ``auto`` picks BPF, per mode (measured: benchmarks/bench_guest_cost.py).
_BPF_WHY = {
    False: ("BPF programs load and attach to the kvm tracepoints: raw tracepoints where "
            "the kernel allows (no trace record is built) counting into per-CPU array "
            "slots, one increment per hit, like a perf counter"),
    True: ("BPF programs load and attach to the kvm tracepoints: one table entry per "
           "event, process and reason gives the per-VM rows with one program run per "
           "hit, where perf groups need a group per thread of every VM"),
}


def choose_engine(engine: str = "auto", *, tracepoint_id: Optional[int] = None,
                  backend: Optional[str] = None, by_vm: bool = False,
                  counters: Optional[CounterFactories] = None) -> EngineChoice:
    """What *engine* means on this host, for a host-wide or one-VM count or,
    with *by_vm*, per-VM rows.

    For ``auto``, probes the BPF engine (a map, a program, and with
    *tracepoint_id* its attachment to that tracepoint; all closed again)
    through *counters* (the real counting core by default).
    BPF costs the guests least in every mode when it works (its counting
    programs cost about what a perf counter increment costs per hit, see
    benchmarks/RESULTS.md), and per-VM rows with it need no per-thread
    events.  A pure-Python perf *backend* (argument or ``KVMSTAT_BACKEND``)
    makes ``auto`` pick perf groups: the BPF engine exists only in C.
    """
    if check_engine(engine) != "auto":
        return EngineChoice(engine, f"the {engine} engine was asked for")
    if _python_backend(backend):
        return EngineChoice("perf", "the pure-Python perf backend was asked for "
                                    "(KVMSTAT_BACKEND=python); the BPF engine is C only")
    usable, why = (counters or real_counters()).bpf_supported(tracepoint_id)
    if usable:
        return EngineChoice("bpf", _BPF_WHY[bool(by_vm)])
    return EngineChoice("perf", f"the BPF engine cannot be used: {why}")


def open_tracepoints(tracefs: str, events: Sequence[Event], fields: Optional[Iterable[str]],
                     options: "SamplerOptions", *, debugfs: Optional[str] = None,
                     notify: Optional[Callable[[str], None]] = None) -> CountingProvider:
    """Open the tracepoint provider of the engine *options* choose (see the
    module) for *fields* of *events* (all if None).

    The result's ``engine`` attribute says which one counts.
    """
    fields = None if fields is None else list(fields)
    engine, paths = options.engine, options.paths
    # The probe loads a program without attaching it: attaching and closing a
    # tracepoint event takes a grace period (~0.1 s), and the provider's own
    # attachment failing falls back just the same.
    choice = choose_engine(engine, backend=options.backend, by_vm=options.by_vm,
                           counters=options.counters)
    if choice.engine == "bpf":
        try:
            return BpfTracepointProvider(tracefs, fields=fields, pid=options.pid,
                                         by_vm=options.by_vm, events=events, proc=paths.proc,
                                         debugfs=debugfs, counters=options.counters)
        except NoSuchVM:
            raise  # about the VM, not the engine
        except Error as exc:
            if engine == "bpf":
                raise
            if notify is not None:
                notify(f"the BPF engine failed ({exc}): counting with perf groups")
    return TracepointProvider(tracefs, fields=fields, pid=options.pid, by_vm=options.by_vm,
                              events=events, backend=options.backend, proc=paths.proc,
                              sys=paths.sys, debugfs=debugfs, counters=options.counters)
