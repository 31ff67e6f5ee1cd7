"""Field names: the parent/child naming rule and the ``-f`` field filter.

A field is one counter: an event (``kvm_pio``, ``exits``) or a child event
that counts one reason of its parent, named ``parent(REASON)``
(``kvm_exit(HLT)``).  This module is the one definition of that rule.
"""

from __future__ import annotations

import re
from typing import Iterable

from ..errors import InvalidArgument

__all__ = ["parent_of", "is_child", "child_name", "reason_of", "FieldFilter"]


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


class FieldFilter:
    """The ``-f REGEX`` rule.

    A field is selected when the regex matches its name from the start
    (``re.match``).  The parent of a selected child is selected too, so a
    filter that only names children still shows (and counts) their parents.
    ``FieldFilter(None)`` selects everything.  With ``children=False`` child
    fields are left out of the selection (their parents still count them).
    """

    def __init__(self, regex: str | None = None, *, children: bool = True):
        self.regex = regex
        self.children = children
        if regex is None or regex == "":
            self._pattern = None
        else:
            try:
                self._pattern = re.compile(regex)
            except (re.error, OverflowError, RecursionError) as exc:
                raise InvalidArgument(f'"{regex}": Not a valid regular expression ({exc})') from None

    def matches(self, name: str) -> bool:
        """True if the regex itself matches *name* (no parent rule)."""
        return self._pattern is None or self._pattern.match(name) is not None

    def select(self, names: Iterable[str]) -> list[str]:
        """Return the selected subset of *names*, in their original order."""
        names = list(names)
        if self._pattern is None:
            chosen = set(names)
        else:
            chosen = {n for n in names if self.matches(n)}
            chosen |= {parent_of(n) for n in chosen if is_child(n)}
        if not self.children:
            chosen = {n for n in chosen if not is_child(n)}
        return [n for n in names if n in chosen]

    def __repr__(self) -> str:
        if self.children:
            return f"FieldFilter({self.regex!r})"
        return f"FieldFilter({self.regex!r}, children=False)"
