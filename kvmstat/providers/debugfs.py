"""The debugfs provider: KVM's statistics files under ``<debugfs>/kvm/``.

``<debugfs>/kvm/<stat>`` holds the host-wide value of each statistic (the
kernel sums it over every VM) and ``<debugfs>/kvm/<pid>-<fd>/<stat>`` the
value of one VM, created by process ``pid`` as file descriptor ``fd``.  The
VM directories also hold ``vcpuN/`` subdirectories; they are not VMs.

Statistic kinds (decided by :func:`stat_kind`, explained in docs/design.md §6.10):

``counter``
    events counted since the VM was created (``exits``, ``io_exits``...).
    Shown as increments since kvmstat started (``include_past``: since the VM
    was created).  They never go backwards: when a VM exits its counts leave
    the host-wide file, and when someone clears a file (writes 0) it starts
    again from zero; kvmstat keeps what it had counted and adds only growth.
``time``
    nanoseconds spent (``*_ns``, e.g. ``halt_wait_ns``): handled like counters.
``instant``
    a current level (``pages_4k``, ``blocking``, ``guest_mode``...): shown
    as the current value; its delta is the change since the previous sample.
``peak``
    a high-water mark (``max_*``): shown as the current value like an
    instant; several VMs of one process give their maximum.
``histogram``
    ``*_hist``: buckets, not one count; never a field, read by
    :meth:`DebugfsProvider.snapshot` with ``histograms=True``.
``table``
    text reports such as ``mmu_rmaps_stat``: ignored.

Files that cannot be read are left out, never shown as 0.  Under kernel
lockdown, reading a debugfs file that can also be written fails with EPERM:
on such hosts only the read-only files (the instant values) are readable.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Iterable, List, Optional, Sequence, Set, Tuple

from ..errors import NotAvailable, NoSuchVM, error_from_errno
from .base import SINCE_CREATION, HistogramValues, Histograms, Provider, Reading, Totals

__all__ = [
    "COUNTER", "TIME", "INSTANT", "PEAK", "HISTOGRAM", "TABLE", "stat_kind",
    "parse_value", "parse_histogram", "vm_directory_pid", "list_vm_directories",
    "DebugfsProbe", "probe_debugfs", "DebugfsProvider",
]

COUNTER = "counter"
TIME = "time"
INSTANT = "instant"
PEAK = "peak"
HISTOGRAM = "histogram"
TABLE = "table"

#: kinds whose values accumulate (shown as increments)
CUMULATIVE_KINDS = frozenset({COUNTER, TIME})
#: kinds shown as fields
FIELD_KINDS = frozenset({COUNTER, TIME, INSTANT, PEAK})

# Statistics that are current levels, not event counts (KVM declares them as
# "instant" in its stats descriptors; older kernels used the lpages names).
KNOWN_INSTANT = frozenset({
    "blocking", "guest_mode", "mmu_unsync", "nx_lpage_splits",
    "pages_4k", "pages_2m", "pages_1g", "pages_512g",
    "lpages", "largepages", "nx_largepages_splitted",
})
# Files that hold a text report instead of a number.
KNOWN_TABLES = frozenset({"mmu_rmaps_stat"})

# A KVM statistic is a u64 (a few are s64); anything outside is not one.
_MIN_VALUE = -(2 ** 63)
_MAX_VALUE = 2 ** 64 - 1
# Counter files hold one short line; more than this is not a counter.
_READ_SIZE = 4096
_NUMBER_RE = re.compile(rb"\s*(-?[0-9]{1,20})\s*")
_VM_DIR_RE = re.compile(r"([0-9]+)-([0-9]+)")


def stat_kind(name: str, read_only: bool = False) -> str:
    """Return the kind of the debugfs statistic *name*.

    Names decide first (``*_hist``, ``max_*``, ``*_ns``, the known instant
    and table lists).  An unknown name is an instant when its file is
    read-only (*read_only*): KVM makes every statistic clearable by writing
    0, except instant values, which it creates without write permission.
    Anything else is a counter.
    """
    if name.endswith("_hist"):
        return HISTOGRAM
    if name in KNOWN_TABLES:
        return TABLE
    if name.startswith("max_"):
        return PEAK
    if name.endswith("_ns"):
        return TIME
    if name in KNOWN_INSTANT or read_only:
        return INSTANT
    return COUNTER


def parse_value(raw: bytes) -> Optional[int]:
    """The integer in the contents of a statistics file, or None.

    Exactly one decimal integer, optionally surrounded by white space, in the
    64-bit range; empty files, text, several numbers or out-of-range values
    give None.
    """
    match = _NUMBER_RE.fullmatch(raw)
    if match is None:
        return None
    value = int(match.group(1))
    return value if _MIN_VALUE <= value <= _MAX_VALUE else None


def parse_histogram(raw: bytes) -> Optional[Tuple[int, ...]]:
    """The bucket values in the contents of a histogram file, or None.

    One or more 64-bit decimal integers separated by white space.  (Current
    kernels show only the first bucket through debugfs; the binary stats
    give whole histograms.)
    """
    values = []
    for word in raw.split():
        value = parse_value(word)
        if value is None:
            return None
        values.append(value)
    return tuple(values) if values else None


def vm_directory_pid(entry: str) -> Optional[int]:
    """The pid of a VM directory name ``<pid>-<fd>``, or None for anything else."""
    match = _VM_DIR_RE.fullmatch(entry)
    return int(match.group(1)) if match else None


def list_vm_directories(kvm_dir: str, pid: Optional[int] = None) -> Dict[str, int]:
    """VM directories of *kvm_dir* (``<debugfs>/kvm``): name -> pid.

    With *pid*, only the directories of that process, matched exactly
    (pid 8 never selects ``128-11`` nor ``8123-9``).  An unreadable or
    missing directory gives an empty result.
    """
    try:
        entries = os.listdir(kvm_dir)
    except OSError:
        return {}
    found = {}
    for entry in entries:
        owner = vm_directory_pid(entry)
        if owner is not None and (pid is None or owner == pid):
            found[entry] = owner
    return found


def _read_file(path: str) -> bytes:
    """The contents of one statistics file (at most _READ_SIZE + 1 bytes)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, _READ_SIZE + 1)
    finally:
        os.close(fd)


