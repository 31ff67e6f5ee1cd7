"""Samples: totals, deltas and intervals combined over providers."""

from kvmstat.providers.base import HistogramValues, Provider
from kvmstat.sampling.sampler import Sampler


class ScriptedProvider(Provider):
    """A provider whose cumulative counts come from a list of readings."""

    name = "scripted"

    def __init__(self, readings, by_vm=None):
        self.readings = list(readings)
        self.by_vm = list(by_vm or [])
        self.closed = self.resets = 0

    @property
    def fields(self):
        return sorted(self.readings[0])

    def read(self):
        return dict(self.readings.pop(0) if len(self.readings) > 1 else self.readings[0])

    def read_by_vm(self):
        return self.by_vm.pop(0) if self.by_vm else {}

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


class OneReadingProvider(ScriptedProvider):
    """Gives totals and breakdown only together, as the tracepoint provider does."""

    def __init__(self):
        super().__init__([{"a": 0}])
        self.refreshes = 0

    def read(self):
        raise AssertionError("read() called: the by-VM sampler must use read_all()")

    def read_all(self):
        return {"a": 7}, {10: {"a": 7}}

    def refresh(self):
        self.refreshes += 1


def test_by_vm_sampler_takes_totals_and_breakdown_from_one_reading():
    provider = OneReadingProvider()
    sampler = Sampler([provider], by_vm=True, clock=Clock(0.0, 1.0))
    sample = sampler.sample()
    assert sample.values == {"a": (7, 7)} and sample.by_vm == {10: {"a": (7, 7)}}
    assert provider.refreshes == 1
    sampler.sample(refresh=False)  # e.g. the last reading after VMGone
    assert provider.refreshes == 1


def test_default_read_all_is_read_and_read_by_vm():
    provider = ScriptedProvider([{"a": 3}], by_vm=[{10: {"a": 3}}])
    assert provider.read_all() == ({"a": 3}, {10: {"a": 3}})


class HistogramProvider(ScriptedProvider):
    """A scripted provider with histogram statistics, host-wide and per VM."""

    def __init__(self, readings, histograms, vm_histograms):
        super().__init__(readings)
        self.histograms = histograms
        self.vm_histograms = vm_histograms
        self.histogram_reads = 0

    def read_histograms(self):
        self.histogram_reads += 1
        return dict(self.histograms)

    def read_histograms_by_vm(self):
        return {pid: dict(h) for pid, h in self.vm_histograms.items()}


def test_histograms_only_when_asked_filtered_by_name_and_merged():
    wait = HistogramValues((1, 2))
    poll = HistogramValues((3,))
    one = HistogramProvider([{"a": 1}], {"halt_wait_hist": wait, "halt_poll_hist": poll},
                            {7: {"halt_wait_hist": wait}})
    plain = ScriptedProvider([{"b": 1}])  # the base class: no histograms
    sampler = Sampler([one, plain], clock=Clock(0.0))
    sample = sampler.sample()
    assert sample.histograms is None and sample.vm_histograms is None
    assert one.histogram_reads == 0  # not asked: not read

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
