"""Tests for kvmstat.tracefs.events: format parsing, reason tables, children, vendors."""

from __future__ import annotations

import os
import pathlib

import pytest

from kvmstat.errors import InvalidArgument, KernelDataError, NotAvailable
from kvmstat.tracefs.events import (Child, Event, Field, FormatError, detect_vendor, fallback_table,
                            list_event_names, load_events, parse_format,
                            parse_symbolic_tables)

DATA = pathlib.Path(__file__).parent / "data"


def fixture(name: str) -> str:
    return (DATA / f"{name}.format").read_text()


def make_tracefs(tmp_path, events):
    """events: name -> (id, format text or None)."""
    root = tmp_path / "tracing"
    base = root / "events" / "kvm"
    base.mkdir(parents=True)
    (base / "enable").write_text("0\n")
    (base / "filter").write_text("none\n")
    for name, (ev_id, fmt) in events.items():
        d = base / name
        d.mkdir()
        if ev_id is not None:
            (d / "id").write_text(f"{ev_id}\n")
        if fmt is not None:
            (d / "format").write_text(fmt)
    return str(root)


def real_tracefs(tmp_path):
    return make_tracefs(tmp_path, {
        "kvm_exit": (103, fixture("kvm_exit")),
        "kvm_userspace_exit": (42, fixture("kvm_userspace_exit")),
        "kvm_entry": (104, fixture("kvm_entry")),
        "kvm_apic": (77, fixture("kvm_apic")),
    })


def by_name(events):
    return {e.name: e for e in events}


# ---------------------------------------------------------------- parse_format

def test_parse_format_kvm_exit():
    f = parse_format(fixture("kvm_exit"))
    assert f.name == "kvm_exit"
    assert f.id == 103
    assert f.fields["exit_reason"].offset == 8
    assert f.fields["exit_reason"].size == 4
    assert f.fields["exit_reason"].signed is False
    assert f.fields["common_pid"].signed is True
    assert f.fields["isa"].size == 4
    assert f.print_fmt.startswith('"vcpu %u reason')


def test_parse_format_array_and_data_loc_names():
    text = ("name: x\nID: 5\nformat:\n"
            "\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n"
            "\tfield:__data_loc char[] msg;\toffset:24;\tsize:4;\tsigned:0;\n"
            'print fmt: "%s", REC->comm\n')
    f = parse_format(text)
    assert set(f.fields) == {"comm", "msg"}
    assert f.print_fmt == '"%s", REC->comm'


@pytest.mark.parametrize("text", [
    "", "ID: 3\n", "name: x\n", "name: x\nID: abc\n",
    "name: x\nID: 1\n\tfield:int a;\toffset:zz;\tsize:4;\tsigned:1;\n",
    "name: x\nID: 1\n\tfield:;\toffset:0;\tsize:4;\tsigned:1;\n",
])
def test_parse_format_malformed(text):
    with pytest.raises(FormatError) as e:
        parse_format(text)
    # The kernel's data is bad, not the caller's argument.
    assert isinstance(e.value, KernelDataError) and not isinstance(e.value, InvalidArgument)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- tables

def test_kvm_exit_tables():
    f = parse_format(fixture("kvm_exit"))
    tables = parse_symbolic_tables(f.print_fmt)
    assert len(tables) == 2  # __print_flags is not a symbolic table
    vmx, svm = tables
    assert vmx.field == svm.field == "exit_reason"
    assert vmx.condition == "REC->isa == 1"
    assert svm.condition == "!(REC->isa == 1)"
    vmx_d = dict(vmx.entries)
    assert vmx_d[0] == "EXCEPTION_NMI" and vmx_d[12] == "HLT"
    assert vmx_d[77] == "TDCALL" and vmx_d[84] == "MSR_READ_IMM"
    svm_d = dict(svm.entries)
    assert svm_d[0x40] == "DE excp" and svm_d[0x40 + 14] == "PF excp"
    assert svm_d[-1] == "invalid_guest_state"
    assert svm_d[0x8000fffd] == "vmgexit_hypervisor_feature"


