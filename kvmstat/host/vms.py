"""VM processes: discovery, guest names, threads, and following them over time.

A VM process is one holding a KVM VM file descriptor: a link in
``/proc/<pid>/fd`` pointing to ``anon_inode:kvm-vm`` (docs/design.md §5.1).  Guest
names are read from the command line the way QEMU parses ``-name``.

The threads that work for a VM are the threads of its process (vCPUs, I/O
threads and, on newer kernels, the kernel's own workers such as
``kvm-nx-lpage-re`` and ``vhost-<pid>``, which live in the VM's thread
group) plus kernel threads outside it that carry the VM's process id in
their name: ``kvm-pit/<pid>`` (the in-kernel PIT timer), and on older
kernels ``vhost-<pid>`` and ``kvm-nx-lpage-recovery-<pid>``.

Everything here reads ``/proc`` (a parameter, never a global); nothing runs
``ps``.
"""

from __future__ import annotations

import os
import re
import resource
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, Iterable, List, Optional, Set, Tuple

from ..errors import AccessDenied, NoSuchVM
from .pidfd import ExitPoll, pidfd_open

__all__ = ["VM", "VMChanges", "VMWatch", "KernelThreads", "list_vms", "find_vm", "process_of",
           "find_vm_by_name", "thread_ids", "guest_name", "vm_name", "GuestNames", "is_vm_process",
           "start_time", "process_alive", "thread_exiting", "describe_vm", "fd_links",
           "thread_name", "thread_exists"]

_KVM_VM_LINK = "anon_inode:kvm-vm"

#: the process every kernel thread is created by
_KTHREADD = 2
#: task flag of a thread in its exit path (<linux/sched.h>)
_PF_EXITING = 0x4

#: kernel threads working for one VM, by name: the number is the id of the
#: VM process (kvm-pit uses the process id; vhost and nx-lpage recovery used
#: the id of the thread that created them, mapped to its process below)
_HELPER_NAME = re.compile(r"(?:kvm-pit/|vhost-|kvm-nx-lpage-recovery-)([0-9]+)\Z")
#: a prefix of those names at most 15 characters long, as comm may show them
_HELPER_COMM = ("kvm-pit/", "vhost-", "kvm-nx-lpage-re")
_COMM_LEN = 15  # TASK_COMM_LEN - 1: longer kernel thread names are cut in comm
#: how old the mtime of ``<debugfs>/kvm`` must be to be trusted as unchanged
#: (file times are coarse: a later change may keep the same value a moment)
_SETTLED_NS = 1_000_000_000


@dataclass(frozen=True)
class VM:
    """A running VM process, as found when it was listed."""

    pid: int
    name: Optional[str]
    #: file descriptors of the process that are KVM VMs (usually one)
    vm_fds: Tuple[int, ...] = field(default=())
    #: the process's threads when it was listed
    tids: Tuple[int, ...] = field(default=())
    #: kernel threads outside the process that work for it (``kvm-pit/<pid>``)
    helper_tids: Tuple[int, ...] = field(default=())

    @property
    def label(self) -> str:
        """The guest name, or the pid as text when the VM has none."""
        return self.name if self.name else str(self.pid)

    @property
    def debugfs_dirs(self) -> Tuple[str, ...]:
        """Names of its directories under ``<debugfs>/kvm``: ``<pid>-<fd>``."""
        return tuple(f"{self.pid}-{fd}" for fd in self.vm_fds)


def describe_vm(vm: VM) -> str:
    """``'name' (pid N)``, or ``pid N (no name)``: how messages name a VM."""
    return f"'{vm.name}' (pid {vm.pid})" if vm.name else f"pid {vm.pid} (no name)"


# ---------------------------------------------------------------------------
# Guest names, as QEMU parses -name.

def _opt_value(text: str, start: int) -> Tuple[str, int]:
    """QEMU's get_opt_value: the value starting at *start* up to a single
    comma (``,,`` stands for one comma); returns it and the index of the
    ending comma or of the end of *text*."""
    parts = []
    pos = start
    while True:
        comma = text.find(",", pos)
        if comma < 0:
            parts.append(text[pos:])
            return "".join(parts), len(text)
        if text.startswith(",,", comma):
            parts.append(text[pos:comma + 1])
            pos = comma + 2
            continue
        parts.append(text[pos:comma])
        return "".join(parts), comma


