"""The KVM binary statistics format: real files, round trips, malformed input.

The two files in data/ were read from this project's test guest (one VM
and its vCPU 0 after 5 port writes) on Linux 6.18 with kvm_pvm.
"""

from __future__ import annotations

import pathlib
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmstat.errors import Error
from kvmstat.providers.binstats_format import (
    BASE_POW2, BASE_POW10, DESC_FIXED_SIZE, HEADER_SIZE, TYPE_CUMULATIVE, TYPE_INSTANT,
    TYPE_LINEAR_HIST, TYPE_LOG_HIST, TYPE_PEAK, UNIT_BOOLEAN, UNIT_BYTES, UNIT_CYCLES,
    UNIT_NONE, UNIT_SECONDS, Histogram, StatDesc, StatsFormatError, bucket_bounds,
    encode_stats, parse_stats)

DATA = pathlib.Path(__file__).parent / "data"
SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def flags(type_, unit=UNIT_NONE, base=BASE_POW10):
    return type_ | unit << 4 | base << 8


# ---------------------------------------------------------------------------
# Files from the real kernel.

def test_real_vcpu_statistics_file():
    layout, words = parse_stats((DATA / "kvm-vcpu-stats.bin").read_bytes())
    assert layout.id == "kvm-2675/vcpu-0"
    assert layout.header.name_size == 48
    descs = layout.by_name()
    values = layout.values(words)
    assert descs["exits"].type == TYPE_CUMULATIVE and descs["exits"].is_scalar
    assert values["exits"] == 5
    assert descs["blocking"].type == TYPE_INSTANT and descs["blocking"].unit == UNIT_BOOLEAN
    wait = descs["halt_wait_hist"]
    assert (wait.type_name, wait.unit_name, wait.exponent, wait.size) == ("log-hist", "seconds", -9, 32)
    assert wait.scale == pytest.approx(1e-9)
    assert len(values["halt_wait_hist"]) == 32
    assert descs["halt_wait_ns"].unit == UNIT_SECONDS and descs["halt_wait_ns"].exponent == -9


def test_real_vm_statistics_file_has_peaks_out_of_offset_order():
    layout, words = parse_stats((DATA / "kvm-vm-stats.bin").read_bytes())
    assert layout.id == "kvm-2675"
    descs = layout.by_name()
    assert descs["max_mmu_rmap_size"].type == TYPE_PEAK
    assert descs["pages_4k"].type == TYPE_INSTANT
    # Descriptor order is not data order in this kernel.
    assert descs["max_mmu_rmap_size"].offset > descs["max_mmu_page_hash_collisions"].offset
    assert layout.values(words)["mmu_cache_miss"] == 4


# ---------------------------------------------------------------------------
# Round trips through the writer.

NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=30)


@st.composite
def descriptor_sets(draw):
    names = draw(st.lists(NAME, min_size=0, max_size=12, unique=True))
    specs = []
    for name in names:
        type_ = draw(st.sampled_from([TYPE_CUMULATIVE, TYPE_INSTANT, TYPE_PEAK,
                                      TYPE_LINEAR_HIST, TYPE_LOG_HIST]))
        size = draw(st.integers(1, 40)) if type_ in (TYPE_LINEAR_HIST, TYPE_LOG_HIST) else \
            draw(st.sampled_from([1, 1, 1, 3]))
        specs.append(dict(
            name=name,
            flags=flags(type_, draw(st.sampled_from([UNIT_NONE, UNIT_BYTES, UNIT_SECONDS,
                                                     UNIT_CYCLES, UNIT_BOOLEAN])),
                        draw(st.sampled_from([BASE_POW10, BASE_POW2]))),
            exponent=draw(st.integers(-32768, 32767)),
            size=size,
            bucket_size=draw(st.integers(1, 2**32 - 1)) if type_ == TYPE_LINEAR_HIST
            else draw(st.sampled_from([0, 0, 7])),
        ))
    # Data placement: any order of the statistics, with gaps.
    order = draw(st.permutations(range(len(specs))))
    offset = 0
    for index in order:
        offset += 8 * draw(st.integers(0, 2))
        specs[index]["offset"] = offset
        offset += 8 * specs[index]["size"]
    descs = [StatDesc(**spec) for spec in specs]
    values = {d.name: draw(st.lists(st.integers(0, 2**64 - 1), min_size=d.size, max_size=d.size))
              for d in descs}
    return descs, values


@SETTINGS
@given(data=descriptor_sets(), stats_id=NAME, extra_name=st.integers(1, 40),
       block_order=st.permutations(["id", "desc", "data"]), gap=st.integers(0, 64))
def test_round_trip(data, stats_id, extra_name, block_order, gap):
    descs, values = data
    name_size = max([len(d.name) for d in descs] + [len(stats_id)]) + extra_name
    desc_size = len(descs) * (DESC_FIXED_SIZE + name_size)
    data_size = max((d.offset + 8 * d.size for d in descs), default=0)
    sizes = {"id": name_size, "desc": desc_size, "data": data_size}
    offsets, at = {}, HEADER_SIZE
    for block in block_order:
        at += gap
        offsets[block] = at
        at += sizes[block]
    blob = encode_stats(stats_id, descs, values, name_size=name_size,
                        id_offset=offsets["id"], desc_offset=offsets["desc"],
                        data_offset=offsets["data"])
    layout, words = parse_stats(blob)
    assert layout.id == stats_id
    assert layout.descriptors == tuple(descs)
    assert layout.data_offset == offsets["data"]
    decoded = layout.values(words)
    for d in descs:
        expected = values[d.name]
        if d.size == 1 and not d.is_histogram:
            assert decoded[d.name] == expected[0]
        else:
            assert decoded[d.name] == tuple(expected)
    # The layout signature does not depend on the values or the id.
    other = encode_stats("x", descs, {}, name_size=name_size, id_offset=offsets["id"],
                         desc_offset=offsets["desc"], data_offset=offsets["data"])
    assert parse_stats(other)[0].signature == layout.signature


