"""The pure-Python twin of the C counting core (backend "python").

Same semantics as csrc/kvmstat_native.c, written with os, fcntl.ioctl, struct
and ctypes (for the perf_event_open system call, which has no libc wrapper).
It is the reference implementation that tests and benchmarks compare the C
core against; use it through :func:`kvmstat.counting.native.open_counter_set`.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import fcntl
import os
import platform
import struct
from typing import Sequence

from ..host import syscalls
from .common import PARANOID_PATH, PER_CPU, PER_THREAD_INHERIT, CounterSet, EventSpec
from ..errors import NotAvailable

# read() errors while a target thread is exiting: transient, not failures
_THREAD_EXITING = (_errno.ECHILD, _errno.ESRCH, _errno.ENODEV)

__all__ = ["PyCounterSet"]

# From <linux/perf_event.h>.
_PERF_TYPE_TRACEPOINT = 2
_PERF_FORMAT_GROUP = 1 << 3
_PERF_FLAG_FD_CLOEXEC = 1 << 3
_PERF_IOC_FLAG_GROUP = 1
_ATTR_DISABLED = 1 << 0  # first bit of the flags bit-field
_ATTR_INHERIT = 1 << 1
_ATTR_INHERIT_THREAD = 1 << 35  # Linux 5.13+: only CLONE_THREAD children inherit

# ioctl numbers: _IO('$', n) and _IOW('$', 6, char *) for SET_FILTER.  The
# "write" direction bit differs on powerpc (and mips/sparc) from the generic one.
_IOC_WRITE = 4 if platform.machine().startswith("ppc") else 1
_IOC_DIRSHIFT = 29 if platform.machine().startswith("ppc") else 30
_IOCTL = {
    "enable": 0x2400,
    "disable": 0x2401,
}
_IOC_SET_FILTER = (_IOC_WRITE << _IOC_DIRSHIFT) | (ctypes.sizeof(ctypes.c_void_p) << 16) | 0x2406

# struct perf_event_attr up to config1 (PERF_ATTR_SIZE_VER0, 64 bytes):
# type, size, config, sample_period, sample_type, read_format, flag bits,
# wakeup_events, bp_type, config1.
_ATTR = struct.Struct("=IIQQQQQIIQ")


def _check_machine() -> None:
    if syscalls.syscall_number("perf_event_open") is None:
        raise NotAvailable(
            f"the Python counting backend does not know perf_event_open's "
            f"system call number on {platform.machine()}: use the C backend")


class PyCounterSet(CounterSet):
    """CounterSet written in Python; see :class:`kvmstat.counting.native.CounterSet`."""

    def __init__(self, events: Sequence[EventSpec], mode: int,
                 paranoid_path: str = PARANOID_PATH):
        super().__init__(events, mode, paranoid_path)
        n = len(self.events)
        _check_machine()
        self._inherit_thread = mode == PER_THREAD_INHERIT
        self._filters = [ev.filter.encode() + b"\0" if ev.filter else None
                         for ev in self.events]
        self._slots: list[tuple[list[int], int] | None] = []  # (fds, bucket)
        self._last: dict[int, tuple[int, ...]] = {}  # leader fd -> last values read
        self._zeros = (0,) * len(self.events)
        self._enabled = False
        self._retired = [0] * n
        self._retired_b: list[list[int]] = []  # one row per bucket
        self._group = struct.Struct(f"={1 + n}Q")  # nr, then one value per event

    def _attr(self, i: int) -> bytes:
        flags = _ATTR_DISABLED if i == 0 else 0  # members follow their leader
        if self.mode == PER_THREAD_INHERIT:
            flags |= _ATTR_INHERIT | (_ATTR_INHERIT_THREAD if self._inherit_thread else 0)
        return _ATTR.pack(_PERF_TYPE_TRACEPOINT, _ATTR.size, self.events[i].tracepoint_id,
                          0, 0, _PERF_FORMAT_GROUP, flags, 0, 0, 0)

    def _open_one(self, i: int, target: int, group_fd: int) -> int:
        pid, cpu = (-1, target) if self.mode == PER_CPU else (target, -1)
        try:
            return syscalls.perf_event_open(self._attr(i), pid, cpu, group_fd,
                                            _PERF_FLAG_FD_CLOEXEC)
        except OSError as exc:
            if exc.errno != _errno.EINVAL or not self._inherit_thread:
                raise
        # Kernels before 5.13 reject inherit_thread: fall back to plain
        # inherit (forked processes are then counted too), as the C core.
        self._inherit_thread = False
        try:
            return syscalls.perf_event_open(self._attr(i), pid, cpu, group_fd,
                                            _PERF_FLAG_FD_CLOEXEC)
        except OSError:
            self._inherit_thread = True
            raise

    def _do_add(self, target: int, bucket: int) -> int:
        fds: list[int] = []
        i = 0
        try:
            for i in range(len(self.events)):
                fds.append(self._open_one(i, target, fds[0] if fds else -1))
                if self._filters[i]:
                    fcntl.ioctl(fds[i], _IOC_SET_FILTER, self._filters[i])
            if self._enabled:
                i = 0
                fcntl.ioctl(fds[0], _IOCTL["enable"], _PERF_IOC_FLAG_GROUP)
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            raise self._error(exc.errno or _errno.EIO, index=i, target=target,
                              opening=True) from None
        try:
            slot = self._slots.index(None)
            self._slots[slot] = (fds, bucket)
        except ValueError:
            slot = len(self._slots)
            self._slots.append((fds, bucket))
        return slot

    def _read_group(self, leader: int) -> tuple[int, ...]:
        try:
            data = os.read(leader, self._group.size)
        except OSError as exc:
            # As in the C core: while the target thread exits the kernel may
            # refuse the read for a moment; the group keeps its last values.
            if exc.errno in _THREAD_EXITING:
                return self._last.get(leader, self._zeros)
            raise
        if len(data) != self._group.size:
            raise OSError(_errno.EIO, "short read")
        values = self._group.unpack(data)
        if values[0] != len(self.events):
            raise OSError(_errno.EIO, "unexpected member count")
        self._last[leader] = values[1:]
        return values[1:]

    def _do_retire(self, slot: int) -> None:
        fds, bucket = self._slots[slot]  # type: ignore[misc]
        try:
            values = self._read_group(fds[0])
        except OSError as exc:
            raise self._error(exc.errno or _errno.EIO, action="retiring a group") from None
        while len(self._retired_b) <= bucket:
            self._retired_b.append([0] * len(self.events))
        row = self._retired_b[bucket]
        for i, v in enumerate(values):
            self._retired[i] += v
            row[i] += v
        for fd in fds:
            os.close(fd)
        self._last.pop(fds[0], None)
        self._slots[slot] = None

    def _do_ioctl(self, what: str) -> None:
        try:
            for entry in self._slots:
                if entry is not None:
                    fcntl.ioctl(entry[0][0], _IOCTL[what], _PERF_IOC_FLAG_GROUP)
        except OSError as exc:
            raise self._error(exc.errno or _errno.EIO, action=f"perf {what}") from None
        self._enabled = what == "enable"

    def _do_reset(self) -> None:
        # As the C core: no PERF_EVENT_IOC_RESET (it keeps what ended inherited
        # threads counted); the retired sums become minus the live values.
        n = len(self.events)
        retired = [0] * n
        rows = [[0] * n for _ in self._retired_b]
        for entry in self._slots:
            if entry is None:
                continue
            fds, bucket = entry
            try:
                values = self._read_group(fds[0])
            except OSError as exc:
                raise self._error(exc.errno or _errno.EIO, action="resetting counters") from None
            while len(rows) <= bucket:
                rows.append([0] * n)
            for i, v in enumerate(values):
                retired[i] -= v
                rows[bucket][i] -= v
        self._retired, self._retired_b = retired, rows

    def _do_clear_bucket(self, bucket: int) -> None:
        if any(entry is not None and entry[1] == bucket for entry in self._slots):
            raise self._error(_errno.EBUSY, action=f"clearing bucket {bucket}")
        if bucket < len(self._retired_b):
            self._retired_b[bucket] = [0] * len(self.events)

    def _do_read(self, nbuckets: int) -> tuple[list[int], list[int] | None]:
        n = len(self.events)
        totals = list(self._retired)
        rows = [list(r) for r in self._retired_b[:nbuckets]]
        rows += [[0] * n for _ in range(nbuckets - len(rows))]
        for entry in self._slots:
            if entry is None:
                continue
            try:
                values = self._read_group(entry[0][0])
            except OSError as exc:
                raise self._error(exc.errno or _errno.EIO, action="reading counters") from None
            totals = [a + b for a, b in zip(totals, values)]
            if entry[1] < nbuckets:
                rows[entry[1]] = [a + b for a, b in zip(rows[entry[1]], values)]
        if not nbuckets:
            return totals, None
        return totals, [v for row in rows for v in row]

    def _do_groups(self) -> int:
        return sum(1 for e in self._slots if e is not None)

    def _do_close(self) -> None:
        for entry in self._slots:
            if entry is not None:
                for fd in entry[0]:
                    os.close(fd)
        self._slots = []
        self._last = {}
