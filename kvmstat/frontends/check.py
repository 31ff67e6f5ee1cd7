"""``--check``: which providers work on this host, why not, and the fix.

:func:`check_host` tries each provider the cheap way (a short real attempt
where that is the only honest test) and returns a :class:`HostCheck`;
:func:`format_check` turns it into the table ``kvm_stat --check`` prints.
Like the modes themselves, the check mounts tracefs or debugfs at their
standard places when they are missing and the process is root (and says so
in the notes).
"""

from __future__ import annotations

import errno
import fcntl
import os
import resource
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ..counting.factories import CounterFactories
from ..sampling.engine import choose_engine
from ..host import pidfd
from ..errors import SPARE_FDS, AccessDenied, Error, NotAvailable
from ..tracefs.catalog import Event, load_events
from ..tracefs.vendor import detect_vendor
from ..host.paths import Paths
from ..host.privileges import (CAP_SYS_PTRACE, has_capability, perf_event_paranoid,
                         perf_privileged)
from ..providers.bpf_tracepoints import BpfTracepointProvider
from ..providers.binstats import coverage_notes, stats_coverage
from ..providers.debugfs import DebugfsProbe, list_vm_directories, probe_debugfs
from ..providers.tracepoints import TracepointProvider, event_fields, online_cpus
from ..sampling.sources import catalog
from ..host.vms import VM, list_vms

__all__ = ["ProviderCheck", "HostCheck", "check_host", "format_check"]

# <linux/kvm.h>
_KVMIO = 0xAE
_KVM_CHECK_EXTENSION = _KVMIO << 8 | 0x03
_KVM_CAP_BINARY_STATS_FD = 203

# Events that fire on exits handled in the kernel or in user space; if they
# count while kvm_exit does not, exit reasons are not traced on this host.
_EXIT_WITNESSES = ("kvm_entry", "kvm_userspace_exit", "kvm_pio", "kvm_mmio", "kvm_msr",
                   "kvm_cpuid", "kvm_emulate_insn", "kvm_fpu")


@dataclass(frozen=True)
class ProviderCheck:
    """One row of the check: a provider (or per-VM attribution)."""

    name: str
    available: bool
    reason: str
    fix: str = ""


@dataclass
class HostCheck:
    """The whole diagnosis: one row per provider, the BPF engine (which
    ``--engine auto`` uses if available), per-VM attribution, notes."""

    providers: List[ProviderCheck]
    attribution: ProviderCheck
    notes: List[str] = field(default_factory=list)
    engine: Optional[ProviderCheck] = None

    @property
    def rows(self) -> List[ProviderCheck]:
        """Every row of the table: providers, the BPF engine, attribution."""
        return self.providers + ([self.engine] if self.engine else []) + [self.attribution]

    @property
    def usable(self) -> bool:
        """True when at least one provider works (``--check`` exits 0)."""
        return any(p.available for p in self.providers)


# --------------------------------------------------------------------------
# tracepoints

_LOAD_KVM = "load KVM: modprobe kvm_intel or modprobe kvm_amd"


def _mounted(name: str, fstype: str, paths: Paths, notes: List[str]
             ) -> Tuple[Optional[str], Optional[ProviderCheck]]:
    """Where *fstype* is mounted, or the failing row of provider *name*.

    Root mounts a missing tracefs/debugfs, as the modes do (noted).
    """
    find = paths.find_tracefs if fstype == "tracefs" else paths.find_debugfs
    try:
        return find(mount=True, notify=notes.append), None
    except Error as exc:
        standard = os.path.join(paths.sys, "kernel", "tracing" if fstype == "tracefs" else "debug")
        return None, ProviderCheck(name, False, str(exc),
                                   f"mount -t {fstype} {fstype} {standard} (as root)")


def _root_only(name: str, path: str) -> ProviderCheck:
    return ProviderCheck(name, False, f"{path} is readable by root only", "run kvm_stat as root")


