"""Process resources: the open-files limit perf events count against."""

from __future__ import annotations

import resource

from ..errors import TooManyEvents

__all__ = ["ensure_open_files"]

# Descriptors kvmstat needs besides its perf events (stdio, /proc files,
# the terminal, a log file, sockets of the exporter...).
_SPARE_FDS = 64


def ensure_open_files(needed: int, nr_open_file: str = "/proc/sys/fs/nr_open") -> int:
    """Make room for *needed* more open files, raising RLIMIT_NOFILE if allowed.

    Returns the soft limit in force afterwards.  Raises
    :class:`~kvmstat.errors.TooManyEvents` naming the number needed when the
    limit cannot be raised far enough.
    """
    want = needed + _SPARE_FDS
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
    raise TooManyEvents(
        f"{needed} perf events are needed but the open-files limit is {soft} "
        f"(hard {hard}): raise it with 'ulimit -n {want}' or run as root, "
        f"or count fewer events with -f",
        needed=needed, limit=soft)