def name_options(value: str) -> List[Tuple[str, str]]:
    """Parse the argument of ``-name`` into ``(option, value)`` pairs, in order.

    QEMU's rules (util/qemu-option.c): items are separated by single commas
    and ``,,`` is a literal comma inside a value; an item is ``key=value``
    when a ``=`` comes before the next comma; the first item without one is
    the implied option ``guest`` (its whole text, commas escaped, is the
    value); any later item without ``=`` is a flag, ``NAME`` meaning
    ``NAME=on`` and ``noNAME`` meaning ``NAME=off``.  ``id=`` items are
    skipped.  Keys are not validated: QEMU refuses to start with an unknown
    key, so a running QEMU has none, and other programs are read leniently.
    """
    pairs = []
    first = True
    pos = 0
    while pos < len(value):
        stop = len(value)
        for sep in ("=", ","):
            found = value.find(sep, pos)
            if 0 <= found < stop:
                stop = found
        if stop < len(value) and value[stop] == "=":
            key = value[pos:stop]
            val, pos = _opt_value(value, stop + 1)
        elif first:
            key = "guest"
            val, pos = _opt_value(value, pos)
        else:
            key, pos = value[pos:stop], stop
            if key.startswith("no"):
                key, val = key[2:], "off"
            else:
                val = "on"
        first = False
        if pos < len(value):
            pos += 1  # the comma ending this item
        if key != "id":
            pairs.append((key, val))
    return pairs


def guest_name(argv: List[str]) -> Optional[str]:
    """Return the guest name given on a QEMU command line, or None.

    *argv* is the whole command line, program first.  ``-name VALUE`` and
    ``--name VALUE`` (QEMU treats ``--opt`` as ``-opt``; ``-name=VALUE`` is
    not an option to QEMU) are parsed with :func:`name_options`; options of
    every ``-name`` merge, so the last ``guest`` given wins (``-name foo
    -name debug-threads=on`` keeps ``foo``).  ``process=`` sets the process
    name, not the guest name.  One limit: QEMU knows which of its other
    options take an argument, this function does not, so an argument that
    is literally ``-name`` (e.g. ``-append -name``) is taken for the option.
    """
    name = None
    i = 1
    while i < len(argv):
        if argv[i] in ("-name", "--name") and i + 1 < len(argv):
            for key, val in name_options(argv[i + 1]):
                if key == "guest":
                    name = val
            i += 2
        else:
            i += 1
    return name


def _read_cmdline(pid: int, proc: str) -> List[str]:
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    # Invalid bytes are kept (surrogateescape): outputs show them as \xNN.
    return [part.decode("utf-8", "surrogateescape") for part in raw.split(b"\0")[:-1]]


def vm_name(pid: int, proc: str = "/proc") -> Optional[str]:
    """The guest name of process *pid* (None if it has none or is gone)."""
    return guest_name(_read_cmdline(pid, proc))


class GuestNames:
    """A callable mapping a VM pid to its guest name, for :class:`kvmstat.Sampler`.

    Names are remembered with the process's start time: a VM that has just
    exited keeps its name (its last counts are still reported), and a pid
    that now names another process is read again.  One small ``/proc`` read
    per call.
    """

    #: remembered names beyond which those of exited processes are dropped
    LIMIT = 4096

    def __init__(self, proc: str = "/proc"):
        self._proc = proc
        self._known: Dict[int, Tuple[int, Optional[str]]] = {}  # pid -> (start, name)

    def __call__(self, pid: int) -> Optional[str]:
        started = start_time(pid, self._proc)
        known = self._known.get(pid)
        if known is not None and started in (None, known[0]):
            return known[1]
        if started is None:
            return None
        if len(self._known) >= self.LIMIT:
            self._known = {p: v for p, v in self._known.items()
                           if start_time(p, self._proc) == v[0]}
        name = vm_name(pid, self._proc)
        self._known[pid] = (started, name)
        return name


# ---------------------------------------------------------------------------
# Processes and threads.