def _check_tracepoints(paths: Paths, notes: List[str], backend: Optional[str],
                       counters: Optional[CounterFactories]
                       ) -> Tuple[ProviderCheck, Optional[str], List[Event]]:
    name = "tracepoints"
    tracefs, failure = _mounted(name, "tracefs", paths, notes)
    if failure is not None:
        return failure, None, []
    try:
        events = load_events(tracefs, detect_vendor(paths.sys, paths.proc))
    except AccessDenied:
        return _root_only(name, tracefs), None, []
    except NotAvailable:
        return ProviderCheck(name, False, f"no kvm tracepoints in {tracefs}/events/kvm: "
                             "KVM is not loaded", _LOAD_KVM), None, []
    try:
        # The honest test: open one event on every CPU, as kvm_stat does.
        with TracepointProvider(tracefs, fields=[events[0].name], events=events,
                                backend=backend, proc=paths.proc, sys=paths.sys,
                                counters=counters):
            pass
    except AccessDenied:
        paranoid = perf_event_paranoid(paths.proc)
        return ProviderCheck(
            name, False, f"perf_event_open is denied (no CAP_PERFMON, perf_event_paranoid "
            f"is {paranoid})", "run kvm_stat as root, grant CAP_PERFMON, or lower "
            "kernel.perf_event_paranoid to -1"), tracefs, events
    except Error as exc:
        return ProviderCheck(name, False, str(exc)), tracefs, events
    children = sum(len(e.children) for e in events)
    return ProviderCheck(name, True, f"{len(events)} kvm tracepoints ({children} reason "
                         f"children) in {tracefs}/events/kvm; perf counting works"), tracefs, events


def _exit_note(paths: Paths, tracefs: Optional[str], events: List[Event], vms: List[VM],
               seconds: float, backend: Optional[str],
               counters: Optional[CounterFactories]) -> Optional[str]:
    """Whether kvm_exit fires: by the kvm_pvm module and by counting briefly."""
    pvm = os.path.isdir(os.path.join(paths.sys, "module", "kvm_pvm"))
    names = {e.name for e in events}
    measured = ""
    if tracefs is not None and vms and "kvm_exit" in names and seconds > 0:
        witnesses = [n for n in _EXIT_WITNESSES if n in names]
        try:
            with TracepointProvider(tracefs, fields=["kvm_exit"] + witnesses, events=events,
                                    backend=backend, proc=paths.proc, sys=paths.sys,
                                    counters=counters) as tp:
                time.sleep(seconds)
                counts = tp.snapshot().totals
        except Error:
            counts = {}
        others = sum(v for k, v in counts.items() if k != "kvm_exit")
        if counts.get("kvm_exit", 0) == 0 and others > 0:
            measured = (f"in {seconds:g} s kvm_exit fired 0 times while {others} other kvm "
                        f"events did")
    if not pvm and not measured:
        return None
    cause = "paravirtual KVM (module kvm_pvm)" if pvm else "exit reasons are not traced here"
    text = (f"kvm_exit never fires on this host: {cause}, so kvm_exit and its (REASON) "
            f"children stay 0; exits to user space are counted by kvm_userspace_exit(REASON), "
            f"and kvm_pio, kvm_mmio, kvm_msr, kvm_cpuid... still count")
    return f"{text} ({measured})" if measured else text


