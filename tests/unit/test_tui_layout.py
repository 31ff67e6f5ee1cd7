"""The TUI's screen layout (docs/design.md §6.8) from fake samples: golden screens."""

import pytest
from hypothesis import given, settings, strategies as st

from kvmstat.frontends import tui_layout as L
from kvmstat.sampling.sampler import Sample

VALUES = {
    "kvm_pio": (1000, 200),
    "kvm_exit": (600, 60),
    "kvm_exit(HLT)": (400, 50),
    "kvm_exit(IO_INSTRUCTION)": (200, 10),
    "kvm_exit(CPUID)": (0, 0),
    "kvm_msr": (0, 0),
    "kvm_userspace_exit": (400, 0),
}


def render(lines, width, height):
    """Paint lines into a width x height grid; fail on anything outside it."""
    grid = [[" "] * width for _ in range(height)]
    for line in lines:
        assert 0 <= line.y < height and 0 <= line.x, line
        assert line.x + len(line.text) <= width, line
        for i, ch in enumerate(line.text):
            grid[line.y][line.x + i] = ch
    return "\n".join("".join(row).rstrip() for row in grid).rstrip("\n")


def screen(sample, view, width=80, height=24, names=None):
    return render(L.screen(sample, view, width, height, names), width, height)


def styles(lines):
    return {line.y: line.style for line in lines if line.style != "normal"}


def test_summary_sorted_by_current_rate_without_children_or_zero_rows():
    assert screen(Sample(0.0, 2.0, VALUES), L.View()) == """\
kvm statistics - summary
Sort: CurAvg/s
Event                                         Total %Total CurAvg/s
kvm_pio                                        1000   50.0      100
kvm_exit                                        600   30.0       30
kvm_userspace_exit                              400   20.0
Total                                          2000             130"""


def test_header_is_the_classic_format():
    lines = L.screen(Sample(0.0, 2.0, VALUES), L.View(), 80, 24)
    header = [line for line in lines if line.y == 2][0]
    assert header.text == '%-40s %10s%7s %8s' % ('Event', 'Total', '%Total', 'CurAvg/s')
    assert header.x == 0


def test_title_header_and_total_styles():
    lines = L.screen(Sample(0.0, 2.0, VALUES), L.View(), 80, 24)
    assert styles(lines) == {0: "bold", 2: "standout", 6: "bold"}


def test_children_under_parents_sorted_by_total_with_filter_and_long_names():
    view = L.View(children=True, sort=L.SORT_TOTAL, regex="kvm_" + "x" * 60,
                  pid=42, guest="g" * 60)
    assert screen(Sample(0.0, 2.0, VALUES), view) == """\
kvm statistics - pid 42 (gggggggggggggggggggggggggggggggggggggggggggggggg...)
Sort: Total      regex filter: kvm_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...
Event                                         Total %Total CurAvg/s
kvm_pio                                        1000   50.0      100
kvm_exit                                        600   30.0       30
  kvm_exit(HLT)                                 400   66.7       25
  kvm_exit(IO_INSTRUCTION)                      200   33.3      5.0
kvm_userspace_exit                              400   20.0
Total                                          2000             130"""


def test_sort_by_rate_puts_the_busiest_first_even_with_a_smaller_total():
    values = {"kvm_a": (10, 0), "kvm_b": (5, 5), "kvm_c": (7, 5)}
    text = screen(Sample(0.0, 1.0, values), L.View())
    assert [line.split()[0] for line in text.splitlines()[3:6]] == ["kvm_c", "kvm_b", "kvm_a"]
    text = screen(Sample(0.0, 1.0, values), L.View(sort=L.SORT_TOTAL))
    assert [line.split()[0] for line in text.splitlines()[3:6]] == ["kvm_a", "kvm_c", "kvm_b"]


def test_a_child_only_counted_field_set_still_shows_its_parent():
    # What a child-only -f filter opens: the parent and the matching child.
    values = {"kvm_exit": (30, 3), "kvm_exit(HLT)": (10, 1)}
    assert screen(Sample(0.0, 1.0, values), L.View(children=True, regex=r"kvm_exit\(HLT")) == """\
kvm statistics - summary
Sort: CurAvg/s   regex filter: kvm_exit\\(HLT
Event                                         Total %Total CurAvg/s
kvm_exit                                         30  100.0      3.0
  kvm_exit(HLT)                                  10   33.3      1.0
Total                                            30             3.0"""


def test_by_guest_view_sums_each_vm_and_names_them():
    by_vm = {1001: {"kvm_pio": (600, 120), "kvm_exit": (300, 30), "kvm_exit(HLT)": (300, 30)},
             1002: {"kvm_pio": (400, 80), "kvm_exit": (0, 0)},
             1003: {"kvm_pio": (0, 0)},           # idle since ever: hidden
             1004: {"kvm_pio": (5, 5)}}
    sample = Sample(0.0, 2.0, VALUES, by_vm, {1001: "alpha", 1002: None})
    # 1004 is not named by the sample: the caller's names are used; two VMs
    # called alpha are told apart by pid; 1002 has no name: its pid is shown.
    assert screen(sample, L.View(by_guest=True), names={1004: "alpha"}) == """\
kvm statistics - summary
Sort: CurAvg/s
Guest Name                                    Total %Total CurAvg/s
alpha (1001)                                    900   69.0       75
1002                                            400   30.7       40
alpha (1004)                                      5    0.4      2.5
Total                                          1305             118"""


