"""The real curses display in a pseudo-terminal, on fake counters (no KVM needed).

``tui_fake_app.py`` runs :class:`kvmstat.frontends.tui.Display` over fake providers whose
numbers are known in advance (see its docstring): after the baseline read and
the first refresh every field has two steps, the interval is 2 s.
"""

import json
import os
import signal
import subprocess
import sys
import termios
import time

import pytest

from helpers import REPO_ROOT
from helpers.ptyterm import PtyTerminal

APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tui_fake_app.py")
HEADER = '%-40s %10s%7s %8s' % ('Event', 'Total', '%Total', 'CurAvg/s')
GUEST_HEADER = '%-40s %10s%7s %8s' % ('Guest Name', 'Total', '%Total', 'CurAvg/s')

FIRST_SCREEN = """\
kvm statistics - summary
Sort: CurAvg/s
Event                                         Total %Total CurAvg/s
kvm_pio                                         200   74.1       50
kvm_exit                                         60   22.2       15
kvm_userspace_exit                               10    3.7      2.5
Total                                           270              68"""


@pytest.fixture
def fake_proc(tmp_path):
    """A /proc tree with one VM process, pid 4242, named fakevm."""
    proc = tmp_path / "proc"
    (proc / "4242" / "fd").mkdir(parents=True)
    os.symlink("anon_inode:kvm-vm", proc / "4242" / "fd" / "7")
    (proc / "4242" / "cmdline").write_bytes(b"qemu-system-x86_64\0-name\0fakevm\0")
    (proc / "4242" / "task" / "4242").mkdir(parents=True)
    return str(proc)


@pytest.fixture
def app(tmp_path, fake_proc):
    """Factory: app(*args) -> (terminal, opens) running tui_fake_app.py."""
    log = tmp_path / "opens.log"
    terms = []

    def start(*args, rows=24, cols=80):
        env = dict(os.environ, FAKE_APP_LOG=str(log))
        term = PtyTerminal([sys.executable, APP, "--proc", fake_proc, *args],
                           rows=rows, cols=cols, env=env)
        terms.append(term)

        def opens():
            if not log.exists():
                return []
            return [json.loads(line) for line in log.read_text().splitlines()]
        return term, opens

    yield start
    for term in terms:
        term.close()


def has_total(term):
    """True once a Total row is on the screen (the first refresh happened)."""
    return any(line.startswith("Total ") for line in term.lines())


def screen_text(term):
    return term.text().rstrip("\n")


def test_first_screen_layout_numbers_and_styles(app):
    term, _ = app("--delay", "25")
    term.wait_for("Collecting data...")
    term.wait_for(has_total)
    assert screen_text(term) == FIRST_SCREEN
    assert term.row_style(0, 0) == (True, False)       # title bold
    assert term.row_style(2, 0) == (False, True)       # header standout
    assert term.row_style(2, 66) == (False, True)
    assert term.row_style(6, 0) == (True, False)       # Total bold
    assert term.row_style(3, 0) == (False, False)
    term.send("q")
    assert term.wait_exit(5) == 0


def test_x_shows_children_and_opens_them(app):
    term, opens = app("--delay", "25")
    term.wait_for(has_total)
    term.send("x")
    term.wait_for("kvm_exit(HLT)")
    assert screen_text(term).splitlines()[3:] == [
        "kvm_pio                                         200   74.1       50",
        "kvm_exit                                         60   22.2       15",
        "  kvm_exit(HLT)                                  40   66.7       10",
        "  kvm_exit(IO_INSTRUCTION)                       20   33.3      5.0",
        "kvm_userspace_exit                               10    3.7      2.5",
        "  kvm_userspace_exit(IO)                         10  100.0      2.5",
        "Total                                           270              68"]
    first, second = opens()
    assert "kvm_exit(HLT)" not in first["fields"] and "kvm_exit(HLT)" in second["fields"]
    term.send("x")
    term.wait_for(lambda t: "kvm_exit(HLT)" not in t.text() and has_total(t))
    assert "kvm_exit(HLT)" not in opens()[-1]["fields"]


