"""Running ``kvm_stat`` (``python -m kvmstat``) as a command, as root or as nobody.

The unprivileged runs need a Python that user ``nobody`` may execute and a
copy of the package it may read (a checkout under /root is not readable by
nobody); :func:`nobody_runner` prepares both once per session.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from typing import List, Optional, Sequence

import kvmstat

__all__ = ["PACKAGE_ROOT", "kvm_stat", "nobody_runner", "NobodyRunner", "AS_NOBODY",
           "WITHOUT_CAPABILITIES"]

#: the directory holding the kvmstat package under test
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(kvmstat.__file__)))

#: prefix running a command as user nobody, group nogroup, no supplementary groups
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
#: prefix running a command as root but without any capability
WITHOUT_CAPABILITIES = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"]


def kvm_stat(args: Sequence[str], prefix: Sequence[str] = (), python: str = sys.executable,
             pythonpath: str = PACKAGE_ROOT, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``python -m kvmstat ARGS`` (after *prefix*) and capture its output."""
    env = dict(os.environ, PYTHONPATH=pythonpath, LC_ALL="C.UTF-8")
    return subprocess.run([*prefix, python, "-m", "kvmstat", *args], capture_output=True,
                           text=True, env=env, timeout=timeout, cwd="/")


class NobodyRunner:
    """Runs kvm_stat as nobody with a Python and a package copy nobody can use."""

    def __init__(self, python: str, pythonpath: str):
        self.python = python
        self.pythonpath = pythonpath

    def run(self, args: Sequence[str], prefix: Sequence[str] = ()) -> subprocess.CompletedProcess:
        """``kvm_stat ARGS`` as nobody (*prefix* goes before the user switch)."""
        return kvm_stat(args, [*prefix, *AS_NOBODY], self.python, self.pythonpath)


def _copy_package() -> str:
    root = tempfile.mkdtemp(prefix="kvmstat-nobody-")
    atexit.register(shutil.rmtree, root, True)
    os.chmod(root, 0o755)
    shutil.copytree(os.path.join(PACKAGE_ROOT, "kvmstat"), os.path.join(root, "kvmstat"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)
    return root


@functools.lru_cache(maxsize=None)
def nobody_runner() -> Optional[NobodyRunner]:
    """A :class:`NobodyRunner`, or None when this host cannot run one
    (not root, no setpriv, no user nobody, no Python nobody may run)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return None
    pythonpath = _copy_package()
    candidates: List[str] = [sys.executable]
    for name in ("python3", "python"):
        found = shutil.which(name, path="/usr/local/bin:/usr/bin:/bin")
        if found:
            candidates.append(found)
    for python in candidates:
        try:
            probe = subprocess.run([*AS_NOBODY, python, "-c", "import kvmstat.cli"],
                                   env=dict(os.environ, PYTHONPATH=pythonpath),
                                   capture_output=True, timeout=30, cwd="/")
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return NobodyRunner(python, pythonpath)
    return None
