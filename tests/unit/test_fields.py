"""The parent/child naming rule and the -f filter (docs/design.md §6.3)."""

import pytest
from hypothesis import given, strategies as st

from kvmstat.errors import InvalidArgument
from kvmstat.sampling.fields import FieldFilter, child_name, is_child, parent_of, reason_of

NAMES = ["kvm_exit", "kvm_exit(HLT)", "kvm_exit(IO_INSTRUCTION)", "kvm_pio",
         "kvm_userspace_exit", "kvm_userspace_exit(IO)", "kvm_msr"]


def test_child_naming_round_trip():
    name = child_name("kvm_exit", "HLT")
    assert name == "kvm_exit(HLT)"
    assert is_child(name) and parent_of(name) == "kvm_exit" and reason_of(name) == "HLT"
    assert not is_child("kvm_pio") and parent_of("kvm_pio") == "kvm_pio"
    assert reason_of("kvm_pio") is None


def test_no_filter_selects_everything_in_order():
    assert FieldFilter(None).select(NAMES) == NAMES
    assert FieldFilter("").select(NAMES) == NAMES


def test_regex_matches_from_the_start_only():
    assert FieldFilter("pio").select(NAMES) == []
    assert FieldFilter("kvm_pio").select(NAMES) == ["kvm_pio"]


def test_matching_children_keep_their_parent():
    assert FieldFilter(r"kvm_exit\(HLT").select(NAMES) == ["kvm_exit", "kvm_exit(HLT)"]
    assert FieldFilter(r".*\(IO").select(NAMES) == [
        "kvm_exit", "kvm_exit(IO_INSTRUCTION)", "kvm_userspace_exit", "kvm_userspace_exit(IO)"]


def test_parent_only_regex_does_not_pull_children():
    assert FieldFilter("kvm_exit$").select(NAMES) == ["kvm_exit"]


def test_without_children_a_child_only_regex_still_selects_the_parents():
    # The TUI with child events hidden (x off) opens only the parents.
    assert FieldFilter(None, children=False).select(NAMES) == [
        "kvm_exit", "kvm_pio", "kvm_userspace_exit", "kvm_msr"]
    assert FieldFilter(r".*\(IO", children=False).select(NAMES) == [
        "kvm_exit", "kvm_userspace_exit"]
    assert FieldFilter(r"kvm_p", children=False).select(NAMES) == ["kvm_pio"]


@pytest.mark.parametrize("regex", ["(", "[a-", "*x", "a{2,1}"])
def test_bad_regex_is_a_clear_error(regex):
    with pytest.raises(InvalidArgument, match="Not a valid regular expression"):
        FieldFilter(regex)


@given(st.text(max_size=20))
def test_any_text_is_a_filter_or_a_clear_error(regex):
    try:
        selected = FieldFilter(regex).select(NAMES)
    except InvalidArgument as exc:
        assert "Not a valid regular expression" in str(exc)
    else:
        assert set(selected) <= set(NAMES)
        for name in selected:
            if is_child(name):
                assert parent_of(name) in selected