@SETTINGS
@given(data=descriptor_sets(), cut=st.integers(0, 10_000), flips=st.lists(
    st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6))
def test_damaged_files_raise_a_clear_error_or_parse(data, cut, flips):
    descs, values = data
    blob = bytearray(encode_stats("kvm-1/vcpu-0", descs, values))
    for position, byte in flips:
        if blob:
            blob[position % len(blob)] = byte
    blob = bytes(blob[:cut]) if cut < len(blob) else bytes(blob)
    try:
        layout, words = parse_stats(blob)
    except StatsFormatError as exc:
        assert isinstance(exc, Error)
        assert "\n" not in str(exc) and str(exc)
    else:
        assert len(words) == layout.words


# ---------------------------------------------------------------------------
# Malformed input, one case at a time.

EXITS = StatDesc("exits", flags(TYPE_CUMULATIVE), 0, 1, 0, 0)
GOOD = encode_stats("kvm-1", [EXITS], {"exits": [3]})


def patched(blob: bytes, offset: int, fmt: str, *values) -> bytes:
    out = bytearray(blob)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


DESC0 = HEADER_SIZE + 48  # first descriptor with the default layout


@pytest.mark.parametrize("blob, message", [
    (GOOD[:10], "truncated header"),
    (patched(GOOD, 4, "<I", 0), "name size 0"),
    (patched(GOOD, 4, "<I", 1 << 20), "name size"),
    (patched(GOOD, 8, "<I", 1 << 30), "descriptors"),
    (patched(GOOD, 16, "<I", 8), "points into the header"),
    (patched(GOOD, 8, "<I", 2), "truncated descriptor block"),
    (patched(GOOD, 24, "<48s", b"k" * 48), "id string is not NUL-terminated"),
    (patched(GOOD, DESC0 + 16, "<48s", b"x" * 48), "not NUL-terminated"),
    (patched(GOOD, DESC0 + 16, "<4s", b"\0bad"), "invalid name"),
    (patched(GOOD, DESC0 + 16, "<4s", b"a b\0"), "invalid name"),
    (patched(GOOD, DESC0 + 16, "<3s", b"\xff\xfe\0"), "not ASCII"),
    (patched(GOOD, DESC0 + 6, "<H", 0), "size 0"),
    (patched(GOOD, DESC0 + 8, "<I", 4), "not a multiple of 8"),
    (patched(GOOD, DESC0, "<I", TYPE_LINEAR_HIST), "bucket size 0"),
    (patched(GOOD, 20, "<I", DESC0), "overlaps"),
    (GOOD[:-1], "truncated data block"),
    (encode_stats("kvm-1", [EXITS, EXITS], {}), "described twice"),
    (patched(GOOD, DESC0 + 8, "<I", 2**32 - 8), "exceeds"),
])
def test_malformed_input(blob, message):
    with pytest.raises(StatsFormatError, match=message):
        parse_stats(blob)


def test_decode_checks_the_data_length():
    layout, _ = parse_stats(GOOD)
    with pytest.raises(StatsFormatError, match="9 bytes, expected 8"):
        layout.decode(b"\0" * 9)


def test_unknown_types_and_units_are_kept_not_rejected():
    future = StatDesc("future", 0x7 | 0x9 << 4 | 0x5 << 8, 3, 2, 0, 0)
    layout, words = parse_stats(encode_stats("kvm-1", [future], {"future": [1, 2]}))
    desc = layout.descriptors[0]
    assert (desc.type_name, desc.unit_name, desc.base_value, desc.scale) == \
        ("type-7", "unit-9", None, None)
    assert not desc.is_scalar and not desc.is_histogram
    assert layout.values(words)["future"] == (1, 2)


def test_writer_refuses_what_it_cannot_write():
    with pytest.raises(ValueError, match="does not fit"):
        encode_stats("kvm-1", [StatDesc("x" * 48)], {}, name_size=48)
    with pytest.raises(ValueError, match="needs 1 values"):
        encode_stats("kvm-1", [EXITS], {"exits": [1, 2]})


# ---------------------------------------------------------------------------
# Histogram buckets (KVM API documentation of KVM_GET_STATS_FD).

def test_linear_histogram_buckets():
    desc = StatDesc("h", flags(TYPE_LINEAR_HIST), 0, 4, 0, 10)
    assert bucket_bounds(desc) == [(0, 10), (10, 20), (20, 30), (30, None)]


def test_logarithmic_histogram_buckets():
    desc = StatDesc("h", flags(TYPE_LOG_HIST, UNIT_SECONDS), -9, 5, 0, 0)
    assert bucket_bounds(desc) == [(0, 1), (1, 2), (2, 4), (4, 8), (8, None)]
    hist = Histogram(desc, (1, 0, 2, 0, 4))
    assert hist.total == 7
    assert hist.as_dict() == {
        "type": "log-hist", "unit": "seconds", "base": 10, "exponent": -9, "bucket_size": 0,
        "buckets": [[0, 1, 1], [1, 2, 0], [2, 4, 2], [4, 8, 0], [8, None, 4]],
    }


def test_bucket_bounds_of_a_scalar_is_an_error():
    with pytest.raises(StatsFormatError, match="not a histogram"):
        bucket_bounds(EXITS)
