"""kvmstat: live KVM statistics for a Linux host, as a library.

Typical use::

    import kvmstat, time
    with kvmstat.open_sampler(fields="kvm_(pio|userspace_exit)") as sampler:
        sampler.sample()
        time.sleep(1)
        for name, (total, delta) in sorted(sampler.sample().values.items()):
            print(name, total, delta)
"""

from .errors import (AccessDenied, Error, InvalidArgument, NativeError, NoSuchVM,
                     NotAvailable, TooManyEvents, VMGone)
from .fields import FieldFilter
from .paths import Paths
from .sources import list_fields, open_providers, open_sampler
from .stats import Sample, Sampler
from .vms import VM, find_vm, find_vm_by_name, list_vms

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "Error", "InvalidArgument", "AccessDenied", "NotAvailable", "NoSuchVM", "VMGone",
    "TooManyEvents", "NativeError",
    "FieldFilter", "Paths", "Sample", "Sampler", "VM",
    "list_fields", "open_providers", "open_sampler",
    "list_vms", "find_vm", "find_vm_by_name",
]
