"""VM processes: discovery, guest names and threads.

A VM process is one holding a KVM VM file descriptor: a link in
``/proc/<pid>/fd`` pointing to ``anon_inode:kvm-vm``.  Guest names are read
from the command line the way QEMU parses ``-name``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from .errors import AccessDenied, NoSuchVM

__all__ = ["VM", "list_vms", "find_vm", "find_vm_by_name", "thread_ids",
           "guest_name", "is_vm_process"]

_KVM_VM_LINK = "anon_inode:kvm-vm"


@dataclass(frozen=True)
class VM:
    """A running VM process."""

    pid: int
    name: Optional[str]
    #: file descriptors of the process that are KVM VMs (one per VM; the
    #: debugfs directory of each is ``<pid>-<fd>``)
    vm_fds: Tuple[int, ...] = field(default=())

    @property
    def label(self) -> str:
        """The guest name, or the pid as text when the VM has none."""
        return self.name if self.name is not None else str(self.pid)


def _vm_fds(pid: int, proc: str) -> Tuple[int, ...]:
    fd_dir = f"{proc}/{pid}/fd"
    fds = []
    try:
        entries = os.listdir(fd_dir)
    except OSError:
        return ()
    for entry in entries:
        try:
            if os.readlink(f"{fd_dir}/{entry}") == _KVM_VM_LINK:
                fds.append(int(entry))
        except (OSError, ValueError):
            continue  # closed meanwhile, or not ours to read
    return tuple(sorted(fds))


def is_vm_process(pid: int, proc: str = "/proc") -> bool:
    """True if process *pid* holds a KVM VM file descriptor."""
    return bool(_vm_fds(pid, proc))


def _split_name_option(value: str) -> Optional[str]:
    """Return the guest name in the value of QEMU's ``-name`` option.

    QEMU parses the value as a comma-separated option list whose first item
    may be the bare name (implied ``guest=``); ``,,`` stands for one comma.
    """
    items = []
    current = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == ",":
            if value[i + 1 : i + 2] == ",":
                current.append(",")
                i += 2
                continue
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    items.append("".join(current))
    name = None
    for index, item in enumerate(items):
        key, sep, val = item.partition("=")
        if sep and key == "guest":
            name = val
        elif not sep and index == 0:
            name = item
    return name


def guest_name(argv: List[str]) -> Optional[str]:
    """Return the guest name given on a QEMU command line, or None.

    Accepts ``-name NAME``, ``--name NAME``, ``-name=NAME``, ``-name
    guest=NAME,...``; the last occurrence wins, as in QEMU.
    """
    name = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        value = None
        if arg in ("-name", "--name"):
            if i + 1 < len(argv):
                value = argv[i + 1]
                i += 1
        elif arg.startswith("-name=") or arg.startswith("--name="):
            value = arg.split("=", 1)[1]
        if value is not None:
            parsed = _split_name_option(value)
            if parsed is not None:
                name = parsed
        i += 1
    return name


def _cmdline(pid: int, proc: str) -> List[str]:
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0")[:-1]]


def list_vms(proc: str = "/proc") -> List[VM]:
    """Return every running VM process, sorted by pid."""
    vms = []
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        pid = int(entry)
        fds = _vm_fds(pid, proc)
        if fds:
            vms.append(VM(pid, guest_name(_cmdline(pid, proc)), fds))
    vms.sort(key=lambda vm: vm.pid)
    return vms


def find_vm(pid: int, proc: str = "/proc") -> VM:
    """Return the VM of process *pid*; :class:`NoSuchVM` if it is not one,
    :class:`AccessDenied` if its descriptors cannot be listed (not root)."""
    if not os.path.isdir(f"{proc}/{pid}"):
        raise NoSuchVM(f"no process with pid {pid}")
    if not os.access(f"{proc}/{pid}/fd", os.R_OK):
        # Another user's process: its descriptors cannot be listed.
        raise AccessDenied(f"cannot inspect process {pid} (Permission denied): run kvm_stat as root")
    fds = _vm_fds(pid, proc)
    if not fds:
        raise NoSuchVM(f"process {pid} is not a KVM VM (it holds no kvm-vm file descriptor)")
    return VM(pid, guest_name(_cmdline(pid, proc)), fds)


def find_vm_by_name(name: str, proc: str = "/proc") -> VM:
    """Return the one VM whose guest name is *name*.

    Raises :class:`NoSuchVM` listing the candidates when none or several match.
    """
    vms = list_vms(proc)
    matches = [vm for vm in vms if vm.name == name]
    if len(matches) == 1:
        return matches[0]
    listing = ", ".join(f"{vm.label} (pid {vm.pid})" for vm in (matches or vms)) or "none running"
    if not matches:
        raise NoSuchVM(f"no VM named '{name}'; running VMs: {listing}",
                       [(vm.pid, vm.name) for vm in vms])
    raise NoSuchVM(f"several VMs are named '{name}': {listing}; use -p PID",
                   [(vm.pid, vm.name) for vm in matches])


def thread_ids(pid: int, proc: str = "/proc") -> List[int]:
    """Return the thread ids of process *pid* (empty if it has exited)."""
    try:
        return sorted(int(t) for t in os.listdir(f"{proc}/{pid}/task") if t.isdigit())
    except OSError:
        return []
