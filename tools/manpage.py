"""The ``kvm_stat(1)`` man page, rendered in roff from the argument parser.

The synopsis and the OPTIONS section come from :func:`kvmstat.frontends.cli.build_parser`,
so the page cannot fall behind the options; the other sections are text
kept here.  ``man/kvm_stat.1`` in the repository is the output of
:func:`render`.  Run from the repository root after changing an option or a
man page text (a test checks the page is fresh)::

    python tools/manpage.py
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

__all__ = ["render", "roff_escape"]

_TITLE = 'kvm_stat \\- show what KVM guests make the host do'

#: the date in the page's title line: change it with the page's text
DATE = "2026-12-02"

#: the longest text line written (mandoc -Tlint asks for at most 80 bytes)
MAX_LINE = 80

# Sections after OPTIONS: (title, paragraphs); a paragraph starting with
# ".EX" is an example block, one with "\t" a tagged paragraph (tag, text).
_SECTIONS = [
    ("MODES", [
        "Without \\fB-1\\fR, \\fB-l\\fR, \\fB-L\\fR, \\fB--serve\\fR or \\fB--check\\fR "
        "the curses display runs.",
        "\tBatch (\\fB-1\\fR)\tOpens the events, waits one second and prints every field "
        "sorted by name, one line each: the name left-aligned in 42 columns, the count "
        "since start and the count during that second, each right-aligned in 10 columns.",
        "\tLog (\\fB-l\\fR, \\fB-L\\fR \\fIFILE\\fR)\tEvery \\fIDELAY\\fR seconds one row "
        "with the delta of each field over that interval (not per second). The field "
        "list is fixed at start. Row k is due at start + k \\(mu \\fIDELAY\\fR, so rows do "
        "not drift; every row is flushed when written.",
        "\tExporter (\\fB--serve\\fR)\tServes \\fB/metrics\\fR in the Prometheus text "
        "format (OpenMetrics when asked for), read at scrape time: \\fBkvm_\\fR\\fIevent\\fR"
        "\\fB_total\\fR counters with \\fBreason\\fR labels for child events and "
        "\\fBpid\\fR and \\fBguest\\fR labels per VM; instant and peak values are gauges.",
        "\tCheck (\\fB--check\\fR)\tPrints a table of the providers (and of per-VM "
        "attribution): available or not, the reason, and the fix; then notes on the host.",
    ]),
    ("PROVIDERS", [
        "\ttracepoints (\\fB-t\\fR, the default)\tCounting of every kvm tracepoint, "
        "one counter per reason for events that carry one, with perf groups or BPF "
        "programs (see ENGINES).",
        "\tdebugfs (\\fB-d\\fR)\tKVM's statistics files, host-wide and per VM directory; "
        "under kernel lockdown only the files that can be read are shown, the others are "
        "named once on standard error.",
        "\tbinary statistics (\\fB--binstats\\fR)\tKVM's own statistics, read from the "
        "statistics descriptors VM processes hold (QEMU 8.1 and newer keep them open); "
        "free for the guests and readable under lockdown.",
    ]),
    ("INTERACTIVE DISPLAY", [
        "Each event's total, its share of all events (a child's share of its parent) and "
        "its rate over the last refresh interval, sorted by rate or by total; a Total row "
        "follows. The title names what is watched and the tracepoint engine, e.g. "
        "\\fBkvm statistics - summary (bpf)\\fR.",
        "\tb\tOne row per VM (by-guest view) on or off.",
        "\tc\tClear the regex and guest filters.",
        "\tf\tFilter events by a regular expression.",
        "\tg, p\tWatch one VM, by guest name or by pid (the prompt lists running VMs).",
        "\th\tHelp.",
        "\to\tSort by current rate or by total.",
        "\tq\tQuit at once; the perf events are closed afterwards by a detached process "
        "named \\fBkvmstat-release\\fR.",
        "\tr\tReset the counters.",
        "\ts\tSet the refresh interval.",
        "\tx\tChild events (one per reason) on or off.",
        "Any other key refreshes. In prompts ESC cancels and an empty answer keeps the "
        "current value. When the watched VM exits the title says \\fBGuest is DEAD\\fR and "
        "its totals up to the exit stay on the screen.",
    ]),
    ("VMS", [
        "A VM is a process holding a KVM VM file descriptor (\\fBanon_inode:kvm-vm\\fR). "
        "Its guest name is read from its command line the way QEMU parses \\fB-name\\fR "
        "(\\fB-name web1\\fR, \\fB-name guest=web1,...\\fR; the last guest given wins).",
        "With \\fB-p\\fR or \\fB-g\\fR every thread of the VM process is counted, also "
        "threads it starts later, and the kernel threads named after it "
        "(\\fBkvm-pit/\\fR\\fIPID\\fR). With \\fB--by-guest\\fR every VM is counted "
        "separately, and VMs that start later are found at the next refresh.",
        "When the watched VM exits, every mode keeps its counts up to the exit: batch mode "
        "prints them, log mode writes them as its last row, both exit 0; the exporter "
        "drops the VM and keeps serving.",
    ]),
    ("ENGINES", [
        "\tperf\tperf counting groups: one event per field per CPU (host-wide) or per "
        "thread (\\fB-p\\fR, \\fB--by-guest\\fR); a child is a filtered copy of its parent.",
        "\tbpf\tOne BPF program per tracepoint adds each hit to a table keyed by "
        "tracepoint, process and reason: the breakdown by reason and VM costs about one "
        "counting event, and the descriptors do not depend on CPUs or threads.",
        "\tauto\tBPF where the kernel and the privileges allow it (root, or CAP_BPF with "
        "CAP_PERFMON), perf groups otherwise, also when loading the programs fails (with a "
        "note). Inside a PID namespace of its own, per-VM counting uses perf groups.",
    ]),
    ("LOG FORMATS", [
        "\tplain\tA banner of the field names, each followed by one space, then rows of "
        "the local time (YYYY-MM-DD HH:MM:SS) followed by each delta in 10 columns. The "
        "banner is repeated after every 20 printed rows.",
        "\tCSV (\\fB-c\\fR)\tA header \\fBtimestamp,\\fR\\fIname\\fR,... written once per "
        "file or stream, then rows \\fItimestamp\\fR,\\fIdelta\\fR,.... Appending to a "
        "file whose header differs moves that file aside to \\fIFILE\\fR.\\fItimestamp\\fR "
        "and starts a new one (with a note on standard error); in every format, so does "
        "appending to a file whose last line is incomplete.",
        "\tJSON (\\fB--json\\fR)\tOne object per line: {\"time\": unix seconds, "
        "\"interval\": seconds, \"fields\": {\"name\": {\"total\": N, \"delta\": N}, ...}}, "
        "and with \\fB--by-guest\\fR \"guests\": {\"pid\": {\"name\": ..., \"fields\": {...}}}. "
        "Histogram statistics, where the providers have any, come under \"histograms\": "
        "{\"name\": {\"since\": ..., \"counts\": [...], ...}} (and in each guest's object).",
        "\tby guest\tWith \\fB--by-guest\\fR one row per VM and interval, sorted by pid: "
        "plain rows have the pid and the guest name (\\fB-\\fR when it has none) after the "
        "time, under the banner \\fBpid guest\\fR \\fIname\\fR...; CSV rows are "
        "\\fItimestamp\\fR,\\fIpid\\fR,\\fIguest\\fR,\\fIdelta\\fR,... under the header "
        "\\fBtimestamp,pid,guest,\\fR\\fIname\\fR,....",
        "With \\fB-z\\fR, rows whose deltas are all zero are left out (they do not count "
        "for the banner).",
        "Guest, process, file and kernel names are written with control characters and "
        "invalid bytes escaped (\\fB\\en\\fR, \\fB\\ex1b\\fR), in every output: a name "
        "never breaks a line nor drives the terminal.",
    ]),
    ("SIGNALS", [
        "\tSIGHUP\tWith \\fB-L\\fR: close and reopen \\fIFILE\\fR (after logrotate or "
        "\\fBsystemctl reload\\fR); a new or empty file gets the header first. Ignored with "
        "\\fB-l\\fR. With \\fB--serve\\fR: discover the VMs and open the providers again, "
        "and keep serving. In the display: leave, as for SIGTERM.",
        "\tSIGTERM, SIGINT\tWrite the row of the interval in progress, close and exit 0. "
        "No row is lost or torn. Obeyed within a second even while the reader of the "
        "output does not read; the last row is then given up (status 1).",
        "\tSIGPIPE\tA reader that goes away (\\fBkvm_stat -l | head\\fR) ends the program "
        "quietly with status 0.",
    ]),
    ("EXIT STATUS", [
        "0 on success, also when stopped by SIGTERM or SIGINT in log mode, when the "
        "reader of a pipe goes away, and when the VM watched with \\fB-p\\fR or \\fB-g\\fR "
        "exits (after its counts up to the exit). 1 on an error, reported as one line "
        "\\fBError:\\fR ... on standard error (also a closed or full standard output), and "
        "for \\fB--check\\fR when no provider works. 2 on a usage error (one "
        "\\fBError:\\fR line too; the usage is in \\fB--help\\fR).",
    ]),
    ("ENVIRONMENT", [
        "\t\\fBKVMSTAT_BACKEND\\fR=\\fBpython\\fR\tCount with the pure-Python implementation "
        "of the counting core instead of the C one (perf groups: \\fB--engine auto\\fR then "
        "does not use BPF, which exists only in C).",
    ]),
    ("FILES", [
        "\t\\fIcontrib/systemd/kvm_stat.service\\fR\tA systemd unit logging CSV every 10 "
        "seconds from debugfs and tracepoints, without zero rows, to "
        "\\fI/var/log/kvm_stat.csv\\fR; reloaded by SIGHUP, restarted on failure.",
        "\t\\fIcontrib/logrotate/kvm_stat\\fR\tIts logrotate configuration.",
        "\t\\fIcontrib/systemd/kvm_stat-exporter.service\\fR\tA systemd unit serving the "
        "Prometheus exporter on 127.0.0.1:9177. Both units keep only the capabilities "
        "kvm_stat uses and a read-only file system.",
    ]),
    ("EXAMPLES", [
        ".EX\nkvm_stat -1 -p 1234\nkvm_stat -l -s 0.5 -f 'kvm_(exit|pio)'\n"
        "kvm_stat -dtcz -s 10 -L /var/log/kvm_stat.csv\nkvm_stat -l --json | jq .fields",
    ]),
    ("SEE ALSO", [
        "\\fBperf\\fR(1), \\fBperf_event_open\\fR(2), \\fBlogrotate\\fR(8), "
        "\\fBsystemd.service\\fR(5)",
    ]),
]


def roff_escape(text: str) -> str:
    """Escape plain *text* for roff: backslashes, minus signs, and a leading
    ``.`` or ``'`` that would start a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line
                     for line in text.split("\n"))