def _read_number(path: str) -> Optional[int]:
    """The value of a statistics file; None if it cannot be read or parsed."""
    try:
        raw = _read_file(path)
    except OSError:
        return None
    return parse_value(raw) if len(raw) <= _READ_SIZE else None


# --------------------------------------------------------------------------
# What can be read on this host.

@dataclass
class DebugfsProbe:
    """What ``<debugfs>/kvm/`` offers on this host (see :func:`probe_debugfs`).

    ``kinds`` maps every readable statistic that is shown as a field to its
    kind; ``histograms`` lists the readable histogram files; ``denied`` the
    files that failed with EPERM (kernel lockdown); ``unreadable`` the others
    that could not be used, with the reason.
    """

    kvm_dir: str
    kinds: Dict[str, str] = field(default_factory=dict)
    histograms: List[str] = field(default_factory=list)
    denied: List[str] = field(default_factory=list)
    unreadable: Dict[str, str] = field(default_factory=dict)
    lockdown: Optional[str] = None
    files: int = 0

    @property
    def fields(self) -> List[str]:
        """The readable statistics shown as fields, sorted."""
        return sorted(self.kinds)

    @property
    def available(self) -> bool:
        """True if at least one field can be read."""
        return bool(self.kinds)

    def _lockdown_reason(self) -> str:
        mode = f" ({self.lockdown})" if self.lockdown else ""
        return (f"Operation not permitted: the kernel is in lockdown mode{mode}, which "
                f"forbids reading debugfs files that can be written")

    def notes(self) -> List[str]:
        """One-line messages about the files left out (empty if none)."""
        notes = []
        if self.denied:
            notes.append(
                f"debugfs: {len(self.denied)} of {self.files} files in {self.kvm_dir} are "
                f"unavailable ({self._lockdown_reason()}) and left out: "
                f"{', '.join(self.denied)}; count these with the tracepoint provider or "
                f"the binary statistics provider")
        if self.unreadable:
            listing = ", ".join(f"{name} ({why})" for name, why in sorted(self.unreadable.items()))
            notes.append(f"debugfs: files in {self.kvm_dir} left out because they hold no "
                         f"usable value: {listing}")
        return notes

    def error(self) -> NotAvailable:
        """The error raised when no field at all can be read."""
        if self.denied:
            return NotAvailable(
                f"debugfs: none of the {self.files} KVM statistics files in {self.kvm_dir} can "
                f"be read ({self._lockdown_reason()}): use the tracepoint provider or the "
                f"binary statistics provider instead")
        return NotAvailable(f"debugfs: no readable KVM statistics file in {self.kvm_dir}: "
                            f"use the tracepoint provider or the binary statistics provider "
                            f"instead")


