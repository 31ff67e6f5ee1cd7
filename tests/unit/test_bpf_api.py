"""The BPF engine's Python side: argument checks, what reaches the C core,
and the error messages.  No BPF call is made: the C functions are replaced
by a fake that records its arguments (the real cffi ``ffi`` is used, so the
C structures are the real ones)."""

from __future__ import annotations

import errno
import types

import pytest
from hypothesis import given, strategies as st

from kvmstat.counting import bpf as bpfengine
from kvmstat.counting.bpf import (BpfCounter, BpfEntry, BpfEventSpec, BpfField,
                               BpfLoadError, BpfTableFull, bpf_supported)
from kvmstat.errors import (AccessDenied, InvalidArgument, NativeError,
                            NotAvailable, TooManyEvents)
from kvmstat.tracefs.events import Field
from kvmstat.counting.native import binding

try:
    FFI = binding().ffi
except NotAvailable:  # pragma: no cover - the extension is built in CI
    FFI = None
needs_ffi = pytest.mark.skipif(FFI is None, reason="kvmstat._native is not built")

UEXIT = BpfEventSpec("kvm_userspace_exit", 42, 8, 4)
PIO = BpfEventSpec("kvm_pio", 110)
LOG = """func#0 @0
0: R1=ctx() R10=fp0
0: (bf) r6 = r1                       ; R1=ctx() R6_w=ctx()
5: (61) r1 = *(u32 *)(r6 +30000)
invalid bpf_context access off=30000 size=4
processed 6 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0
"""


class FakeLib:
    """Stands in for the kvmstat_bpf_* functions of the C core."""

    KVMSTAT_BPF_ALL_TGIDS = -1
    KVMSTAT_BPF_MAX_ALSO = 4
    KVMSTAT_BPF_BY_PROCESS, KVMSTAT_BPF_SLOTS, KVMSTAT_BPF_EMPTY = 0, 1, 2
    KVMSTAT_BPF_ATTACH_AUTO, KVMSTAT_BPF_ATTACH_PERF, KVMSTAT_BPF_ATTACH_RAW = 0, 1, 2
    KVMSTAT_BPF_ATTACHED_PERF, KVMSTAT_BPF_ATTACHED_RAW = 1, 2

    def __init__(self, ffi, fail=None, log="", totals=(), dropped=0, entries=(), flat=None):
        self.ffi = ffi
        self.flat = flat          # the bucket matrix read() folds (default: 100, 101...)
        self.fail = fail          # (stage, event_index, errno) for _new/_probe
        self.log = log
        self.totals = list(totals)
        self.dropped = dropped
        self.entries = list(entries)
        self.calls = []
        self.freed = 0

    def kvmstat_bpf_new(self, events, n, fields, nfields, opt, log, log_size, err, out):
        self.calls.append(("new", [(events[i].tracepoint_id, events[i].reason_offset,
                                    events[i].reason_size) for i in range(n)],
                           opt.only_tgid, opt.max_entries))
        self.options = (opt.layout, opt.attach)
        self.names = [(self.ffi.string(events[i].name).decode() if events[i].name else None,
                       events[i].reason_arg) for i in range(n)]
        self.kvmstat_bpf_set_fields(None, fields, nfields)
        self.max_entries = max_entries = opt.max_entries or 16384  # 0: the core's default
        if self.fail:
            err.stage, err.event_index, err.err = self.fail
            data = self.log.encode()[:log_size - 1] + b"\0"
            self.ffi.memmove(log, data, len(data))
            return -self.fail[2]
        out[0] = self.ffi.cast("struct kvmstat_bpf *", 0x1000)
        return 0

    def kvmstat_bpf_set_fields(self, eng, fields, n):
        self.calls.append(("fields", [
            (fields[i].event, list(fields[i].codes[0:fields[i].ncodes]) if fields[i].ncodes else None)
            for i in range(n)]))
        return 0

    def kvmstat_bpf_set_buckets(self, eng, tgids, buckets, n):
        self.calls.append(("buckets", dict(zip(tgids[0:n], buckets[0:n]))))
        return 0

    def kvmstat_bpf_also_count(self, eng, tgids, n):
        self.calls.append(("also", list(tgids[0:n]) if n else []))
        return 0

    def kvmstat_bpf_read(self, eng, totals, buckets, nbuckets, dropped):
        self.calls.append(("read", nbuckets))
        for i, v in enumerate(self.totals):
            totals[i] = v
        for i in range(nbuckets * len(self.totals)):
            buckets[i] = 100 + i if self.flat is None else self.flat[i]
        dropped[0] = self.dropped
        return 7

    def kvmstat_bpf_dump(self, eng, out, cap):
        for i, e in enumerate(self.entries[:cap]):
            out[i].event, out[i].tgid, out[i].reason, out[i].count = e
        return len(self.entries)

    def kvmstat_bpf_reset(self, eng):
        self.calls.append(("reset",))
        return 0

    def kvmstat_bpf_forget(self, eng, tgids, n):
        self.calls.append(("forget", list(tgids[0:n])))
        return n

    def kvmstat_bpf_missed(self, eng, out):
        out[0] = 3
        return 0

    def kvmstat_bpf_fds(self, eng):
        return 6

    def kvmstat_bpf_ncpus(self, eng):
        return 2

    def kvmstat_bpf_max_entries(self, eng):
        return self.max_entries

    def kvmstat_bpf_batch_reads(self, eng):
        return 1

    def kvmstat_bpf_force_iteration(self, eng):
        return 0

    def kvmstat_bpf_attached(self, eng, index):
        return self.KVMSTAT_BPF_ATTACHED_RAW if self.names[index][0] else self.KVMSTAT_BPF_ATTACHED_PERF

    def kvmstat_bpf_free(self, eng):
        self.freed += 1

    def kvmstat_bpf_probe(self, tracepoint_id, err):
        self.calls.append(("probe", tracepoint_id))
        if self.fail:
            err.stage, err.event_index, err.err = self.fail
            return -self.fail[2]
        return 0