def _check_engine(paths: Paths, tracefs: Optional[str], events: List[Event],
                  backend: Optional[str], counters: Optional[CounterFactories]
                  ) -> Tuple[ProviderCheck, str]:
    """The BPF engine's row, and the engine ``--engine auto`` picks."""
    name = "BPF engine"
    if tracefs is None or not events:
        return ProviderCheck(name, False, "no kvm tracepoints to count"), "perf"
    choice = choose_engine("auto", tracepoint_id=events[0].id, backend=backend,
                           counters=counters)
    if choice.engine != "bpf":
        return ProviderCheck(name, False, f"--engine auto counts with perf groups: "
                             f"{choice.reason}"), "perf"
    # The honest test: the programs that read a reason field, as kvm_stat
    # loads and attaches them on this host (raw tracepoints where it can).
    fields = [events[0].name] + [e.children[0].name for e in events if e.children]
    try:
        provider = BpfTracepointProvider(tracefs, fields=fields, events=events, proc=paths.proc,
                                         counters=counters)
        try:
            attached = dict(getattr(provider, "attached", {}))
        finally:
            provider.close()
    except Error as exc:
        return ProviderCheck(name, False, f"--engine auto counts with perf groups: the BPF "
                             f"engine failed: {exc}"), "perf"
    per_vm = choose_engine("auto", tracepoint_id=events[0].id, backend=backend, by_vm=True,
                           counters=counters)
    return ProviderCheck(name, True, f"--engine auto uses it: {choice.reason}; per VM "
                         f"(--by-guest, the exporter): {per_vm.reason.split(': ', 1)[-1]}; "
                         f"every kvm tracepoint with {2 * len(events) + 2} descriptors, "
                         f"whatever the number of CPUs{_attachment_note(attached)}"), "bpf"


def _attachment_note(attached: Dict[str, str]) -> str:
    """Which of the probed events attach through perf rather than as raw
    tracepoints (their reason is read from the trace record)."""
    via_perf = sorted(name for name, kind in attached.items() if kind == "perf")
    if not attached or not via_perf:
        return ""
    return (f"; {', '.join(via_perf)} through perf (its reason is not one of the "
            f"tracepoint's arguments, so the trace record is read)")


# --------------------------------------------------------------------------
# debugfs

def _check_debugfs(paths: Paths, notes: List[str]) -> Tuple[ProviderCheck, Optional[DebugfsProbe]]:
    name = "debugfs"
    debugfs, failure = _mounted(name, "debugfs", paths, notes)
    if failure is not None:
        return failure, None
    try:
        probe = probe_debugfs(debugfs, paths.sys)
    except AccessDenied:
        return _root_only(name, debugfs), None
    except NotAvailable as exc:
        return ProviderCheck(name, False, str(exc), _LOAD_KVM), None
    lockdown = f" ({probe.lockdown})" if probe.lockdown else ""
    refused = (f"; {len(probe.denied)} refused by kernel lockdown{lockdown} "
               f"(Operation not permitted)") if probe.denied else ""
    alternative = "for the refused ones use tracepoints (-t) or binary stats (--binstats)"
    if not probe.available:
        return ProviderCheck(name, False, f"none of the {probe.files} statistics files in "
                             f"{probe.kvm_dir} can be read{refused}",
                             "use tracepoints (-t) or binary stats (--binstats); lockdown "
                             "ends only by booting without it"), probe
    return ProviderCheck(name, True, f"{len(probe.fields)} of {probe.files} statistics "
                         f"files in {probe.kvm_dir} readable{refused}",
                         alternative if probe.denied else ""), probe


# --------------------------------------------------------------------------
# binary stats