def test_o_sorts_by_total_and_shows_it(app):
    term, _ = app("--delay", "25")
    term.wait_for(has_total)
    term.send("o")
    term.wait_for("Sort: Total")
    term.send("o")
    term.wait_for("Sort: CurAvg/s")


def test_b_by_guest_view_opens_per_vm_counting(app):
    term, opens = app("--delay", "25")
    term.wait_for(has_total)
    term.send("b")
    term.wait_for(GUEST_HEADER)
    term.wait_for("alpha")
    assert screen_text(term).splitlines()[2:] == [
        GUEST_HEADER,
        "alpha                                           162   60.0       40",
        "1003                                             54   20.0       14",
        "beta                                             54   20.0       14",
        "Total                                           270              68"]
    assert opens()[-1]["by_vm"] is True
    term.send("b")
    term.wait_for(HEADER)
    assert opens()[-1]["by_vm"] is False


def test_f_prompt_invalid_regex_esc_empty_and_valid(app):
    term, opens = app("--delay", "25")
    term.wait_for(has_total)
    term.send("f")
    term.wait_for("Regex:")
    term.send("(\r")
    term.wait_for('"(": Not a valid regular expression')
    assert "Regex:" in term.text()                     # asked again
    term.key("esc")
    term.wait_for("Sort: CurAvg/s")
    assert "regex filter" not in term.text() and len(opens()) == 1
    term.send("f")
    term.wait_for("Regex:")
    term.send("\r")                                      # empty: keep
    term.wait_for("Sort: CurAvg/s")
    assert "regex filter" not in term.text() and len(opens()) == 1
    term.send("f")
    term.wait_for("Regex:")
    term.send("nothing_matches\r")
    term.wait_for("no field matches 'nothing_matches'")  # asked again
    term.send("\x15kvm_exit\\(HLT\r")                      # Ctrl-U clears the answer
    term.wait_for("regex filter: kvm_exit\\(HLT")
    assert term.lines()[1][17:].rstrip() == "regex filter: kvm_exit\\(HLT"
    # A filter that matches only a child still counts (and shows) its parent.
    assert opens()[-1]["fields"] == ["kvm_exit"]
    term.wait_for(has_total)
    assert screen_text(term).splitlines()[3:] == [
        "kvm_exit                                         60  100.0       15",
        "Total                                            60              15"]
    term.send("c")
    term.wait_for(lambda t: "regex filter" not in t.text() and "kvm_pio" in t.text())
    assert opens()[-1]["fields"] == ["kvm_pio", "kvm_exit", "kvm_msr", "kvm_userspace_exit",
                                     "kvm_nested_vmenter_failed_for_long"]


def test_s_prompt_range_esc_and_new_interval(app):
    term, _ = app("--delay", "25")
    term.wait_for(has_total)
    term.send("s")
    term.wait_for("Refresh interval: 25 s")
    term.send("30\r")
    term.wait_for("delay must be between 0.1 and 25.5 seconds")
    term.send("\x15nan\r")
    term.wait_for("not 'nan'")
    term.key("esc")
    term.wait_for("Sort: CurAvg/s")
    term.send("s")
    term.wait_for("Refresh interval: 25 s")
    term.send("\r")                                 # empty keeps 25
    term.wait_for("Sort: CurAvg/s")
    term.send("s")
    term.wait_for("Refresh interval: 25 s")
    term.send("0.5\r")
    # Every 0.5 s a new sample: the totals grow by 100 per refresh.
    term.wait_for("kvm_pio                                         500")
    term.send("s")
    term.wait_for("Refresh interval: 0.5 s")
    term.key("esc")


