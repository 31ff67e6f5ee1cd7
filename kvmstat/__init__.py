"""kvmstat: live KVM statistics for a Linux host, as a library.

What ``kvm_stat`` does, without the command line:

* list the fields this host can count: :func:`list_fields`;
* open providers for the whole host or for one VM process (``pid=``):
  :func:`open_providers`, or :func:`open_sampler` which wraps them in a
  :class:`Sampler`; both build one :class:`SamplerOptions`, which
  :func:`sampler_for` also takes directly;
* take samples: :meth:`Sampler.sample` returns a :class:`Sample` whose
  ``values`` map each field to ``(total, delta)``; VMs that exit are in
  ``Sample.ended`` (and :attr:`Sampler.done` once the one VM watched has);
* read a provider directly: :meth:`Provider.refresh` then
  :meth:`Provider.snapshot`, one :class:`Reading`;
* list VMs with their guest names: :func:`list_vms`, :func:`find_vm`,
  :func:`find_vm_by_name` (each a :class:`VM`);
* per-VM breakdowns: ``open_sampler(by_vm=True)`` fills ``Sample.by_vm``
  (``pid -> field -> (total, delta)``) and ``Sample.vm_names`` wherever a
  provider can attribute events to VMs; or open one sampler per VM with
  ``pid=``;
* providers by name (``"tracepoints"``, ``"debugfs"``, ``"binstats"`` as the
  first argument of :func:`open_sampler`), or their classes directly:
  :class:`TracepointProvider`, :class:`DebugfsProvider`,
  :class:`BinstatsProvider` (per-vCPU values: ``snapshot(by_vcpu=True)``);
* histogram statistics (binary stats, debugfs ``*_hist``):
  ``open_sampler(histograms=True)`` fills ``Sample.histograms`` (name ->
  :class:`HistogramValues`) and, with ``by_vm``, ``Sample.vm_histograms``;
* exit durations measured in the kernel with BPF (how long each exit keeps
  a vCPU out of the guest, per event and reason): ``open_sampler(durations=True)``
  fills ``Sample.durations`` (:class:`Durations`: field ->
  :class:`DurationHistogram` since start and over the interval, per VM with
  ``by_vm``);
* what works on this host, why not and the fix (``kvm_stat --check``):
  :func:`check_host` returns a :class:`HostCheck`, :func:`format_check` the
  table;
* serve Prometheus metrics from your own program: :class:`KvmCollector`.

Child fields count one reason of their parent and are named
``parent(REASON)``, e.g. ``kvm_userspace_exit(IO)``: see :func:`parent_of`,
:func:`reason_of`.  Every error is a :class:`Error` whose ``str()`` is a
one-line message naming the cause and the fix.  Objects that hold kernel
resources (providers, samplers) have ``close()`` and are context managers.

Typical use::

    import kvmstat, time
    with kvmstat.open_sampler(fields="kvm_(pio|userspace_exit)") as sampler:
        sampler.sample()
        time.sleep(1)
        for name, (total, delta) in sorted(sampler.sample().values.items()):
            print(name, total, delta)
"""

from typing import Any, List

from . import _compat
from .errors import (AccessDenied, Error, InvalidArgument, NativeError, NoSuchVM,
                     NotAvailable, TooManyEvents, VMGone)

__version__ = "0.1.0"

_compat.install()

__all__ = [
    "__version__",
    # errors
    "Error", "InvalidArgument", "AccessDenied", "NotAvailable", "NoSuchVM", "VMGone",
    "TooManyEvents", "NativeError",
    # fields
    "list_fields", "FieldFilter", "parent_of", "reason_of", "is_child", "child_name",
    # providers and samples
    "open_providers", "open_sampler", "SamplerOptions", "sampler_for", "Provider", "Reading", "Sampler", "Sample", "FieldValues",
    "Totals", "Paths", "TracepointProvider", "DebugfsProvider", "BinstatsProvider",
    "HistogramValues", "Histograms", "Durations", "DurationHistogram",
    # VMs
    "VM", "list_vms", "find_vm", "find_vm_by_name",
    # what works on this host (kvm_stat --check)
    "check_host", "format_check", "HostCheck", "ProviderCheck",
    # Prometheus
    "KvmCollector",
]


# Names loaded when first asked for, so that `kvm_stat` does not pay at
# start-up for what its mode does not use (the exporter, the providers, the
# host diagnosis), and so that importing the package is short: the command
# takes Ctrl-C over only after the package's ``__init__`` has run, and Ctrl-C
# before that would print a traceback.
_LAZY = {
    "FieldFilter": "sampling.fields", "child_name": "sampling.fields",
    "is_child": "sampling.fields", "parent_of": "sampling.fields",
    "reason_of": "sampling.fields",
    "Paths": "host.paths",
    "Histograms": "providers.base", "HistogramValues": "providers.base",
    "Provider": "providers.base", "Reading": "providers.base", "Totals": "providers.base",
    "TracepointProvider": "providers.tracepoints",
    "list_fields": "sampling.sources", "open_providers": "sampling.sources",
    "open_sampler": "sampling.sources", "sampler_for": "sampling.sources",
    "SamplerOptions": "sampling.options",
    "Durations": "counting.durations", "DurationHistogram": "counting.durations",
    "FieldValues": "sampling.sampler", "Sample": "sampling.sampler",
    "Sampler": "sampling.sampler",
    "VM": "host.vms", "find_vm": "host.vms", "find_vm_by_name": "host.vms",
    "list_vms": "host.vms",
    "KvmCollector": "frontends.exporter",
    "DebugfsProvider": "providers.debugfs",
    "BinstatsProvider": "providers.binstats",
    "HostCheck": "frontends.check",
    "ProviderCheck": "frontends.check",
    "check_host": "frontends.check",
    "format_check": "frontends.check",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kvmstat' has no attribute '{name}'")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next look-up is a plain attribute
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))
