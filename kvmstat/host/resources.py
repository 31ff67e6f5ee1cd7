"""Process resources: the open-files limit perf events count against."""

from __future__ import annotations

import resource

from ..errors import SPARE_FDS, too_many_events

__all__ = ["ensure_open_files"]


def ensure_open_files(needed: int, nr_open_file: str = "/proc/sys/fs/nr_open") -> int:
    """Make room for *needed* more open files, raising RLIMIT_NOFILE if allowed.

    Returns the soft limit in force afterwards.  Raises
    :class:`~kvmstat.errors.TooManyEvents` naming the number needed when the
    limit cannot be raised far enough.
    """
    want = needed + SPARE_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft >= want:
        return soft
    if hard == resource.RLIM_INFINITY or hard >= want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        return want
    # Above the hard limit: only a privileged process may raise it, and never
    # above fs.nr_open.
    try:
        with open(nr_open_file) as f:
            ceiling = int(f.read())
    except (OSError, ValueError):
        ceiling = hard
    if want <= ceiling:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            pass
    raise too_many_events(needed)
