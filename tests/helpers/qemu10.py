"""A QEMU of 8.1 or newer for the binary statistics tests.

QEMU keeps its vCPUs' statistics descriptors open from version 8.1 on; Debian
12 ships 7.2.  :func:`qemu10` returns a :class:`QemuBinary` for
bookworm-backports' QEMU 10, prepared (downloaded once, unpacked, cached) by
``tests/helpers/qemu10.sh``, the script ``.ci/run`` also runs.  When
``KVMSTAT_QEMU10`` names a ``qemu-system-x86_64`` binary, that one is used
instead (it must be 8.1 or newer).  No kvmstat code here.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from typing import List, NamedTuple, Tuple

__all__ = ["QemuBinary", "Unavailable", "qemu10", "qemu_version", "system_qemu"]

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "qemu10.sh")
MINIMUM = (8, 1)


class Unavailable(Exception):
    """No QEMU of 8.1 or newer can be had on this host; the message says why."""


class QemuBinary(NamedTuple):
    """How to start one QEMU: ``argv`` (the binary and its ``-L`` options) and
    its version as (major, minor)."""

    argv: Tuple[str, ...]
    version: Tuple[int, int]


def qemu_version(binary: str) -> Tuple[int, int]:
    """(major, minor) that *binary* ``--version`` reports."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=60).stdout
    except OSError as exc:
        raise Unavailable(f"cannot run {binary}: {exc.strerror}") from None
    match = re.search(r"version (\d+)\.(\d+)", out)
    if match is None:
        first = (out.strip().splitlines() or [""])[0]
        raise Unavailable(f"{binary} --version printed no QEMU version: {first!r}")
    return int(match.group(1)), int(match.group(2))


def system_qemu() -> QemuBinary:
    """The ``qemu-system-x86_64`` on PATH (Debian 12: QEMU 7.2)."""
    return QemuBinary(("qemu-system-x86_64",), qemu_version("qemu-system-x86_64"))


@functools.lru_cache(maxsize=None)
def qemu10() -> QemuBinary:
    """A QEMU of 8.1 or newer, prepared by tests/helpers/qemu10.sh if needed.

    Raises :class:`Unavailable` with the reason when there is none.
    """
    binary = os.environ.get("KVMSTAT_QEMU10")
    if not binary:
        run = subprocess.run(["sh", SCRIPT], capture_output=True, text=True, timeout=900)
        if run.returncode != 0:
            last = (run.stderr.strip().splitlines() or ["no message"])[-1]
            raise Unavailable(f"tests/helpers/qemu10.sh could not provide QEMU 10: {last}")
        binary = run.stdout.strip().splitlines()[-1]
    version = qemu_version(binary)
    if version < MINIMUM:
        raise Unavailable(f"{binary} is QEMU {version[0]}.{version[1]}, older than 8.1")
    argv: List[str] = [binary]
    # An unpacked QEMU finds its firmware through -L (bin/../share/...).
    share = os.path.join(os.path.dirname(os.path.dirname(binary)), "share")
    for sub in ("seabios", "qemu"):
        if os.path.isdir(os.path.join(share, sub)):
            argv += ["-L", os.path.join(share, sub)]
    return QemuBinary(tuple(argv), version)
