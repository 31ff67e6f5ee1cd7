"""Log mode as a service (docs/design.md §6.5, §6.9): the loop, its outputs and signals.

- :class:`Logger` writes one row (or one JSON line) per interval; row *k* is
  due at start + k x delay on the monotonic clock, so the schedule does not
  drift.  The field list is fixed when it starts.
- :class:`LogFile` is the ``-L FILE`` output: opened (append) when it is
  constructed, so the CLI can open it before any event; reopened on SIGHUP;
  a CSV file whose header differs, or any file whose last line is
  incomplete, is moved aside.
- :class:`StreamOutput` is the ``-l`` output (standard output).
- Signals come through :class:`kvmstat.frontends.signals.Signals`: SIGTERM/SIGINT
  stop, SIGHUP reopens ``-L FILE``; the handlers only set flags, the loop
  does the work between rows, so a row is never torn or lost.

The mode runner writes its output stream and notes (through a *notify*
callable); it never exits: the CLI decides the exit status.
"""

from __future__ import annotations

import errno
import functools
import os
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

from ..errors import Error, InvalidArgument, error_from_errno
from .formats import durations as durations_format
from .formats import json as json_format
from .formats import log as log_format
from ..sampling.sampler import Sample
from .signals import Signals
from .streams import OutputStream

__all__ = ["LogLayout", "log_layout", "LogFile", "StreamOutput", "Logger",
           "FORMATS"]

Notify = Optional[Callable[[str], None]]
RowsFunction = Callable[[Sample, Sequence[str], bool], List[str]]

#: the log formats :func:`log_layout` knows
FORMATS = ("plain", "csv", "json")


@dataclass(frozen=True)
class LogLayout:
    """How one log format is laid out in a stream.

    *header* renders the banner/header from the field list (None: the format
    has none).  *rows* renders the rows of one sample.  *repeat_every*: the
    header is written again after that many rows (plain banner).
    *header_once*: the header is written only at the top of a stream or file
    and must match the header already there (CSV).
    """

    header: Optional[Callable[[Sequence[str]], str]]
    rows: RowsFunction
    repeat_every: Optional[int] = None
    header_once: bool = False


def log_layout(fmt: str, by_guest: bool = False) -> LogLayout:
    """The :class:`LogLayout` of format *fmt* (``plain``, ``csv``, ``json``)."""
    if fmt == "plain":
        if by_guest:
            return LogLayout(log_format.guest_plain_banner, log_format.guest_plain_rows,
                             repeat_every=log_format.BANNER_EVERY)
        return LogLayout(log_format.plain_banner, log_format.plain_rows,
                         repeat_every=log_format.BANNER_EVERY)
    if fmt == "csv":
        if by_guest:
            return LogLayout(log_format.guest_csv_header, log_format.guest_csv_rows,
                             header_once=True)
        return LogLayout(log_format.csv_header, log_format.csv_rows, header_once=True)
    if fmt == "json":
        return LogLayout(None, functools.partial(json_format.json_rows, by_guest=by_guest))
    raise InvalidArgument(f"unknown log format '{fmt}' (known: {', '.join(FORMATS)})")


def durations_log_layout(fmt: str, by_guest: bool = False) -> LogLayout:
    """The layout of log mode with ``--durations``: plain and CSV get one
    row per field (and VM) with durations in the interval
    (:mod:`kvmstat.frontends.formats.durations`), JSON its usual object,
    which then carries ``"durations"``."""
    if fmt == "plain":
        return LogLayout(durations_format.log_banner, durations_format.plain_log_rows,
                         repeat_every=log_format.BANNER_EVERY)
    if fmt == "csv":
        return LogLayout(functools.partial(durations_format.csv_log_header, by_guest=by_guest),
                         functools.partial(durations_format.csv_log_rows, by_guest=by_guest),
                         header_once=True)
    return log_layout(fmt, by_guest)


# -- outputs -------------------------------------------------------------------

class StreamOutput:
    """Log output into an :class:`~kvmstat.frontends.streams.OutputStream` (standard
    output for ``-l``): bytes in the stream's encoding, escapes for what it
    cannot encode, writes that a stop signal can interrupt."""

    def __init__(self, stream: OutputStream):
        self._stream = stream
        self.name = stream.name

    @property
    def watch_fd(self) -> Optional[int]:
        """The descriptor to watch for a reader that went away (pipes and
        sockets), so ``kvm_stat -l -z | head`` ends even when no row is due."""
        return self._stream.watch_fd

    def prepare(self, header: Optional[str], once: bool) -> None:
        """Start the stream: a stream is new, so it gets the header."""
        if header:
            self.write(header)

    def write(self, text: str) -> None:
        """Write *text*.  A closed pipe raises BrokenPipeError, any other
        fault one :class:`~kvmstat.errors.Error`."""
        self._stream.write(text)

    def reopen(self) -> bool:
        """Streams are not reopened (SIGHUP is ignored with ``-l``): False."""
        return False

    def close(self) -> None:
        """The stream belongs to the caller: nothing to release."""

    def __enter__(self) -> "StreamOutput":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


