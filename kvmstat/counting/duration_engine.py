"""Measuring exit durations with BPF: the interface of the durations engine.

The engine (``csrc/kvmstat_durations.c``) attaches small BPF programs to
KVM's tracepoints.  Per vCPU thread they note when a state begins (an exit
to user space, a kvm_exit, a kvm_entry) and when it ends add the duration
to a log2 histogram keyed by (kind, process, reason), in the kernel; a read
fetches every histogram at once.  :mod:`kvmstat.counting.durations` names the kinds
and folds the histograms into fields.

Each program is attached as a raw tracepoint where the field it reads has a
known place among the tracepoint's arguments (:data:`RAW_ARGS`): the kernel
then does not build the trace record first.  kvm_exit's and the ioctl
marker's programs read the record, through a perf event.

The end of the VMM's time is the thread's next KVM_RUN.  Two markers:

- ``kvm_fpu`` (``load`` = 1): KVM fires it at the start of every KVM_RUN on
  x86 (loading the guest's FPU state).  Only vCPU threads hit it, so it
  costs nothing to other processes.  Chosen where the tracepoint exists.
- ``syscalls:sys_enter_ioctl`` with ``cmd`` = KVM_RUN: where kvm_fpu does
  not exist.  Every ioctl of every process then runs the program (which
  returns at once for other commands), and while any syscall tracepoint is
  enabled every system call takes the kernel's slower traced path:
  ``benchmarks/bench_durations.py`` measures what that costs.

:func:`durations_layout` picks the tracepoints and the marker of this
host; :class:`kvmstat.sampling.duration_source.DurationSource` turns reads into
samples.
"""

from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional, Tuple

from .bpf import _open_error, BpfEventSpec
from .durations import BUCKETS, DurationEntry, DurationHistogram, VcpuEntry
from ..errors import InvalidArgument, NativeError, NotAvailable
from ..tracefs.events import Event, Field, FormatError, parse_format
from .native import binding

__all__ = ["MARKERS", "KVM_RUN", "DurationCounter", "DurationTracepoint", "durations_layout",
           "kvm_exit_unavailable"]

#: ``_IO(KVMIO, 0x80)``: the ioctl command the ioctl marker looks for
KVM_RUN = 0xAE << 8 | 0x80

#: the end-of-VMM-time markers (see the module); ``auto`` prefers kvm_fpu
MARKERS = ("auto", "kvm_fpu", "ioctl")

VERIFIER_LOG_SIZE = 1 << 16

# struct kvmstat_dur_config order (KVMSTAT_DUR_TP_* in the header).
_TRACEPOINT_NAMES = ("kvm_userspace_exit", "marker", "kvm_exit", "kvm_entry", "kvm_vcpu_wakeup")
# layout key -> struct kvmstat_dur_config member
_CONFIG_SLOTS = (("kvm_userspace_exit", "userspace_exit"), ("marker", "marker"),
                 ("kvm_exit", "exit"), ("kvm_entry", "entry"), ("kvm_vcpu_wakeup", "wakeup"))


#: Where the fields the programs read are among the tracepoints' arguments
#: (TP_PROTO), for raw tracepoint programs: (event, field) -> argument
#: index.  kvm_userspace_exit is TP_PROTO(__u32 reason, int errno), kvm_fpu
#: TP_PROTO(int load), kvm_vcpu_wakeup TP_PROTO(__u64 ns, bool waited,
#: bool valid); x86's kvm_exit computes its reason while building the
#: record, so its program reads the record.
RAW_ARGS: Dict[Tuple[str, str], int] = {
    ("kvm_userspace_exit", "reason"): 0,
    ("kvm_fpu", "load"): 0,
    ("kvm_vcpu_wakeup", "ns"): 0,
    ("kvm_vcpu_wakeup", "waited"): 1,
}

#: tracepoints whose programs read no field: always attachable raw
_NO_FIELD_RAW = ("kvm_entry",)


class DurationTracepoint:
    """A tracepoint's id, the record field its program reads, and where that
    field is among its arguments (None: unknown, the program then reads the
    record through perf)."""

    def __init__(self, name: str, tp_id: int, field: Optional[Field] = None,
                 arg: Optional[int] = None):
        self.name = name
        self.id = tp_id
        self.field = field
        self.arg = arg if arg is not None else (
            RAW_ARGS.get((name, field.name)) if field is not None else None)

    @property
    def raw_name(self) -> Optional[str]:
        """The name to attach a raw tracepoint program by, None if it cannot."""
        if self.name in _NO_FIELD_RAW or (self.field is not None and self.arg is not None):
            return self.name
        return None


def kvm_exit_unavailable(sys_path: str = "/sys") -> Optional[str]:
    """Why kvm_exit/kvm_entry durations cannot be measured on this host
    (None where they can): on paravirtual KVM (module kvm_pvm) those
    tracepoints never fire."""
    if os.path.isdir(os.path.join(sys_path, "module", "kvm_pvm")):
        return ("kvm_exit and kvm_entry never fire on this host (paravirtual KVM, module "
                "kvm_pvm): no kernel or guest time can be measured")
    return None


