"""Golden outputs of the log formats (plain, CSV, by-guest) and JSON (docs/design.md §6.5, §6.6)."""

import calendar
import dataclasses
import json
import time

import pytest

from kvmstat.frontends.formats import json as json_format
from kvmstat.frontends.formats import log as log_format
from kvmstat.providers.base import SINCE_CREATION, SINCE_START, HistogramValues
from kvmstat.sampling.sampler import Sample

FIELDS = ["kvm_exit", "kvm_pio", "kvm_userspace_exit(IO)"]
# 2024-03-05 06:07:08 UTC
WHEN = calendar.timegm((2024, 3, 5, 6, 7, 8, 0, 0, 0)) + 0.25


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def host_sample(deltas=(0, 56, 56)):
    values = {name: (1000 + d, d) for name, d in zip(FIELDS, deltas)}
    return Sample(WHEN, 2.0, values)


def guest_sample():
    by_vm = {
        4242: {"kvm_exit": (9, 0), "kvm_pio": (70, 7), "kvm_userspace_exit(IO)": (70, 7)},
        17: {"kvm_exit": (0, 0), "kvm_pio": (3, 0), "kvm_userspace_exit(IO)": (3, 0)},
        99: {"kvm_pio": (5, 5)},  # a field missing for this VM counts 0
    }
    names = {4242: "web, the \"big\" one", 17: None, 99: "db"}
    return Sample(WHEN, 2.0, {"kvm_exit": (9, 0), "kvm_pio": (78, 12),
                              "kvm_userspace_exit(IO)": (73, 7)}, by_vm, names)


def test_timestamp_is_local_time_in_upstreams_format():
    assert log_format.timestamp(WHEN) == "2024-03-05 06:07:08"


def test_plain_golden():
    assert log_format.plain_banner(FIELDS) == "kvm_exit kvm_pio kvm_userspace_exit(IO) \n"
    assert log_format.plain_rows(host_sample(), FIELDS) == [
        "2024-03-05 06:07:08         0        56        56\n"]


def test_plain_row_is_timestamp_then_9_wide_columns():
    row = log_format.plain_rows(host_sample((123456789, 1, 0)), FIELDS)[0]
    assert row == "2024-03-05 06:07:08 123456789         1         0\n"
    assert len(row) == 19 + 3 * 10 + 1


def test_csv_golden():
    assert log_format.csv_header(FIELDS) == "timestamp,kvm_exit,kvm_pio,kvm_userspace_exit(IO)\n"
    assert log_format.csv_rows(host_sample(), FIELDS) == ["2024-03-05 06:07:08,0,56,56\n"]


def test_rows_follow_the_fixed_field_list_not_the_sample():
    # A field the sample lacks is 0; a field not in the list is not shown.
    sample = Sample(WHEN, 1.0, {"kvm_pio": (5, 5), "other": (1, 1)})
    assert log_format.csv_rows(sample, ["kvm_pio", "kvm_exit"]) == ["2024-03-05 06:07:08,5,0\n"]


def test_skip_zero_drops_only_all_zero_rows():
    zero = host_sample((0, 0, 0))
    for rows in (log_format.plain_rows, log_format.csv_rows):
        assert rows(zero, FIELDS, True) == []
        assert len(rows(zero, FIELDS, False)) == 1
        assert len(rows(host_sample((0, 0, 1)), FIELDS, True)) == 1
    assert log_format.all_zero(zero.values, FIELDS)
    assert not log_format.all_zero(host_sample((0, 1, 0)).values, FIELDS)


def test_csv_quotes_names_that_need_it():
    assert log_format.csv_header(["a,b", 'c"d']) == 'timestamp,"a,b","c""d"\n'


def test_guest_plain_golden():
    sample = guest_sample()
    assert log_format.guest_plain_banner(FIELDS) == "pid guest kvm_exit kvm_pio kvm_userspace_exit(IO) \n"
    assert log_format.guest_plain_rows(sample, FIELDS) == [
        "2024-03-05 06:07:08        17 -                        0         0         0\n",
        "2024-03-05 06:07:08        99 db                       0         5         0\n",
        '2024-03-05 06:07:08      4242 web, the "big" one         0         7         7\n',
    ]
    assert [r.split()[2] for r in log_format.guest_plain_rows(sample, FIELDS, True)] == ["99", "4242"]