def fd_links(pid: int, proc: str = "/proc") -> Dict[int, str]:
    """What the open file descriptors of process *pid* refer to: fd -> link
    (``anon_inode:kvm-vm``, a path...).  Empty when the process is gone or its
    descriptors cannot be listed; a descriptor closed meanwhile is left out."""
    fd_dir = f"{proc}/{pid}/fd"
    try:
        entries = os.listdir(fd_dir)
    except OSError:
        return {}
    links = {}
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            links[int(entry)] = os.readlink(f"{fd_dir}/{entry}")
        except OSError:
            continue  # closed meanwhile, or not ours to read
    return links


def _vm_fds(pid: int, proc: str) -> Tuple[int, ...]:
    return tuple(sorted(fd for fd, link in fd_links(pid, proc).items() if link == _KVM_VM_LINK))


def is_vm_process(pid: int, proc: str = "/proc") -> bool:
    """True if process *pid* holds a KVM VM file descriptor."""
    return bool(_vm_fds(pid, proc))


def thread_ids(pid: int, proc: str = "/proc") -> List[int]:
    """Return the thread ids of process *pid* (empty if it has exited)."""
    try:
        return sorted(int(t) for t in os.listdir(f"{proc}/{pid}/task") if t.isdigit())
    except OSError:
        return []


def _stat_fields(pid: int, proc: str) -> Optional[List[str]]:
    """Fields of ``/proc/<pid>/stat`` from the state on (field 3), or None.

    *pid* may be any thread id: ``/proc/<tid>`` exists for every thread
    (unlisted), and its state and flags are that thread's own.
    """
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ")".
    return raw[raw.rfind(b")") + 2:].decode("ascii", "replace").split()


def start_time(pid: int, proc: str = "/proc") -> Optional[int]:
    """When process *pid* started (clock ticks since boot), None if it is gone.

    Together with the pid it names one process: a reused pid has another.
    """
    fields = _stat_fields(pid, proc)
    try:
        return int(fields[19]) if fields else None  # field 22, starttime
    except (IndexError, ValueError):
        return None


def process_alive(pid: int, started: Optional[int], proc: str = "/proc") -> bool:
    """True while the process *pid* that started at *started* runs.

    False once it has exited, also while it is a zombie nobody has reaped
    yet, and when the pid now names another process.  (A thread-group leader
    that ended while other threads run is a zombie too: that process lives.)
    """
    fields = _stat_fields(pid, proc)
    if not fields:
        return False
    try:
        if started is not None and int(fields[19]) != started:
            return False
    except (IndexError, ValueError):
        return False
    if fields[0] in ("Z", "X"):
        return len(thread_ids(pid, proc)) > 1
    return True


def thread_exiting(tid: int, proc: str = "/proc") -> bool:
    """True if thread *tid* (of a VM process, or a kernel helper thread) has
    ended or is on its way out.

    A thread in its exit path keeps its ``/proc`` entry, and a running
    state, for a moment after the kernel has torn down its perf context, so
    a perf event opened on it then fails (even with EINVAL): the thread's
    ``PF_EXITING`` flag (field 9 of stat(5)) tells that case apart.
    """
    fields = _stat_fields(tid, proc)
    if not fields:
        return True
    try:
        return fields[0] in ("Z", "X") or bool(int(fields[6]) & _PF_EXITING)
    except (IndexError, ValueError):
        return False


def thread_exists(pid: int, tid: int, proc: str = "/proc") -> bool:
    """True if thread *tid* of process *pid* exists (it may be a zombie)."""
    return os.path.exists(os.path.join(proc, str(pid), "task", str(tid)))


def thread_name(pid: int, tid: int, proc: str = "/proc") -> Optional[str]:
    """The name of thread *tid* of process *pid* (its ``comm``, which the
    process sets: text from outside), None if the thread does not exist."""
    try:
        with open(os.path.join(proc, str(pid), "task", str(tid), "comm"), "rb") as f:
            return f.read().decode("utf-8", "replace").rstrip("\n")
    except OSError:
        return None


# ---------------------------------------------------------------------------
# Kernel threads working for VMs.