def _format(tracefs: str, subsystem: str, name: str):
    path = os.path.join(tracefs, "events", subsystem, name, "format")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_format(f.read())
    except (OSError, FormatError):
        return None


def _need_field(fmt, name: str, sizes=(1, 2, 4, 8)) -> Field:
    field = fmt.fields.get(name) if fmt is not None else None
    if field is None or field.size not in sizes:
        what = fmt.name if fmt is not None else "the tracepoint"
        raise NotAvailable(f"exit durations need the field {name!r} of {what}, which this "
                           "kernel's format file does not give")
    return field


def durations_layout(tracefs: str, events: Mapping[str, Event], *, marker: str = "auto",
                     kernel_times: bool = True) -> Dict[str, DurationTracepoint]:
    """Which tracepoints the engine uses on this host, with their fields:
    a dict keyed like struct kvmstat_dur_config (kvm_exit and kvm_entry
    only with *kernel_times*).  Raises :class:`NotAvailable` when a needed
    tracepoint or field is missing."""
    if marker not in MARKERS:
        raise InvalidArgument(f"unknown marker {marker!r} (known: {', '.join(MARKERS)})")
    exits = events.get("kvm_userspace_exit")
    if exits is None or exits.reason_field is None:
        raise NotAvailable("exit durations need the kvm_userspace_exit tracepoint and its "
                           "reason field")
    out = {"kvm_userspace_exit": DurationTracepoint("kvm_userspace_exit", exits.id, exits.reason_field)}
    fpu = events.get("kvm_fpu")
    if marker == "kvm_fpu" or (marker == "auto" and fpu is not None):
        if fpu is None:
            raise NotAvailable("the kvm_fpu tracepoint does not exist on this kernel")
        load = _need_field(_format(tracefs, "kvm", "kvm_fpu"), "load")
        out["marker"] = DurationTracepoint("kvm_fpu", fpu.id, load)
    else:
        fmt = _format(tracefs, "syscalls", "sys_enter_ioctl")
        if fmt is None:
            raise NotAvailable("exit durations need kvm_fpu or syscalls:sys_enter_ioctl "
                               "to see KVM_RUN, and this kernel has neither")
        cmd = _need_field(fmt, "cmd", (4, 8))
        # The kernel takes the low 32 bits of the command (unsigned int).
        out["marker"] = DurationTracepoint("sys_enter_ioctl", fmt.id, Field("cmd", cmd.offset, 4, False))
    if kernel_times and "kvm_exit" in events and "kvm_entry" in events:
        exit_ev = events["kvm_exit"]
        if exit_ev.reason_field is not None:
            out["kvm_exit"] = DurationTracepoint("kvm_exit", exit_ev.id, exit_ev.reason_field)
            out["kvm_entry"] = DurationTracepoint("kvm_entry", events["kvm_entry"].id)
    wake = events.get("kvm_vcpu_wakeup")
    if wake is not None:
        fmt = _format(tracefs, "kvm", "kvm_vcpu_wakeup")
        ns, waited = _need_field(fmt, "ns", (8,)), _need_field(fmt, "waited", (1,))
        out["kvm_vcpu_wakeup"] = DurationTracepoint("kvm_vcpu_wakeup", wake.id, ns)
        out["waited"] = DurationTracepoint("kvm_vcpu_wakeup", wake.id, waited)
    return out