def test_userspace_exit_adjacent_literals():
    tables = parse_symbolic_tables(parse_format(fixture("kvm_userspace_exit")).print_fmt)
    assert len(tables) == 1
    t = tables[0]
    assert t.field == "reason"
    assert t.condition == "!(REC->errno < 0)"
    assert dict(t.entries)[2] == "KVM_EXIT_IO"


def test_expression_values_and_enum_names():
    t = parse_symbolic_tables(parse_format(fixture("kvm_emulate_insn")).print_fmt)[0]
    assert dict(t.entries)[(1 << 0) | (1 << 3)] == "prot64"
    # unresolved enum constants are dropped, empty "{ }" entries skipped
    tsc = parse_symbolic_tables(parse_format(fixture("kvm_track_tsc")).print_fmt)
    assert tsc[0].field == "host_clock" and tsc[0].entries == ()
    inj = parse_symbolic_tables(parse_format(fixture("kvm_inj_exception")).print_fmt)
    assert [t.field for t in inj] == ["exception", "error_code"]
    assert dict(inj[0].entries)[14] == "#PF"


def test_nested_ternary_conditions():
    fmt = ('"%s", (REC->isa == 1) ? __print_symbolic(REC->r, {1, "a"}) : '
           '((REC->isa == 2) ? __print_symbolic(REC->r, {2, "b"}) : '
           '__print_symbolic(REC->r, {3, "c"}))')
    a, b, c = parse_symbolic_tables(fmt)
    assert a.condition == "REC->isa == 1"
    assert b.condition == "!(REC->isa == 1) && REC->isa == 2"
    assert c.condition == "!(REC->isa == 1) && !(REC->isa == 2)"


def test_prefix_and_no_tables():
    assert parse_symbolic_tables('print fmt: "x %d", REC->a') == []
    assert parse_symbolic_tables("") == []
    t = parse_symbolic_tables('print fmt: "%s", __print_symbolic(REC->a, { 0x10, "x" "y" },)')
    assert t[0].entries == ((16, "xy"),)


@pytest.mark.parametrize("fmt", [
    '"%s", __print_symbolic(REC->a, { 1 "x" })',
    '"%s", __print_symbolic(REC->a, { 1, x })',
    '"%s", __print_symbolic(REC->a, { , "x" })',
    '"%s", __print_symbolic(REC->a, 1, "x")',
    '"%s", __print_symbolic(a, { 1, "x" })',
    '"%s", __print_symbolic(REC->a, { 1 2, "x" })',
    '"%s", __print_symbolic(REC->a, { 1, "x" }',
    '"%s", REC->a ? __print_symbolic(REC->a, { 1, "x" })',
    '"%s", __print_symbolic(REC->a, { 1, "x })',
    '"%s", __print_symbolic(REC->a, { 1 << 999, "x" })',
    '(' * 5000,
])
def test_malformed_tables(fmt):
    with pytest.raises(FormatError):
        parse_symbolic_tables(fmt)


def test_every_fixture_parses():
    for p in DATA.glob("*.format"):
        parse_symbolic_tables(parse_format(p.read_text()).print_fmt)


def test_live_formats_parse():
    base = "/sys/kernel/tracing/events/kvm"
    if not os.path.isdir(base):
        pytest.skip("no kvm tracepoints on this host")
    for name in os.listdir(base):
        try:
            with open(os.path.join(base, name, "format")) as f:
                text = f.read()
        except OSError:
            continue
        parse_symbolic_tables(parse_format(text).print_fmt)


# ---------------------------------------------------------------- events

def test_list_event_names(tmp_path):
    root = make_tracefs(tmp_path, {"kvm_b": (2, None), "kvm_a": (1, None), "noid": (None, "x")})
    assert list_event_names(root) == ["kvm_a", "kvm_b"]


def test_list_event_names_missing(tmp_path):
    with pytest.raises(NotAvailable) as e:
        list_event_names(str(tmp_path))
    assert "is the kvm module loaded?" in str(e.value)
    root = make_tracefs(tmp_path, {})
    with pytest.raises(NotAvailable):
        list_event_names(root)