class KernelThreads:
    """Finds kernel threads working for VM processes, by their names.

    :meth:`scan` maps each VM process id named by a helper thread to the ids
    of those threads.  Kernel threads are the children of kthreadd (pid 2):
    ``/proc/2/task/2/children`` lists them in one read; without it (a kernel
    without CONFIG_PROC_CHILDREN) ``/proc`` is listed.  Each thread's name
    is read once and remembered while it exists, and when kthreadd's list
    of children is the same as last time the previous answer is reused, so
    a scan costs one read when no kernel thread came or went.
    """

    def __init__(self, proc: str = "/proc"):
        self._proc = proc
        self._owner: Dict[int, Optional[int]] = {}    # kernel thread -> VM pid or None
        self._is_kthread: Dict[int, bool] = {}        # fallback: pid -> ppid is kthreadd
        self._children: Optional[bytes] = None        # kthreadd's children at the last scan
        self._found: Dict[int, Set[int]] = {}         # what that scan found

    def _read_children(self) -> Optional[bytes]:
        """kthreadd's list of children, or None where the kernel has no such file."""
        try:
            # Unbuffered: one read of a small file, on every refresh.
            with open(f"{self._proc}/{_KTHREADD}/task/{_KTHREADD}/children", "rb",
                      buffering=0) as f:
                return f.read()
        except OSError:
            return None

    def _kernel_thread_ids(self, children: Optional[bytes]) -> Set[int]:
        if children is not None:
            try:
                return {int(t) for t in children.split()}
            except ValueError:
                pass
        pids = {int(p) for p in os.listdir(self._proc) if p.isdigit()}
        known = self._is_kthread
        for pid in list(known):
            if pid not in pids:
                del known[pid]
        for pid in pids - known.keys():
            fields = _stat_fields(pid, self._proc)
            known[pid] = bool(fields) and len(fields) > 1 and fields[1] == str(_KTHREADD)
        return {pid for pid, kthread in known.items() if kthread}

    def _read_name(self, tid: int) -> Optional[str]:
        try:
            with open(f"{self._proc}/{tid}/comm", "rb") as f:
                name = f.read().decode("utf-8", "replace").rstrip("\n")
        except OSError:
            return None
        if not name.startswith(_HELPER_COMM):
            return None
        if len(name) >= _COMM_LEN:
            # comm may be cut: the Name line of status has a kernel thread's
            # full name (Linux 5.17 and later).
            try:
                with open(f"{self._proc}/{tid}/status", "rb") as f:
                    first = f.readline().decode("utf-8", "replace")
            except OSError:
                return name
            if first.startswith("Name:"):
                name = first[5:].strip()
        return name

    def _owner_of(self, tid: int) -> Optional[int]:
        name = self._read_name(tid)
        match = _HELPER_NAME.match(name) if name else None
        if not match:
            return None
        number = int(match.group(1))
        # The number may be a thread id of the VM process: use its process id.
        return _tgid(number, self._proc) or number

    def scan(self) -> Dict[int, Set[int]]:
        """VM process id -> ids of the kernel threads working for it now."""
        found, _ = self.scan_changes()
        return {pid: set(tids) for pid, tids in found.items()}

    def scan_changes(self) -> Tuple[Dict[int, Set[int]], bool]:
        """Like :meth:`scan` (the answer is shared: do not change it), and
        whether it may differ from the previous one (False when kthreadd's
        children are the same as last time)."""
        children = self._read_children()
        if children is None or children != self._children:
            self._found = self._scan(self._kernel_thread_ids(children))
            self._children = children
            return self._found, True
        return self._found, False

    def _scan(self, current: Set[int]) -> Dict[int, Set[int]]:
        owner = self._owner
        for tid in list(owner):
            if tid not in current:
                del owner[tid]
        for tid in current - owner.keys():
            owner[tid] = self._owner_of(tid)
        found: Dict[int, Set[int]] = {}
        for tid, pid in owner.items():
            if pid is not None:
                found.setdefault(pid, set()).add(tid)
        return found


