"""Running ``kvm_stat`` (``python -m kvmstat``) as a process, and waiting on it.

The one definition of the command for every test: :data:`KVM_STAT`;
:func:`kvm_stat` runs it to the end and captures its output (as root, or as
nobody through :func:`nobody_runner`); :func:`start_kvm_stat` starts it with
pipes; :func:`wait_for` polls a condition while it runs;
:func:`killed_on_failure` cleans up after a failed test; :func:`fd_links` and
:func:`perf_event_fds` tell what a process holds.

The unprivileged runs need a Python that user ``nobody`` may execute and a
copy of the package it may read (a checkout under /root is not readable by
nobody); :func:`nobody_runner` prepares both once per session.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, List, Optional, Sequence

import kvmstat

__all__ = ["KVM_STAT", "PACKAGE_ROOT", "kvm_stat", "start_kvm_stat", "wait_for",
           "killed_on_failure", "fd_links", "perf_event_fds", "nobody_runner", "NobodyRunner",
           "AS_NOBODY", "WITHOUT_CAPABILITIES"]

#: the command that runs this tree's kvm_stat
KVM_STAT = [sys.executable, "-m", "kvmstat"]
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


def start_kvm_stat(*args: str, prefix: Sequence[str] = (), **popen_kwargs) -> subprocess.Popen:
    """Start ``kvm_stat ARGS`` (after *prefix*) with stdout and stderr as text pipes."""
    return subprocess.Popen([*prefix, *KVM_STAT, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen_kwargs)


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 30.0,
             proc: Optional[subprocess.Popen] = None, interval: float = 0.02,
             details: Optional[Callable[[], str]] = None) -> None:
    """Poll *predicate* every *interval* s until it is true.

    Fails (AssertionError naming *what*) after *timeout* seconds, or as soon
    as *proc* has ended, with *details()* (default: what *proc* wrote on its
    stderr pipe) in the message.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            if details is not None:
                said = details()
            else:
                said = proc.stderr.read() if proc.stderr is not None else ""
            raise AssertionError(f"process {proc.pid} ended (status {proc.returncode}) "
                                 f"while waiting for {what}: {said}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def killed_on_failure(proc: subprocess.Popen):
    """Kill *proc* when the block leaves it running (a failed assertion)."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def fd_links(pid) -> List[str]:
    """Link targets of the open file descriptors of process *pid* (``"self"``
    for this one); empty once it is gone."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    links = []
    for name in names:
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{name}"))
        except OSError:
            pass  # closed meanwhile
    return links


def perf_event_fds(pid) -> int:
    """How many perf event descriptors process *pid* holds (0 if it is gone)."""
    return fd_links(pid).count("anon_inode:[perf_event]")


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
            probe = subprocess.run([*AS_NOBODY, python, "-c", "import kvmstat.frontends.cli"],
                                   env=dict(os.environ, PYTHONPATH=pythonpath),
                                   capture_output=True, timeout=30, cwd="/")
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return NobodyRunner(python, pythonpath)
    return None
