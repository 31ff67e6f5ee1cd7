"""A fake counting core with the interface of kvmstat.counting.native.CounterSet.

Tests set ``counts[(target, event_name)]``; reads sum them like the real core
(retired groups keep their last counts).
"""

from __future__ import annotations

import dataclasses
import errno
import itertools

from kvmstat.counting import factories
from kvmstat.counting.factories import CounterFactories
from kvmstat.errors import NativeError


class FakeCounterSet:
    def __init__(self, events, mode, gone=(), refuse=None):
        self.events = tuple(events)
        self.mode = mode
        self.counts = {}
        self.slots = {}          # slot -> (target, bucket)
        self.retired = {}        # (bucket, event name) -> count
        self.retired_totals = {} # event name -> count (kept by clear_bucket)
        self.gone = set(gone)    # targets whose open fails with ESRCH
        # target -> errnos its next opens fail with, one per attempt
        self.refuse = {target: list(errnos) for target, errnos in (refuse or {}).items()}
        self.enabled = False
        self.closed = False
        self.reads = 0
        self._next_slot = itertools.count()

    def add(self, target, bucket=0):
        if target in self.gone:
            raise NativeError(f"thread {target} vanished", errno.ESRCH, target=target)
        if self.refuse.get(target):
            raise NativeError(f"thread {target} refused", self.refuse[target].pop(0),
                              target=target)
        slot = next(self._next_slot)
        self.slots[slot] = (target, bucket)
        return slot

    def clear_bucket(self, bucket):
        if any(b == bucket for _, b in self.slots.values()):
            raise NativeError(f"bucket {bucket} is in use", errno.EBUSY)
        for key in [k for k in self.retired if k[0] == bucket]:
            del self.retired[key]

    def retire(self, slot):
        target, bucket = self.slots.pop(slot)
        for event in self.events:
            key = (bucket, event.name)
            value = self.counts.get((target, event.name), 0)
            self.retired[key] = self.retired.get(key, 0) + value
            self.retired_totals[event.name] = self.retired_totals.get(event.name, 0) + value

    def enable(self):
        self.enabled = True

    def disable(self):
        self.enabled = False

    def reset(self):
        self.counts.clear()
        self.retired.clear()
        self.retired_totals.clear()

    @property
    def groups(self):
        return len(self.slots)

    @property
    def fds(self):
        return len(self.slots) * len(self.events)

    def read(self, nbuckets=0):
        self.reads += 1
        totals = []
        flat = [0] * (nbuckets * len(self.events))
        for index, event in enumerate(self.events):
            total = 0
            for target, bucket in self.slots.values():
                value = self.counts.get((target, event.name), 0)
                total += value
                if bucket < nbuckets:
                    flat[bucket * len(self.events) + index] += value
            for (bucket, name), value in self.retired.items():
                if name == event.name and bucket < nbuckets:
                    flat[bucket * len(self.events) + index] += value
            totals.append(total + self.retired_totals.get(event.name, 0))
        return totals, (flat if nbuckets else None)

    def close(self):
        self.closed = True


def counters(gone=(), refuse=None):
    """Counter factories making FakeCounterSets: (factories, the list of sets made).

    The fake core has no BPF engine: ``--engine auto`` picks perf groups.
    """
    created = []

    def open_counter_set(events, mode, backend=None):
        counter_set = FakeCounterSet(events, mode, gone, refuse)
        created.append(counter_set)
        return counter_set

    def no_bpf(tracepoint_id=None):
        return False, "the fake counting core has no BPF"

    return CounterFactories(open_counter_set=open_counter_set, bpf_supported=no_bpf), created


def install(monkeypatch, gone=(), refuse=None):
    """Make every command and provider that is given no counter factories use
    :func:`counters`; returns the list of FakeCounterSets made."""
    fake, created = counters(gone, refuse)
    current = factories.REAL_COUNTERS
    monkeypatch.setattr(factories, "REAL_COUNTERS", dataclasses.replace(
        current, open_counter_set=fake.open_counter_set, bpf_supported=fake.bpf_supported))
    return created