def _tgid(tid: int, proc: str) -> Optional[int]:
    """The process id of thread *tid* (``/proc/<tid>`` works for any thread)."""
    try:
        with open(f"{proc}/{tid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


# ---------------------------------------------------------------------------
# Listing and finding VMs.

def _pids(proc: str) -> List[int]:
    return [int(entry) for entry in os.listdir(proc) if entry.isdigit()]


def _make_vm(pid: int, fds: Tuple[int, ...], proc: str, helpers: Iterable[int] = ()) -> VM:
    return VM(pid, vm_name(pid, proc), fds, tuple(thread_ids(pid, proc)),
              tuple(sorted(helpers)))


def list_vms(proc: str = "/proc") -> List[VM]:
    """Return every running VM process, sorted by pid, with its threads."""
    helpers = KernelThreads(proc).scan()
    vms = []
    for pid in _pids(proc):
        fds = _vm_fds(pid, proc)
        if fds:
            vms.append(_make_vm(pid, fds, proc, helpers.get(pid, ())))
    vms.sort(key=lambda vm: vm.pid)
    return vms


def process_of(tid: int, proc: str = "/proc") -> Optional[int]:
    """The process id of thread *tid* (*tid* itself for a process's main
    thread); None if there is no such thread."""
    return _tgid(tid, proc)


def _uninspectable(proc: str) -> int:
    """How many processes' file descriptors this process may not list."""
    hidden = 0
    for pid in _pids(proc):
        if os.path.isdir(f"{proc}/{pid}/fd") and not os.access(f"{proc}/{pid}/fd", os.R_OK):
            hidden += 1
    return hidden


def _checked_vm_fds(pid: int, proc: str) -> Tuple[int, ...]:
    if not os.path.isdir(f"{proc}/{pid}"):
        raise NoSuchVM(f"no process with pid {pid}")
    owner = _tgid(pid, proc)
    if owner is not None and owner != pid:
        # /proc/<tid> works for any thread, and shows its process's files.
        raise NoSuchVM(f"{pid} is a thread of process {owner}, not a process: "
                       f"use the process id {owner}")
    if not os.access(f"{proc}/{pid}/fd", os.R_OK):
        # Another user's process: its descriptors cannot be listed.
        raise AccessDenied(f"cannot inspect process {pid} (Permission denied): run kvm_stat as root")
    fds = _vm_fds(pid, proc)
    if not fds:
        raise NoSuchVM(f"process {pid} is not a KVM VM (it holds no kvm-vm file descriptor)")
    return fds


def find_vm(pid: int, proc: str = "/proc") -> VM:
    """Return the VM of process *pid*; :class:`NoSuchVM` if it is not one
    (or is a thread, not a process: the message names its process),
    :class:`AccessDenied` if its descriptors cannot be listed (not root)."""
    fds = _checked_vm_fds(pid, proc)
    return _make_vm(pid, fds, proc, KernelThreads(proc).scan().get(pid, ()))


def find_vm_by_name(name: str, proc: str = "/proc") -> VM:
    """Return the one VM whose guest name is *name*.

    Raises :class:`NoSuchVM` listing the candidates with their pids when
    none or several match, and :class:`AccessDenied` when none matches and
    some processes could not be inspected (another user's VM is invisible
    to an unprivileged caller).
    """
    vms = list_vms(proc)
    matches = [vm for vm in vms if vm.name == name]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        hidden = _uninspectable(proc)
        if hidden:
            # Their descriptors cannot be listed: a VM among them is invisible.
            raise AccessDenied(f"no VM named '{name}' among the processes that can be "
                               f"inspected; {hidden} other processes cannot be (Permission "
                               "denied): run kvm_stat as root")
        running = ", ".join(describe_vm(vm) for vm in vms) or "none"
        raise NoSuchVM(f"no VM named '{name}'; running VMs: {running}",
                       [(vm.pid, vm.name) for vm in vms])
    listing = ", ".join(describe_vm(vm) for vm in matches)
    raise NoSuchVM(f"{len(matches)} VMs are named '{name}': {listing}; choose one by pid",
                   [(vm.pid, vm.name) for vm in matches])


# ---------------------------------------------------------------------------
# Following VMs.

@dataclass
class VMChanges:
    """What :meth:`VMWatch.update` found since the previous call."""

    #: VMs that appeared, with their threads and helper threads
    started: List[VM] = field(default_factory=list)
    #: process ids of watched VMs that exited
    ended: List[int] = field(default_factory=list)
    #: VM pid -> kernel helper threads that appeared / ended (watched VMs only)
    helpers_started: Dict[int, List[int]] = field(default_factory=dict)
    helpers_ended: Dict[int, List[int]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.started or self.ended or self.helpers_started or self.helpers_ended)


class VMWatch:
    """Follows one VM process (*pid*) or every VM of the host over time.

    :attr:`vms` holds the VMs found when the watch was created;
    :meth:`update` reports what changed since the previous call.  Threads
    that VM processes start later are not reported: they belong to the
    process (the tracepoint provider counts them through perf inheritance).

    Cost of :meth:`update`: one ``epoll_wait`` over a pidfd per watched VM (has
    it exited? a pidfd becomes readable when its process has exited, zombie
    or not, and a reused pid cannot fool it) and one read of kthreadd's
    children (new helper threads), so nothing per VM that goes on running.
    Pidfds are used with the real ``/proc`` only (*pidfds* None: when *proc*
    is ``/proc``; a pid of another ``/proc`` tree names no process of ours);
    without them, or for a VM whose pidfd cannot be opened (kernel before
    5.3, out of descriptors), its ``/proc/<pid>/stat`` is read per update.

    Watching every VM, new VMs are looked for in ``<debugfs>/kvm`` (KVM
    creates a ``<pid>-<fd>`` directory per VM), listed again only when its
    link count or mtime changed (one ``stat`` otherwise): only the processes named by new entries are
    inspected, so VMs coming and going cost in proportion to their number,
    not to the host's processes.  ``/proc/*/fd`` is scanned in full at
    least every *rescan_interval* seconds, in case a VM has no debugfs
    directory; without debugfs every update scans it, which costs in
    proportion to the processes and open files of the host.
    """

    def __init__(self, proc: str = "/proc", *, pid: Optional[int] = None,
                 debugfs: Optional[str] = None, rescan_interval: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, pidfds: Optional[bool] = None):
        self._proc = proc
        self._use_pidfds = (os.path.realpath(proc) == "/proc") if pidfds is None else pidfds
        self._pidfds: Dict[int, int] = {}                 # VM pid -> its pidfd
        self._pid_of: Dict[int, int] = {}                 # pidfd -> VM pid
        self._exit_poll = ExitPoll()
        self._pid = pid
        self._kvm_dir = os.path.join(debugfs, "kvm") if debugfs else None
        self._rescan_interval = rescan_interval
        self._clock = clock
        self._kthreads = KernelThreads(proc)
        self._started: Dict[int, Optional[int]] = {}   # VM pid -> start time
        self._helpers: Dict[int, Set[int]] = {}         # VM pid -> helper tids
        self._debugfs_names: Optional[FrozenSet[str]] = None
        self._debugfs_signature: Optional[Tuple[int, int]] = None  # its (links, mtime)
        self._candidates: Set[int] = set()   # pids of new debugfs entries
        self._look_again: Set[int] = set()   # ... whose kvm-vm fd was not seen yet
        self._next_scan = 0.0
        if pid is not None:
            found = [_make_vm(pid, _checked_vm_fds(pid, proc), proc)]
        else:
            self._debugfs_changed()  # remember the listing the scan below covers
            found = self._scan()
        helpers = self._kthreads.scan()
        self.vms: Dict[int, VM] = {}
        for vm in found:
            self._add(vm, helpers)

    @property
    def pids(self) -> List[int]:
        """Process ids of the VMs watched now."""
        return sorted(self._started)

    def _add(self, vm: VM, helpers: Dict[int, Set[int]]) -> VM:
        mine = helpers.get(vm.pid, set())
        vm = VM(vm.pid, vm.name, vm.vm_fds, vm.tids, tuple(sorted(mine)))
        self.vms[vm.pid] = vm
        self._helpers[vm.pid] = set(mine)
        if vm.pid not in self._started:
            self._open_pidfd(vm.pid)
            # Read after the pidfd is open: if the pid named another process
            # by then, that pidfd's process has exited (reported next update)
            # or the start time differs (process_alive says so).
            self._started[vm.pid] = start_time(vm.pid, self._proc)
        return vm

    def _open_pidfd(self, pid: int) -> None:
        if not self._use_pidfds:
            return
        try:
            fd = pidfd_open(pid)
        except OSError:
            return  # gone already, or no pidfds here: /proc/<pid>/stat tells
        if fd >= resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 2:
            # Leave the upper half of the descriptor limit to the counting
            # engines (perf events): this VM's liveness is read from /proc.
            os.close(fd)
            return
        self._pidfds[pid], self._pid_of[fd] = fd, pid
        self._exit_poll.add(fd)

    def _forget(self, pid: int) -> None:
        del self._started[pid]
        self.vms.pop(pid, None)
        self._helpers.pop(pid, None)
        fd = self._pidfds.pop(pid, None)
        if fd is not None:
            self._close_pidfd(fd)

    def _close_pidfd(self, fd: int) -> None:
        del self._pid_of[fd]
        self._exit_poll.remove(fd)
        os.close(fd)

    def _ended(self) -> List[int]:
        """The watched VMs that have exited: one poll over the pidfds, and
        a ``/proc`` read for the VMs without one."""
        ended = {self._pid_of[fd] for fd in self._exit_poll.exited()}
        if len(self._pidfds) < len(self._started):
            for pid, started in self._started.items():
                if pid not in self._pidfds and not process_alive(pid, started, self._proc):
                    ended.add(pid)
        return sorted(ended)

    @property
    def fds(self) -> int:
        """Number of file descriptors held (a pidfd per VM followed, and an
        epoll instance polling them)."""
        return len(self._pidfds) + self._exit_poll.fds

    def close(self) -> None:
        """Close the pidfds held; safe to call twice (updates then read /proc)."""
        pidfds, self._pidfds = self._pidfds, {}
        for fd in pidfds.values():
            self._close_pidfd(fd)
        self._exit_poll.close()

    def _debugfs_changed(self) -> bool:
        """True if ``<debugfs>/kvm`` cannot be listed (look everywhere);
        otherwise remember the process ids of its new ``<pid>-<fd>``
        entries in :attr:`_candidates` and return False."""
        if self._kvm_dir is None:
            return True
        try:
            state = os.stat(self._kvm_dir)
        except OSError:
            return True
        # KVM's entries are directories: one created raises the listing's
        # link count, one removed sets its mtime.  Both as last time (and the
        # mtime not so recent that a removal in the same clock tick could
        # hide): no entry came or went, the listing is not read again.
        signature = (state.st_nlink, state.st_mtime_ns)
        if signature == self._debugfs_signature and self._debugfs_names is not None:
            return False
        settled = time.time_ns() - state.st_mtime_ns > _SETTLED_NS
        try:
            names = frozenset(os.listdir(self._kvm_dir))
        except OSError:
            return True
        self._debugfs_signature = signature if settled else None
        for name in names - (self._debugfs_names or frozenset()):
            pid, _, fd = name.partition("-")
            if pid.isdigit() and fd.isdigit():
                self._candidates.add(int(pid))
        self._debugfs_names = names
        return False

    def _inspect(self, pids: Iterable[int]) -> List[VM]:
        found = []
        for pid in pids:
            if pid not in self._started:
                fds = _vm_fds(pid, self._proc)
                if fds:
                    found.append(_make_vm(pid, fds, self._proc))
        return sorted(found, key=lambda vm: vm.pid)

    def _scan(self) -> List[VM]:
        """VM processes not watched yet, found through /proc/*/fd."""
        self._next_scan = self._clock() + self._rescan_interval
        self._candidates.clear()
        self._look_again.clear()
        return self._inspect(_pids(self._proc))

    def _discover(self) -> List[VM]:
        if self._debugfs_changed() or self._clock() >= self._next_scan:
            return self._scan()
        # KVM creates the debugfs directory a moment before the VM's file
        # descriptor appears in /proc: a new entry's process that shows no
        # kvm-vm descriptor yet is looked at once more at the next update
        # (after that, the periodic full scan finds it).
        fresh, self._candidates = self._candidates, set()
        found = self._inspect(fresh | self._look_again)
        seen = {vm.pid for vm in found}
        self._look_again = {pid for pid in fresh - seen if pid not in self._started}
        return found

    def update(self) -> VMChanges:
        """Find VMs that ended or appeared, and helper threads that came or went."""
        changes = VMChanges()
        for pid in self._ended():
            changes.ended.append(pid)
            self._forget(pid)
        found = self._discover() if self._pid is None else []
        helpers, helpers_changed = self._kthreads.scan_changes()
        for vm in found:
            changes.started.append(self._add(vm, helpers))
        if not helpers_changed:
            return changes  # no kernel thread came or went: the helpers are as before
        new_pids = {vm.pid for vm in changes.started}
        for pid, mine in self._helpers.items():
            if pid in new_pids:
                continue
            now = helpers.get(pid, set())
            if now - mine:
                changes.helpers_started[pid] = sorted(now - mine)
            if mine - now:
                changes.helpers_ended[pid] = sorted(mine - now)
            self._helpers[pid] = set(now)
        return changes