def test_h_help_and_any_key_back(app):
    term, _ = app("--delay", "25")
    term.wait_for(has_total)
    term.send("h")
    term.wait_for("Help: interactive keys")
    for key in "bcfghopqrsx":
        assert f"  {key}  " in term.text()
    term.send("q")                                  # any key leaves the help
    term.wait_for("Sort: CurAvg/s")
    assert term.proc.poll() is None


def test_r_resets_the_counters(app):
    term, _ = app("--delay", "0.5")
    term.wait_for("kvm_pio                                         400")
    term.send("r")
    term.wait_for("Collecting data...")
    term.wait_for("kvm_pio                                         200")


def test_other_keys_refresh_once_per_minimum_interval(app):
    term, _ = app("--delay", "25")
    term.wait_for("kvm_pio                                         200")
    term.send(" ")
    term.wait_for("kvm_pio                                         300")
    # A burst of function and arrow keys: each is one key (keypad on), none
    # is taken for a command, and together they refresh at most twice.
    time.sleep(0.6)
    for _ in range(20):
        term.key("F5")
        term.key("up")
        term.key("esc")
        time.sleep(0.01)
    time.sleep(1.5)
    term.pump()
    line = [l for l in term.lines() if l.startswith("kvm_pio ")][0]
    assert int(line.split()[1]) in (400, 500), term.text()
    assert term.proc.poll() is None and "Sort: CurAvg/s" in term.text()


def test_pid_title_and_guest_is_dead(app):
    term, _ = app("--delay", "0.5", "--pid", "4242", "--die-after", "3")
    term.wait_for("kvm statistics - pid 4242 (fakevm)")
    dead = [
        "kvm statistics - pid 4242 (fakevm)  Guest is DEAD",
        "Sort: CurAvg/s",
        HEADER,
        # The last totals stay, there is no current rate any more.
        "kvm_pio                                         300   74.1",
        "kvm_exit                                         90   22.2",
        "kvm_userspace_exit                               15    3.7",
        "Total                                           405"]
    term.wait_for(lambda t: screen_text(t).splitlines() == dead)
    term.settle(1.2)                                # and nothing changes any more
    assert screen_text(term).splitlines() == dead


def test_g_and_p_prompts_list_vms_and_check_answers(app):
    term, opens = app("--delay", "25")
    term.wait_for(has_total)
    term.send("g")
    term.wait_for("Guest name:")
    assert "    4242  fakevm" in term.text()
    term.send("nosuch\r")
    term.wait_for("no VM named 'nosuch'")
    term.send("\x15fakevm\r")
    term.wait_for("kvm statistics - pid 4242 (fakevm)")
    assert opens()[-1]["pid"] == 4242
    term.send("c")
    term.wait_for("kvm statistics - summary")
    assert opens()[-1]["pid"] is None
    term.send("p")
    term.wait_for("PID:")
    assert "    4242  fakevm" in term.text()
    term.send("abc\r")
    term.wait_for("'abc' is not a process id")
    term.send("\x1599999\r")
    term.wait_for("no process with pid 99999")
    term.key("esc")
    term.wait_for("kvm statistics - summary")
    term.send("p")
    term.wait_for("PID:")
    term.send("4242\r")
    term.wait_for("kvm statistics - pid 4242 (fakevm)")


def test_resize_to_40x10_and_back(app):
    term, _ = app("--delay", "25")
    term.wait_for(has_total)
    term.send("x")
    term.wait_for("kvm_exit(HLT)")
    term.resize(10, 40)
    term.wait_for(lambda t: t.lines()[2].rstrip() == "Event              Total %Total CurAvg/s")
    assert screen_text(term) == """\
kvm statistics - summary
Sort: CurAvg/s
Event              Total %Total CurAvg/s
kvm_pio              200   74.1       50
kvm_exit              60   22.2       15
  kvm_exit(HL         40   66.7       10
  kvm_exit(IO         20   33.3      5.0
kvm_userspace         10    3.7      2.5
  kvm_userspa         10  100.0      2.5
Total                270              68"""
    for rows, cols in [(3, 10), (1, 1), (10, 40)]:
        term.resize(rows, cols)
        term.settle(0.2)
        assert term.proc.poll() is None
    term.send("f")                                  # a prompt in a small terminal
    term.wait_for("Regex:")
    term.resize(4, 20)
    term.settle(0.2)
    term.key("esc")
    term.resize(24, 80)
    term.wait_for(lambda t: t.lines()[2].rstrip() == HEADER)
    term.settle(0.2)
    assert screen_text(term).splitlines()[3] == \
        "kvm_pio                                         200   74.1       50"