def _marked_up(text: str) -> str:
    # Section text already holds roff font escapes; only the minus signs of
    # option names need escaping.
    return text.replace("-", "\\-")


def _option_label(action: argparse.Action) -> str:
    value = _value_name(action)
    names = ", ".join(f"\\fB{roff_escape(opt)}\\fR" for opt in action.option_strings)
    return f"{names} \\fI{roff_escape(value)}\\fR" if value else names


def _value_name(action: argparse.Action) -> Optional[str]:
    if action.nargs == 0:
        return None
    if action.metavar is not None:
        return action.metavar
    if action.choices:
        return "|".join(str(c) for c in action.choices)
    return action.dest.upper()


def _help_text(action: argparse.Action, parser: argparse.ArgumentParser) -> str:
    text = action.help or ""
    if "%" in text:  # the same expansion argparse does for --help
        text = text % dict(vars(action), prog=parser.prog)
    if action.choices and action.metavar is not None:
        text += f" (one of: {', '.join(str(c) for c in action.choices)})"
    return text


def _synopsis(parser: argparse.ArgumentParser) -> List[str]:
    lines = [".SY kvm_stat"]
    for action in parser._actions:
        if not action.option_strings:
            continue
        first = roff_escape(action.option_strings[0])
        value = _value_name(action)
        if value:
            lines.append(f".OP {first} {roff_escape(value)}")
        else:
            lines.append(f".OP {first}")
    lines.append(".YS")
    return lines


