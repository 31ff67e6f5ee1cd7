"""Counting tracepoints with perf_event_open: the interface of the counting core.

Two backends implement the same :class:`CounterSet`:

* ``"c"`` (default): the C core in ``csrc/kvmstat_native.c`` through the cffi
  extension ``kvmstat._native``.  This is the only module that imports it.
* ``"python"``: the pure-Python twin in :mod:`kvmstat.counting.pybackend`, the reference
  implementation for tests and benchmarks.

``open_counter_set(..., backend=None)`` picks ``$KVMSTAT_BACKEND`` or ``"c"``.
"""

from __future__ import annotations

import importlib
import os
from typing import Sequence

from .common import (PARANOID_PATH, PER_CPU, PER_THREAD, PER_THREAD_INHERIT,
                          CounterSet, EventSpec)
from ..errors import InvalidArgument, NotAvailable

__all__ = ["PER_CPU", "PER_THREAD", "PER_THREAD_INHERIT", "EventSpec", "CounterSet",
           "open_counter_set", "available_backends", "binding"]

BACKENDS = ("c", "python")


def _import_native():
    """The cffi extension module, or ImportError when it was not built."""
    # import_module honours sys.modules (a package attribute would not).
    return importlib.import_module("kvmstat._native")


def _load_native():
    try:
        return _import_native()
    except ImportError as exc:
        raise NotAvailable(
            f"the kvmstat C extension (kvmstat._native) was not built ({exc}): "
            "reinstall with `pip install .` (needs cffi and a C compiler), "
            "or use the slower pure-Python backend with KVMSTAT_BACKEND=python"
        ) from None


class _CCounterSet(CounterSet):
    """CounterSet on the C core: one native call per operation."""

    def __init__(self, native, events: Sequence[EventSpec], mode: int,
                 paranoid_path: str):
        super().__init__(events, mode, paranoid_path)
        self._ffi, self._lib = native.ffi, native.lib
        ffi, lib = self._ffi, self._lib
        n = len(self.events)
        cevents = ffi.new("struct kvmstat_event[]", n)
        filters = []  # keeps the C strings alive until kvmstat_set_new copied them
        for i, ev in enumerate(self.events):
            cevents[i].tracepoint_id = ev.tracepoint_id
            if ev.filter:
                filters.append(ffi.new("char[]", ev.filter.encode()))
                cevents[i].filter = filters[-1]
        out = ffi.new("struct kvmstat_set **")
        rc = lib.kvmstat_set_new(cevents, n, mode, out)
        if rc < 0:
            self._closed = True
            raise self._error(-rc, action="creating the counter set")
        self._set = out[0]
        self._err = ffi.new("struct kvmstat_error *")
        # Read buffers are allocated once; the bucket buffer again only when
        # nbuckets changes.
        self._totals = ffi.new("uint64_t[]", n)
        self._nb = 0
        self._buckets = ffi.NULL

    def _do_add(self, target: int, bucket: int) -> int:
        rc = self._lib.kvmstat_set_add(self._set, target, bucket, self._err)
        if rc < 0:
            e = self._err
            raise self._error(e.err or -rc, index=e.event_index, target=target,
                              opening=True)
        return rc

    def _do_retire(self, slot: int) -> None:
        rc = self._lib.kvmstat_set_retire(self._set, slot)
        if rc < 0:
            raise self._error(-rc, action="retiring a group")

    def _do_ioctl(self, what: str) -> None:
        fn = {"enable": self._lib.kvmstat_set_enable,
              "disable": self._lib.kvmstat_set_disable}[what]
        rc = fn(self._set)
        if rc < 0:
            raise self._error(-rc, action=f"perf {what}")

    def _do_reset(self) -> None:
        rc = self._lib.kvmstat_set_reset(self._set)
        if rc < 0:
            raise self._error(-rc, action="resetting counters")

    def _do_clear_bucket(self, bucket: int) -> None:
        rc = self._lib.kvmstat_set_clear_bucket(self._set, bucket)
        if rc < 0:
            raise self._error(-rc, action=f"clearing bucket {bucket}")

    def _do_read(self, nbuckets: int) -> tuple[list[int], list[int] | None]:
        n = len(self.events)
        if nbuckets != self._nb:
            self._buckets = self._ffi.new("uint64_t[]", nbuckets * n) if nbuckets else self._ffi.NULL
            self._nb = nbuckets
        rc = self._lib.kvmstat_set_read(self._set, self._totals, self._buckets, nbuckets)
        if rc < 0:
            raise self._error(-rc, action="reading counters")
        unpack = self._ffi.unpack
        return (unpack(self._totals, n),
                unpack(self._buckets, nbuckets * n) if nbuckets else None)

    def _do_groups(self) -> int:
        return self._lib.kvmstat_set_groups(self._set)

    def _do_close(self) -> None:
        self._lib.kvmstat_set_free(self._set)
        self._set = self._ffi.NULL


def _choose_backend(backend: str | None) -> str:
    if backend is None:
        backend = os.environ.get("KVMSTAT_BACKEND", "c") or "c"
        origin = "KVMSTAT_BACKEND"
    else:
        origin = "backend"
    if backend not in BACKENDS:
        raise InvalidArgument(
            f"unknown counting backend {backend!r} ({origin}): use 'c' or 'python'")
    return backend


def open_counter_set(events: Sequence[EventSpec], mode: int,
                     backend: str | None = None, *,
                     paranoid_path: str = PARANOID_PATH) -> CounterSet:
    """An empty, disabled counter set for these events.

    ``mode`` is PER_CPU (targets are CPU numbers), PER_THREAD (thread ids) or
    PER_THREAD_INHERIT (thread ids, also counting the threads they create).
    ``backend`` is "c" or "python"; None means ``$KVMSTAT_BACKEND`` or "c".
    ``paranoid_path`` is where permission errors read perf_event_paranoid.
    """
    name = _choose_backend(backend)
    if name == "c":
        return _CCounterSet(_load_native(), events, mode, paranoid_path)
    from .pybackend import PyCounterSet
    return PyCounterSet(events, mode, paranoid_path)


def available_backends() -> list[str]:
    """Backends usable in this installation, preferred first."""
    try:
        _import_native()
    except ImportError:
        return ["python"]
    return ["c", "python"]


def binding():
    """The compiled extension (``.ffi``, ``.lib``) for the modules that wrap
    other parts of the C core (:mod:`kvmstat.counting.bpf`), so that this module
    stays the only importer of ``kvmstat._native``.  Raises NotAvailable when
    it was not built."""
    return _load_native()