class DurationCounter:
    """The durations engine running on the tracepoints of *layout* (see
    :func:`durations_layout`).  :meth:`read` gives every raw histogram,
    :meth:`read_vcpus` every vCPU thread's times.  With *tgid*, the programs
    record only that process (they end at once in every other).  Context
    manager; :meth:`close` releases the descriptors."""

    def __init__(self, layout: Mapping[str, DurationTracepoint], *, marker_value: int,
                 max_entries: int = 0, raw: bool = True, tgid: Optional[int] = None):
        self._closed = True
        try:
            native = binding()
        except NotAvailable as exc:
            raise NotAvailable(f"exit durations need the kvmstat C extension: {exc}") from None
        self._ffi, self._lib = ffi, lib = native.ffi, native.lib
        cfg = ffi.new("struct kvmstat_dur_config *")
        names = []  # the name strings must live until kvmstat_dur_new returns
        for key, attr in _CONFIG_SLOTS:
            tp = layout.get(key)
            slot = getattr(cfg, attr)
            slot.offset = slot.arg = -1
            if tp is None:
                continue
            slot.id = tp.id
            if tp.field is not None:
                slot.offset, slot.size = tp.field.offset, tp.field.size
            if tp.raw_name is not None:
                names.append(ffi.new("char[]", tp.raw_name.encode()))
                slot.name = names[-1]
                slot.arg = -1 if tp.arg is None else tp.arg
        cfg.marker_value = marker_value
        waited = layout.get("waited")
        cfg.wakeup_waited_offset = waited.field.offset if waited is not None else -1
        cfg.wakeup_waited_arg = -1 if waited is None or waited.arg is None else waited.arg
        cfg.max_entries = max_entries
        cfg.tgid = tgid or 0
        cfg.attach = lib.KVMSTAT_DUR_ATTACH_AUTO if raw else lib.KVMSTAT_DUR_ATTACH_PERF
        log = ffi.new("char[]", VERIFIER_LOG_SIZE)
        err = ffi.new("struct kvmstat_bpf_error *")
        out = ffi.new("struct kvmstat_dur **")
        rc = lib.kvmstat_dur_new(cfg, log, VERIFIER_LOG_SIZE, err, out)
        if rc < 0:
            index = err.event_index
            tp = layout.get(_TRACEPOINT_NAMES[index]) if 0 <= index < len(_TRACEPOINT_NAMES) else None
            spec = BpfEventSpec(tp.name, tp.id) if tp is not None else None
            raise _open_error(err.stage, err.err or -rc, spec,
                              ffi.string(log).decode(errors="replace"), needed=14,
                              max_entries=max_entries or None)
        self._eng = out[0]
        self._closed = False
        self._dropped = ffi.new("uint64_t *")
        self._buf = ffi.new("struct kvmstat_dur_entry[]", 64)
        self._vcpu_buf = ffi.new("struct kvmstat_dur_vcpu[]", 64)
        self._now = ffi.new("uint64_t *")

    def _check(self, rc: int, action: str) -> int:
        if rc < 0:
            raise NativeError(f"durations engine: {action} failed: {os.strerror(-rc)}", -rc)
        return rc

    def _copied(self, n: int, copy, buf_attr: str, ctype: str):
        """The *n* records of the last read, copied out by *copy* into the
        buffer kept at *buf_attr* (grown to fit)."""
        buf = getattr(self, buf_attr)
        if n > len(buf):
            buf = self._ffi.new(ctype, n + 64)
            setattr(self, buf_attr, buf)
        return buf[0:copy(self._eng, buf, len(buf))]

    def _open_engine(self):
        if self._closed:
            raise InvalidArgument("the durations engine is closed")
        return self._eng

    def read(self) -> Tuple[List[DurationEntry], int]:
        """Every histogram (counts since start, ``max_ns`` since the previous
        read) and the number of durations lost to a full table."""
        n = self._check(self._lib.kvmstat_dur_read(self._open_engine(), self._dropped), "reading")
        entries = [DurationEntry(e.kind, e.tgid, e.reason,
                                 DurationHistogram(e.count, e.sum_ns, e.max_ns,
                                                   tuple(e.buckets[0:BUCKETS])))
                   for e in self._copied(n, self._lib.kvmstat_dur_copy, "_buf",
                                         "struct kvmstat_dur_entry[]")]
        return entries, int(self._dropped[0])

    def read_vcpus(self) -> Tuple[List[VcpuEntry], int]:
        """Every vCPU thread's cumulative times (:class:`VcpuEntry`, the open
        state counted until the read) and the CLOCK_MONOTONIC time in ns
        they were counted until."""
        n = self._check(self._lib.kvmstat_dur_read_vcpus(self._open_engine(), self._now),
                        "reading vCPUs")
        return ([VcpuEntry(v.tid, v.tgid, v.run_ns, v.vmm_ns, v.guest_ns, v.halt_ns)
                 for v in self._copied(n, self._lib.kvmstat_dur_copy_vcpus, "_vcpu_buf",
                                       "struct kvmstat_dur_vcpu[]")],
                int(self._now[0]))

    def forget(self, tid: int) -> None:
        """Drop the entry of thread *tid* (one that ended)."""
        self._check(self._lib.kvmstat_dur_forget_vcpu(self._eng, tid), "forgetting a thread")

    def reset(self) -> None:
        """Start again from zero."""
        self._check(self._lib.kvmstat_dur_reset(self._eng), "resetting")

    def use_key_iteration(self) -> None:
        """Read by key iteration from now on instead of batch lookups (what
        kernels before 5.6 get; for tests)."""
        self._check(self._lib.kvmstat_dur_force_iteration(self._eng), "switching reads")

    @property
    def attachments(self) -> Dict[str, str]:
        """How each tracepoint's program is attached: ``"raw"`` (a raw
        tracepoint, the cheaper way) or ``"perf"``, by config key
        (``kvm_userspace_exit``, ``marker``, ``kvm_exit``, ``kvm_entry``,
        ``kvm_vcpu_wakeup``); tracepoints not used are left out."""
        kinds = {self._lib.KVMSTAT_DUR_ATTACHED_RAW: "raw",
                 self._lib.KVMSTAT_DUR_ATTACHED_PERF: "perf"}
        out = {}
        for index, key in enumerate(_TRACEPOINT_NAMES):
            kind = kinds.get(self._lib.kvmstat_dur_attached(self._eng, index))
            if kind is not None:
                out[key] = kind
        return out

    @property
    def fds(self) -> int:
        """Descriptors held (maps, programs, perf events)."""
        return 0 if self._closed else self._lib.kvmstat_dur_fds(self._eng)

    def close(self) -> None:
        """Detach the programs and release everything."""
        if not self._closed:
            self._closed = True
            self._lib.kvmstat_dur_free(self._eng)

    def __enter__(self) -> "DurationCounter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