def _binstats_kernel_support(dev_kvm: str) -> Optional[ProviderCheck]:
    """None if this kernel has binary statistics and the pidfd calls to reach
    other processes' descriptors, else the failing row."""
    name = "binary stats"
    try:
        kvm_fd = os.open(dev_kvm, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return ProviderCheck(name, False, f"{dev_kvm} does not exist: no KVM on this host",
                             _LOAD_KVM)
    except OSError as exc:
        return ProviderCheck(name, False, f"cannot open {dev_kvm} ({exc.strerror})",
                             "run kvm_stat as root")
    try:
        try:
            supported = fcntl.ioctl(kvm_fd, _KVM_CHECK_EXTENSION, _KVM_CAP_BINARY_STATS_FD) > 0
        except OSError:
            supported = False
        if not supported:
            return ProviderCheck(name, False, "this kernel has no KVM binary statistics "
                                 "(KVM_CAP_BINARY_STATS_FD, Linux 5.14 or newer)",
                                 "use tracepoints (-t) or debugfs (-d)")
        try:
            # Borrow one of our own descriptors, the way the provider borrows
            # the VMs' statistics descriptors.
            own = pidfd.pidfd_open(os.getpid())
            try:
                os.close(pidfd.pidfd_getfd(own, kvm_fd))
            finally:
                os.close(own)
        except OSError as exc:
            if exc.errno == errno.ENOSYS:
                return ProviderCheck(name, False, "no pidfd_open/pidfd_getfd system calls "
                                     "(Linux 5.6 or newer) to reach the VMs' file descriptors",
                                     "use tracepoints (-t) or debugfs (-d)")
            return ProviderCheck(name, False, f"pidfd_getfd failed: {exc.strerror}")
    finally:
        os.close(kvm_fd)
    return None


def _check_binstats(paths: Paths, dev_kvm: str, vms: List[VM],
                    notes: List[str]) -> ProviderCheck:
    """What ``--binstats`` would find now: the provider's own discovery
    (:func:`kvmstat.sampling.sources.catalog`), after the kernel's support.  VM
    processes whose statistics are incomplete (some or all descriptors not
    held) are added to *notes*, with what is missing."""
    name = "binary stats"
    failure = _binstats_kernel_support(dev_kvm)
    if failure is not None:
        return failure
    coverages = [(vm, stats_coverage(vm.pid, paths.proc)) for vm in vms]
    holders = sum(1 for _, coverage in coverages if coverage.holds_any)
    if not holders and not has_capability(CAP_SYS_PTRACE, paths.proc):
        return ProviderCheck(name, False, "reading the statistics descriptors of other "
                             "processes' VMs needs CAP_SYS_PTRACE (pidfd_getfd)",
                             "run kvm_stat as root")
    try:
        fields = catalog("binstats", paths).fields
    except AccessDenied as exc:
        return ProviderCheck(name, False, str(exc), "run kvm_stat as root")
    except Error as exc:
        # The message --binstats itself gives, naming the alternatives.
        return ProviderCheck(name, False, str(exc))
    notes.extend(coverage_notes(coverages))
    return ProviderCheck(name, True, f"{len(fields)} statistics read from the descriptors VM "
                         f"processes hold (borrowed with pidfd_getfd); {holders} of {len(vms)} "
                         f"VM processes hold them")


# --------------------------------------------------------------------------
# per-VM attribution and notes

def _check_attribution(tracepoints: ProviderCheck, debugfs: ProviderCheck,
                       binstats: ProviderCheck, probe: Optional[DebugfsProbe],
                       vms: List[VM], engine: str = "perf") -> ProviderCheck:
    ways = []
    if debugfs.available and probe is not None:
        ways.append(f"debugfs (VM directories: {len(list_vm_directories(probe.kvm_dir))}, "
                    f"{len(probe.fields)} fields each)")
    if tracepoints.available and engine == "bpf":
        ways.append("tracepoints (BPF programs count per process)")
    elif tracepoints.available:
        ways.append("tracepoints (per-thread counting of VM processes)")
    if binstats.available:
        ways.append("binary stats (stats fds held by VM processes)")
    running = f"{len(vms)} VM process{'es' if len(vms) != 1 else ''} running"
    if not ways:
        return ProviderCheck("per-VM attribution", False, f"no provider works; {running}",
                             "make one of the providers above work")
    return ProviderCheck("per-VM attribution", True, f"by {', '.join(ways)}; {running}")


def _lockdown_note(probe: Optional[DebugfsProbe]) -> Optional[str]:
    if probe is None or not probe.denied:
        return None
    mode = f" ({probe.lockdown})" if probe.lockdown else ""
    readable = ", ".join(probe.fields) or "none"
    return (f"kernel lockdown{mode}: {len(probe.denied)} debugfs statistics files refuse "
            f"reads (Operation not permitted); readable: {readable}")


def _paranoid_note(paths: Paths) -> str:
    paranoid = perf_event_paranoid(paths.proc)
    if paranoid is None:
        return "perf_event_paranoid cannot be read"
    if perf_privileged(paths.proc):
        return (f"perf_event_paranoid is {paranoid}: it does not limit this process "
                f"(CAP_PERFMON or CAP_SYS_ADMIN)")
    if paranoid <= -1:
        return f"perf_event_paranoid is {paranoid}: unprivileged counting is allowed"
    return (f"perf_event_paranoid is {paranoid}: without root or CAP_PERFMON, counting "
            f"tracepoints needs -1 (sysctl kernel.perf_event_paranoid=-1)")


def _open_files_limits() -> Tuple[int, int]:
    """The soft and hard RLIMIT_NOFILE of this process."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _open_files_note(paths: Paths, events: List[Event]) -> Optional[str]:
    if not events:
        return None
    try:
        cpus = len(online_cpus(paths.sys))
    except (OSError, ValueError):
        return None
    fields = len(event_fields(events))
    needed = fields * cpus
    soft, hard = _open_files_limits()

    def text(limit: int) -> str:
        return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)

    start = (f"open files: counting every field host-wide with perf groups needs {needed} "
             f"perf events ({fields} fields x {cpus} CPUs); the limit is {text(soft)} "
             f"(hard {text(hard)})")
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return f"{start}: enough"
    if hard == resource.RLIM_INFINITY or hard >= needed or os.geteuid() == 0:
        return f"{start}: kvm_stat raises it itself"
    return f"{start}: too low: run 'ulimit -n {needed + SPARE_FDS}' first, or count fewer fields with -f"


def check_host(paths: Optional[Paths] = None, *, dev_kvm: str = "/dev/kvm",
               sample_seconds: float = 0.25, backend: Optional[str] = None,
               counters: Optional[CounterFactories] = None) -> HostCheck:
    """Diagnose every provider on this host.

    *dev_kvm* is the KVM device; *sample_seconds* how long kvm_exit is
    counted (while VMs run) to see whether it fires at all (0: do not);
    *counters* makes the counters tried (the real counting core by default).
    Never raises a kvmstat error: every failure becomes a row or a note.
    """
    paths = paths or Paths()
    notes: List[str] = []
    try:
        vms = list_vms(paths.proc)
    except OSError:
        vms = []
    tracepoints, tracefs, events = _check_tracepoints(paths, notes, backend, counters)
    engine_row, engine = _check_engine(paths, tracefs, events, backend, counters)
    debugfs, probe = _check_debugfs(paths, notes)
    binstats = _check_binstats(paths, dev_kvm, vms, notes)
    attribution = _check_attribution(tracepoints, debugfs, binstats, probe, vms, engine)
    extra = [
        _exit_note(paths, tracefs if tracepoints.available else None, events, vms,
                   sample_seconds, backend, counters),
        _lockdown_note(probe),
        _paranoid_note(paths),
        _open_files_note(paths, events),
    ]
    if tracepoints.available:
        from ..sampling.duration_source import durations_note

        extra.append(durations_note(paths) if engine == "bpf" else
                     "--durations is not available: it needs the BPF engine, which cannot "
                     "be used here (see the BPF engine row)")
    notes.extend(note for note in extra if note)
    return HostCheck([tracepoints, debugfs, binstats], attribution, notes, engine_row)


# --------------------------------------------------------------------------
# the table

_HEADER = ("provider", "status", "reason")


def format_check(check: HostCheck) -> List[str]:
    """The ``--check`` table: one line per row (a ``fix:`` line under it when
    there is one), then the notes."""
    width = max(len(_HEADER[0]), *(len(r.name) for r in check.rows)) + 2
    status_width = len("not available") + 2
    lines = [f"{_HEADER[0]:<{width}}{_HEADER[1]:<{status_width}}{_HEADER[2]}"]
    for row in check.rows:
        status = "available" if row.available else "not available"
        lines.append(f"{row.name:<{width}}{status:<{status_width}}{row.reason}")
        if row.fix:
            lines.append(f"{'':<{width + status_width}}fix: {row.fix}")
    if check.notes:
        lines.append("")
        lines.append("notes:")
        lines.extend(f"  - {note}" for note in check.notes)
    return lines
