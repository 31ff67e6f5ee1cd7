"""A fake BPF engine with the interface of kvmstat.counting.bpf.BpfCounter.

Tests add hits with ``counter.hit(tgid, event_name, reason=0, n=1)``; the
fake keeps a table keyed by (event index, tgid, reason) like the real one,
counting only ``only_pid`` and the processes given to ``also_count`` when
``only_pid`` is set, and folds it into fields and buckets on read.
"""

from __future__ import annotations

import dataclasses

from kvmstat.counting import factories
from kvmstat.counting.bpf import BpfEntry, BpfField
from kvmstat.errors import InvalidArgument


class FakeBpfCounter:
    def __init__(self, events, fields, only_pid=None, *, layout="by-process", attach="auto",
                 max_entries=None):
        self.layout, self.attach = layout, attach
        self.events = tuple(events)
        self.fields = tuple(BpfField(e, None if c is None else tuple(c)) for e, c in fields)
        self.only_pid = only_pid
        self.max_entries = max_entries or 16384
        self.table = {}          # (event index, tgid, reason) -> count
        self.retired = {}        # (event index, reason) -> count of forgotten processes
        self.buckets = {}
        self.also = set()
        self.forgotten = []
        self.entries = 0
        self.reads = 0
        self.closed = False

    def hit(self, tgid, event, reason=0, n=1):
        """*n* hits of tracepoint *event* (a name) in process *tgid*."""
        if self.closed:
            return
        if self.only_pid is not None and tgid != self.only_pid and tgid not in self.also:
            return
        for index, spec in enumerate(self.events):
            if spec.name == event:
                key = (index, tgid, reason)
                self.table[key] = self.table.get(key, 0) + n

    def _check_open(self):
        if self.closed:
            raise InvalidArgument("the BPF counter is closed")

    def set_buckets(self, buckets):
        self._check_open()
        self.buckets = dict(buckets)

    def also_count(self, pids):
        self._check_open()
        if self.only_pid is None:
            raise InvalidArgument("also_count needs a counter made with only_pid")
        self.also = set(pids)

    def _fold(self, event, reason, count, totals, row):
        for i, field in enumerate(self.fields):
            if field.event == event and (field.codes is None or reason in field.codes):
                totals[i] += count
                if row is not None:
                    row[i] += count

    def read(self, nbuckets=0):
        self._check_open()
        self.reads += 1
        n = len(self.fields)
        totals = [0] * n
        flat = [0] * (nbuckets * n)
        for (event, reason), count in self.retired.items():
            self._fold(event, reason, count, totals, None)
        for (event, tgid, reason), count in self.table.items():
            # Slots keep no process: everything is the watched process's.
            owner = tgid if self.layout == "by-process" else self.only_pid
            bucket = self.buckets.get(owner)
            row = _Row(flat, bucket * n) if bucket is not None and bucket < nbuckets else None
            self._fold(event, reason, count, totals, row)
        self.entries = len(self.table)
        return totals, (flat if nbuckets else None)

    def dump(self):
        self._check_open()
        return [BpfEntry(e, t, r, c) for (e, t, r), c in self.table.items()]

    def reset(self):
        self._check_open()
        self.table.clear()
        self.retired.clear()

    def forget(self, pids):
        self._check_open()
        pids = set(pids)
        self.forgotten.append(sorted(pids))
        removed = 0
        for key in [k for k in self.table if k[1] in pids]:
            event, _, reason = key
            self.retired[(event, reason)] = self.retired.get((event, reason), 0) + self.table.pop(key)
            removed += 1
        return removed

    @property
    def fds(self):
        return 0 if self.closed else 2 * len(self.events) + 2 + (self.only_pid is not None)

    def close(self):
        self.closed = True


class _Row:
    """A view of one bucket's row in the flat matrix."""

    def __init__(self, flat, start):
        self.flat, self.start = flat, start

    def __getitem__(self, i):
        return self.flat[self.start + i]

    def __setitem__(self, i, value):
        self.flat[self.start + i] = value


def counters(supported=(True, ""), base=None):
    """Counter factories whose BPF engine is FakeBpfCounters and whose probe
    answers *supported* (the rest from *base*, by default the real core):
    (factories, the list of counters made)."""
    created = []

    def make(*args, **kwargs):
        counter = FakeBpfCounter(*args, **kwargs)
        created.append(counter)
        return counter

    fake = dataclasses.replace(base or factories.REAL_COUNTERS, open_bpf_counter=make,
                               bpf_supported=lambda tracepoint_id=None: supported)
    return fake, created


def install(monkeypatch, supported=(True, "")):
    """Make every command and provider given no counter factories use
    :func:`counters` (on top of those installed already); returns the list
    of counters created."""
    fake, created = counters(supported)
    monkeypatch.setattr(factories, "REAL_COUNTERS", fake)
    return created
