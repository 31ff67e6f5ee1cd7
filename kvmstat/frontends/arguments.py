"""The values a user types, parsed in one place for the command line and the
display's prompts: refresh intervals and process ids."""

from __future__ import annotations

import math

from ..errors import InvalidArgument

__all__ = ["MIN_DELAY", "MAX_DELAY", "DEFAULT_DELAY", "DELAY_RANGE", "parse_delay", "parse_pid"]

MIN_DELAY = 0.1
MAX_DELAY = 25.5
DEFAULT_DELAY = 3.0
#: the accepted refresh intervals, as shown to users
DELAY_RANGE = f"{MIN_DELAY:g}-{MAX_DELAY:g}"


def parse_delay(text: str) -> float:
    """Parse a refresh interval (``-s``, the ``s`` key): a finite number of
    seconds from :data:`MIN_DELAY` to :data:`MAX_DELAY`."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value):
        raise InvalidArgument(f"delay must be a finite number of seconds, not {text!r}")
    if not MIN_DELAY <= value <= MAX_DELAY:
        raise InvalidArgument(f"delay must be between {MIN_DELAY} and {MAX_DELAY} seconds, not {text!r}")
    return value


def parse_pid(text: str) -> int:
    """Parse a process id (``-p``, the ``p`` key): a positive decimal number."""
    try:
        value = int(text, 10)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{text!r} is not a process id") from None
    if value <= 0:
        raise InvalidArgument(f"{text!r} is not a process id")
    return value
