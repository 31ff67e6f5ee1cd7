"""Samples: totals, deltas and intervals combined over providers."""

import pytest

from kvmstat.errors import VMGone
from kvmstat.providers.base import HistogramValues, Provider, Reading
from kvmstat.sampling.sampler import Sampler


class ScriptedProvider(Provider):
    """A provider whose cumulative counts come from a list of readings."""

    name = "scripted"

    def __init__(self, readings, by_vm=None, histograms=None, vm_histograms=None,
                 ended=None, pid=None):
        self.readings = list(readings)
        self.per_vm = list(by_vm or [])
        self.histograms = histograms or {}
        self.vm_histograms = vm_histograms or {}
        self.ended = list(ended or [])
        self.watched = pid
        self.closed = self.resets = self.refreshes = 0
        self.snapshots = []

    @property
    def fields(self):
        return sorted(self.readings[0])

    @property
    def pid(self):
        return self.watched

    def refresh(self):
        self.refreshes += 1

    def snapshot(self, *, by_vm=False, histograms=False, by_vcpu=False):
        self.snapshots.append((by_vm, histograms))
        totals = dict(self.readings.pop(0) if len(self.readings) > 1 else self.readings[0])
        per_vm = self.per_vm.pop(0) if self.per_vm else {}
        return Reading(totals, per_vm if by_vm else {},
                       dict(self.histograms) if histograms else {},
                       dict(self.vm_histograms) if histograms and by_vm else {},
                       ended=frozenset(self.ended.pop(0) if self.ended else ()))

    def reset(self):
        self.resets += 1

    def close(self):
        self.closed += 1


class Clock:
    def __init__(self, *times):
        self.times = list(times)

    def __call__(self):
        return self.times.pop(0)


def test_first_sample_counts_from_open_then_deltas():
    provider = ScriptedProvider([{"a": 5, "b": 0}, {"a": 12, "b": 3}])
    sampler = Sampler([provider], clock=Clock(10.0, 11.5), wallclock=lambda: 99.0)
    first = sampler.sample()
    assert first.values == {"a": (5, 5), "b": (0, 0)} and first.interval == 0.0
    second = sampler.sample()
    assert second.values == {"a": (12, 7), "b": (3, 3)}
    assert second.interval == 1.5 and second.time == 99.0
    assert second.rate("a") == 7 / 1.5


def test_providers_are_merged_and_closed():
    one = ScriptedProvider([{"a": 1}])
    two = ScriptedProvider([{"exits": 4}])
    with Sampler([one, two], clock=Clock(0.0)) as sampler:
        assert sampler.fields == ["a", "exits"]
        assert sampler.sample().values == {"a": (1, 1), "exits": (4, 4)}
    assert one.closed == two.closed == 1


def test_by_vm_deltas_and_new_vms_count_from_zero():
    provider = ScriptedProvider([{"a": 3}, {"a": 9}],
                                by_vm=[{10: {"a": 3}}, {10: {"a": 5}, 20: {"a": 4}}])
    sampler = Sampler([provider], by_vm=True, names={10: "web", 20: None}.get,
                      clock=Clock(0.0, 1.0))
    sampler.sample()
    second = sampler.sample()
    assert second.by_vm == {10: {"a": (5, 2)}, 20: {"a": (4, 4)}}
    assert second.vm_names == {10: "web", 20: None}


def test_reset_restarts_the_interval():
    provider = ScriptedProvider([{"a": 4}, {"a": 1}])
    sampler = Sampler([provider], clock=Clock(0.0, 5.0))
    sampler.sample()
    sampler.reset()
    after = sampler.sample()
    assert provider.resets == 1
    assert after.values == {"a": (1, 1)} and after.interval == 0.0


def test_one_snapshot_per_provider_per_sample():
    provider = ScriptedProvider([{"a": 7}], by_vm=[{10: {"a": 7}}])
    sampler = Sampler([provider], by_vm=True, clock=Clock(0.0, 1.0))
    sample = sampler.sample()
    assert sample.values == {"a": (7, 7)} and sample.by_vm == {10: {"a": (7, 7)}}
    assert provider.refreshes == 1 and provider.snapshots == [(True, False)]
    sampler.sample(refresh=False)
    assert provider.refreshes == 1 and len(provider.snapshots) == 2


def test_vms_that_end_are_a_fact_of_the_sample():
    provider = ScriptedProvider([{"a": 3}, {"a": 9}, {"a": 9}],
                                by_vm=[{10: {"a": 1}, 20: {"a": 2}},
                                       {10: {"a": 5}, 20: {"a": 4}}, {10: {"a": 5}}],
                                ended=[(), (20,), ()])
    sampler = Sampler([provider], by_vm=True, clock=Clock(0.0, 1.0, 2.0))
    assert sampler.sample().ended == {}
    second = sampler.sample()
    assert second.ended == {20: {"a": (4, 2)}}  # its last counts
    assert not sampler.done  # no one VM watched: sampling goes on
    assert sampler.sample().ended == {}