def _paragraph(text: str) -> List[str]:
    if text.startswith(".EX\n"):
        return [".PP", ".EX", *(roff_escape(line) for line in text.split("\n")[1:]), ".EE"]
    if text.startswith("\t"):
        tag, body = text[1:].split("\t", 1)
        return [".TP", _marked_up(tag), _marked_up(body)]
    return [".PP", _marked_up(text)]


def _wrapped(line: str) -> List[str]:
    """A filled text *line* broken at spaces into lines of at most
    :data:`MAX_LINE` bytes (a single longer word stays whole).  Requests
    (lines starting with ``.``) are left as they are."""
    if line.startswith(".") or len(line.encode()) <= MAX_LINE:
        return [line]
    out: List[str] = []
    current = ""
    for word in re.split(r" +", line.strip(" ")):
        joined = f"{current} {word}" if current else word
        if current and len(joined.encode()) > MAX_LINE:
            out.append(current)
            current = word
        else:
            current = joined
    out.append(current)
    # A continuation line starting with "." or "'" would be a request.
    return [out[0]] + ["\\&" + part if part[:1] in (".", "'") else part for part in out[1:]]


def _layout(lines: List[str]) -> List[str]:
    """*lines* with long text lines wrapped (not in .EX blocks, not the
    tag line after .TP) and no paragraph request right after a section
    heading (it starts a paragraph already)."""
    out: List[str] = []
    literal = tag = False
    for line in lines:
        if line == ".PP" and out and out[-1].startswith(".SH"):
            continue
        if literal or tag or line.startswith("."):
            out.append(line)
        else:
            out.extend(_wrapped(line))
        tag = line == ".TP"
        literal = (literal or line == ".EX") and line != ".EE"
    return out


