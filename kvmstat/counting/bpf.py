"""Counting tracepoints with BPF programs: the interface of the BPF engine.

The engine (``csrc/kvmstat_bpf.c``) attaches one small BPF program to each
tracepoint.  On every hit, on any CPU, the program adds 1 to a per-CPU
counter, in one of two layouts:

* ``"slots"``: a per-CPU array with one slot per event, and per reason for
  the events a field breaks down (e.g. the ``reason`` of
  ``kvm_userspace_exit``): one inlined array lookup and one add per hit,
  the closest BPF comes to a perf counter increment.  No per-process split
  (``only_pid`` still filters).
* ``"by-process"``: a per-CPU hash entry keyed by (event, process id,
  reason), so each VM's counts can be told apart: a hash lookup per hit.

Programs are attached as raw tracepoints where possible (they get the
tracepoint's arguments, without the kernel first building the trace
record), else through a perf event of the tracepoint (they read the
record); see :attr:`BpfCounter.attached`.  A full breakdown by reason (and
by VM) costs one program run per hit, and the engine holds ``2 x events +
2`` file descriptors (one more when it counts one process) however many
CPUs, VMs or threads there are.  Threads and processes that appear later
are counted without any action.

A :class:`BpfCounter` is configured with *fields*, the columns its
:meth:`~BpfCounter.read` returns: an event with all of its reasons (a
parent) or only some reason codes (a child, e.g. ``kvm_userspace_exit(IO)``),
and with a process -> bucket table for per-VM rows, so that it reads like a
perf :class:`~kvmstat.counting.native.CounterSet`: ``(totals, flat bucket matrix)``
in one native call.

The compiled binding comes from :func:`kvmstat.counting.native.binding`; there is no
pure-Python twin of this engine.
"""

from __future__ import annotations

import errno as _errno
import os
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, NamedTuple, Sequence

from .checks import INT32_MAX as _INT32_MAX, UINT32_MAX as _UINT32_MAX, check_events
from .checks import is_int as _is_int
from .common import PARANOID_PATH, PER_CPU, EventSpec, error_from_errno
from .. import errors
from ..errors import (BpfLoadError, BpfTableFull, Error, InvalidArgument, NativeError,
                      NotAvailable)
from .native import binding

__all__ = [
    "BpfEventSpec",
    "BpfField",
    "BpfEntry",
    "BpfCounter",
    "BpfLoadError",
    "BpfTableFull",
    "DEFAULT_MAX_ENTRIES",
    "LAYOUTS",
    "ATTACH_MODES",
    "bpf_supported",
]

#: Counter layouts of :class:`BpfCounter` (see the module); ``"empty"``
#: attaches programs that return at once and count nothing: the floor of
#: what a hit costs with BPF, for benchmarks.
LAYOUTS = ("by-process", "slots", "empty")
#: How programs are attached: raw tracepoint where the event allows
#: (``auto``, falling back to perf per event), always perf, always raw.
ATTACH_MODES = ("auto", "perf", "raw")
_RAW_ARGS = 12  # a raw tracepoint passes at most this many arguments

# Capacity of the count table when none is given: 16384 entries up to 128
# possible CPUs, fewer beyond (KVMSTAT_BPF_TABLE_BUDGET in kvmstat_bpf.h:
# the table is preallocated, one u64 per possible CPU per entry, so that a
# program never has to allocate an entry, which can fail and lose a hit).
# A VM needs a few dozen entries (one per event and reason it produces), so
# this is room for hundreds of VMs; a read walks every hash bucket: about
# 1 us per 1000 entries of capacity (measured: 6 us per read at 1024, 13 us
# at 16384, 57 us at 65536).  Entries of exited VMs can be removed with
# BpfCounter.forget.
DEFAULT_MAX_ENTRIES = None

VERIFIER_LOG_SIZE = 1 << 16
LOG_TAIL_LINES = 4
_INSN_LINE = re.compile(r"^\s*\d+: \(")  # "5: (61) r1 = *(u32 *)(r6 +9)  ; R1=..."

_REASON_SIZES = (1, 2, 4, 8)
_MAX_REASON_OFFSET = 2**15 - 1  # the program's loads take a 16-bit offset