def test_vmx_children(tmp_path):
    ev = by_name(load_events(real_tracefs(tmp_path), "vmx"))
    exit_ = ev["kvm_exit"]
    assert exit_.id == 103 and exit_.subsystem == "kvm"
    assert exit_.filter_field == "exit_reason"
    kids = {c.name: c for c in exit_.children}
    assert kids["kvm_exit(HLT)"] == Child("kvm_exit(HLT)", "HLT", "exit_reason==12", (12,))
    assert "kvm_exit(TDCALL)" in kids and "kvm_exit(MSR_READ_IMM)" in kids
    assert kids["kvm_exit(MSR_READ_IMM)"].filter == "exit_reason==84"
    assert len(exit_.children) == 65
    assert ev["kvm_entry"] == Event("kvm_entry", 104, "kvm", None, ())
    assert ev["kvm_apic"].children == ()  # only two events get children
    assert ev["kvm_apic"].reason_field is None
    # where the BPF engine reads the reason: this kernel's format file
    assert exit_.reason_field == Field("exit_reason", 8, 4, False)


def test_svm_children(tmp_path):
    exit_ = by_name(load_events(real_tracefs(tmp_path), "svm"))["kvm_exit"]
    kids = {c.reason: c for c in exit_.children}
    assert kids["hlt"].filter == "exit_reason==120"
    assert kids["DE excp"].name == "kvm_exit(DE excp)"
    assert kids["DE excp"].filter == "exit_reason==64"
    # -1 on an unsigned 32-bit field: the kernel filter wants the unsigned value
    assert kids["invalid_guest_state"].filter == "exit_reason==4294967295"
    assert kids["invalid_guest_state"].codes == (4294967295,)
    assert "HLT" not in kids


def test_userspace_children(tmp_path):
    ev = by_name(load_events(real_tracefs(tmp_path), "svm", ["kvm_userspace_exit"]))
    kids = {c.name: c for c in ev["kvm_userspace_exit"].children}
    assert kids["kvm_userspace_exit(IO)"].filter == "reason==2"
    assert kids["kvm_userspace_exit(X86_WRMSR)"].filter == "reason==30"
    assert not any("KVM_EXIT_" in n for n in kids)
    assert ev["kvm_userspace_exit"].filter_field == "reason"


def test_unknown_vendor_gets_no_exit_children(tmp_path):
    root = real_tracefs(tmp_path)
    ev = by_name(load_events(root, None))
    assert ev["kvm_exit"].children == ()
    assert ev["kvm_exit"].filter_field is None
    assert len(ev["kvm_userspace_exit"].children) == 31


def test_pvm_without_a_pvm_table_shows_the_vmx_table(tmp_path):
    root = real_tracefs(tmp_path)
    pvm = by_name(load_events(root, "pvm"))["kvm_exit"]
    vmx = by_name(load_events(root, "vmx"))["kvm_exit"]
    assert pvm.children == vmx.children
    assert {"TDCALL", "MSR_READ_IMM", "HLT"} <= {c.reason for c in pvm.children}


def test_pvm_table_used_when_kernel_has_one(tmp_path):
    fmt = fixture("kvm_exit").replace(
        ": __print_symbolic(REC->exit_reason, { 0x000,",
        ": (REC->isa == 3) ? __print_symbolic(REC->exit_reason, { 13, \"GP excp\" }, "
        "{ 0x10000, \"SYSCALL\" }) : __print_symbolic(REC->exit_reason, { 0x000,", 1)
    root = make_tracefs(tmp_path, {"kvm_exit": (103, fmt)})
    kids = {c.reason: c.filter for c in load_events(root, "pvm")[0].children}
    assert kids == {"GP excp": "exit_reason==13", "SYSCALL": "exit_reason==65536"}
    svm = {c.reason for c in load_events(root, "svm")[0].children}
    assert "hlt" in svm and "SYSCALL" not in svm


