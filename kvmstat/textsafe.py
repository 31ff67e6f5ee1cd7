"""The one rule for text from outside on its way to any output.

Guest names, process names, file names and kernel strings are chosen by
someone else: on a shared host, whoever starts a VM names it.  Before such
text reaches a terminal, a log, a CSV or JSON file, an exporter label or an
error message, :func:`safe_text` makes it inert:

- control characters (C0, DEL, C1), line and paragraph separators and the
  bidirectional overrides are written as visible escapes (``\\n``, ``\\t``,
  ``\\x1b``, ``\\u202e``), so nothing is interpreted by a terminal and a
  name never breaks a line;
- bytes that were not valid UTF-8 (kept as lone surrogates by
  ``surrogateescape``) are written as ``\\xNN``, the byte they stood for.

A backslash is kept as it is: a name that spells ``\\n`` shows the same as
one holding a newline, which is harmless (neither is interpreted), and
regular expressions in error messages stay readable.

Everything else (letters of any script, spaces, punctuation) is kept.  Text
made of kvmstat's own words needs no escaping; the rule is applied where the
outside text is placed into output (the formats, the display, the error
line, the exporter's labels); docs/design.md §6.14 states the rule, and
docs/output.md says it for users.
"""

from __future__ import annotations

import re
from typing import Optional

__all__ = ["safe_text", "safe_name"]

# Characters that must not reach an output as themselves: C0 controls and
# DEL, C1 controls, lone surrogates (invalid bytes or broken UTF-16), the
# line/paragraph separators, the bidirectional embeddings, overrides and
# isolates.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
                     "\ud800-\udfff]")

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: "re.Match[str]") -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"  # a byte surrogateescape kept
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def safe_text(text: str) -> str:
    """*text* with every unsafe character escaped visibly (see the module).

    Plain text comes back unchanged; the result is always one line.
    """
    if not isinstance(text, str):
        text = str(text)
    return _UNSAFE.sub(_escape, text)


def safe_name(name: Optional[str]) -> Optional[str]:
    """:func:`safe_text` of *name*, None staying None (a VM without a name)."""
    return None if name is None else safe_text(name)
