"""JSON format (docs/design.md §6.6): one object per sample, one line each.

``{"time": <unix seconds>, "interval": <seconds>, "fields": {"<name>":
{"total": N, "delta": N}, ...}}``, plus ``"guests": {"<pid>": {"name":
<name or null>, "fields": {...}}}`` when a per-VM breakdown is asked for,
and ``"engine": "bpf"`` or ``"perf"`` (after ``"interval"``) when
tracepoints are counted.

``"histograms"`` (at the top and in a guest's object) appears only when the
sample carries histogram statistics (binary stats, debugfs ``*_hist``
files): ``{"<name>": {"since": "start"|"creation", "counts": [N, ...]}}``,
with ``"kind"`` (``linear``/``log``), ``"bounds"`` (``[low, high]`` per
bucket, ``high`` null for the last), ``"unit"``, ``"base"`` and
``"exponent"`` when the provider knows them (a bound *b* is ``b * base **
exponent`` of *unit*).  Counts are totals: since kvmstat started, or since
the VM was created (``since``).
Guest and field names are escaped as in every output
(:func:`kvmstat.textsafe.safe_text`), so a name reads the same in JSON as
in the other formats.
Pure functions, no I/O.
"""

from __future__ import annotations

import json
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ...counting.durations import VcpuTimes
from ...providers.base import Histograms
from ...sampling.sampler import Sample
from ...textsafe import safe_name, safe_text
from .durations import durations_object, vcpus_object
from .log import all_zero

__all__ = ["sample_object", "sample_json", "json_rows"]

# Wall-clock and interval times are kept to the microsecond.
_TIME_DIGITS = 6


def _fields_object(values: Mapping[str, Tuple[int, int]],
                   fields: Sequence[str]) -> Dict[str, Dict[str, int]]:
    get = values.get
    out = {}
    for name in fields:
        total, delta = get(name, (0, 0))
        out[safe_text(name)] = {"total": total, "delta": delta}
    return out


def _histograms_object(histograms: Histograms) -> Dict[str, dict]:
    out = {}
    for name in sorted(histograms):
        hist = histograms[name]
        entry: dict = {"since": hist.since, "counts": list(hist.counts)}
        if hist.kind is not None:
            entry["kind"] = hist.kind
        if hist.bounds is not None:
            entry["bounds"] = [[low, high] for low, high in hist.bounds]
        if hist.unit is not None:
            entry.update(unit=hist.unit, base=hist.base, exponent=hist.exponent)
        out[name] = entry
    return out


def sample_object(sample: Sample, fields: Optional[Sequence[str]] = None,
                  by_guest: bool = False) -> dict:
    """The JSON-ready dict of *sample*.

    *fields* fixes the field list and its order (default: every field of the
    sample, sorted).  ``"engine"`` is there when the sample says how
    tracepoints were counted.  With *by_guest*, ``"guests"`` holds every VM of
    ``sample.by_vm`` keyed by pid (as text, JSON keys are strings).
    ``"histograms"`` is there only when the sample carries any, and
    ``"durations"`` (over the interval, also per guest) and ``"vcpus"``
    (where each vCPU's time went over the interval, also per guest) when it
    carries durations (see :func:`~kvmstat.frontends.formats.durations.durations_object`
    and :func:`~kvmstat.frontends.formats.durations.vcpus_object`).
    """
    names = sorted(sample.values) if fields is None else list(fields)
    obj = {
        "time": round(sample.time, _TIME_DIGITS),
        "interval": round(sample.interval, _TIME_DIGITS),
    }
    if sample.engine is not None:
        obj["engine"] = sample.engine
    obj["fields"] = _fields_object(sample.values, names)
    if sample.histograms:
        obj["histograms"] = _histograms_object(sample.histograms)
    durations = sample.durations
    if durations is not None:
        obj["durations"] = durations_object(durations.delta)
        obj["vcpus"] = vcpus_object(durations.vcpus)
    if by_guest:
        vcpus_by_pid: Dict[int, List[VcpuTimes]] = {}
        for vcpu in (durations.vcpus if durations is not None else ()):
            vcpus_by_pid.setdefault(vcpu.pid, []).append(vcpu)
        by_vm = sample.by_vm or {}
        vm_histograms = sample.vm_histograms or {}
        guests = obj["guests"] = {}
        for pid in sorted(by_vm):
            guest = guests[str(pid)] = {"name": safe_name(sample.vm_names.get(pid)),
                                        "fields": _fields_object(by_vm[pid], names)}
            if vm_histograms.get(pid):
                guest["histograms"] = _histograms_object(vm_histograms[pid])
            if durations is not None and durations.by_vm_delta is not None:
                guest["durations"] = durations_object(durations.by_vm_delta.get(pid, {}))
                guest["vcpus"] = vcpus_object(vcpus_by_pid.get(pid, ()))
    return obj


def sample_json(sample: Sample, fields: Optional[Sequence[str]] = None,
                by_guest: bool = False) -> str:
    """*sample* as one JSON line (ending in ``"\\n"``); see :func:`sample_object`."""
    return json.dumps(sample_object(sample, fields, by_guest)) + "\n"


def json_rows(sample: Sample, fields: Sequence[str], skip_zero: bool = False,
              by_guest: bool = False) -> List[str]:
    """The log rows of *sample* in JSON: one line, or none when *skip_zero*
    is set and every host delta is zero."""
    if skip_zero and all_zero(sample.values, fields):
        return []
    return [sample_json(sample, fields, by_guest)]