@pytest.mark.parametrize("how", ["SIGTERM", "SIGHUP", "ctrl-c", "q"])
def test_leaving_restores_the_terminal(app, how):
    term, _ = app("--delay", "25")
    term.wait_for(has_total)
    assert term.modes() != term.initial_modes      # curses changed the modes
    if how == "ctrl-c":
        term.key("ctrl-c")
    elif how == "q":
        term.send("q")
    else:
        term.proc.send_signal(getattr(signal, how))
    assert term.wait_exit(5) == 0
    modes = term.modes()
    assert modes == term.initial_modes
    assert modes[3] & termios.ICANON and modes[3] & termios.ECHO
    assert b"\x1b[?1049l" in term.output            # left the alternate screen


def test_without_a_terminal_kvm_stat_says_to_use_batch_or_log_mode():
    out = subprocess.run([sys.executable, "-m", "kvmstat", "-s", "2"], capture_output=True,
                         text=True, cwd=REPO_ROOT, timeout=30)
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr == ("Error: the interactive display needs a terminal but stdout is not "
                          "one: use -1 for one sample or -l for a log\n")


def test_a_hang_up_ends_it_quietly(app):
    term, _ = app("--delay", "0.1")
    term.wait_for(has_total)
    os.close(term.master)                           # the terminal goes away: SIGHUP
    assert term.proc.wait(5) == 0


def test_t_shows_the_durations_view_sorted_by_time_and_back(app):
    term, opens = app("--delay", "25")
    term.wait_for(has_total)
    term.send("t")
    term.wait_for("kvm_userspace_exit(MMIO)")
    lines = screen_text(term).splitlines()
    assert lines[1].startswith("Durations since start, sorted by time (t: counts)")
    assert lines[2].split() == ["Event", "count", "time%", "avg(us)", "p50(us)", "p99(us)",
                                "max(us)"]
    assert [line.split() for line in lines[3:6]] == [
        # p50 and p99 fall in the bucket [2.1 ms, 4.2 ms): capped at the 3 ms maximum
        ["kvm_userspace_exit", "5", "100.0", "2408.0", "3000.0", "3000.0", "3000.0"],
        ["kvm_userspace_exit(IO)", "4", "99.7", "3000.0", "3000.0", "3000.0", "3000.0"],
        ["kvm_userspace_exit(MMIO)", "1", "0.3", "40.0", "40.0", "40.0", "40.0"]]
    # Where the vCPU's time went; guest and kernel cannot be told apart here.
    assert lines[7].split() == ["vCPU", "(last", "interval)", "pid", "tid", "run%", "guest%",
                                "kernel%", "halted%", "VMM%"]
    assert lines[8].split() == ["CPU", "0/KVM", "1001", "1002", "60.0", "-", "-", "30.0", "40.0"]
    assert lines[9] == "no durations for kvm_exit: it never fires here"
    assert term.row_style(2, 0) == (False, True)
    assert term.row_style(7, 0) == (False, True)
    assert opens()[-1]["durations"] is True
    term.send("t")
    term.wait_for(has_total)
    assert opens()[-1]["durations"] is False
    term.send("h")
    term.wait_for("show exit durations")
    term.send(" ")
    term.send("q")
    assert term.wait_exit(5) == 0