@pytest.fixture
def fake(monkeypatch):
    """install(**FakeLib options) -> FakeLib used by kvmstat.counting.bpf."""
    if FFI is None:
        pytest.skip("kvmstat._native is not built")

    def install(**kwargs):
        lib = FakeLib(FFI, **kwargs)
        monkeypatch.setattr(bpfengine, "binding", lambda: types.SimpleNamespace(ffi=FFI, lib=lib))
        return lib

    return install


# -- specs and fields ---------------------------------------------------------

def test_spec_from_a_format_field():
    field = Field("reason", 8, 4, False)
    assert BpfEventSpec.for_field("kvm_userspace_exit", 42, field) == UEXIT
    assert BpfEventSpec.for_field("kvm_pio", 110, None) == PIO
    assert BpfField(1) == (1, None)


@pytest.mark.parametrize("events, message", [
    ([], "at least one event"),
    ("kvm_pio", "sequence of BpfEventSpec"),
    ([("kvm_pio", 1)], "not a BpfEventSpec"),
    ([BpfEventSpec("x", -1)], "bad tracepoint id -1 for x"),
    ([BpfEventSpec("x", 2**64)], "bad tracepoint id"),
    ([BpfEventSpec("x", 1, -8, 4)], "bad reason field offset -8 for x"),
    ([BpfEventSpec("x", 1, 40000, 4)], "need 0 to 32767"),
    ([BpfEventSpec("x", 1, 8, 3)], "size 3 for x: the BPF engine reads fields of 1, 2, 4 or 8 bytes"),
    ([BpfEventSpec("x", 1, 8, True)], "bad reason field size True"),
])
def test_bad_events_are_refused_before_any_kernel_call(fake, events, message):
    lib = fake()
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(")):
        BpfCounter(events, [])
    assert lib.calls == []


@pytest.mark.parametrize("fields, message", [
    ([(2, None)], "no event with index 2"),
    ([(-1, None)], "no event with index -1"),
    ([(0,)], "need \\(event index, codes or None\\)"),
    ([(1, (0,))], "kvm_pio lists reason codes but the event has no reason field"),
    ([(0, ())], "empty reason code list"),
    ([(0, "IO")], "bad reason codes 'IO'"),
    ([(0, (2**32,))], "does not fit its 4-byte field"),
    ([(0, (-(2**31) - 1,))], "does not fit"),
    ([(0, (1.0,))], "bad reason code 1.0"),
])
def test_bad_fields_are_refused(fake, fields, message):
    lib = fake()
    with pytest.raises(InvalidArgument, match=message):
        BpfCounter([UEXIT, PIO], fields)
    assert lib.calls == []


@given(size=st.sampled_from([1, 2, 4, 8]), data=st.data())
def test_codes_reach_the_core_zero_extended(size, data):
    bits = 8 * size
    code = data.draw(st.integers(-(2 ** (bits - 1)), 2**bits - 1))
    spec = BpfEventSpec("x", 1, 8, size)
    (field,) = bpfengine._check_fields([(0, [code])], [spec])
    assert field == BpfField(0, (code % 2**bits,))
    assert 0 <= field.codes[0] < 2**bits


def test_what_reaches_the_core(fake):
    lib = fake(totals=[5, 4, 1, 9])
    fields = [(0, None), (0, [2]), (0, (5, -1)), BpfField(1)]
    with BpfCounter([UEXIT, PIO], fields, only_pid=1234, max_entries=99) as c:
        assert c.fields == (BpfField(0, None), BpfField(0, (2,)),
                            BpfField(0, (5, 2**32 - 1)), BpfField(1, None))
        assert lib.calls[0] == ("new", [(42, 8, 4), (110, -1, 0)], 1234, 99)
        assert lib.calls[1] == ("fields", [(0, None), (0, [2]), (0, [5, 2**32 - 1]), (1, None)])
        c.set_buckets({300: 0, 301: 1})
        assert lib.calls[-1] == ("buckets", {300: 0, 301: 1})
        assert c.read() == ([5, 4, 1, 9], None)
        assert c.read(2) == ([5, 4, 1, 9], list(range(100, 108)))
        assert c.read(1) == ([5, 4, 1, 9], [100, 101, 102, 103])
        c.reset()
        assert c.forget([300, 7]) == 2
        assert lib.calls[-2:] == [("reset",), ("forget", [300, 7])]
        assert (c.fds, c.ncpus, c.batch_reads, c.missed) == (6, 2, True, 3)
        assert repr(c) == "<BpfCounter 2 events 4 fields pid 1234 6 fds>"
    assert lib.freed == 1
    assert c.fds == 0
    c.close()
    assert lib.freed == 1


def test_processes_counted_besides_the_pid(fake):
    lib = fake(totals=[1])
    with BpfCounter([PIO], [(0, None)], only_pid=1234) as c:
        c.also_count([7, 8])
        assert lib.calls[-1] == ("also", [7, 8])
        c.also_count([])
        assert lib.calls[-1] == ("also", [])
        with pytest.raises(InvalidArgument, match="bad process id 0"):
            c.also_count([0])
        with pytest.raises(InvalidArgument, match="too many processes to count besides pid "
                                                  "1234: 5, at most 4"):
            c.also_count(range(1, 6))
        assert c.entries == 0
        c.read()
        assert c.entries == 7  # what the core returned: the table's entries
    with BpfCounter([PIO], [(0, None)]) as c:
        with pytest.raises(InvalidArgument, match="needs a counter made with only_pid"):
            c.also_count([7])


def test_all_processes_unless_a_pid_is_given(fake):
    lib = fake()
    c = BpfCounter([PIO], [(0, None)])
    assert lib.calls[0][2] == -1
    # No table size given: the core sizes it (0), and says how big it made it.
    assert lib.calls[0][3] == 0 and c.max_entries == 16384
    c.close()


def test_closed_counter_refuses_use(fake):
    fake()
    c = BpfCounter([PIO], [(0, None)])
    c.close()
    for call in (c.read, c.reset, c.dump, lambda: c.set_buckets({}), lambda: c.forget([1])):
        with pytest.raises(InvalidArgument, match="closed"):
            call()


@pytest.mark.parametrize("call, message", [
    (lambda c: c.read(-1), "bad nbuckets -1"),
    (lambda c: c.set_buckets({-5: 0}), "bad process id -5"),
    (lambda c: c.set_buckets({5: -1}), "bad bucket -1 for process 5"),
    (lambda c: c.set_buckets([(5, 0)]), "mapping"),
    (lambda c: c.forget(["x"]), "bad process id 'x'"),
])
def test_bad_arguments(fake, call, message):
    fake()
    with BpfCounter([PIO], [(0, None)]) as c:
        with pytest.raises(InvalidArgument, match=message):
            call(c)


@pytest.mark.parametrize("kwargs, message", [
    ({"only_pid": 0}, "bad pid 0"),
    ({"only_pid": 2**31}, "bad pid"),
    ({"max_entries": 0}, "bad table size 0"),
])
def test_bad_options(fake, kwargs, message):
    fake()
    with pytest.raises(InvalidArgument, match=message):
        BpfCounter([PIO], [], **kwargs)


def test_dropped_hits_are_an_error(fake):
    fake(totals=[1], dropped=12)
    with BpfCounter([PIO], [(0, None)], max_entries=64) as c:
        with pytest.raises(BpfTableFull) as info:
            c.read()
    assert info.value.dropped == 12
    assert info.value.errno == errno.ENOSPC
    assert str(info.value) == ("the BPF count table is full (64 entries): 12 hits were not "
                               "counted; count fewer events or use the perf engine")


def test_dump_returns_entries(fake):
    entries = [(0, 10 + i, i % 3, i) for i in range(100)]  # more than the first buffer
    fake(entries=entries)
    with BpfCounter([PIO], []) as c:
        assert c.dump() == [BpfEntry(*e) for e in entries]


# -- errors of the set-up -------------------------------------------------------

def _open_with(fake, stage, index, err, log=""):
    fake(fail=(stage, index, err), log=log)
    with pytest.raises(Exception) as info:
        BpfCounter([UEXIT, PIO], [(0, None)])
    return info.value


def test_verifier_rejection_is_one_line_with_the_log_tail(fake):
    exc = _open_with(fake, 2, 0, errno.EACCES, LOG)
    assert isinstance(exc, BpfLoadError) and isinstance(exc, NativeError)
    assert str(exc) == (
        "the kernel's verifier rejected the BPF program for kvm_userspace_exit "
        "(reason field at offset 8, 4 bytes) (EACCES): 0: (bf) r6 = r1 | "
        "5: (61) r1 = *(u32 *)(r6 +30000) | invalid bpf_context access off=30000 size=4 | "
        "processed 6 insns (limit 1000000) max_states_per_insn 0 total_states 0 "
        "peak_states 0 mark_read 0")
    assert exc.log == LOG
    assert exc.errno == errno.EACCES and exc.event == "kvm_userspace_exit"


@pytest.mark.parametrize("stage", [1, 2])
def test_missing_bpf_privilege(fake, stage):
    exc = _open_with(fake, stage, -1 if stage == 1 else 1, errno.EPERM)
    assert isinstance(exc, AccessDenied)
    assert "run as root or grant CAP_BPF and CAP_PERFMON" in str(exc)


def test_missing_perf_privilege_names_the_paranoid_setting(fake):
    exc = _open_with(fake, 3, 1, errno.EACCES)
    assert isinstance(exc, AccessDenied)
    assert str(exc).startswith("perf_event_open denied for kvm_pio on CPU 0 (Permission "
                               "denied): run as root or grant CAP_PERFMON")
    assert "perf_event_paranoid" in str(exc)


def test_too_many_open_files(fake):
    exc = _open_with(fake, 3, 1, errno.EMFILE)
    assert isinstance(exc, TooManyEvents)
    assert exc.needed == 6


def test_program_reading_beyond_the_record(fake):
    exc = _open_with(fake, 4, 0, errno.EACCES)
    assert type(exc) is NativeError
    assert str(exc) == ("attaching the BPF program to kvm_userspace_exit failed: its reason "
                        "field at offset 8, 4 bytes lies beyond the tracepoint's record")


def test_tracepoint_with_too_many_programs(fake):
    exc = _open_with(fake, 4, 1, errno.E2BIG)
    assert "kvm_pio failed: the tracepoint has the most BPF programs the kernel allows" in str(exc)


def test_table_too_big(fake):
    exc = _open_with(fake, 1, -1, errno.ENOMEM)
    assert str(exc) == ("creating a BPF map failed: Cannot allocate memory "
                        "(count table of the default size)")
    fake(fail=(1, -1, errno.ENOMEM))
    with pytest.raises(NativeError, match=r"\(count table of 99999 entries\)$"):
        BpfCounter([PIO], [(0, None)], max_entries=99999)


def test_probe(fake):
    lib = fake()
    assert bpf_supported(42) == (True, "")
    assert bpf_supported() == (True, "")
    assert lib.calls == [("probe", 42), ("probe", 0)]
    fake(fail=(2, -1, errno.EPERM))
    ok, why = bpf_supported(42)
    assert not ok
    assert why.startswith("loading a BPF program denied (Operation not permitted): "
                           "run as root or grant CAP_BPF")
    with pytest.raises(InvalidArgument):
        bpf_supported(0)


def test_probe_without_the_extension(monkeypatch):
    def missing():
        raise NotAvailable("the kvmstat C extension (kvmstat._native) was not built")

    monkeypatch.setattr(bpfengine, "binding", missing)
    assert bpf_supported() == (False, "the BPF engine needs the kvmstat C extension: "
                                      "the kvmstat C extension (kvmstat._native) was not built")
    with pytest.raises(NotAvailable, match="the BPF engine needs the kvmstat C extension"):
        BpfCounter([PIO], [(0, None)])


@needs_ffi
def test_c_structures_match_the_header():
    assert FFI.sizeof("struct kvmstat_bpf_entry") == 24
    assert FFI.sizeof("struct kvmstat_bpf_event") == 32


# -- layouts and attachments ----------------------------------------------------

RAW_UEXIT = BpfEventSpec("kvm_userspace_exit", 42, 8, 4, tracepoint="kvm_userspace_exit",
                         reason_arg=0)


@pytest.mark.parametrize("layout, attach, expected", [
    ("by-process", "auto", (0, 0)), ("slots", "perf", (1, 1)), ("slots", "raw", (1, 2))])
def test_layout_and_attach_reach_the_core(fake, layout, attach, expected):
    lib = fake()
    with BpfCounter([RAW_UEXIT, PIO], [(0, None), (0, (2,)), (1, None)],
                    layout=layout, attach=attach) as c:
        assert lib.options == expected
        assert lib.names == [("kvm_userspace_exit", 0), (None, -1)]
        assert c.attached == ("raw", "perf")
        assert c.layout == layout
    # The fields go to the core with the events, in one call.
    assert lib.calls[1] == ("fields", [(0, None), (0, [2]), (1, None)])


@pytest.mark.parametrize("kwargs, message", [
    ({"layout": "per-cpu"}, "unknown layout 'per-cpu'"),
    ({"attach": "kprobe"}, "unknown attach mode 'kprobe'"),
])
def test_bad_layout_or_attach_mode(fake, kwargs, message):
    lib = fake()
    with pytest.raises(InvalidArgument, match=message):
        BpfCounter([PIO], [(0, None)], **kwargs)
    assert lib.calls == []


@pytest.mark.parametrize("spec, message", [
    (BpfEventSpec("x", 1, 8, 4, reason_arg=12), "bad reason argument 12 for x: need 0 to 11"),
    (BpfEventSpec("x", 1, 8, 4, reason_arg=-1), "bad reason argument -1"),
    (BpfEventSpec("x", 1, tracepoint="kvm pio"), "bad tracepoint name 'kvm pio' for x"),
    (BpfEventSpec("x", 1, tracepoint="../x"), "bad tracepoint name"),
])
def test_bad_raw_tracepoint_details(fake, spec, message):
    fake()
    with pytest.raises(InvalidArgument, match=message):
        BpfCounter([spec], [(0, None)])


def test_spec_with_a_reason_argument():
    field = Field("reason", 8, 4, False)
    spec = BpfEventSpec.for_field("kvm_userspace_exit", 42, field,
                                  tracepoint="kvm_userspace_exit", reason_arg=0)
    assert spec == RAW_UEXIT
    # Without a record field there is no size to read the argument with.
    assert BpfEventSpec.for_field("kvm_pio", 110, None, tracepoint="kvm_pio",
                                  reason_arg=0).reason_arg is None


def test_read_rows_leaves_out_the_buckets_without_counts(fake):
    """Only the rows with a count come back (idle VMs cost no per-field work);
    their values are those of the dense read."""
    flat = [0, 0, 0,  3, 0, 1,  0, 0, 0,  0, 0, 2**64 - 1]
    fake(totals=[3, 0, 1], flat=flat)
    with BpfCounter([UEXIT, PIO], [(0, None), (0, [2]), BpfField(1)]) as c:
        assert c.read_rows(4) == ([3, 0, 1], {1: [3, 0, 1], 3: [0, 0, 2**64 - 1]})
        assert c.read(4) == ([3, 0, 1], flat)
        assert c.read_rows(1) == ([3, 0, 1], {})
        assert c.read_rows(0) == ([3, 0, 1], {})