def lockdown_mode(sys: str = "/sys") -> Optional[str]:
    """The active kernel lockdown mode (``integrity``...), or None if unknown.

    Read from ``<sys>/kernel/security/lockdown`` (``none [integrity]
    confidentiality``) when securityfs is mounted.
    """
    try:
        with open(os.path.join(sys, "kernel", "security", "lockdown")) as f:
            text = f.read()
    except OSError:
        return None
    match = re.search(r"\[(\w+)\]", text)
    return match.group(1) if match else None


def _why_unusable(raw: bytes) -> str:
    if not raw.strip():
        return "empty"
    if len(raw) > _READ_SIZE:
        return "too long"
    return "not a number"


def probe_debugfs(debugfs: str, sys: str = "/sys") -> DebugfsProbe:
    """Find which host-wide statistics files of ``<debugfs>/kvm/`` can be read.

    Reads each file once.  Raises :class:`NotAvailable` when there is no
    ``kvm`` directory (no KVM) and :class:`AccessDenied` when it cannot be
    listed (not root).  A probe with no field is returned as is; see
    :meth:`DebugfsProbe.error`.
    """
    kvm_dir = os.path.join(debugfs, "kvm")
    try:
        entries = sorted(os.listdir(kvm_dir))
    except FileNotFoundError:
        raise NotAvailable(f"no KVM: {kvm_dir} does not exist (is the kvm module loaded? "
                           f"'modprobe kvm_intel' or 'modprobe kvm_amd')") from None
    except OSError as exc:
        root_only = "debugfs is readable by root only: run kvm_stat as root"
        raise error_from_errno(exc.errno or errno.EIO, f"reading {kvm_dir}",
                               fixes={errno.EACCES: root_only, errno.EPERM: root_only},
                               other=NotAvailable) from None
    probe = DebugfsProbe(kvm_dir)
    for name in entries:
        path = os.path.join(kvm_dir, name)
        try:
            st = os.stat(path)
        except OSError:
            continue  # vanished meanwhile
        if not stat.S_ISREG(st.st_mode):
            continue  # VM directories
        kind = stat_kind(name, read_only=not st.st_mode & 0o222)
        if kind == TABLE:
            continue
        probe.files += 1
        try:
            raw = _read_file(path)
        except OSError as exc:
            if exc.errno == errno.EPERM:
                probe.denied.append(name)
            elif exc.errno != errno.ENOENT:
                probe.unreadable[name] = exc.strerror or str(exc)
            continue
        if kind == HISTOGRAM:
            if len(raw) <= _READ_SIZE and parse_histogram(raw) is not None:
                probe.histograms.append(name)
            else:
                probe.unreadable[name] = _why_unusable(raw)
        elif len(raw) <= _READ_SIZE and parse_value(raw) is not None:
            probe.kinds[name] = kind
        else:
            probe.unreadable[name] = _why_unusable(raw)
    if probe.denied:
        probe.lockdown = lockdown_mode(sys)
    return probe


# --------------------------------------------------------------------------
# Turning raw readings into totals.

class _StatsDirectory:
    """The bookkeeping of one statistics directory (the host's or one VM's).

    Cumulative statistics are kept as the sum of their growth since the
    first reading (plus that first reading when *from_creation*); levels
    (instant, peak) as their last value.  A value that cannot be read keeps
    its previous one.
    """

    def __init__(self, path: str, stats: Sequence[Tuple[str, str]], from_creation: bool):
        self.path = path
        self._stats = stats
        self._from_creation = from_creation
        self._raw: Dict[str, int] = {}
        self._counted: Dict[str, int] = {}
        self.gone = False

    def update(self) -> None:
        """Read every file once; marks the directory gone if it disappeared."""
        raw = self._raw
        counted = self._counted
        read_any = False
        for name, kind in self._stats:
            value = _read_number(os.path.join(self.path, name))
            if value is None:
                continue
            read_any = True
            if kind in CUMULATIVE_KINDS:
                previous = raw.get(name)
                if previous is None:
                    counted[name] = value if self._from_creation else 0
                elif value > previous:
                    counted[name] += value - previous
            raw[name] = value
        if not read_any and self._stats and not os.path.isdir(self.path):
            self.gone = True

    def zero(self) -> None:
        """Count cumulative statistics from zero again."""
        self._counted = dict.fromkeys(self._counted, 0)
        self._from_creation = False

    def cumulative(self) -> Totals:
        """Counted growth of the cumulative statistics."""
        return dict(self._counted)

    def levels(self) -> Totals:
        """Last values of the instant and peak statistics."""
        counted = self._counted
        return {name: value for name, value in self._raw.items() if name not in counted}