def test_alias_dedupe(tmp_path):
    fmt = ("name: kvm_exit\nID: 9\nformat:\n"
           "\tfield:unsigned int exit_reason;\toffset:8;\tsize:4;\tsigned:0;\n"
           'print fmt: "%s", __print_symbolic(REC->exit_reason, { 1, "A" }, { 2, "B" }, '
           '{ 3, "A" }, { 1, "A" })\n')
    root = make_tracefs(tmp_path, {"kvm_exit": (9, fmt)})
    (ev,) = load_events(root, None)
    assert ev.children == (Child("kvm_exit(A)", "A", "exit_reason==1 || exit_reason==3", (1, 3)),
                           Child("kvm_exit(B)", "B", "exit_reason==2", (2,)))
    assert ev.reason_field == Field("exit_reason", 8, 4, False)


def test_codes_of_a_signed_field_are_zero_extended(tmp_path):
    """The filter compares a signed field as signed; the BPF engine loads
    the field's bytes zero-extended, so its codes are the unsigned values
    (and two values with the same bytes are one code)."""
    fmt = ("name: kvm_userspace_exit\nID: 9\nformat:\n"
           "\tfield:short reason;\toffset:10;\tsize:2;\tsigned:1;\n"
           'print fmt: "%s", __print_symbolic(REC->reason, { -1, "KVM_EXIT_NONE" }, '
           '{ 65535, "KVM_EXIT_NONE" }, { 2, "KVM_EXIT_" "IO" })\n')
    (ev,) = load_events(make_tracefs(tmp_path, {"kvm_userspace_exit": (9, fmt)}), None)
    assert ev.children == (
        Child("kvm_userspace_exit(NONE)", "NONE", "reason==-1 || reason==65535", (65535,)),
        Child("kvm_userspace_exit(IO)", "IO", "reason==2", (2,)))
    assert ev.reason_field == Field("reason", 10, 2, True)


def test_arm64_field_from_format(tmp_path):
    fmt = ("name: kvm_exit\nID: 9\nformat:\n"
           "\tfield:int ret;\toffset:8;\tsize:4;\tsigned:1;\n"
           "\tfield:unsigned int esr_ec;\toffset:12;\tsize:4;\tsigned:0;\n"
           "\tfield:unsigned long vcpu_pc;\toffset:16;\tsize:8;\tsigned:0;\n"
           'print fmt: "%s: HSR_EC: 0x%04x (%s), PC: 0x%016lx", '
           '__print_symbolic(REC->ret, { 0, "IRQ" }, { 1, "TRAP" }), REC->esr_ec, '
           '__print_symbolic(REC->esr_ec, { 0x01, "WFx" }, { 0x16, "HVC64" }), REC->vcpu_pc\n')
    root = make_tracefs(tmp_path, {"kvm_exit": (9, fmt)})
    (ev,) = load_events(root, None)
    assert ev.filter_field == "esr_ec"
    assert [c.filter for c in ev.children] == ["esr_ec==1", "esr_ec==22"]
    assert ev.children[1].name == "kvm_exit(HVC64)"


def test_ppc_field_from_format(tmp_path):
    fmt = ("name: kvm_exit\nID: 9\nformat:\n"
           "\tfield:unsigned int exit_nr;\toffset:8;\tsize:4;\tsigned:0;\n"
           'print fmt: "exit=%s", __print_symbolic(REC->exit_nr, { 0x500, "EXTERNAL" })\n')
    (ev,) = load_events(make_tracefs(tmp_path, {"kvm_exit": (9, fmt)}), None)
    assert ev.children == (Child("kvm_exit(EXTERNAL)", "EXTERNAL", "exit_nr==1280", (1280,)),)


@pytest.mark.parametrize("vendor, child, flt", [
    ("vmx", "kvm_exit(HLT)", "exit_reason==12"),
    ("vmx", "kvm_exit(TDCALL)", "exit_reason==77"),
    ("svm", "kvm_exit(hlt)", "exit_reason==120"),
    ("svm", "kvm_exit(invalid_guest_state)", "exit_reason==4294967295"),
])
def test_unparseable_format_uses_fallback(tmp_path, vendor, child, flt):
    broken = fixture("kvm_exit").replace('{ 12, "HLT" }', '{ 12, "HLT" ')
    root = make_tracefs(tmp_path, {"kvm_exit": (103, broken),
                                   "kvm_userspace_exit": (42, "garbage")})
    ev = by_name(load_events(root, vendor))
    kids = {c.name: c.filter for c in ev["kvm_exit"].children}
    assert kids[child] == flt
    user = {c.name: c.filter for c in ev["kvm_userspace_exit"].children}
    assert user["kvm_userspace_exit(IO)"] == "reason==2"
    # the table is built in, but the field's place is still this format's
    assert ev["kvm_exit"].reason_field == Field("exit_reason", 8, 4, False)
    # no format at all: nobody knows where the reason is in the record
    assert ev["kvm_userspace_exit"].reason_field is None


