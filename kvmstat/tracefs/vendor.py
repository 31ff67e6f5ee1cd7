"""Which kvm_exit reason table applies on this host: Intel VMX, AMD SVM or PVM."""

from __future__ import annotations

import os
from typing import Optional

__all__ = ["detect_vendor"]

_MODULE_VENDORS = (("kvm_intel", "vmx"), ("kvm_amd", "svm"), ("kvm_pvm", "pvm"))
_CPU_VENDORS = {
    "GenuineIntel": "vmx", "CentaurHauls": "vmx", "Shanghai": "vmx",
    "AuthenticAMD": "svm", "HygonGenuine": "svm",
}


def detect_vendor(sys_path: str = "/sys", proc_path: str = "/proc") -> Optional[str]:
    """Return the kvm_exit table flavour of this host: "vmx", "svm" or "pvm".

    The loaded KVM vendor module decides first (``kvm_intel`` → vmx,
    ``kvm_amd`` → svm, ``kvm_pvm`` → pvm: PVM reports its own exit codes
    with its own ISA number), then the ``vendor_id`` of ``<proc>/cpuinfo``.
    The vmx/svm cpuinfo flags are never used: nested and paravirtual hosts
    hide them while KVM works.  Returns None when neither source tells.
    """
    for module, vendor in _MODULE_VENDORS:
        if os.path.isdir(os.path.join(sys_path, "module", module)):
            return vendor
    try:
        with open(os.path.join(proc_path, "cpuinfo"), encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "vendor_id":
                    return _CPU_VENDORS.get(value.strip())
    except OSError:
        pass
    return None
