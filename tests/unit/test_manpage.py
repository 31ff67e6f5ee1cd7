"""kvm_stat(1) stays in step with the options: it is generated from the parser."""

import argparse
import os
import shutil
import subprocess
import sys

import pytest

from kvmstat.frontends import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from manpage import MAX_LINE, render, roff_escape  # noqa: E402  (the generator lives in tools/)
CHECKED_IN = os.path.join(ROOT, "man", "kvm_stat.1")


def test_checked_in_man_page_is_the_generated_one():
    with open(CHECKED_IN) as f:
        assert f.read() == render(), "man/kvm_stat.1 is stale: run `python tools/manpage.py`"


def test_every_option_and_its_help_is_in_the_page():
    page = render()
    for action in cli.build_parser()._actions:
        for option in action.option_strings:
            assert f"\\fB{roff_escape(option)}\\fR" in page, option
            assert f".OP {roff_escape(action.option_strings[0])}" in page
        if action.help:
            # Text lines are wrapped at 80 bytes: compare with white space folded.
            wanted = roff_escape(action.help.split(";")[0].split("(")[0].strip())
            assert " ".join(wanted.split()) in " ".join(page.split())


def test_a_new_option_appears_without_editing_the_page():
    parser = cli.build_parser()
    parser.add_argument("--frobnicate", metavar="LEVEL", help="frobnicate at LEVEL (default %(default)s)",
                        default=3)
    parser.add_argument("--colour", choices=("auto", "never"), help="when to use colour")
    page = render(parser, "9.9")
    assert "\\fB\\-\\-frobnicate\\fR \\fILEVEL\\fR\nfrobnicate at LEVEL (default 3)" in page
    assert ".OP \\-\\-frobnicate LEVEL" in page
    assert "\\fB\\-\\-colour\\fR \\fIauto|never\\fR" in page
    assert '"kvmstat 9.9"' in page.split("\n")[1]


def test_roff_escaping():
    assert roff_escape("a\\b-c") == "a\\eb\\-c"
    assert roff_escape(".starts a request\n'this too\nnot this.") == (
        "\\&.starts a request\n\\&'this too\nnot this.")


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_groff_formats_the_page_without_warnings():
    result = subprocess.run(["groff", "-man", "-ww", "-z", CHECKED_IN], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_long_text_lines_are_wrapped_and_nothing_is_lost():
    parser = cli.build_parser()
    words = " ".join(f"word{i}" for i in range(60))
    # Over 80 bytes, ending so that a word starting with a dot begins a line.
    words = " ".join(f"word{i}" for i in range(20)) + " " + "y" * 70
    parser.add_argument("--long", help=f"{words} .not-a-request")
    page = render(parser, "9.9")
    assert all(len(line.encode()) <= MAX_LINE for line in page.split("\n")
               if not line.startswith(".OP"))
    text = page.split("\\fB\\-\\-long\\fR \\fILONG\\fR\n", 1)[1].split("\n.", 1)[0]
    assert text.replace("\n", " ").replace("\\&", "") == f"{words} .not\\-a\\-request"
    assert not any(line.startswith(".not") for line in text.split("\n"))


def test_no_paragraph_request_right_after_a_section_heading():
    lines = render().split("\n")
    assert not [a for a, b in zip(lines, lines[1:]) if a.startswith(".SH") and b == ".PP"]


@pytest.mark.skipif(shutil.which("mandoc") is None, reason="mandoc is not installed")
def test_mandoc_lint_is_clean():
    result = subprocess.run(["mandoc", "-Tlint", CHECKED_IN], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result.stdout
