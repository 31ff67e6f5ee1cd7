"""Choosing and opening providers.

Opening is two steps so that ``-f`` can open only what it shows: a
*catalog* lists the fields a provider could count (cheap, opens nothing),
then :meth:`Catalog.open` opens the selected ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Union

from .engine import open_tracepoints
from ..errors import Error, InvalidArgument
from ..tracefs.catalog import load_events
from ..tracefs.vendor import detect_vendor
from .fields import FieldFilter
from ..host.paths import Paths
from ..providers.base import Provider
from ..providers.tracepoints import event_fields
from .options import PROVIDER_NAMES, SamplerOptions, check_provider
from .sampler import Sampler
from ..host.vms import GuestNames, find_vm

__all__ = ["PROVIDERS", "Catalog", "catalog", "list_fields", "providers_for", "sampler_for",
           "open_providers", "open_sampler"]

Notify = Optional[Callable[[str], None]]


#: opener(selected fields, options) -> the provider counting them
Opener = Callable[[List[str], SamplerOptions], Provider]


@dataclass
class Catalog:
    """The fields one provider can count on this host, and how to open it."""

    name: str
    fields: List[str]
    _opener: Opener

    def open(self, fields: Iterable[str], options: SamplerOptions) -> Provider:
        """Open the provider for *fields*, as *options* say (host-wide or for
        its pid, per VM or not, the engine...); each provider takes from
        *options* what concerns it."""
        return self._opener(list(fields), options)


def _mounted_debugfs(paths: Paths) -> Optional[str]:
    """The debugfs directory if it is mounted (never mounts it), else None."""
    try:
        return paths.find_debugfs(mount=False)
    except Error:
        return None


def _tracepoint_catalog(paths: Paths, notify: Notify) -> Catalog:
    tracefs = paths.find_tracefs(notify=notify)
    events = load_events(tracefs, detect_vendor(paths.sys, paths.proc))

    def opener(fields: List[str], options: SamplerOptions) -> Provider:
        # Per VM, debugfs (when mounted) makes finding new VMs cheap.
        debugfs = _mounted_debugfs(paths) if options.by_vm and options.pid is None else None
        return open_tracepoints(tracefs, events, fields, options, debugfs=debugfs,
                                notify=notify)

    return Catalog("tracepoints", event_fields(events), opener)


# The debugfs and binstats providers are imported when asked for: the
# default (tracepoints) path does not pay for loading them.

def _debugfs_catalog(paths: Paths, notify: Notify) -> Catalog:
    from ..providers.debugfs import DebugfsProvider, probe_debugfs

    # The files left out (kernel lockdown, unusable contents) are reported
    # here, once; with none readable at all, opening it fails with that reason.
    debugfs = paths.find_debugfs(notify=notify)
    probe = probe_debugfs(debugfs, paths.sys)
    if not probe.available:
        raise probe.error()
    if notify is not None:
        for note in probe.notes():
            notify(note)

    def opener(fields: List[str], options: SamplerOptions) -> Provider:
        return DebugfsProvider(debugfs, fields=fields, pid=options.pid,
                               include_past=options.include_past, probe=probe, sys=paths.sys)

    return Catalog("debugfs", probe.fields, opener)


def _binstats_catalog(paths: Paths, notify: Notify) -> Catalog:
    from ..providers.binstats import BinstatsProvider, binstats_fields

    # Where debugfs is mounted: whether it can stand in when no VM holds
    # statistics descriptors (not under kernel lockdown).
    debugfs = _mounted_debugfs(paths)

    def opener(fields: List[str], options: SamplerOptions) -> Provider:
        return BinstatsProvider(fields=fields, pid=options.pid,
                                include_past=options.include_past, proc=paths.proc,
                                debugfs=debugfs, notify=notify)

    return Catalog("binstats", binstats_fields(paths.proc, debugfs), opener)


#: provider name -> function(paths, notify) -> Catalog
PROVIDERS: Dict[str, Callable[[Paths, Notify], Catalog]] = {
    "tracepoints": _tracepoint_catalog,
    "debugfs": _debugfs_catalog,
    "binstats": _binstats_catalog,
}
assert tuple(PROVIDERS) == PROVIDER_NAMES


def catalog(name: str, paths: Optional[Paths] = None, notify: Notify = None) -> Catalog:
    """Return the :class:`Catalog` of provider *name* on this host."""
    return PROVIDERS[check_provider(name)](paths or Paths(), notify)


def list_fields(providers: Sequence[str] = ("tracepoints",), paths: Optional[Paths] = None,
                notify: Notify = None) -> List[str]:
    """Every field the given providers can count on this host, sorted."""
    names = set()
    for name in providers:
        names.update(catalog(name, paths, notify).fields)
    return sorted(names)


def providers_for(options: SamplerOptions, notify: Notify = None) -> List[Provider]:
    """Open the providers *options* name, for the fields it selects.

    Only the selected fields are opened.  Raises :class:`InvalidArgument` if
    nothing matches, :class:`~kvmstat.errors.NoSuchVM` if ``options.pid``
    is not a VM.  *notify* receives one-line notes (files left out, an
    engine fallback).
    """
    paths = options.paths
    field_filter = options.field_filter
    if options.pid is not None:
        find_vm(options.pid, paths.proc)
    catalogs = [catalog(name, paths, notify) for name in options.providers]
    chosen = [(c, field_filter.select(c.fields)) for c in catalogs]
    if not any(selected for _, selected in chosen):
        raise InvalidArgument(f"no field matches '{field_filter.regex}' (see the list of fields)")
    opened: List[Provider] = []
    try:
        for cat, selected in chosen:
            if selected:
                opened.append(cat.open(selected, options))
    except BaseException:
        for provider in opened:
            provider.close()
        raise
    return opened


def sampler_for(options: SamplerOptions, notify: Notify = None) -> Sampler:
    """Open the providers of *options* (:func:`providers_for`) in a :class:`Sampler`,
    with the exit durations source when ``options.durations`` asks for it."""
    source = None
    if options.durations:
        from .duration_source import open_durations

        source = open_durations(options.paths, engine=options.engine, backend=options.backend,
                                notify=notify, wanted=options.field_filter.matches,
                                pid=options.pid, by_vm=options.by_vm)
    try:
        opened = providers_for(options, notify)
    except BaseException:
        if source is not None:
            source.close()
        raise
    return Sampler(opened, by_vm=options.by_vm, names=GuestNames(options.paths.proc),
                   histograms=options.field_filter.matches if options.histograms else None,
                   durations=source)


def open_providers(providers: Sequence[str] = ("tracepoints",), *,
                   fields: Union[str, FieldFilter, None] = None, pid: Optional[int] = None,
                   paths: Optional[Paths] = None, backend: Optional[str] = None,
                   notify: Notify = None, by_vm: bool = False,
                   include_past: bool = False, engine: str = "auto") -> List[Provider]:
    """Open the named providers for the fields selected by *fields*.

    *fields* is a ``-f`` regex or a :class:`FieldFilter`.  Only the selected
    fields are opened.  Raises :class:`InvalidArgument` if nothing matches.
    *by_vm* opens them for a per-VM breakdown (for tracepoints with perf
    groups: per-thread counting of every VM process instead of per-CPU
    counting; with BPF: rows per process).  *engine* chooses how
    tracepoints are counted (:mod:`kvmstat.sampling.engine`).
    *include_past* makes debugfs values count from VM creation (``-i``).
    The arguments make one :class:`~kvmstat.sampling.options.SamplerOptions`
    (see :func:`providers_for`).
    """
    return providers_for(SamplerOptions(providers=tuple(providers), fields=fields, pid=pid,
                                        by_vm=by_vm, engine=engine, backend=backend,
                                        include_past=include_past, paths=paths or Paths()),
                         notify)


def open_sampler(providers: Sequence[str] = ("tracepoints",), *,
                 fields: Union[str, FieldFilter, None] = None, pid: Optional[int] = None,
                 by_vm: bool = False, paths: Optional[Paths] = None,
                 backend: Optional[str] = None, include_past: bool = False,
                 notify: Notify = None, engine: str = "auto",
                 histograms: bool = False, durations: bool = False) -> Sampler:
    """Open providers (see :func:`open_providers`) and return a :class:`Sampler`.

    With *by_vm*, samples carry ``by_vm`` (pid -> field values) and
    ``vm_names`` (pid -> guest name) too.  With *histograms*, samples carry
    the providers' histogram statistics (``histograms``, and
    ``vm_histograms`` with *by_vm*) whose names *fields* matches.  With
    *durations*, samples carry the exit durations of the fields *fields*
    matches (``Sample.durations``, see :mod:`kvmstat.sampling.duration_source`);
    :class:`NotAvailable` says why where they cannot be measured.  The
    arguments make one :class:`~kvmstat.sampling.options.SamplerOptions`
    (see :func:`sampler_for`).
    """
    return sampler_for(SamplerOptions(providers=tuple(providers), fields=fields, pid=pid,
                                      by_vm=by_vm, engine=engine, backend=backend,
                                      include_past=include_past, histograms=histograms,
                                      durations=durations, paths=paths or Paths()),
                       notify)