def test_by_guest_view_without_per_vm_data_says_so():
    sample = Sample(0.0, 2.0, VALUES, {}, {})
    assert screen(sample, L.View(by_guest=True)).splitlines()[2:] == [
        '%-40s %10s%7s %8s' % ('Guest Name', 'Total', '%Total', 'CurAvg/s'),
        "No matching events reported yet"]


def test_messages_before_data_and_without_events():
    assert screen(None, L.View()).splitlines()[3] == "Collecting data..."
    quiet = Sample(0.0, 2.0, {"kvm_pio": (0, 0), "kvm_exit": (0, 0)})
    assert screen(quiet, L.View()).splitlines()[3:] == ["No matching events reported yet"]


def test_dead_guest_is_marked_next_to_the_title():
    view = L.View(pid=4242, guest="web", dead=True)
    assert L.title(view) == "kvm statistics - pid 4242 (web)  Guest is DEAD"
    assert screen(None, view).splitlines()[3] == "No matching events reported yet"
    assert L.title(L.View(pid=4242)) == "kvm statistics - pid 4242"


def test_title_names_the_tracepoint_engine():
    assert L.title(L.View(engine="bpf")) == "kvm statistics - summary (bpf)"
    view = L.View(pid=4242, guest="web", dead=True, engine="perf")
    assert L.title(view) == "kvm statistics - pid 4242 (web) (perf)  Guest is DEAD"
    assert screen(None, L.View(engine="bpf")).splitlines()[0] == "kvm statistics - summary (bpf)"


def test_no_interval_means_no_rates():
    text = screen(Sample(0.0, 0.0, VALUES), L.View())
    assert text.splitlines()[3] == "kvm_pio                                        1000   50.0"
    assert text.splitlines()[-1] == "Total                                          2000"


def test_narrow_short_terminal_keeps_numbers_and_the_total_row():
    many = {f"kvm_ev{i:02d}": (100 - i, 10) for i in range(30)}
    text = screen(Sample(0.0, 1.0, many), L.View(children=True), 40, 10)
    assert text == """\
kvm statistics - summary
Sort: CurAvg/s
Event              Total %Total CurAvg/s
kvm_ev00             100    3.9       10
kvm_ev01              99    3.9       10
kvm_ev02              98    3.8       10
kvm_ev03              97    3.8       10
kvm_ev04              96    3.7       10
kvm_ev05              95    3.7       10
Total               2565             300"""


def test_message_line_at_the_bottom_leaves_room():
    view = L.View(message="no field matches 'zzz' (see '-f help')")
    lines = screen(Sample(0.0, 2.0, VALUES), view, 80, 7).splitlines()
    assert lines[-1] == "no field matches 'zzz' (see '-f help')"
    assert lines[-2].startswith("Total") and len(lines) == 7


@pytest.mark.parametrize("width,height", [(0, 0), (1, 1), (5, 2), (20, 3), (39, 4), (66, 24), (200, 60)])
def test_tiny_terminals_get_clipped_lines_only(width, height):
    view = L.View(children=True, regex="kvm", pid=1, guest="x" * 80, dead=True, message="m" * 300)
    render(L.screen(Sample(0.0, 1.0, VALUES), view, width, height), width, height)
    lines, cursor = L.prompt_screen(["info"] * 30, "Regex: ", "abc" * 40, "error " * 40, width, height)
    render(lines, width, height)
    assert cursor[1] <= max(0, width - 1)


counts = st.tuples(st.integers(0, 10**12), st.integers(0, 10**6)).map(lambda t: (t[0] + t[1], t[1]))
names = st.sampled_from(["kvm_exit", "kvm_exit(HLT)", "kvm_pio", "kvm_msr", "kvm_msr(READ)", "exits"])


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(names, counts), st.floats(0, 30), st.integers(0, 200), st.integers(0, 80),
       st.booleans(), st.sampled_from([L.SORT_RATE, L.SORT_TOTAL]))
def test_any_sample_renders_inside_any_screen(values, interval, width, height, children, sort):
    lines = L.screen(Sample(0.0, interval, values), L.View(children=children, sort=sort), width, height)
    render(lines, width, height)
    rows, total = L.event_rows(Sample(0.0, interval, values), children=children, sort=sort)
    assert total.total == sum(t for n, (t, _) in values.items() if "(" not in n)
    for row in rows:
        assert row.total or row.delta


def test_vm_table_and_help():
    assert L.vm_table([(12, "web"), (345, None)]) == [
        "Running VMs:", "     PID  Guest name", "      12  web", "     345  (no name)"]
    assert L.vm_table([]) == ["No VMs are running."]
    text = render(L.help_screen(3.0), 80, 24)
    for key in "bcfghopqrsx":
        assert f"\n  {key}  " in text
    assert "refresh interval 3 s" in text
