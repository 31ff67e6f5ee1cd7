"""Field names: the parent/child naming rule and the ``-f`` field filter.

A field is one counter: an event (``kvm_pio``, ``exits``) or a child event
that counts one reason of its parent, named ``parent(REASON)``
(``kvm_exit(HLT)``).  This module is the one definition of that rule.
"""

from __future__ import annotations

import os
import re
import select
import signal
import time
from typing import Dict, Iterable, List, Sequence

from ..errors import InvalidArgument

__all__ = ["parent_of", "is_child", "child_name", "reason_of", "FieldFilter", "MATCH_BUDGET"]

#: Seconds a field filter may spend matching the field names.  A regular
#: expression such as ``([a-z_]+)+X`` backtracks for minutes on a name of
#: 30 letters, and Python cannot interrupt a running match: it runs in a
#: child process that is killed when the budget is spent.
MATCH_BUDGET = 1.0


def child_name(parent: str, reason: str) -> str:
    """Return the name of the child of *parent* counting *reason*."""
    return f"{parent}({reason})"


def is_child(name: str) -> bool:
    """True if *name* is a child field such as ``kvm_exit(HLT)``."""
    return name.endswith(")") and "(" in name


def parent_of(name: str) -> str:
    """Return the parent of a child field, or *name* itself for a parent."""
    if is_child(name):
        return name[: name.index("(")]
    return name


def reason_of(name: str) -> str | None:
    """Return the reason of a child field (``HLT`` for ``kvm_exit(HLT)``)."""
    if is_child(name):
        return name[name.index("(") + 1 : -1]
    return None


def _read_results(read_end: int, count: int, deadline: float) -> bytes:
    poller = select.poll()
    poller.register(read_end, select.POLLIN)
    got = b""
    while len(got) < count:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(max(1, int(left * 1000))):
            if time.monotonic() >= deadline:
                break
            continue
        chunk = os.read(read_end, count - len(got))
        if not chunk:
            break  # the child died
        got += chunk
    return got


def _match_bounded(pattern: "re.Pattern[str]", names: Sequence[str], budget: float) -> List[bool]:
    """``pattern.match`` of each name, computed in a child process that is
    killed after *budget* seconds (:class:`InvalidArgument` then).  The wait
    is a poll, so signal handlers (Ctrl-C, SIGTERM) run meanwhile."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the child: match, report one byte per name, leave at once
        try:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.close(read_end)
            data = memoryview(bytes(pattern.match(n) is not None for n in names))
            while data:
                data = data[os.write(write_end, data):]
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        got = _read_results(read_end, len(names), time.monotonic() + budget)
    finally:
        os.close(read_end)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
    if len(got) < len(names):
        raise InvalidArgument(f"the regular expression '{pattern.pattern}' takes more than "
                              f"{budget:g} s to match the field names (nested repetitions "
                              "such as '(a+)+' backtrack without end): simplify it")
    return [b == 1 for b in got]


class FieldFilter:
    """The ``-f REGEX`` rule.

    A field is selected when the regex matches its name from the start
    (``re.match``).  Matching is bounded: names are matched in a child
    process given :data:`MATCH_BUDGET` seconds, and a regex that needs more
    is refused with :class:`InvalidArgument` (results are kept, so each
    name is matched once per filter).  The parent of a selected child is selected too, so a
    filter that only names children still shows (and counts) their parents.
    ``FieldFilter(None)`` selects everything.  With ``children=False`` child
    fields are left out of the selection (their parents still count them).
    """

    def __init__(self, regex: str | None = None, *, children: bool = True):
        self.regex = regex
        self.children = children
        self._known: Dict[str, bool] = {}
        if regex is None or regex == "":
            self._pattern = None
        else:
            try:
                self._pattern = re.compile(regex)
            except (re.error, OverflowError, RecursionError) as exc:
                raise InvalidArgument(f'"{regex}": Not a valid regular expression ({exc})') from None

    def _learn(self, names: Iterable[str]) -> None:
        new = [n for n in dict.fromkeys(names) if n not in self._known]
        if new:
            self._known.update(zip(new, _match_bounded(self._pattern, new, MATCH_BUDGET)))

    def matches(self, name: str) -> bool:
        """True if the regex itself matches *name* (no parent rule)."""
        if self._pattern is None:
            return True
        self._learn((name,))
        return self._known[name]

    def select(self, names: Iterable[str]) -> list[str]:
        """Return the selected subset of *names*, in their original order."""
        names = list(names)
        if self._pattern is None:
            chosen = set(names)
        else:
            self._learn(names)
            chosen = {n for n in names if self._known[n]}
            chosen |= {parent_of(n) for n in chosen if is_child(n)}
        if not self.children:
            chosen = {n for n in chosen if not is_child(n)}
        return [n for n in names if n in chosen]

    def __repr__(self) -> str:
        if self.children:
            return f"FieldFilter({self.regex!r})"
        return f"FieldFilter({self.regex!r}, children=False)"
