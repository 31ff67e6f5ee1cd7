"""The binary-stats provider: KVM's own per-VM and per-vCPU statistics.

KVM keeps its statistics (``exits``, ``io_exits``, ``halt_exits``...) for
every VM and vCPU and exposes them through file descriptors in a binary,
self-describing format (``KVM_GET_STATS_FD``, see :mod:`.binstats_format`).
Only the VM's own process can create those descriptors, so this provider
borrows the ones a VM process holds (``/proc/<pid>/fd`` links named
``anon_inode:kvm-vm-stats`` and ``anon_inode:kvm-vcpu-stats:<n>``) with
``pidfd_getfd`` and reads the duplicates with ``pread``: the header and
descriptors once per descriptor, the data block once per fd per sample.
Reading costs the guests nothing and works under kernel lockdown.

Fields are the kernel's stat names.  Cumulative stats count since the
provider was opened (since VM creation with ``include_past``), summed over
vCPUs and VMs; instant stats are current values (summed), peak stats the
largest current value.  Histograms (counted like cumulative stats) come with
:meth:`~BinstatsProvider.snapshot` (``histograms=True``).

Duplicates are closed as soon as the VM process drops its own descriptor
or exits: a held descriptor keeps the VM's memory alive.  Counts of
descriptors and VMs that went away stay in the totals, so host totals
never go backwards.
"""

from __future__ import annotations

import errno
import operator
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import (Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence,
                    Tuple)

from ..host import pidfd
from ..errors import NotAvailable, error_from_errno
from ..host.vms import VM, describe_vm, fd_links, find_vm, list_vms, start_time
from .base import (SINCE_CREATION, SINCE_START, HistogramValues, Histograms, Provider, Reading,
                   Totals)
from .binstats_format import (TYPE_CUMULATIVE, TYPE_INSTANT, TYPE_LINEAR_HIST, TYPE_PEAK,
                              StatDesc, StatsFormatError, StatsLayout, bucket_bounds, read_layout)

__all__ = ["BinstatsProvider", "StatsFdRef", "stats_fd_refs", "binstats_fields",
           "NoStatsDescriptors", "StatsCoverage", "stats_coverage", "coverage_notes",
           "alternative_providers", "NO_STATS_FDS_HELP"]

VM_STATS_LINK = "anon_inode:kvm-vm-stats"
VCPU_STATS_PREFIX = "anon_inode:kvm-vcpu-stats:"
VCPU_PREFIX = "anon_inode:kvm-vcpu:"

#: why a VM may hold no statistics descriptors
NO_STATS_FDS_HELP = (
    "only a VM's own process can create them (KVM_GET_STATS_FD); QEMU keeps them open "
    "from version 8.1 on, QEMU 7.2 and older open them only while answering the QMP "
    "command query-stats")

#: the start of every note this provider gives (see :func:`coverage_notes`)
NOTE_PREFIX = "binary statistics: "


#: how messages name the providers suggested instead (frontends.hints adds
#: the command line's flags to these phrases)
_PROVIDER_PHRASES = {"tracepoints": "the tracepoint provider", "debugfs": "the debugfs provider"}


class NoStatsDescriptors(NotAvailable):
    """No VM process (or not the one asked for) holds statistics descriptors.

    :attr:`cause` says so and why; :attr:`alternatives` names the providers
    that can count KVM's events on this host instead (provider names, e.g.
    ``"tracepoints"``).
    """

    def __init__(self, cause: str, alternatives: Sequence[str]):
        self.cause = cause
        self.alternatives = tuple(alternatives)
        names = " or ".join(_PROVIDER_PHRASES.get(name, name) for name in self.alternatives)
        super().__init__(f"{cause}; use {names} instead" if names else cause)