def render(parser: Optional[argparse.ArgumentParser] = None, version: Optional[str] = None) -> str:
    """The man page of *parser* (default: kvm_stat's) as roff text."""
    if parser is None or version is None:
        if ROOT not in sys.path:
            sys.path.insert(0, ROOT)
        from kvmstat import __version__
        from kvmstat.frontends.cli import build_parser
        parser = parser or build_parser()
        version = version or __version__
    lines = [
        '.\\" Generated from kvm_stat\'s argument parser by tools/manpage.py: do not edit.',
        f'.TH KVM_STAT 1 {DATE} "kvmstat {version}" "User Commands"',
        ".SH NAME", _TITLE,
        ".SH SYNOPSIS", *_synopsis(parser),
        ".SH DESCRIPTION", roff_escape(parser.description or ""),
        ".SH OPTIONS",
    ]
    for action in parser._actions:
        if action.option_strings:
            lines += [".TP", _option_label(action), roff_escape(_help_text(action, parser))]
    if parser.epilog:
        lines += [".SH NOTES", roff_escape(parser.epilog)]
    for title, paragraphs in _SECTIONS:
        lines.append(f".SH {title}")
        for text in paragraphs:
            lines += _paragraph(text)
    return "\n".join(_layout(lines)) + "\n"


if __name__ == "__main__":
    target = os.path.join(ROOT, "man", "kvm_stat.1")
    with open(target, "w") as f:
        f.write(render())
    print(f"wrote {os.path.relpath(target, ROOT)}")
