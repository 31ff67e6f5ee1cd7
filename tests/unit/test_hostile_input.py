"""Hostile text and faulty streams without KVM (issue 18): the escaping rule
in every format and in the display, argument errors in one line, a terminal
without cursor addressing, a backtracking regex, Ctrl-C during start-up.

The same cases against the real kernel are in tests/kernel/test_hostile_kernel.py.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO_ROOT
from helpers.ptyterm import PtyTerminal
from kvmstat.frontends import cli
from kvmstat.errors import InvalidArgument
from kvmstat.sampling.fields import FieldFilter
from kvmstat.frontends.formats import json as json_format
from kvmstat.frontends.formats import log as log_format
from kvmstat.frontends.formats import text as text_format
from kvmstat.sampling.sampler import Sample
from kvmstat.textsafe import safe_name, safe_text

#: a name that forges a by-guest block and clears the screen when printed raw
FORGING = "web1 (pid 1)\nkvm_pio      999999    999999\n\nforged\x1b[2J\x1b]0;owned\x07"
FORGING_SHOWN = ("web1 (pid 1)\\nkvm_pio      999999    999999\\n\\nforged"
                 "\\x1b[2J\\x1b]0;owned\\x07")
APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tui_fake_app.py")


# -- the rule ------------------------------------------------------------------

@pytest.mark.parametrize("raw, shown", [
    ("web1", "web1"),
    ("é ü 漢字 spaces, (pid 3)", "é ü 漢字 spaces, (pid 3)"),
    (FORGING, FORGING_SHOWN),
    ("a\tb\rc\x00d\x7fe\x85f", "a\\tb\\rc\\x00d\\x7fe\\x85f"),
    ("left\u202eright\u2028next", "left\\u202eright\\u2028next"),
    (b"bad\xff\xfe".decode("utf-8", "surrogateescape"), "bad\\xff\\xfe"),
])
def test_safe_text_escapes_controls_visibly(raw, shown):
    assert safe_text(raw) == shown
    assert "\n" not in safe_text(raw) and "\x1b" not in safe_text(raw)


def test_safe_name_keeps_none():
    assert safe_name(None) is None and safe_name("x\n") == "x\\n"


# -- every format ------------------------------------------------------------------

def hostile_sample():
    return Sample(1e9, 1.0, {"kvm_pio": (5, 5)},
                  by_vm={7: {"kvm_pio": (3, 3)}, 8: {"kvm_pio": (2, 2)}},
                  vm_names={7: FORGING, 8: b"x\xff".decode("utf-8", "surrogateescape")})


def assert_inert(text, lines):
    assert "\x1b" not in text and "\x07" not in text
    assert text.count("\n") == lines
    assert not any(line.startswith(("web1", "kvm_pio      999999", "forged"))
                   for line in text.splitlines())


def test_batch_by_guest_headings_start_with_the_pid():
    lines = text_format.by_guest_batch_lines(hostile_sample())
    text = "".join(line + "\n" for line in lines)
    assert_inert(text, 5)
    assert lines[0] == f"(pid 7) {FORGING_SHOWN}"
    assert lines[3] == "(pid 8) x\\xff"


@pytest.mark.parametrize("fmt", ["plain", "csv"])
def test_log_rows_by_guest_are_one_line_per_vm(fmt):
    rows = (log_format.guest_plain_rows if fmt == "plain" else log_format.guest_csv_rows)(
        hostile_sample(), ["kvm_pio"])
    assert len(rows) == 2
    assert_inert("".join(rows), 2)
    assert FORGING_SHOWN in rows[0] and "x\\xff" in rows[1]


def test_json_names_follow_the_same_rule():
    line = json_format.sample_json(hostile_sample(), by_guest=True)
    assert line.count("\n") == 1
    guests = json.loads(line)["guests"]
    assert guests["7"]["name"] == FORGING_SHOWN
    assert guests["8"]["name"] == "x\\xff"


def test_field_names_from_the_kernel_are_escaped_too():
    sample = Sample(1e9, 1.0, {"kvm_evil\n0 0": (1, 1)})
    assert text_format.batch_lines(sample)[0].startswith("kvm_evil\\n0 0")
    assert log_format.csv_header(["kvm_evil\n0 0"]) == "timestamp,kvm_evil\\n0 0\n"
    assert text_format.field_help_lines(["kvm\x1b[2J"]) == ["  kvm\\x1b[2J"]


def test_exporter_labels_are_escaped():
    from kvmstat.frontends.exporter_render import vm_label_text
    text = vm_label_text(7, FORGING)
    assert "\n" not in text and "\x1b" not in text
    assert text == 'pid="7",guest="' + FORGING_SHOWN.replace("\\", "\\\\") + '"'


def test_error_lines_escape_what_they_quote(capsys):
    assert cli.main(["-f", "x\n\x1b[2J("]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err
    assert err.startswith('Error: "x\\n\\x1b[2J(": Not a valid regular expression')


# -- argument errors ------------------------------------------------------------------

def test_argparse_errors_are_one_error_line_in_a_real_process():
    out = subprocess.run([sys.executable, "-m", "kvmstat", "--bogus"], capture_output=True,
                         text=True, cwd=REPO_ROOT, timeout=30)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == "Error: unrecognized arguments: --bogus (see kvm_stat --help)\n"


def test_help_into_a_full_device_is_one_error_line():
    with open("/dev/full", "w") as full:
        out = subprocess.run([sys.executable, "-m", "kvmstat", "--help"], stdout=full,
                             stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT, timeout=30)
    assert out.returncode == 1
    assert out.stderr == "Error: cannot write to standard output: No space left on device\n"


# -- the display ------------------------------------------------------------------

@pytest.fixture
def fake_proc(tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    return str(proc)


def test_display_shows_a_hostile_guest_name_escaped(fake_proc):
    with PtyTerminal([sys.executable, APP, "--proc", fake_proc, "--delay", "25",
                      "--vm-name", FORGING], cols=120) as term:
        term.wait_for(lambda t: any(line.startswith("Total ") for line in t.lines()))
        term.send("b")
        term.wait_for("Guest Name")
        term.wait_for("beta")
        lines = [line.rstrip() for line in term.lines()]
        row = next(line for line in lines if line.startswith("web1"))
        # Escaped, on one row (the label column cuts it at its width).
        assert row.startswith(FORGING_SHOWN[:40])
        # Nothing was interpreted: the screen was not cleared and no title was set.
        assert lines[0].startswith("kvm statistics") and not any(
            line.startswith("forged") for line in lines)
        assert b"owned\x07" not in term.output
        term.send("q")
        assert term.wait_exit(5) == 0


def test_display_refuses_a_terminal_without_cursor_addressing():
    with PtyTerminal([sys.executable, "-m", "kvmstat"], term="dumb") as term:
        assert term.wait_exit(20) == 1
        term.pump(0.2)
        text = term.output.decode()
    assert text.strip() == ("Error: the terminal TERM=dumb cannot move its cursor, which the "
                            "interactive display needs: use -1 (batch mode) or -l (log mode)")


def test_f_prompt_with_a_backtracking_regex_answers_within_the_budget(fake_proc):
    with PtyTerminal([sys.executable, APP, "--proc", fake_proc, "--delay", "25"]) as term:
        term.wait_for(lambda t: any(line.startswith("Total ") for line in t.lines()))
        term.send("f")
        term.wait_for("Regex:")
        start = time.monotonic()
        term.send("([a-z_]+)+X\r")
        term.wait_for("takes more than 1 s to match", timeout=15)
        assert time.monotonic() - start < 8
        term.key("esc")
        term.wait_for("Sort: CurAvg/s")
        term.key("ctrl-c")
        assert term.wait_exit(5) == 0


# -- the field filter ------------------------------------------------------------------

LONG_NAMES = ["kvm_nested_vmenter_failed_for_long_" + "x" * 10, "kvm_pio"]


def test_a_backtracking_regex_is_refused_after_the_budget():
    start = time.monotonic()
    with pytest.raises(InvalidArgument) as exc:
        FieldFilter("([a-z_]+)+X").select(LONG_NAMES)
    assert time.monotonic() - start < 5
    assert "takes more than 1 s to match the field names" in str(exc.value)


def test_a_plain_regex_still_selects_and_remembers():
    chosen = FieldFilter("kvm_p").select(LONG_NAMES)
    assert chosen == ["kvm_pio"]


def test_ctrl_c_interrupts_the_bounded_match():
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from kvmstat.sampling.fields import FieldFilter\n"
            "import kvmstat.sampling.fields as f; f.MATCH_BUDGET = 60\n"
            "print('go', flush=True)\n"
            "FieldFilter('([a-z_]+)+X').select(['a' * 40])\n" % REPO_ROOT)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "go\n"
    time.sleep(0.3)
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.wait(10)
    assert time.monotonic() - start < 2
    assert "KeyboardInterrupt" in proc.stderr.read()


# -- Ctrl-C during start-up ---------------------------------------------------------

def test_ctrl_c_during_start_up_never_prints_a_kvmstat_traceback():
    """SIGINT at 0-150 ms after the start: no traceback through kvmstat's
    modules.  Out of reach: a SIGINT that lands while Python itself starts
    (its site module) or while the package's ``__init__`` runs (a couple of
    milliseconds: the error classes and the old-path aliases), before the
    command's entry module (kvmstat/__main__.py) takes Ctrl-C over."""
    package = os.path.join(REPO_ROOT, "kvmstat") + os.sep
    init = os.path.join(package, "__init__.py")
    for ms in range(0, 150, 6):
        proc = subprocess.Popen([sys.executable, "-m", "kvmstat", "-l", "-s", "1", "-f", "zz_"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=REPO_ROOT)
        time.sleep(ms / 1000)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        if f'File "{init}"' in err:
            continue  # it landed while the package's __init__ ran: the window out of reach
        frames = [line for line in err.splitlines() if package in line]
        assert not frames, f"SIGINT after {ms} ms:\n{err}"