def test_fallback_tables():
    assert fallback_table("kvm_exit", None) is None
    assert fallback_table("kvm_exit", "pvm") is None
    assert fallback_table("kvm_entry", "vmx") is None
    field, entries = fallback_table("kvm_userspace_exit", None)
    assert field == "reason" and (2, "IO") in entries
    # the built-in tables agree with this kernel's own ones
    vmx, svm = parse_symbolic_tables(parse_format(fixture("kvm_exit")).print_fmt)
    assert set(fallback_table("kvm_exit", "vmx")[1]) == set(vmx.entries)
    assert set(fallback_table("kvm_exit", "svm")[1]) == set(svm.entries)


def test_vanished_events_skipped(tmp_path):
    root = make_tracefs(tmp_path, {"kvm_entry": (104, fixture("kvm_entry")),
                                   "kvm_gone": (None, None),
                                   "kvm_badid": (None, None)})
    (pathlib.Path(root) / "events/kvm/kvm_badid/id").write_text("zz\n")
    ev = load_events(root, "vmx", ["kvm_entry", "kvm_gone", "kvm_badid", "kvm_nonexistent"])
    assert [e.name for e in ev] == ["kvm_entry"]


def test_missing_format_still_loaded(tmp_path):
    root = make_tracefs(tmp_path, {"kvm_exit": (103, None), "kvm_entry": (104, None)})
    ev = by_name(load_events(root, "vmx"))
    assert ev["kvm_entry"].id == 104
    assert any(c.reason == "HLT" for c in ev["kvm_exit"].children)
    assert ev["kvm_exit"].reason_field is None


# ---------------------------------------------------------------- vendor

def make_host(tmp_path, modules=(), vendor_id=None, flags="fpu vme"):
    sysd = tmp_path / "sys"
    procd = tmp_path / "proc"
    (sysd / "module").mkdir(parents=True)
    procd.mkdir()
    for m in modules:
        (sysd / "module" / m).mkdir()
    if vendor_id is not None:
        (procd / "cpuinfo").write_text(
            f"processor\t: 0\nvendor_id\t: {vendor_id}\ncpu family\t: 25\nflags\t\t: {flags}\n\n")
    return str(sysd), str(procd)


@pytest.mark.parametrize("modules, vendor_id, expected", [
    (["kvm", "kvm_intel"], "AuthenticAMD", "vmx"),
    (["kvm", "kvm_amd"], "GenuineIntel", "svm"),
    (["kvm", "kvm_pvm"], "AuthenticAMD", "pvm"),
    (["kvm"], "GenuineIntel", "vmx"),
    (["kvm"], "CentaurHauls", "vmx"),
    (["kvm"], "  Shanghai  ", "vmx"),
    (["kvm"], "AuthenticAMD", "svm"),
    (["kvm"], "HygonGenuine", "svm"),
    (["kvm"], "ARM", None),
    ([], None, None),
])
def test_detect_vendor(tmp_path, modules, vendor_id, expected):
    sysd, procd = make_host(tmp_path, modules, vendor_id)
    assert detect_vendor(sysd, procd) == expected


def test_detect_vendor_ignores_flags(tmp_path):
    # vmx/svm flags are hidden on nested/paravirtual hosts and must not matter
    sysd, procd = make_host(tmp_path, ["kvm"], "AuthenticAMD", flags="fpu vmx")
    assert detect_vendor(sysd, procd) == "svm"
    sysd, procd = make_host(tmp_path / "b", ["kvm"], "GenuineIntel", flags="fpu svm")
    assert detect_vendor(sysd, procd) == "vmx"
