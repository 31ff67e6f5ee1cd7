"""The module paths of release 0.1, kept importable for one more release.

Release 0.2 put the modules into one folder per layer (see docs/design.md).
``import kvmstat.stats`` and the like still work: the old name is an alias of
the module at its new place (the same module object, not a copy), and
importing it warns with a DeprecationWarning naming the new path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Optional, Sequence

# old path -> new path; a moved package's submodules follow it.
MOVED = {
    "kvmstat.paths": "kvmstat.host.paths",
    "kvmstat.vms": "kvmstat.host.vms",
    "kvmstat.privileges": "kvmstat.host.privileges",
    "kvmstat.resources": "kvmstat.host.resources",
    "kvmstat.pidfd": "kvmstat.host.pidfd",
    "kvmstat.events": "kvmstat.tracefs.events",
    "kvmstat.native": "kvmstat.counting.native",
    "kvmstat.pyperf": "kvmstat.counting.pybackend",
    "kvmstat._perfcommon": "kvmstat.counting.common",
    "kvmstat.bpfengine": "kvmstat.counting.bpf",
    "kvmstat.engine": "kvmstat.sampling.engine",
    "kvmstat.stats": "kvmstat.sampling.sampler",
    "kvmstat.sources": "kvmstat.sampling.sources",
    "kvmstat.fields": "kvmstat.sampling.fields",
    "kvmstat.teardown": "kvmstat.sampling.teardown",
    "kvmstat.cli": "kvmstat.frontends.cli",
    "kvmstat.tui": "kvmstat.frontends.tui",
    "kvmstat.tui_layout": "kvmstat.frontends.tui_layout",
    "kvmstat.logger": "kvmstat.frontends.logger",
    "kvmstat.exporter": "kvmstat.frontends.exporter",
    "kvmstat.check": "kvmstat.frontends.check",
    "kvmstat.formats": "kvmstat.frontends.formats",
}


def new_name(old: str) -> Optional[str]:
    """The current module path for an old one, or None if *old* did not move."""
    for prefix, target in MOVED.items():
        if old == prefix or old.startswith(prefix + "."):
            return target + old[len(prefix):]
    return None


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old module path to the module at its new place."""

    def __init__(self) -> None:
        self._specs: dict = {}

    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target=None):
        if new_name(fullname) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec) -> ModuleType:
        target = new_name(spec.name)
        warnings.warn(f"{spec.name} is now {target}; the old path goes in the next release",
                      DeprecationWarning, stacklevel=3)
        module = importlib.import_module(target)
        # The import system will overwrite __spec__ with the alias's spec;
        # exec_module puts the module's own back.
        self._specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run (the module ran at its new place): restore its spec."""
        module.__spec__ = self._specs.pop(module.__name__, module.__spec__)


def install() -> None:
    """Make the old module paths importable (idempotent)."""
    # type(), not isinstance(): no ABC machinery while the package imports.
    if not any(type(finder) is _MovedModules for finder in sys.meta_path):
        # First: otherwise the path finder would load a second copy of a moved
        # package's submodule (kvmstat.formats.json) under the old name.
        sys.meta_path.insert(0, _MovedModules())