def _combine(directories: Iterable[_StatsDirectory], peaks: frozenset) -> Totals:
    """Totals of several VMs of one process: sums, except peaks (maximum).

    Gone directories contribute their counted growth only: the current
    level of a VM that no longer exists means nothing.
    """
    totals: Totals = {}
    for directory in directories:
        for name, value in directory.cumulative().items():
            totals[name] = totals.get(name, 0) + value
        if directory.gone:
            continue
        for name, value in directory.levels().items():
            if name in peaks:
                totals[name] = max(totals.get(name, value), value)
            else:
                totals[name] = totals.get(name, 0) + value
    return totals


class DebugfsProvider(Provider):
    """KVM statistics from ``<debugfs>/kvm/``, host-wide or for one VM process.

    *fields* limits the statistics read (None: every readable one).  With
    *pid*, only the VM directories of that process are read (summed when it
    has several VMs).  *include_past* counts cumulative statistics from VM
    creation instead of from opening.  *probe* is a :func:`probe_debugfs`
    result to reuse.  Holds no kernel resource; :meth:`close` only stops it.
    """

    name = "debugfs"

    def __init__(self, debugfs: str, *, fields: Optional[Iterable[str]] = None,
                 pid: Optional[int] = None, include_past: bool = False,
                 probe: Optional[DebugfsProbe] = None, sys: str = "/sys"):
        if probe is None:
            probe = probe_debugfs(debugfs, sys)
        if not probe.available:
            raise probe.error()
        wanted = None if fields is None else set(fields)
        self._kvm_dir = probe.kvm_dir
        self._stats = tuple((name, probe.kinds[name]) for name in probe.fields
                            if wanted is None or name in wanted)
        self._peaks = frozenset(name for name, kind in self._stats if kind == PEAK)
        self._histograms = tuple(probe.histograms)
        self._pid = pid
        self._include_past = include_past
        self._vms: Dict[str, _StatsDirectory] = {}
        self._vm_pids: Dict[str, int] = {}
        self._host: Optional[_StatsDirectory] = None
        self._closed = False
        self._watched_ended = False
        self._ended: Set[int] = set()    # VM processes found ended since the last snapshot
        if pid is None:
            self._host = _StatsDirectory(self._kvm_dir, self._stats, include_past)
            self._host.update()
        # VMs that exist now are counted from now (or from creation with
        # include_past); VMs found later were created after start-up and are
        # counted from their creation.
        self._update_vms(from_creation=include_past)
        if pid is not None and not self._vms:
            raise NoSuchVM(f"VM process {pid} has no statistics directory in "
                           f"{self._kvm_dir} (no {pid}-<fd> directory)", [(pid, None)])

    # -- VM directories --------------------------------------------------------
    def _update_vms(self, from_creation: bool = True) -> None:
        listing = list_vm_directories(self._kvm_dir, self._pid)
        for name, owner in listing.items():
            if name not in self._vms:
                self._vms[name] = _StatsDirectory(os.path.join(self._kvm_dir, name),
                                                  self._stats, from_creation)
                self._vm_pids[name] = owner
        for name, directory in self._vms.items():
            if name not in listing:
                directory.gone = True
            elif not directory.gone:
                directory.update()
        # Forget processes with no VM left (except the watched one); keep the
        # counts of a gone VM while its process has others, so their totals
        # never go backwards.
        live = {self._vm_pids[n] for n, d in self._vms.items() if not d.gone}
        live.add(self._pid)
        for name in [n for n in self._vms if self._vm_pids[n] not in live]:
            self._ended.add(self._vm_pids[name])
            del self._vms[name]
            del self._vm_pids[name]

    def _by_pid(self) -> Dict[int, List[_StatsDirectory]]:
        grouped: Dict[int, List[_StatsDirectory]] = {}
        for name, directory in self._vms.items():
            grouped.setdefault(self._vm_pids[name], []).append(directory)
        return grouped

    # -- Provider interface ----------------------------------------------------
    @property
    def fields(self) -> List[str]:
        """The statistics read, sorted by name."""
        return [name for name, _ in self._stats]

    @property
    def kinds(self) -> Dict[str, str]:
        """Field name -> kind (counter, time, instant, peak)."""
        return dict(self._stats)

    @property
    def levels(self) -> FrozenSet[str]:
        """The instant and peak statistics read (current values, not counts)."""
        return frozenset(name for name, kind in self._stats if kind in (INSTANT, PEAK))

    @property
    def supports_by_vm(self) -> bool:
        """True: every VM has its own directory."""
        return True

    def refresh(self) -> None:
        """Notice that the watched VM process has no VM left (the next
        :meth:`snapshot` lists it in ``ended``); nothing else to follow."""
        if self._pid is None or self._watched_ended or self._closed:
            return
        if not list_vm_directories(self._kvm_dir, self._pid):
            self._watched_ended = True
            self._ended.add(self._pid)

    def snapshot(self, *, by_vm: bool = False, histograms: bool = False,
                 by_vcpu: bool = False) -> Reading:
        """Read every selected file once: host-wide totals (or the watched
        process's), per VM process with *by_vm*, and the ``*_hist`` files
        with *histograms*.  ``ended`` lists the VM processes found with no
        VM directory left since the previous snapshot."""
        if self._closed:
            return Reading({})
        per_vm: Dict[int, Totals] = {}
        if self._host is not None:
            self._host.update()
            totals = {**self._host.cumulative(), **self._host.levels()}
            if by_vm:
                self._update_vms()
                per_vm = self._per_vm()
        else:
            self._update_vms()
            per_vm = self._per_vm()
            totals = _combine(self._vms.values(), self._peaks)
            if not by_vm:
                per_vm = {}
        host_histograms: Histograms = {}
        vm_histograms: Dict[int, Histograms] = {}
        if histograms and self._histograms:
            directories = self._live_directories() if by_vm or self._pid is not None else {}
            if self._pid is None:
                host_histograms = self._sum_histograms([self._kvm_dir])
            else:
                host_histograms = self._sum_histograms(
                    [path for paths in directories.values() for path in paths])
            if by_vm:
                vm_histograms = {pid: self._sum_histograms(paths)
                                 for pid, paths in directories.items()}
        ended, self._ended = frozenset(self._ended), set()
        return Reading(totals, per_vm, host_histograms, vm_histograms, ended=ended)

    def _per_vm(self) -> Dict[int, Totals]:
        return {pid: _combine(dirs, self._peaks) for pid, dirs in self._by_pid().items()}

    def _live_directories(self) -> Dict[int, List[str]]:
        """The VM directories there are now, by process id."""
        by_pid: Dict[int, List[str]] = {}
        for name, owner in list_vm_directories(self._kvm_dir, self._pid).items():
            by_pid.setdefault(owner, []).append(os.path.join(self._kvm_dir, name))
        return by_pid

    def _sum_histograms(self, directories: Iterable[str]) -> Histograms:
        """The readable ``*_hist`` files of *directories*, summed bucket by bucket.

        These are since VM creation (histograms have no baseline).
        """
        sums: Dict[str, Tuple[int, ...]] = {}
        for name in self._histograms:
            for directory in directories:
                try:
                    buckets = parse_histogram(_read_file(os.path.join(directory, name)))
                except OSError:
                    continue
                if buckets is None:
                    continue
                previous = sums.get(name, ())
                width = max(len(previous), len(buckets))
                sums[name] = tuple((previous[i] if i < len(previous) else 0)
                                   + (buckets[i] if i < len(buckets) else 0)
                                   for i in range(width))
        # The files give bare bucket values: no bounds, no unit.
        return {name: HistogramValues(counts, SINCE_CREATION) for name, counts in sums.items()}

    def reset(self) -> None:
        """Count cumulative statistics from zero again (files are never written)."""
        if self._host is not None:
            self._host.update()
            self._host.zero()
        self._update_vms()
        for directory in self._vms.values():
            directory.zero()

    def close(self) -> None:
        """Stop reading; safe to call twice."""
        self._closed = True
        self._vms.clear()
        self._vm_pids.clear()
