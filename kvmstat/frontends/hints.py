"""The command line's flag names, added to the library's messages when
``kvm_stat`` prints them.

The library speaks of its own concepts ("the debugfs provider", "the perf
engine", "count fewer events"); a user of the command needs the flag that
does it.  Each phrase of :data:`FLAG_HINTS` is completed with its flag.
"""

from __future__ import annotations

from typing import Tuple

__all__ = ["FLAG_HINTS", "with_flags"]

#: (library phrase, the same phrase for the command line)
FLAG_HINTS: Tuple[Tuple[str, str], ...] = (
    ("the tracepoint provider", "the tracepoint provider (-t)"),
    ("the debugfs provider", "the debugfs provider (-d)"),
    ("the binary statistics provider", "the binary statistics provider (--binstats)"),
    ("use the perf engine", "use --engine perf"),
    ("count fewer events", "count fewer events with -f"),
    ("choose one by pid", "choose one with -p PID"),
    ("(see the list of fields)", "(see '-f help')"),
    ("exit durations need", "exit durations (--durations) need"),
    ("the perf engine was asked for", "the perf engine was asked for (--engine perf)"),
)


def with_flags(message: str) -> str:
    """*message* with the command-line flag named wherever a phrase of
    :data:`FLAG_HINTS` says what to use."""
    for phrase, flagged in FLAG_HINTS:
        if phrase in message:
            message = message.replace(phrase, flagged)
    return message
