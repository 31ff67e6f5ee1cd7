"""Debian's ``promtool`` on exporter output and on contrib/prometheus/ (no kvmstat imports).

Tests that use it carry the ``prometheus`` marker (conftest: skip without the
package, fail under KVMSTAT_REQUIRE_KVM=1).
"""

from __future__ import annotations

import subprocess
from typing import Sequence

__all__ = ["check_metrics", "promtool"]


def promtool(args: Sequence[str], stdin: str = "") -> subprocess.CompletedProcess:
    """Run ``promtool *args*`` with *stdin*; returns the completed process (text)."""
    return subprocess.run(["promtool", *args], input=stdin, capture_output=True, text=True,
                          timeout=120)


def check_metrics(text: str) -> str:
    """Everything ``promtool check metrics`` says about *text* (empty: clean)."""
    done = promtool(["check", "metrics"], text)
    return (done.stdout + done.stderr).strip() + ("" if done.returncode == 0 else
                                                  f"\n(status {done.returncode})")