def test_a_vm_dropped_before_the_reading_ends_with_its_previous_counts():
    provider = ScriptedProvider([{"a": 3}, {"a": 3}], by_vm=[{20: {"a": 2}}, {}],
                                ended=[(), (20,)])
    sampler = Sampler([provider], by_vm=True, clock=Clock(0.0, 1.0))
    sampler.sample()
    assert sampler.sample().ended == {20: {"a": (2, 0)}}


def test_the_watched_vm_ending_makes_the_sampler_done():
    provider = ScriptedProvider([{"a": 1}, {"a": 4}, {"a": 4}], ended=[(), (42,)], pid=42)
    sampler = Sampler([provider], clock=Clock(0.0, 1.0, 2.0))
    assert sampler.pid == 42
    sampler.sample()
    last = sampler.sample()
    assert sampler.done and last.ended == {42: {"a": (4, 3)}} == {42: last.values}
    with pytest.raises(VMGone, match="VM process 42 has exited") as info:
        sampler.sample()
    assert info.value.pid == 42 and provider.refreshes == 2
    assert sampler.sample(refresh=False).values == {"a": (4, 0)}


def test_host_wide_samples_list_no_ended_vms():
    provider = ScriptedProvider([{"a": 1}], ended=[(7,)])
    sampler = Sampler([provider], clock=Clock(0.0))
    assert sampler.sample().ended == {} and not sampler.done


def test_a_provider_written_for_0_1_keeps_working_and_its_class_is_deprecated():
    with pytest.warns(DeprecationWarning, match=r"implements read\(\) instead of snapshot"):
        class Old(Provider):
            """A provider written for release 0.1: read methods, no snapshot()."""

            name = "legacy"
            fields = ["a"]

            def read(self):
                return {"a": 3}

            def read_by_vm(self):
                return {10: {"a": 3}}

            def read_histograms(self):
                return {"h": HistogramValues((1,))}

            def reset(self):
                pass

            def close(self):
                pass
    reading = Old().snapshot(by_vm=True, histograms=True)
    assert reading.totals == {"a": 3} and reading.by_vm == {10: {"a": 3}}
    assert reading.histograms == {"h": HistogramValues((1,))} and reading.vm_histograms == {}
    sampler = Sampler([Old()], by_vm=True, clock=Clock(0.0))
    assert sampler.sample().by_vm == {10: {"a": (3, 3)}}


def test_the_read_methods_of_0_1_are_deprecated_wrappers_of_snapshot():
    provider = ScriptedProvider([{"a": 3}], by_vm=[{10: {"a": 3}}] * 3,
                                histograms={"h": HistogramValues((1,))},
                                vm_histograms={10: {"h": HistogramValues((1,))}})
    with pytest.warns(DeprecationWarning, match="use snapshot"):
        assert provider.read() == {"a": 3}
    with pytest.warns(DeprecationWarning):
        assert provider.read_by_vm() == {10: {"a": 3}}
    with pytest.warns(DeprecationWarning):
        assert provider.read_all() == ({"a": 3}, {10: {"a": 3}})
    with pytest.warns(DeprecationWarning):
        assert provider.read_histograms() == {"h": HistogramValues((1,))}
    with pytest.warns(DeprecationWarning):
        assert provider.read_histograms_by_vm() == {10: {"h": HistogramValues((1,))}}


def test_histograms_only_when_asked_filtered_by_name_and_merged():
    wait = HistogramValues((1, 2))
    poll = HistogramValues((3,))
    one = ScriptedProvider([{"a": 1}], histograms={"halt_wait_hist": wait, "halt_poll_hist": poll},
                           vm_histograms={7: {"halt_wait_hist": wait}})
    plain = ScriptedProvider([{"b": 1}])  # the base class: no histograms
    sampler = Sampler([one, plain], clock=Clock(0.0))
    sample = sampler.sample()
    assert sample.histograms is None and sample.vm_histograms is None
    assert one.snapshots == [(False, False)]  # not asked: not read

    sampler = Sampler([one, plain], histograms=lambda name: name.startswith("halt_wait"),
                      clock=Clock(0.0))
    sample = sampler.sample()
    assert sample.histograms == {"halt_wait_hist": wait} and sample.vm_histograms is None

    sampler = Sampler([one, plain], by_vm=True, histograms=lambda name: True,
                      clock=Clock(0.0))
    sample = sampler.sample()
    assert sample.histograms == {"halt_wait_hist": wait, "halt_poll_hist": poll}
    assert sample.vm_histograms == {7: {"halt_wait_hist": wait}}

    sampler = Sampler([plain], histograms=lambda name: True, clock=Clock(0.0))
    assert sampler.sample().histograms == {}