def test_guest_csv_golden():
    sample = guest_sample()
    assert log_format.guest_csv_header(FIELDS) == (
        "timestamp,pid,guest,kvm_exit,kvm_pio,kvm_userspace_exit(IO)\n")
    assert log_format.guest_csv_rows(sample, FIELDS) == [
        "2024-03-05 06:07:08,17,,0,0,0\n",
        "2024-03-05 06:07:08,99,db,0,5,0\n",
        '2024-03-05 06:07:08,4242,"web, the ""big"" one",0,7,7\n',
    ]
    assert len(log_format.guest_csv_rows(sample, FIELDS, True)) == 2


def test_guest_rows_without_a_breakdown_are_empty():
    assert log_format.guest_csv_rows(host_sample(), FIELDS) == []


def test_json_golden():
    line = json_format.sample_json(host_sample(), FIELDS)
    assert line == (
        '{"time": 1709618828.25, "interval": 2.0, "fields": {'
        '"kvm_exit": {"total": 1000, "delta": 0}, '
        '"kvm_pio": {"total": 1056, "delta": 56}, '
        '"kvm_userspace_exit(IO)": {"total": 1056, "delta": 56}}}\n')
    assert line.count("\n") == 1


def test_json_says_how_tracepoints_were_counted():
    sample = dataclasses.replace(host_sample(), engine="bpf")
    line = json_format.sample_json(sample, ["kvm_pio"])
    assert line == ('{"time": 1709618828.25, "interval": 2.0, "engine": "bpf", "fields": {'
                    '"kvm_pio": {"total": 1056, "delta": 56}}}\n')
    assert "engine" not in json_format.sample_object(host_sample(), FIELDS)


def test_json_defaults_to_every_field_sorted():
    sample = Sample(WHEN, 1.0, {"b": (2, 1), "a": (1, 1)})
    assert list(json_format.sample_object(sample)["fields"]) == ["a", "b"]


def test_json_guests_golden():
    obj = json.loads(json_format.sample_json(guest_sample(), ["kvm_pio"], by_guest=True))
    assert obj == {
        "time": 1709618828.25, "interval": 2.0,
        "fields": {"kvm_pio": {"total": 78, "delta": 12}},
        "guests": {
            "17": {"name": None, "fields": {"kvm_pio": {"total": 3, "delta": 0}}},
            "99": {"name": "db", "fields": {"kvm_pio": {"total": 5, "delta": 5}}},
            "4242": {"name": 'web, the "big" one', "fields": {"kvm_pio": {"total": 70, "delta": 7}}},
        },
    }


def test_json_guests_object_is_present_even_without_vms():
    assert json_format.sample_object(host_sample(), FIELDS, by_guest=True)["guests"] == {}
    assert "guests" not in json_format.sample_object(host_sample(), FIELDS)


def test_json_rows_skip_zero():
    assert json_format.json_rows(host_sample((0, 0, 0)), FIELDS, True) == []
    assert len(json_format.json_rows(host_sample((0, 0, 0)), FIELDS, False)) == 1


def test_json_histograms_golden_only_where_there_are_some():
    bounds = ((0, 1), (1, 2), (2, None))
    kvm_hist = HistogramValues((4, 0, 1), SINCE_START, kind="log", bounds=bounds,
                               unit="seconds", base=10, exponent=-9)
    bare = HistogramValues((7,), SINCE_CREATION)  # debugfs: no bounds, no unit
    sample = guest_sample()
    sample.histograms = {"halt_wait_hist": kvm_hist, "halt_poll_fail_hist": bare}
    sample.vm_histograms = {4242: {"halt_wait_hist": kvm_hist}, 17: {}}
    obj = json.loads(json_format.sample_json(sample, ["kvm_pio"], by_guest=True))
    kvm_json = {"since": "start", "counts": [4, 0, 1], "kind": "log",
                "bounds": [[0, 1], [1, 2], [2, None]], "unit": "seconds", "base": 10,
                "exponent": -9}
    assert obj["histograms"] == {
        "halt_poll_fail_hist": {"since": "creation", "counts": [7]},
        "halt_wait_hist": kvm_json}
    assert list(obj["histograms"]) == ["halt_poll_fail_hist", "halt_wait_hist"]
    assert obj["guests"]["4242"]["histograms"] == {"halt_wait_hist": kvm_json}
    assert "histograms" not in obj["guests"]["17"]  # none for that VM
    assert "histograms" not in obj["guests"]["99"]
    # Asked for, but no provider has any: no key.
    sample.histograms, sample.vm_histograms = {}, {}
    assert "histograms" not in json_format.sample_object(sample, by_guest=True)
    assert "histograms" not in json_format.sample_object(host_sample())
