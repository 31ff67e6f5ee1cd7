"""Process resources: the open-files limit perf events and BPF programs count against."""

from __future__ import annotations

import resource

from ..errors import SPARE_FDS, too_many_events

__all__ = ["ensure_open_files"]


def _read_ceiling(nr_open_file: str, hard: int) -> int:
    try:
        with open(nr_open_file) as f:
            return int(f.read())
    except (OSError, ValueError):
        return hard


def ensure_open_files(needed: int, nr_open_file: str = "/proc/sys/fs/nr_open",
                      kind: str = "perf events") -> int:
    """Make room for *needed* more open files (holding *kind*), raising
    RLIMIT_NOFILE if allowed.

    The soft limit is raised up to the hard limit by anyone; a privileged
    process may raise the hard limit too, never above fs.nr_open.  Returns
    the soft limit in force afterwards.  Raises
    :class:`~kvmstat.errors.TooManyEvents` naming the number needed and the
    limit to raise when it cannot be raised far enough.
    """
    want = needed + SPARE_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return soft
    if hard == resource.RLIM_INFINITY or hard >= want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        return want
    # Above the hard limit: only a privileged process may raise it, and never
    # above fs.nr_open.
    ceiling = _read_ceiling(nr_open_file, hard)
    if want <= ceiling:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            pass
    raise too_many_events(needed, kind=kind, hard_capped=True, nr_open=ceiling)
