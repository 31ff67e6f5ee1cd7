"""Fake ``<debugfs>/kvm`` trees and a fake kernel lockdown, for debugfs tests."""

from __future__ import annotations

import errno
import os

from kvmstat.providers import debugfs as debugfs_mod

HOST = {
    "exits": "100\n",
    "halt_wait_ns": "5000\n",
    "pages_4k": "10\n",
    "max_mmu_rmap_size": "4\n",
    "halt_poll_fail_hist": "1 2 3\n",
}


def write_stats(directory, stats) -> None:
    """Write *stats* ({name: text, or {subdir: {...}}}) into *directory*."""
    os.makedirs(directory, exist_ok=True)
    for name, content in stats.items():
        path = os.path.join(directory, name)
        if isinstance(content, dict):
            write_stats(path, content)
        else:
            with open(path, "w") as f:
                f.write(content)


def make_debugfs(root, host=None, vms=None) -> str:
    """A debugfs root with ``kvm/`` host files and ``kvm/<pid>-<fd>/`` VM dirs."""
    kvm = os.path.join(str(root), "kvm")
    write_stats(kvm, HOST if host is None else host)
    for name, stats in (vms or {}).items():
        write_stats(os.path.join(kvm, name), stats)
    return str(root)


def set_value(debugfs, name, text, vm=None) -> None:
    """Change one statistics file (host-wide, or of VM directory *vm*)."""
    parts = [debugfs, "kvm"] + ([vm] if vm else []) + [name]
    with open(os.path.join(*parts), "w") as f:
        f.write(text)


def lock_down(monkeypatch, names) -> None:
    """Make reading the files called *names* fail with EPERM, as under lockdown."""
    real = debugfs_mod._read_file
    denied = set(names)

    def read(path):
        if os.path.basename(path) in denied:
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), path)
        return real(path)

    monkeypatch.setattr(debugfs_mod, "_read_file", read)