def alternative_providers(debugfs: Optional[str] = None) -> Tuple[str, ...]:
    """The providers that can count what binary statistics would, here.

    Tracepoints always can; debugfs only where its counters can be read: it
    is mounted at *debugfs* and ``kvm/exits`` reads (kernel lockdown refuses
    it with EPERM).
    """
    if debugfs is None:
        return ("tracepoints",)
    try:
        fd = os.open(os.path.join(debugfs, "kvm", "exits"), os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.read(fd, 32)
        finally:
            os.close(fd)
    except OSError:
        return ("tracepoints",)
    return ("tracepoints", "debugfs")

# errno of pidfd_getfd/readlink meaning "that fd or process is gone": skip it.
_GONE = (errno.ESRCH, errno.EBADF, errno.ENOENT)

_KIND_BY_TYPE = {TYPE_CUMULATIVE: "counter", TYPE_INSTANT: "instant", TYPE_PEAK: "peak"}


# ---------------------------------------------------------------------------
# Finding and borrowing the descriptors.

@dataclass(frozen=True)
class StatsFdRef:
    """A statistics descriptor held by a VM process: ``/proc/<pid>/fd/<fd>``."""

    pid: int
    fd: int
    link: str

    @property
    def vcpu(self) -> Optional[int]:
        """The vCPU id for a vCPU statistics descriptor, None for the VM's."""
        if self.link.startswith(VCPU_STATS_PREFIX):
            return int(self.link[len(VCPU_STATS_PREFIX):])
        return None


def _is_stats_link(link: str) -> bool:
    if link == VM_STATS_LINK:
        return True
    return link.startswith(VCPU_STATS_PREFIX) and link[len(VCPU_STATS_PREFIX):].isdigit()


def _refs_in(pid: int, links: Mapping[int, str], exclude: Iterable[int] = ()) -> List[StatsFdRef]:
    skip = set(exclude)
    return [StatsFdRef(pid, fd, link) for fd, link in sorted(links.items())
            if fd not in skip and _is_stats_link(link)]


def stats_fd_refs(pid: int, proc: str = "/proc", exclude: Iterable[int] = ()) -> List[StatsFdRef]:
    """The statistics descriptors process *pid* holds, by fd number.

    *exclude* lists fd numbers to ignore (this process's own duplicates when
    it watches a VM it runs itself).  A process that is gone holds none.
    """
    return _refs_in(pid, fd_links(pid, proc), exclude)


@dataclass(frozen=True)
class StatsCoverage:
    """Which statistics descriptors a VM process holds, against what it has.

    *vm_stats*: it holds its VM's statistics descriptor; *vcpus*: the vCPU
    ids it holds vCPU descriptors of; *vcpu_stats*: those it holds a
    statistics descriptor of.
    """

    pid: int
    vm_stats: bool
    vcpus: FrozenSet[int]
    vcpu_stats: FrozenSet[int]

    @classmethod
    def from_links(cls, pid: int, links: Mapping[int, str]) -> "StatsCoverage":
        """The coverage of process *pid* from its fd links (fd -> link text)."""
        def ids(prefix: str) -> FrozenSet[int]:
            return frozenset(int(link[len(prefix):]) for link in links.values()
                             if link.startswith(prefix) and link[len(prefix):].isdigit())
        return cls(pid, VM_STATS_LINK in links.values(), ids(VCPU_PREFIX), ids(VCPU_STATS_PREFIX))

    @property
    def holds_any(self) -> bool:
        """True if at least one statistics descriptor is held."""
        return self.vm_stats or bool(self.vcpu_stats)

    @property
    def missing(self) -> List[str]:
        """What is not held, in words (empty when everything is)."""
        out = []
        if not self.vm_stats:
            out.append("the VM's own statistics descriptor (VM-wide statistics)")
        vcpus = sorted(self.vcpus - self.vcpu_stats)
        if vcpus:
            which = ", ".join(map(str, vcpus))
            out.append(f"the statistics descriptor{'s' if len(vcpus) > 1 else ''} of "
                       f"vCPU{'s' if len(vcpus) > 1 else ''} {which}")
        return out


def stats_coverage(pid: int, proc: str = "/proc") -> StatsCoverage:
    """The :class:`StatsCoverage` of VM process *pid* now."""
    return StatsCoverage.from_links(pid, fd_links(pid, proc))


#: VM processes named in one note at most (a host may run hundreds)
_MAX_NAMED = 10


def coverage_notes(vms: Sequence[Tuple[VM, StatsCoverage]]) -> List[str]:
    """One-line notes on VM processes whose statistics are incomplete: one per
    process that holds some descriptors but not all, and one listing those
    holding none (left out)."""
    notes = []
    for vm, coverage in vms:
        if coverage.holds_any and coverage.missing:
            notes.append(f"{NOTE_PREFIX}VM process {describe_vm(vm)} does not hold "
                         f"{' nor '.join(coverage.missing)}: those statistics are missing "
                         f"for it, the others are read")
    none = [describe_vm(vm) for vm, coverage in vms if not coverage.holds_any]
    if none:
        named = ", ".join(none[:_MAX_NAMED])
        more = f" and {len(none) - _MAX_NAMED} more" if len(none) > _MAX_NAMED else ""
        notes.append(f"{NOTE_PREFIX}left out, holding no statistics descriptors "
                     f"({NO_STATS_FDS_HELP}): VM process{'es' if len(none) > 1 else ''} "
                     f"{named}{more}")
    return notes


def _borrow(pfd: int, ref: StatsFdRef, proc: str) -> Optional[int]:
    """Duplicate *ref* into this process; None if it went away meanwhile."""
    try:
        fd = pidfd.pidfd_getfd(pfd, ref.fd)
    except OSError as exc:
        if exc.errno in _GONE:
            return None
        raise error_from_errno(
            exc.errno or errno.EIO,
            f"borrowing the statistics descriptors of VM process {ref.pid} (fd {ref.fd})",
            fixes={errno.EPERM: "pidfd_getfd needs root or CAP_SYS_PTRACE, and "
                                "kernel.yama.ptrace_scope below 3",
                   errno.ENOSYS: "Linux 5.6 or newer is needed to read KVM binary "
                                 "statistics of other processes"},
            reasons={errno.ENOSYS: "this kernel lacks pidfd_getfd"},
            other=NotAvailable, kind="borrowed descriptors") from None
    # The fd number may have been closed and reused between readlink and here.
    try:
        same = os.readlink(f"{proc}/self/fd/{fd}") == ref.link
    except OSError:
        same = False
    if not same:
        os.close(fd)
        return None
    return fd


def _open_pidfd(pid: int) -> Optional[int]:
    try:
        return pidfd.pidfd_open(pid)
    except OSError as exc:
        if exc.errno in _GONE:
            return None
        raise error_from_errno(
            exc.errno or errno.EIO, f"opening a pidfd of VM process {pid}",
            reasons={errno.ENOSYS: "this kernel lacks pidfd_open"},
            fixes={errno.ENOSYS: "Linux 5.3 or newer is needed to read KVM binary statistics"},
            other=NotAvailable, kind="borrowed descriptors") from None


def _layout_of(fd: int, ref: StatsFdRef) -> StatsLayout:
    try:
        return read_layout(lambda size, offset: os.pread(fd, size, offset))
    except StatsFormatError as exc:
        raise StatsFormatError(f"statistics of VM process {ref.pid} ({ref.link}): {exc}") from None


def _no_stats_error(pid: Optional[int], debugfs: Optional[str]) -> NoStatsDescriptors:
    """Why there is nothing to read: no VM (or not VM *pid*) holds a stats descriptor."""
    if pid is None:
        what = "no VM process holds KVM binary statistics file descriptors"
    else:
        what = f"VM process {pid} holds no KVM binary statistics file descriptors"
    hint = "" if os.geteuid() == 0 else " (run as root to see other users' VMs)"
    return NoStatsDescriptors(f"{what}{hint}: {NO_STATS_FDS_HELP}",
                              alternative_providers(debugfs))


def binstats_fields(proc: str = "/proc", debugfs: Optional[str] = None) -> List[str]:
    """The single-valued statistics names VM processes on this host offer, sorted.

    Reads the descriptors of one VM and one vCPU statistics descriptor (and
    closes them).  Raises :class:`NoStatsDescriptors` if no VM process holds
    any; *debugfs* (where it is mounted) decides whether that error suggests
    the debugfs provider (see :func:`alternative_providers`).
    """
    found: Dict[bool, StatsLayout] = {}
    for vm in list_vms(proc):
        refs = [r for r in stats_fd_refs(vm.pid, proc) if (r.vcpu is None) not in found]
        if not refs:
            continue
        pfd = _open_pidfd(vm.pid)
        if pfd is None:
            continue
        try:
            for ref in refs:
                if (ref.vcpu is None) in found:
                    continue
                fd = _borrow(pfd, ref, proc)
                if fd is None:
                    continue
                try:
                    found[ref.vcpu is None] = _layout_of(fd, ref)
                finally:
                    os.close(fd)
        finally:
            os.close(pfd)
        if len(found) == 2:
            break
    if not found:
        raise _no_stats_error(None, debugfs)
    names = set()
    for layout in found.values():
        names.update(d.name for d in layout.descriptors if d.is_scalar)
    return sorted(names)


# ---------------------------------------------------------------------------
# Aggregation helpers: C-level loops over value tuples.

def _getter(indices: Sequence[int]) -> Callable[[Sequence[int]], Tuple[int, ...]]:
    """A function returning the words at *indices* as a tuple (always a tuple)."""
    if not indices:
        return lambda words: ()
    if len(indices) == 1:
        only = indices[0]
        return lambda words: (words[only],)
    return operator.itemgetter(*indices)


def _column_sums(rows: Sequence[Sequence[int]], width: int) -> Tuple[int, ...]:
    return tuple(map(sum, zip(*rows))) if rows else (0,) * width


def _column_max(rows: Sequence[Sequence[int]], width: int) -> Tuple[int, ...]:
    return tuple(map(max, zip(*rows))) if rows else (0,) * width


def _plus(a: Sequence[int], b: Sequence[int]) -> Tuple[int, ...]:
    return tuple(map(operator.add, a, b))


def _minus(a: Sequence[int], b: Sequence[int]) -> Tuple[int, ...]:
    return tuple(map(operator.sub, a, b))


class _View:
    """One statistics layout seen through the selected fields.

    Counters (cumulative stats) and histograms are counted since a baseline;
    instant and peak values are taken as they are.
    """

    def __init__(self, layout: StatsLayout, kinds: Dict[str, str], selected: Optional[set]):
        self.layout = layout
        self.words = layout.words
        self.data_size = layout.data_size
        self.data_offset = layout.data_offset
        self.descs = layout.by_name()
        by_kind: Dict[str, List[StatDesc]] = {"counter": [], "instant": [], "peak": []}
        for desc in layout.descriptors:
            kind = _KIND_BY_TYPE.get(desc.type)
            if kind is None or not desc.is_scalar:
                continue
            if selected is not None and desc.name not in selected:
                continue
            # The first layout that defines a name decides its kind.
            if kinds.setdefault(desc.name, kind) != kind:
                continue
            by_kind[kind].append(desc)
        self.counter_names = [d.name for d in by_kind["counter"]]
        self.instant_names = [d.name for d in by_kind["instant"]]
        self.peak_names = [d.name for d in by_kind["peak"]]
        self.counters = _getter([d.first_word for d in by_kind["counter"]])
        self.instants = _getter([d.first_word for d in by_kind["instant"]])
        self.peaks = _getter([d.first_word for d in by_kind["peak"]])
        self.histograms = [d for d in layout.descriptors if d.is_histogram]
        self.zero_words = (0,) * self.words
        #: True when another layout defines one of these names too
        self.shares_names = False

    def read(self, fd: int) -> Tuple[int, ...]:
        """The data block of *fd*: one pread."""
        return self.layout.decode(os.pread(fd, self.data_size, self.data_offset))

    def names(self) -> List[str]:
        return self.counter_names + self.instant_names + self.peak_names


@dataclass(eq=False)
class _Source:
    """One borrowed statistics descriptor."""

    ref: StatsFdRef
    fd: int
    view: _View
    baseline: Tuple[int, ...]          # words counted from
    base_counters: Tuple[int, ...] = ()

    def __post_init__(self):
        self.base_counters = self.view.counters(self.baseline)


@dataclass(eq=False)
class _WatchedVM:
    """A VM process whose statistics descriptors are borrowed."""

    pid: int
    pidfd: int
    started_after_open: bool
    sources: Dict[str, _Source] = field(default_factory=dict)   # link -> source
    #: link -> (view, words counted by the descriptors of that link given back so far)
    retired_by_link: Dict[str, Tuple[_View, Tuple[int, ...]]] = field(default_factory=dict)
    last_seen: Dict[str, Tuple[int, ...]] = field(default_factory=dict)  # link -> final words

    def retired(self) -> Dict[_View, Tuple[int, ...]]:
        """Counts of given-back descriptors, summed per view."""
        out: Dict[_View, Tuple[int, ...]] = {}
        for view, words in self.retired_by_link.values():
            out[view] = _plus(out.get(view, view.zero_words), words)
        return out


def _histogram_values(desc: StatDesc, counts: Tuple[int, ...], since: str) -> HistogramValues:
    """*counts* of histogram *desc* with what its descriptor says about the buckets."""
    return HistogramValues(counts, since,
                           kind="linear" if desc.type == TYPE_LINEAR_HIST else "log",
                           bounds=tuple(bucket_bounds(desc)), unit=desc.unit_name,
                           base=desc.base_value, exponent=desc.exponent)


def _process_start(pid: int, proc: str) -> Optional[float]:
    """Start time of *pid* in seconds since boot (None once it is gone)."""
    ticks = start_time(pid, proc)
    return None if ticks is None else ticks / os.sysconf("SC_CLK_TCK")


class BinstatsProvider(Provider):
    """KVM binary statistics of every VM process, or of the VM process *pid*.

    *fields* lists the statistics to count (None: every single-valued one
    found at open).  With *include_past*, cumulative statistics count from
    VM creation instead of from now.  Raises :class:`NoSuchVM` if *pid* is
    not a VM and :class:`NoStatsDescriptors` if no VM process (or not *pid*)
    holds statistics descriptors (*debugfs*, where it is mounted, decides
    whether that error suggests the debugfs provider).

    *notify* (a function taking a one-line message) hears, once per VM
    process, about VMs whose statistics are incomplete (:func:`coverage_notes`):
    those holding no descriptors (left out) and those holding some but not
    all (QEMU 10 holds its vCPUs' but not the VM's own).

    One sample is :meth:`refresh` then :meth:`snapshot`, as
    :class:`~kvmstat.sampling.sampler.Sampler` does: one pread per
    descriptor, from which the totals, the per-VM and per-vCPU split and
    the histograms are all computed, so that they agree.
    """

    name = "binstats"

    def __init__(self, *, fields: Optional[Iterable[str]] = None, pid: Optional[int] = None,
                 include_past: bool = False, proc: str = "/proc",
                 debugfs: Optional[str] = None,
                 notify: Optional[Callable[[str], None]] = None):
        self._proc = proc
        self._notify = notify
        #: pid -> the coverage last reported (or seen once, for VMs found later)
        self._reported: Dict[int, StatsCoverage] = {}
        self._pending: Dict[int, StatsCoverage] = {}
        self._pid = pid
        self._include_past = include_past
        self._selected = None if fields is None else set(fields)
        self._kinds: Dict[str, str] = {}
        self._views: Dict[bytes, _View] = {}
        self._vms: Dict[int, _WatchedVM] = {}
        self._departed: Dict[_View, Tuple[int, ...]] = {}   # retired words of exited VMs
        self._sources: List[_Source] = []
        self._ended: Dict[int, _WatchedVM] = {}   # VMs dropped since the last snapshot
        self._watched_ended = False
        self._epoch = self._now()
        # NoSuchVM when *pid* is not (or no longer) a VM.
        self._watched: Optional[VM] = None if pid is None else find_vm(pid, proc)
        try:
            self._discover(at_open=True)
        except BaseException:
            self.close()
            raise
        if not self._sources:
            self.close()
            raise _no_stats_error(pid, debugfs)
        if fields is None:
            names = set()
            for view in self._views.values():
                names.update(view.names())
            self._fields = sorted(names)
            # Layouts met later (a new kind of VM) add no fields: the list is fixed.
            self._selected = set(self._fields)
        else:
            self._fields = list(dict.fromkeys(fields))

    @staticmethod
    def _now() -> float:
        return time.clock_gettime(time.CLOCK_BOOTTIME)

    # -- properties ----------------------------------------------------------
    @property
    def fields(self) -> List[str]:
        """The counted statistics names."""
        return list(self._fields)

    @property
    def levels(self) -> FrozenSet[str]:
        """The instant and peak statistics counted (current values, not counts)."""
        return frozenset(n for n in self._fields if self._kinds.get(n) in ("instant", "peak"))

    @property
    def supports_by_vm(self) -> bool:
        """True: every VM process has its own descriptors."""
        return True

    @property
    def descriptors(self) -> Dict[str, StatDesc]:
        """Descriptor (type, unit, exponent...) of every statistic seen, by name."""
        out: Dict[str, StatDesc] = {}
        for view in self._views.values():
            for name, desc in view.descs.items():
                out.setdefault(name, desc)
        return out

    @property
    def fds(self) -> int:
        """Number of borrowed statistics descriptors held now."""
        return len(self._sources)

    @property
    def pids(self) -> List[int]:
        """The VM processes whose statistics are read now."""
        return sorted(self._vms)

    # -- following VMs and descriptors ------------------------------------------
    def _view_for(self, layout: StatsLayout) -> _View:
        view = self._views.get(layout.signature)
        if view is None:
            view = _View(layout, self._kinds, self._selected)
            names = set(view.names())
            for other in self._views.values():
                if names & set(other.names()):
                    view.shares_names = other.shares_names = True
            self._views[layout.signature] = view
        return view

    def _baseline(self, vm: _WatchedVM, link: str, view: _View, now: Tuple[int, ...],
                  at_open: bool) -> Tuple[int, ...]:
        last = vm.last_seen.get(link)
        if last is not None and len(last) == len(now) and \
                all(map(operator.ge, view.counters(now), view.counters(last))):
            # The same vCPU seen again (its counts already include everything
            # up to *last*): continue where its previous descriptor stopped.
            return last
        if self._include_past or (vm.started_after_open and not at_open):
            return view.zero_words  # every event of this VM happened since we started
        return now

    def _adopt(self, vm: _WatchedVM, ref: StatsFdRef, at_open: bool) -> None:
        fd = _borrow(vm.pidfd, ref, self._proc)
        if fd is None:
            return
        try:
            view = self._view_for(_layout_of(fd, ref))
            words = view.read(fd)
        except BaseException:
            os.close(fd)
            raise
        baseline = self._baseline(vm, ref.link, view, words, at_open)
        vm.sources[ref.link] = _Source(ref, fd, view, baseline)

    def _retire(self, vm: _WatchedVM, link: str) -> None:
        """Fold a source's counts into its VM's retired counts and close it."""
        source = vm.sources.pop(link)
        try:
            final = source.view.read(source.fd)
        except (OSError, StatsFormatError):
            final = source.baseline
        finally:
            os.close(source.fd)
        _, before = vm.retired_by_link.get(link, (source.view, source.view.zero_words))
        vm.retired_by_link[link] = (source.view, _plus(before, _minus(final, source.baseline)))
        vm.last_seen[link] = final

    def _drop_vm(self, vm: _WatchedVM) -> None:
        """Forget an exited VM: keep its counts in the host totals, close everything."""
        for link in list(vm.sources):
            self._retire(vm, link)
        for view, words in vm.retired().items():
            self._departed[view] = _plus(self._departed.get(view, view.zero_words), words)
        os.close(vm.pidfd)
        del self._vms[vm.pid]

    def _sync_vm(self, pid: int, links: Mapping[int, str], at_open: bool) -> bool:
        """Borrow new descriptors of *pid* (whose fd links are *links*), give
        back vanished ones; True if changed."""
        own = {s.fd for s in self._sources} if pid == os.getpid() else ()
        refs: Dict[str, StatsFdRef] = {}
        for ref in _refs_in(pid, links, exclude=own):
            # Several fds of one vCPU (QEMU's own and one opened by query-stats)
            # are one source: count the lowest-numbered only.
            refs.setdefault(ref.link, ref)
        vm = self._vms.get(pid)
        if vm is None:
            if not refs:
                return False
            pfd = _open_pidfd(pid)
            if pfd is None:
                return False
            start = _process_start(pid, self._proc)
            vm = self._vms[pid] = _WatchedVM(pid, pfd, start is not None and start > self._epoch)
        changed = False
        for link, source in list(vm.sources.items()):
            ref = refs.get(link)
            if ref is None or ref.fd != source.ref.fd:
                self._retire(vm, link)
                changed = True
        for link, ref in refs.items():
            if link not in vm.sources:
                self._adopt(vm, ref, at_open)
                changed = True
        return changed

    def _discover(self, at_open: bool = False) -> None:
        if self._watched is not None:
            vms = [self._watched]  # once it exits it holds nothing: refresh() says so
        else:
            vms = list_vms(self._proc)
        changed = False
        coverages = []
        for vm in vms:
            links = fd_links(vm.pid, self._proc)
            changed |= self._sync_vm(vm.pid, links, at_open)
            coverages.append((vm, StatsCoverage.from_links(vm.pid, links)))
        if changed or at_open:
            self._sources = [s for vm in self._vms.values() for s in vm.sources.values()]
        if self._notify is not None:
            self._report(coverages, at_open)

    def _report(self, coverages: List[Tuple[VM, StatsCoverage]], at_open: bool) -> None:
        """Tell about incomplete VMs once each.  A VM found after open is told
        about when two refreshes in a row see it the same, so that a VM
        still opening its descriptors is not reported."""
        live = {vm.pid for vm, _ in coverages}
        for pid in list(self._reported):
            if pid not in live:
                del self._reported[pid]
        due = []
        for vm, coverage in coverages:
            if not coverage.missing or self._reported.get(vm.pid) == coverage:
                self._pending.pop(vm.pid, None)
                continue
            if at_open or self._pending.get(vm.pid) == coverage:
                self._pending.pop(vm.pid, None)
                self._reported[vm.pid] = coverage
                due.append((vm, coverage))
            else:
                self._pending[vm.pid] = coverage
        for pid in list(self._pending):
            if pid not in live:
                del self._pending[pid]
        # With pid=, a VM holding nothing is an error, not a note.
        if self._pid is not None and not self._sources:
            return
        for note in coverage_notes(due):
            self._notify(note)

    def refresh(self) -> None:
        """Close the descriptors of exited VMs, borrow those of new VMs and vCPUs.

        The VMs found exited are in the next :meth:`snapshot` (``ended``,
        with their final counts in the per-VM breakdown); their counts stay
        in the totals.  Once the watched VM (``pid=``) has exited nothing
        more is borrowed.
        """
        if self._watched_ended:
            return
        by_pidfd = {vm.pidfd: vm for vm in self._vms.values()}
        for pfd in pidfd.exited(by_pidfd):
            vm = by_pidfd[pfd]
            self._drop_vm(vm)
            self._ended[vm.pid] = vm
        if self._pid is not None and self._pid not in self._vms:
            self._sources = []
            self._watched_ended = True
            return
        if by_pidfd.keys() - {vm.pidfd for vm in self._vms.values()}:
            self._sources = [s for vm in self._vms.values() for s in vm.sources.values()]
        self._discover()

    # -- reading ---------------------------------------------------------------
    def _read_all(self) -> Dict[_Source, Tuple[int, ...]]:
        # One pread per borrowed descriptor.  A descriptor stays readable after
        # its VM process exits (it holds a reference on the VM), so a VM that
        # exits now is still read correctly; refresh() then lets it go.
        return {source: source.view.read(source.fd) for source in self._sources}

    def _values(self, groups: Dict[_View, List[_Source]], retired: Dict[_View, Tuple[int, ...]],
                words: Dict[_Source, Tuple[int, ...]]) -> Totals:
        """Totals of *groups* (sources by view) plus *retired* counts."""
        totals: Totals = dict.fromkeys(self._fields, 0)
        for view in set(groups) | set(retired):
            sources = groups.get(view, [])
            rows = [words[s] for s in sources]
            width = len(view.counter_names)
            live = _column_sums([view.counters(w) for w in rows], width)
            base = _column_sums([s.base_counters for s in sources], width)
            counters = _plus(_minus(live, base), view.counters(retired.get(view, view.zero_words)))
            instants = _column_sums([view.instants(w) for w in rows], len(view.instant_names))
            peaks = _column_max([view.peaks(w) for w in rows], len(view.peak_names))
            if not view.shares_names:
                totals.update(zip(view.counter_names, counters))
                totals.update(zip(view.instant_names, instants))
                totals.update(zip(view.peak_names, peaks))
                continue
            # Some name is defined by another layout too (say, by both the VM
            # and the vCPU layout): add counts and instant values, keep the
            # larger peak (values are never negative, so 0 is a neutral start).
            for names, values, combine in ((view.counter_names, counters, operator.add),
                                           (view.instant_names, instants, operator.add),
                                           (view.peak_names, peaks, max)):
                for name, value in zip(names, values):
                    totals[name] = combine(totals.get(name, 0), value)
        return totals

    @staticmethod
    def _group(sources: Iterable[_Source]) -> Dict[_View, List[_Source]]:
        groups: Dict[_View, List[_Source]] = {}
        for source in sources:
            groups.setdefault(source.view, []).append(source)
        return groups

    def _host_retired(self) -> Dict[_View, Tuple[int, ...]]:
        retired = dict(self._departed)
        for vm in self._vms.values():
            for view, words in vm.retired().items():
                retired[view] = _plus(retired.get(view, view.zero_words), words)
        return retired

    def snapshot(self, *, by_vm: bool = False, histograms: bool = False,
                 by_vcpu: bool = False) -> Reading:
        """One pread per borrowed descriptor, and every part asked for from it.

        Totals over every VM and vCPU; with *by_vm* per VM process id (VMs
        found exited by the last :meth:`refresh`, listed in ``ended``, with
        their final counts); with *histograms* the histogram statistics
        since the baseline (since VM creation with *include_past*), and per
        VM with *by_vm* too; with *by_vcpu* the values per VM process id and
        vCPU id (vCPUs whose descriptor was given back keep their counts).
        """
        words = self._read_all()
        ended, self._ended = self._ended, {}
        host_groups = self._group(self._sources)
        host_retired = self._host_retired()
        totals = self._values(host_groups, host_retired, words)
        per_vm: Dict[int, Totals] = {}
        host_histograms: Histograms = {}
        vm_histograms: Dict[int, Histograms] = {}
        if by_vm:
            per_vm = {vm.pid: self._values(self._group(vm.sources.values()), vm.retired(), words)
                      for vm in (*self._vms.values(), *ended.values())}
        if histograms:
            host_histograms = self._histograms(host_groups, host_retired, words)
            if by_vm:
                vm_histograms = {vm.pid: self._histograms(self._group(vm.sources.values()),
                                                          vm.retired(), words)
                                 for vm in (*self._vms.values(), *ended.values())}
        return Reading(totals, per_vm, host_histograms, vm_histograms,
                       self._per_vcpu(words) if by_vcpu else {}, frozenset(ended))

    def _per_vcpu(self, words: Dict[_Source, Tuple[int, ...]]) -> Dict[int, Dict[int, Totals]]:
        out: Dict[int, Dict[int, Totals]] = {}
        for vm in self._vms.values():
            per_vcpu = out.setdefault(vm.pid, {})
            for link in vm.sources.keys() | vm.retired_by_link.keys():
                source = vm.sources.get(link)
                vcpu = (source.ref if source else StatsFdRef(vm.pid, -1, link)).vcpu
                if vcpu is None:
                    continue
                groups = {source.view: [source]} if source else {}
                retired = dict([vm.retired_by_link[link]]) if link in vm.retired_by_link else {}
                per_vcpu[vcpu] = self._values(groups, retired, words)
        return out

    def read_by_vcpu(self) -> Dict[int, Dict[int, Totals]]:
        """Deprecated: ``snapshot(by_vcpu=True).by_vcpu``."""
        warnings.warn("BinstatsProvider.read_by_vcpu() is deprecated: use "
                      "snapshot(by_vcpu=True).by_vcpu", DeprecationWarning, stacklevel=2)
        return self.snapshot(by_vcpu=True).by_vcpu

    def _histograms(self, groups: Dict[_View, List[_Source]],
                    retired: Dict[_View, Tuple[int, ...]],
                    words: Dict[_Source, Tuple[int, ...]]) -> Histograms:
        since = SINCE_CREATION if self._include_past else SINCE_START
        out: Histograms = {}
        for view in set(groups) | set(retired):
            sources = groups.get(view, [])
            total = _plus(_minus(_column_sums([words[s] for s in sources], view.words),
                                 _column_sums([s.baseline for s in sources], view.words)),
                          retired.get(view, view.zero_words))
            for desc in view.histograms:
                counts = total[desc.first_word:desc.first_word + desc.size]
                previous = out.get(desc.name)
                if previous is not None and len(previous.counts) == desc.size:
                    counts = _plus(previous.counts, counts)
                out[desc.name] = _histogram_values(desc, counts, since)
        return out

    # -- reset / close -------------------------------------------------------------
    def reset(self) -> None:
        """Count from now: new baselines, retired counts dropped."""
        self._epoch = self._now()
        self._departed = {}
        words = self._read_all()
        for vm in self._vms.values():
            vm.retired_by_link = {}
            vm.last_seen = {}
            vm.started_after_open = False
            for link, source in list(vm.sources.items()):
                vm.sources[link] = _Source(source.ref, source.fd, source.view, words[source])
        self._sources = [s for vm in self._vms.values() for s in vm.sources.values()]

    def close(self) -> None:
        """Give back every borrowed descriptor and pidfd; safe to call twice."""
        for vm in list(self._vms.values()):
            for source in vm.sources.values():
                os.close(source.fd)
            vm.sources.clear()
            os.close(vm.pidfd)
        self._vms.clear()
        self._sources = []