# Stage numbers of struct kvmstat_bpf_error (csrc/kvmstat_bpf.h).
_STAGE_MAP, _STAGE_LOAD, _STAGE_OPEN, _STAGE_ATTACH, _STAGE_CPUS = range(1, 6)
_STAGE_ACTIONS = {
    0: "setting up the BPF engine",
    _STAGE_MAP: "creating a BPF map",
    _STAGE_LOAD: "loading a BPF program",
    _STAGE_OPEN: "perf_event_open",
    _STAGE_ATTACH: "attaching a BPF program",
    _STAGE_CPUS: "counting the possible CPUs",
}
_BPF_PRIVILEGE_HINT = ("run as root or grant CAP_BPF and CAP_PERFMON "
                       "(or use the perf engine)")


@dataclass(frozen=True)
class BpfEventSpec:
    """A tracepoint to count, and where its reason is.

    ``reason_offset``/``reason_size`` come from the ``field:`` line of the
    tracepoint's format file (offset in bytes, size 1, 2, 4 or 8); None for
    an event without a reason breakdown (every hit counts under reason 0).
    ``tracepoint``: the tracepoint's name (e.g. ``kvm_pio``), which a raw
    tracepoint attachment needs; None attaches through perf only.
    ``reason_arg``: the index of the reason among the tracepoint's
    arguments (its TP_PROTO), for a raw tracepoint program; None when
    unknown (a breakdown then reads the record, through perf).
    """

    name: str  # shown in error messages
    tracepoint_id: int
    reason_offset: int | None = None
    reason_size: int = 0
    tracepoint: str | None = None
    reason_arg: int | None = None

    @classmethod
    def for_field(cls, name: str, tracepoint_id: int, field: object | None, *,
                  tracepoint: str | None = None,
                  reason_arg: int | None = None) -> "BpfEventSpec":
        """A spec whose reason is ``field`` (anything with ``offset`` and
        ``size``, e.g. a :class:`kvmstat.tracefs.events.Field`), or None."""
        if field is None:
            return cls(name, tracepoint_id, tracepoint=tracepoint)
        return cls(name, tracepoint_id, field.offset, field.size,  # type: ignore[attr-defined]
                   tracepoint=tracepoint, reason_arg=reason_arg)


class BpfField(NamedTuple):
    """An output column: event index, and None (every reason: a parent) or
    the reason codes it counts (a child; several for aliases)."""

    event: int
    codes: tuple[int, ...] | None = None


class BpfEntry(NamedTuple):
    """A raw table entry, summed over CPUs (see :meth:`BpfCounter.dump`)."""

    event: int
    tgid: int
    reason: int
    count: int