def _open_for_append(path: str) -> int:
    """Open *path* for appending; any failure is a one-line error (see
    :func:`_log_file_error`)."""
    if not path:
        raise InvalidArgument("the log file name is empty")
    try:
        # O_NONBLOCK so that a FIFO without a reader fails at once instead of
        # blocking; it is cleared again for the writes.
        fd = os.open(path, _OPEN_FLAGS | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        raise _log_file_error(exc, path) from None
    os.set_blocking(fd, True)
    try:
        # A zero-length write is a no-op for files that can be written, and
        # fails for those no one can write, even root (e.g. under /proc).
        os.write(fd, b"")
    except OSError as exc:
        os.close(fd)
        raise _log_file_error(exc, path) from None
    return fd


def _log_file_error(exc: OSError, path: str) -> Error:
    """Why *path* cannot be the log file, in one line (the user's path:
    InvalidArgument, or AccessDenied)."""
    return error_from_errno(exc.errno or errno.EIO, f"writing log file {path!r}",
                            reasons={errno.ENXIO: "it is a FIFO that no process reads"},
                            other=InvalidArgument)


def _aside_name(path: str, when: float) -> str:
    base = f"{path}.{time.strftime('%Y%m%d-%H%M%S', time.localtime(when))}"
    name, n = base, 0
    while os.path.lexists(name):
        n += 1
        name = f"{base}.{n}"
    return name


def _starts_with(path: str, header: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(header)) == header
    except OSError:
        # Unreadable: its header cannot be checked, so do not append to it.
        return False


class LogFile:
    """The ``-L FILE`` output: FILE opened for appending when constructed.

    Construction fails with a one-line :class:`InvalidArgument` when FILE
    cannot be written (missing directory, a directory, no permission, a
    read-only file system...).  :meth:`reopen` (SIGHUP) opens FILE again, so
    a file renamed by logrotate is left behind and a new one started.
    """

    def __init__(self, path: str, notify: Notify = None, clock: Callable[[], float] = time.time):
        self.path = path
        self.name = f"log file {path!r}"
        self._notify = notify
        self._clock = clock
        self._fd: Optional[int] = _open_for_append(path)

    @property
    def watch_fd(self) -> Optional[int]:
        """Files have no reader to lose: nothing to watch."""
        return None

    def _size(self) -> int:
        return os.fstat(self._fd).st_size

    def _torn(self) -> bool:
        """True if the file does not end with a complete line (a stop on a
        full disk, a crash): appending would glue a row onto that piece."""
        size = self._size()
        if size == 0:
            return False
        try:
            with open(self.path, "rb") as f:
                f.seek(size - 1)
                return f.read(1) != b"\n"
        except OSError:
            return False  # unreadable (e.g. write-only for us): append as before

    def _move_aside(self, why: str) -> None:
        aside = _aside_name(self.path, self._clock())
        self._close_fd()
        try:
            os.rename(self.path, aside)
        except OSError as exc:
            raise Error(f"cannot move {self.path} aside to {aside}: "
                        f"{exc.strerror or exc}") from None
        self._fd = _open_for_append(self.path)
        if self._notify:
            self._notify(f"{self.path} {why}: moved it to {aside} and started a new file")

    def prepare(self, header: Optional[str], once: bool) -> None:
        """Start the file: every row begins on a fresh line, under its header.

        A file whose last line is incomplete is moved aside to
        ``FILE.<timestamp>`` and a new file started, with a note, as is a
        file that starts with another header when the header is written
        once (CSV).  Without *once* (plain banner) the header starts every
        (re)opened file; with *once* it is written into an empty file only.
        """
        for _ in range(3):  # someone else may write there in between
            if self._torn():
                self._move_aside("ends with an incomplete line")
            elif header and once and self._size() > 0 \
                    and not _starts_with(self.path, header.encode()):
                self._move_aside("has other columns than this run")
            else:
                break
        if header and not (once and self._size() > 0):
            self.write(header)

    def write(self, text: str) -> None:
        """Append *text* with unbuffered writes (so every row is on disk when
        this returns)."""
        data = memoryview(text.encode("utf-8", "backslashreplace"))
        try:
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise Error(f"cannot write to {self.name}: {exc.strerror or exc}") from None

    def reopen(self) -> bool:
        """Open FILE again (after logrotate or ``systemctl reload``); True
        when it was, so the caller starts it with :meth:`prepare`.

        If FILE cannot be opened now, keep writing to the old descriptor and
        say so: no row is lost, and the next SIGHUP tries again.
        """
        try:
            fd = _open_for_append(self.path)
        except InvalidArgument as exc:
            if self._notify:
                self._notify(f"{exc}; still writing to the file opened before")
            return False
        self._close_fd()
        self._fd = fd
        return True

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """Close the file; idempotent."""
        self._close_fd()

    def __enter__(self) -> "LogFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- the loop --------------------------------------------------------------------

class Logger:
    """Writes *sampler*'s samples to *output* in *layout* every *delay* seconds.

    The field list is ``sampler.fields`` when :meth:`run` starts.  Rows with
    all deltas zero are left out with *skip_zero* (``-z``).  Each write is
    flushed.  Errors from the sampler and from the output propagate to the
    caller.  When the watched VM exits (``sampler.done``), the sample that
    says so is written as the last row (the counts up to its exit) and
    :meth:`run` returns.
    """

    def __init__(self, sampler, output, layout: LogLayout, *, delay: float,
                 skip_zero: bool = False, clock: Callable[[], float] = time.monotonic):
        if not delay > 0:
            raise InvalidArgument(f"the log interval must be positive, not {delay!r}")
        self._sampler = sampler
        self._output = output
        self._layout = layout
        self._delay = delay
        self._skip_zero = skip_zero
        self._clock = clock
        self._fields: List[str] = []
        self._header: Optional[str] = None
        self._rows_since_header = 0

    @property
    def fields(self) -> List[str]:
        """The fixed field list (set when :meth:`run` starts)."""
        return list(self._fields)

    def _begin_output(self) -> None:
        self._output.prepare(self._header, self._layout.header_once)
        self._rows_since_header = 0

    def _write_sample(self) -> bool:
        """Write one sample's rows; False once the watched VM has exited (the
        rows just written hold its counts up to the exit: the last ones)."""
        self._write_rows(self._sampler.sample())
        return not self._sampler.done

    def _write_rows(self, sample: Sample) -> None:
        rows = self._layout.rows(sample, self._fields, self._skip_zero)
        if not rows:
            return
        repeat = self._layout.repeat_every
        parts = []
        for row in rows:
            if repeat and self._header and self._rows_since_header >= repeat:
                parts.append(self._header)
                self._rows_since_header = 0
            parts.append(row)
            self._rows_since_header += 1
        # One write per sample: the whole row set goes out together.
        self._output.write("".join(parts))

    def run(self, signals: Signals) -> None:
        """Log until *signals* (a :class:`~kvmstat.frontends.signals.Signals`
        in its ``with`` block) asks to stop (then write the pending partial
        interval as a last row and return), the watched VM exits (its last
        row written) or an error is raised.  SIGHUP (when *signals* reloads)
        reopens the output.  A reader that went away raises BrokenPipeError."""
        self._fields = list(self._sampler.fields)
        layout = self._layout
        self._header = layout.header(self._fields) if layout.header else None
        # The baseline: row 1 counts from here.  Taken before the header is
        # written, so a reader who sees the header knows counting has begun.
        self._sampler.sample()
        if self._sampler.done:
            return  # the watched VM exited before the first interval
        start = self._clock()
        self._begin_output()
        k = 1
        watch = self._output.watch_fd
        # No events asked: only POLLERR/POLLHUP, i.e. the reader is gone.
        watched = [(watch, 0)] if watch is not None else []
        while True:
            if signals.wait(start + k * self._delay, watched):
                raise BrokenPipeError(errno.EPIPE, "the reader of the log went away")
            if signals.take_reload() and self._output.reopen():
                self._begin_output()
            if signals.stopping:
                self._write_sample()
                return
            now = self._clock()
            if now >= start + k * self._delay:
                if not self._write_sample():
                    return
                # Row k+1 is due at start + (k+1) x delay.  When late by more
                # than one interval, the missed slots are merged into the row
                # just written and the schedule stays on its grid.
                k = max(k + 1, int((now - start) // self._delay) + 1)