def _log_tail(log: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last non-empty lines of a verifier log, on one line, without the
    register states the verifier appends to instruction lines after ``;``."""
    kept = []
    for line in log.splitlines():
        if _INSN_LINE.match(line):
            line = line.split(";", 1)[0]
        if line.strip():
            kept.append(line.strip())
    return " | ".join(kept[-lines:]) or "(empty)"


def _describe_reason(ev: BpfEventSpec) -> str:
    if ev.reason_offset is None:
        return "no reason field"
    return f"reason field at offset {ev.reason_offset}, {ev.reason_size} bytes"


def _open_error(stage: int, err: int, event: BpfEventSpec | None, log: str,
                needed: int, max_entries: int | None,
                paranoid_path: str = PARANOID_PATH) -> Error:
    """Turn a failed kvmstat_bpf_new/_probe (stage, positive errno, verifier
    log) into a kvmstat exception with a one-line message."""
    name = event.name if event is not None else None
    action = _STAGE_ACTIONS.get(stage, _STAGE_ACTIONS[0])
    subject = f" for {name}" if name else ""
    perf_event = EventSpec(event.name, event.tracepoint_id) if event is not None else None
    if err in (_errno.EMFILE, _errno.ENFILE) or stage == _STAGE_OPEN:
        return error_from_errno(err, event=perf_event, target=0 if event else None,
                                mode=PER_CPU, action=action, needed=needed,
                                paranoid_path=paranoid_path)
    detail = os.strerror(err)
    if stage == _STAGE_LOAD and log.strip():
        # EACCES/EINVAL from the verifier: the program is wrong, not the user.
        what = f"{subject} ({_describe_reason(event)})" if event is not None else ""
        return BpfLoadError(
            f"the kernel's verifier rejected the BPF program{what} "
            f"({_errno.errorcode.get(err, err)}): {_log_tail(log)}", err, name, log)
    if err in (_errno.EPERM, _errno.EACCES) and stage in (_STAGE_MAP, _STAGE_LOAD):
        return errors.error_from_errno(err, f"{action}{subject}", fix=_BPF_PRIVILEGE_HINT)
    if stage == _STAGE_ATTACH and err == _errno.EACCES and event is not None:
        # perf refuses programs that read past the end of the record.
        return NativeError(
            f"attaching the BPF program to {name} failed: its {_describe_reason(event)} "
            "lies beyond the tracepoint's record", err, event=name)
    if stage == _STAGE_ATTACH and err == _errno.E2BIG:
        return NativeError(
            f"attaching the BPF program to {name} failed: the tracepoint has the "
            "most BPF programs the kernel allows (other monitors are attached)",
            err, event=name)
    if stage == _STAGE_MAP and err in (_errno.ENOMEM, _errno.E2BIG):
        size = "the default size" if max_entries is None else f"{max_entries} entries"
        detail += f" (count table of {size})"
    if stage == _STAGE_LOAD and err == _errno.EINVAL:
        detail += " (does this kernel support BPF tracepoint programs?)"
    return errors.error_from_errno(err, f"{action}{subject}", reasons={err: detail}, event=name)


def _check_events(events: Sequence[BpfEventSpec]) -> tuple[BpfEventSpec, ...]:
    events = check_events(events, BpfEventSpec, "the BPF engine")
    for ev in events:
        if ev.tracepoint is not None and (not isinstance(ev.tracepoint, str)
                                          or not ev.tracepoint.isidentifier()):
            raise InvalidArgument(f"bad tracepoint name {ev.tracepoint!r} for {ev.name}")
        if ev.reason_arg is not None and (not _is_int(ev.reason_arg)
                                          or not 0 <= ev.reason_arg < _RAW_ARGS):
            raise InvalidArgument(f"bad reason argument {ev.reason_arg!r} for {ev.name}: "
                                  f"need 0 to {_RAW_ARGS - 1}")
        if ev.reason_offset is None:
            continue
        if not _is_int(ev.reason_offset) or not 0 <= ev.reason_offset <= _MAX_REASON_OFFSET:
            raise InvalidArgument(
                f"bad reason field offset {ev.reason_offset!r} for {ev.name}: "
                f"need 0 to {_MAX_REASON_OFFSET}")
        if ev.reason_size not in _REASON_SIZES or not _is_int(ev.reason_size):
            # BPF has no load instruction for other sizes.
            raise InvalidArgument(
                f"bad reason field size {ev.reason_size!r} for {ev.name}: "
                "the BPF engine reads fields of 1, 2, 4 or 8 bytes")
    return events


def _check_fields(fields: Iterable, events: Sequence[BpfEventSpec]) -> tuple[BpfField, ...]:
    """Fields as BpfField with codes as the field's zero-extended values."""
    if isinstance(fields, (str, bytes)):
        raise InvalidArgument("fields must be a sequence of (event index, codes or None)")
    out = []
    for item in fields:
        try:
            event, codes = item
        except (TypeError, ValueError):
            raise InvalidArgument(f"bad field {item!r}: need (event index, codes or None)") from None
        if not _is_int(event) or not 0 <= event < len(events):
            raise InvalidArgument(f"bad field {item!r}: no event with index {event!r}")
        if codes is None:
            out.append(BpfField(event, None))
            continue
        ev = events[event]
        if ev.reason_offset is None:
            raise InvalidArgument(
                f"field for {ev.name} lists reason codes but the event has no reason field")
        if isinstance(codes, (str, bytes)):
            raise InvalidArgument(f"bad reason codes {codes!r} for {ev.name}")
        codes = tuple(codes)
        bits = 8 * ev.reason_size
        if not codes:
            raise InvalidArgument(f"empty reason code list for {ev.name}: use None for all reasons")
        for c in codes:
            # A signed field's negative codes are allowed; the program loads
            # the field zero-extended, so they are compared modulo 2**bits.
            if not _is_int(c) or not -(2 ** (bits - 1)) <= c < 2**bits:
                raise InvalidArgument(
                    f"bad reason code {c!r} for {ev.name}: does not fit its "
                    f"{ev.reason_size}-byte field")
        out.append(BpfField(event, tuple(c % 2**bits for c in codes)))
    return tuple(out)


class BpfCounter:
    """The BPF engine counting some tracepoints, read as fields x buckets.

    ``events``: the tracepoints (:class:`BpfEventSpec`).  ``fields``: the
    columns of :meth:`read`, each ``(event index, None or reason codes)``.
    ``only_pid``: count only this process (the ``-p`` of kvm_stat), and
    those given to :meth:`also_count`.
    ``layout``: ``"by-process"`` (per-process rows, :meth:`set_buckets`) or
    ``"slots"`` (the cheapest per hit; rows only for ``only_pid``, whose
    bucket gets every count); see the module.
    ``attach``: one of :data:`ATTACH_MODES`.
    ``max_entries``: capacity of the by-process count table (preallocated;
    None: sized by the number of possible CPUs, see :attr:`max_entries`
    afterwards).

    Counting starts when the object is created.  Context manager; call
    :meth:`close` (or leave the ``with`` block) to release the descriptors.
    """

    def __init__(self, events: Sequence[BpfEventSpec], fields: Iterable,
                 only_pid: int | None = None, *,
                 layout: str = "by-process", attach: str = "auto",
                 max_entries: int | None = DEFAULT_MAX_ENTRIES,
                 paranoid_path: str = PARANOID_PATH):
        self._closed = True  # until the engine exists
        self.events: tuple[BpfEventSpec, ...] = _check_events(events)
        self.fields: tuple[BpfField, ...] = _check_fields(fields, self.events)
        if only_pid is not None and (not _is_int(only_pid) or not 0 < only_pid <= _INT32_MAX):
            raise InvalidArgument(f"bad pid {only_pid!r}: need a process id > 0")
        if max_entries is not None and (not _is_int(max_entries)
                                        or not 0 < max_entries <= _UINT32_MAX):
            raise InvalidArgument(f"bad table size {max_entries!r}: need 1 to {_UINT32_MAX}")
        if layout not in LAYOUTS:
            raise InvalidArgument(f"unknown layout {layout!r} (known: {', '.join(LAYOUTS)})")
        if attach not in ATTACH_MODES:
            raise InvalidArgument(f"unknown attach mode {attach!r} "
                                  f"(known: {', '.join(ATTACH_MODES)})")
        self.only_pid = only_pid
        self.layout = layout
        self.max_entries = max_entries
        try:
            native = binding()
        except NotAvailable as exc:
            raise NotAvailable(f"the BPF engine needs the kvmstat C extension: {exc}") from None
        self._ffi, self._lib = native.ffi, native.lib
        self._open(attach, paranoid_path)
        self._closed = False
        self.max_entries = self._lib.kvmstat_bpf_max_entries(self._eng)
        n = len(self.fields)
        self._totals = self._ffi.new("uint64_t[]", n)
        self._dropped = self._ffi.new("uint64_t *")
        self._nb = 0
        self._buckets = self._ffi.NULL
        self._entries = 0

    def _c_fields(self):
        """The fields as a struct kvmstat_bpf_field array, and the code
        arrays it points to (keep them alive until the call)."""
        ffi = self._ffi
        cfields = ffi.new("struct kvmstat_bpf_field[]", max(1, len(self.fields)))
        keep = []
        for i, f in enumerate(self.fields):
            cfields[i].event = f.event
            if f.codes is not None:
                keep.append(ffi.new("uint64_t[]", f.codes))
                cfields[i].codes = keep[-1]
                cfields[i].ncodes = len(f.codes)
        return cfields, keep

    def _c_events(self):
        """The events as a struct kvmstat_bpf_event array, and the names it
        points to."""
        ffi = self._ffi
        cevents = ffi.new("struct kvmstat_bpf_event[]", len(self.events))
        keep = []
        for i, ev in enumerate(self.events):
            cevents[i].tracepoint_id = ev.tracepoint_id
            cevents[i].reason_offset = -1 if ev.reason_offset is None else ev.reason_offset
            cevents[i].reason_size = ev.reason_size if ev.reason_offset is not None else 0
            cevents[i].reason_arg = -1 if ev.reason_arg is None else ev.reason_arg
            if ev.tracepoint is not None:
                keep.append(ffi.new("char[]", ev.tracepoint.encode()))
                cevents[i].name = keep[-1]
        return cevents, keep

    def _open(self, attach: str, paranoid_path: str) -> None:
        ffi, lib = self._ffi, self._lib
        n = len(self.events)
        cevents, _names = self._c_events()
        cfields, _codes = self._c_fields()
        opt = ffi.new("struct kvmstat_bpf_options *")
        opt.only_tgid = lib.KVMSTAT_BPF_ALL_TGIDS if self.only_pid is None else self.only_pid
        opt.layout = {"by-process": lib.KVMSTAT_BPF_BY_PROCESS, "slots": lib.KVMSTAT_BPF_SLOTS,
                      "empty": lib.KVMSTAT_BPF_EMPTY}[self.layout]
        opt.attach = {"auto": lib.KVMSTAT_BPF_ATTACH_AUTO, "perf": lib.KVMSTAT_BPF_ATTACH_PERF,
                      "raw": lib.KVMSTAT_BPF_ATTACH_RAW}[attach]
        opt.max_entries = self.max_entries or 0
        log = ffi.new("char[]", VERIFIER_LOG_SIZE)
        err = ffi.new("struct kvmstat_bpf_error *")
        out = ffi.new("struct kvmstat_bpf **")
        rc = lib.kvmstat_bpf_new(cevents, n, cfields, len(self.fields), opt, log,
                                 VERIFIER_LOG_SIZE, err, out)
        if rc < 0:
            index = err.event_index
            event = self.events[index] if 0 <= index < n else None
            raise _open_error(err.stage, err.err or -rc, event,
                              ffi.string(log).decode(errors="replace"),
                              needed=2 * n + 2 + (self.only_pid is not None),
                              max_entries=self.max_entries,
                              paranoid_path=paranoid_path)
        self._eng = out[0]

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidArgument("the BPF counter is closed")

    def _check_rc(self, rc: int, action: str) -> int:
        if rc < 0:
            raise NativeError(f"BPF engine: {action} failed: {os.strerror(-rc)}", -rc)
        return rc

    # -- public interface ---------------------------------------------------
    def set_buckets(self, buckets: Mapping[int, int]) -> None:
        """Set the process id -> bucket table used by :meth:`read` (replaces
        the previous one; call it when VMs come and go)."""
        self._check_open()
        if not isinstance(buckets, Mapping):
            raise InvalidArgument("buckets must be a mapping of process id -> bucket")
        for tgid, bucket in buckets.items():
            if not _is_int(tgid) or not 0 <= tgid <= _UINT32_MAX:
                raise InvalidArgument(f"bad process id {tgid!r} in the bucket table")
            if not _is_int(bucket) or not 0 <= bucket <= _INT32_MAX:
                raise InvalidArgument(f"bad bucket {bucket!r} for process {tgid}")
        n = len(buckets)
        tgids = self._ffi.new("uint32_t[]", list(buckets.keys()))
        rows = self._ffi.new("uint32_t[]", list(buckets.values()))
        self._check_rc(self._lib.kvmstat_bpf_set_buckets(self._eng, tgids, rows, n),
                       "setting the buckets")

    def also_count(self, pids: Iterable[int]) -> None:
        """With ``only_pid``: count these processes too, e.g. the kernel
        threads working for a VM outside its thread group (replaces the
        previous set; counts already made stay)."""
        self._check_open()
        if self.only_pid is None:
            raise InvalidArgument("also_count needs a counter made with only_pid")
        pids = list(pids)
        for pid in pids:
            if not _is_int(pid) or not 0 < pid <= _UINT32_MAX:
                raise InvalidArgument(f"bad process id {pid!r}")
        limit = self._lib.KVMSTAT_BPF_MAX_ALSO
        if len(set(pids)) > limit:
            raise InvalidArgument(f"too many processes to count besides pid {self.only_pid}: "
                                  f"{len(set(pids))}, at most {limit}")
        arr = self._ffi.new("uint32_t[]", pids) if pids else self._ffi.NULL
        self._check_rc(self._lib.kvmstat_bpf_also_count(self._eng, arr, len(pids)),
                       "setting the processes counted")

    @property
    def entries(self) -> int:
        """Entries the count table held at the last :meth:`read` (each
        (event, process, reason) seen; see :meth:`forget`)."""
        return self._entries

    def read(self, nbuckets: int = 0) -> tuple[list[int], list[int] | None]:
        """Counts per field, and a flat nbuckets x nfields list (row = bucket,
        None when nbuckets is 0).  Processes without a bucket < nbuckets
        count only in the totals.  Raises :class:`BpfTableFull` once hits
        were lost to a full table (until :meth:`reset`)."""
        totals = self._read_native(nbuckets)
        n = len(self.fields)
        return totals, (self._ffi.unpack(self._buckets, nbuckets * n) if nbuckets else None)

    def read_rows(self, nbuckets: int) -> tuple[list[int], dict[int, list[int]]]:
        """Like :meth:`read`, with only the buckets that counted something:
        bucket -> its row; a bucket left out has zero for every field.

        The fold is done in C as for :meth:`read`; the rows all zero are
        told apart by comparing their bytes (a memcmp each), so no Python
        object is made per field of a bucket without counts."""
        totals = self._read_native(nbuckets)
        if not nbuckets:
            return totals, {}
        ffi, n = self._ffi, len(self.fields)
        width = n * ffi.sizeof("uint64_t")
        data = ffi.buffer(self._buckets, nbuckets * width)[:]
        zero = bytes(width)
        return totals, {b: ffi.unpack(self._buckets + b * n, n) for b in range(nbuckets)
                        if data[b * width:(b + 1) * width] != zero}

    def _read_native(self, nbuckets: int) -> list[int]:
        """Fold the count table into the totals (returned) and the first
        *nbuckets* rows of the bucket matrix (left in ``self._buckets``)."""
        self._check_open()
        if not _is_int(nbuckets) or not 0 <= nbuckets <= _INT32_MAX:
            raise InvalidArgument(f"bad nbuckets {nbuckets!r}: need an integer >= 0")
        ffi, n = self._ffi, len(self.fields)
        if nbuckets != self._nb:
            self._buckets = ffi.new("uint64_t[]", nbuckets * n) if nbuckets else ffi.NULL
            self._nb = nbuckets
        self._entries = self._check_rc(
            self._lib.kvmstat_bpf_read(self._eng, self._totals, self._buckets, nbuckets,
                                       self._dropped),
            "reading the count table")
        if self._dropped[0]:
            raise BpfTableFull(
                f"the BPF count table is full ({self.max_entries} entries): "
                f"{self._dropped[0]} hits were not counted; count fewer events "
                "or use the perf engine", self._dropped[0])
        return ffi.unpack(self._totals, n)

    def dump(self) -> list[BpfEntry]:
        """Every table entry (event index, process id, reason, count summed
        over CPUs), in no particular order.  For tests and debugging; the
        sums kept for forgotten processes are not included.  In the slots
        layout: one entry per slot with a count, process id 0, except the
        slot of the reasons no field names (process id 4294967295)."""
        self._check_open()
        cap = 64
        while True:
            buf = self._ffi.new("struct kvmstat_bpf_entry[]", cap)
            n = self._check_rc(self._lib.kvmstat_bpf_dump(self._eng, buf, cap), "dumping the table")
            if n <= cap:
                return [BpfEntry(e.event, e.tgid, e.reason, e.count) for e in buf[0:n]]
            cap = n + 64  # it grew between the calls: try again

    def reset(self) -> None:
        """Start again from zero: empties the table and the kept sums."""
        self._check_open()
        self._check_rc(self._lib.kvmstat_bpf_reset(self._eng), "resetting the counts")

    def forget(self, pids: Iterable[int]) -> int:
        """Remove the table entries of processes that have exited, keeping
        their counts in the totals (no longer in any bucket).  Only for
        exited processes.  Returns the number of entries removed."""
        self._check_open()
        pids = list(pids)
        for pid in pids:
            if not _is_int(pid) or not 0 <= pid <= _UINT32_MAX:
                raise InvalidArgument(f"bad process id {pid!r}")
        if not pids:
            return 0
        arr = self._ffi.new("uint32_t[]", pids)
        return self._check_rc(self._lib.kvmstat_bpf_forget(self._eng, arr, len(pids)),
                              "forgetting processes")

    def use_key_iteration(self) -> None:
        """Read by key iteration from now on instead of batch lookups (what
        kernels before 5.6 get; for tests)."""
        self._check_open()
        self._lib.kvmstat_bpf_force_iteration(self._eng)

    @property
    def missed(self) -> int:
        """Hits the kernel skipped because another BPF program was running
        on that CPU at the time (counted by the kernel since Linux 5.12)."""
        self._check_open()
        out = self._ffi.new("uint64_t *")
        self._check_rc(self._lib.kvmstat_bpf_missed(self._eng, out), "reading program statistics")
        return int(out[0])

    @property
    def attached(self) -> tuple[str, ...]:
        """How each event's program is attached: ``"raw"`` (raw tracepoint)
        or ``"perf"`` (a perf event of the tracepoint)."""
        self._check_open()
        kinds = {self._lib.KVMSTAT_BPF_ATTACHED_RAW: "raw",
                 self._lib.KVMSTAT_BPF_ATTACHED_PERF: "perf"}
        return tuple(kinds.get(self._lib.kvmstat_bpf_attached(self._eng, i), "?")
                     for i in range(len(self.events)))

    @property
    def fds(self) -> int:
        """File descriptors held: a program and a perf event per event, two
        maps (three with ``only_pid``)."""
        return 0 if self._closed else self._lib.kvmstat_bpf_fds(self._eng)

    @property
    def ncpus(self) -> int:
        """Possible CPUs, as the kernel counts them for per-CPU values."""
        self._check_open()
        return self._lib.kvmstat_bpf_ncpus(self._eng)

    @property
    def batch_reads(self) -> bool:
        """True if reads use BPF_MAP_LOOKUP_BATCH, False for key iteration."""
        self._check_open()
        return bool(self._lib.kvmstat_bpf_batch_reads(self._eng))

    def close(self) -> None:
        """Release every descriptor; the counter cannot be used afterwards."""
        if not self._closed:
            self._closed = True
            self._lib.kvmstat_bpf_free(self._eng)
            self._eng = self._ffi.NULL

    def __enter__(self) -> "BpfCounter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.fds} fds"
        who = f" pid {self.only_pid}" if self.only_pid is not None else ""
        return (f"<BpfCounter {len(self.events)} events {len(self.fields)} fields"
                f"{who} {state}>")


def bpf_supported(tracepoint_id: int | None = None) -> tuple[bool, str]:
    """Whether this process can use the BPF engine, and why not.

    Creates a map and loads a program; with ``tracepoint_id`` also opens
    that tracepoint and attaches the program (not enabled).  Everything is
    closed again.  Returns ``(True, "")`` or ``(False, one-line reason)``.
    """
    if tracepoint_id is not None and (not _is_int(tracepoint_id) or not 0 < tracepoint_id < 2**64):
        raise InvalidArgument(f"bad tracepoint id {tracepoint_id!r}")
    try:
        native = binding()
    except NotAvailable as exc:
        return False, f"the BPF engine needs the kvmstat C extension: {exc}"
    err = native.ffi.new("struct kvmstat_bpf_error *")
    rc = native.lib.kvmstat_bpf_probe(tracepoint_id or 0, err)
    if rc == 0:
        return True, ""
    probe = (BpfEventSpec(f"tracepoint {tracepoint_id}", tracepoint_id)
             if tracepoint_id and err.event_index >= 0 else None)
    exc = _open_error(err.stage, err.err or -rc, probe, "", needed=4, max_entries=1)
    return False, str(exc)

