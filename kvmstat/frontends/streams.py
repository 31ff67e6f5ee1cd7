"""The command's output streams: text in, bytes out, every fault one error.

- :func:`guard_standard_streams` runs first in ``kvm_stat``: a standard
  descriptor the caller closed (``>&-``) is pointed at ``/dev/null`` so no
  file kvmstat opens can take its number, and is remembered as closed.
- :class:`OutputStream` writes text to a descriptor as bytes: encoded in the
  stream's encoding with unencodable characters escaped (``\\xe9``), so no
  locale makes a write fail; into pipes, sockets and terminals written in
  pieces of at most ``PIPE_BUF`` bytes once :func:`poll` says the
  descriptor takes them (so a write never blocks for long), waiting through
  :class:`~kvmstat.frontends.signals.Signals` when given, so a stop signal is seen
  even while the reader does not read.  A full disk or any other failure is
  one :class:`~kvmstat.errors.Error`; a reader that went away is
  BrokenPipeError (the caller ends quietly).
- :class:`Notes` writes the one-line notes and the ``Error:`` line to
  standard error, and nowhere when standard error is closed or failing.
"""

from __future__ import annotations

import codecs
import errno
import os
import select
import stat
import sys
import time
from typing import Dict, Optional, TextIO

from ..errors import Error
from ..textsafe import safe_text

__all__ = ["guard_standard_streams", "closed_streams", "OutputStream", "Notes",
           "StreamClosed", "OutputBlocked", "STOP_GRACE"]

#: Seconds a write still waits for a slow reader once a stop was asked for,
#: so that the row in progress goes out when the reader is merely slow.
STOP_GRACE = 0.5

_NAMES = {0: "standard input", 1: "standard output", 2: "standard error"}
_closed: Dict[int, bool] = {}


class StreamClosed(Error):
    """A standard stream that kvmstat must write to was closed by the caller."""


class OutputBlocked(Error):
    """A stop was asked for while the output's reader did not read."""


def guard_standard_streams() -> None:
    """Point closed standard descriptors (0, 1, 2) at ``/dev/null``.

    Without this, the first file kvmstat opens would get number 1 or 2 and
    the output or the notes would land in it.  Call first; a descriptor once
    found closed stays known as closed.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            _closed.setdefault(fd, False)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            _closed[fd] = True


def closed_streams() -> Dict[int, bool]:
    """Which standard descriptors :func:`guard_standard_streams` found closed."""
    return dict(_closed)


def _encoding_of(stream) -> str:
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        return "utf-8"


class OutputStream:
    """Text output on descriptor *fd* (see the module).

    *name* names it in errors; *encoding* defaults to UTF-8; *signals* (a
    :class:`~kvmstat.frontends.signals.Signals` in its ``with`` block) makes writes
    that must wait for the reader interruptible by stop signals.  With
    *fd* None, text goes to *text_stream* instead (an in-memory stream that
    stands in for standard output, e.g. in tests or an embedding program).
    """

    def __init__(self, fd: Optional[int], name: str, encoding: str = "utf-8", signals=None,
                 clock=time.monotonic, text_stream: Optional[TextIO] = None):
        self.fd = fd
        self._text_stream = text_stream
        self._piece = self._piece_size(fd)
        self.name = name
        self.encoding = encoding
        self.signals = signals
        self._clock = clock

    @staticmethod
    def _piece_size(fd: Optional[int]) -> int:
        """Bytes per write: PIPE_BUF where a reader can hold writes up (a
        pipe, a socket, a terminal: POLLOUT promises that much), everything
        at once into files and devices."""
        if fd is None:
            return 0
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            return select.PIPE_BUF
        if stat.S_ISREG(mode) or (stat.S_ISCHR(mode) and not os.isatty(fd)):
            return 1 << 24
        return select.PIPE_BUF

    @classmethod
    def standard(cls, fd: int, signals=None) -> "OutputStream":
        """Standard output (1) or error (2); :class:`StreamClosed` if the
        caller closed it.  When ``sys.stdout``/``sys.stderr`` was replaced by
        a stream without a descriptor, text goes there."""
        if _closed.get(fd) or (sys.stdout if fd == 1 else sys.stderr) is None:
            raise StreamClosed(f"{_NAMES[fd]} is closed: give the command somewhere to "
                               "write (e.g. >FILE or | less)")
        stream = sys.stdout if fd == 1 else sys.stderr
        try:
            real = stream.fileno() == fd
        except (OSError, ValueError, AttributeError):
            real = False
        if real:
            stream.flush()  # anything Python buffered goes first
            return cls(fd, _NAMES[fd], _encoding_of(stream), signals)
        return cls(None, _NAMES[fd], _encoding_of(stream), signals, text_stream=stream)

    @classmethod
    def stdout(cls, signals=None) -> "OutputStream":
        """Standard output (see :meth:`standard`)."""
        return cls.standard(1, signals)

    def encode(self, text: str) -> bytes:
        """*text* as bytes: unencodable characters escaped, never an error."""
        return text.encode(self.encoding, "backslashreplace")

    def _wait_writable(self) -> None:
        signals = self.signals
        if signals is None:
            poller = select.poll()
            poller.register(self.fd, select.POLLOUT)
            poller.poll()
            return
        deadline = None
        while True:
            if signals.stopping:
                if deadline is None:
                    deadline = self._clock() + STOP_GRACE
                elif self._clock() >= deadline:
                    raise OutputBlocked(f"stopped while the reader of {self.name} was not "
                                        "reading: the last row was not written")
            fired = signals.wait(deadline, [(self.fd, select.POLLOUT)],
                                 stop_wakes=not signals.stopping)
            if fired:
                return

    def write(self, text: str) -> None:
        """Write all of *text*; see the module for what a fault raises."""
        if self.fd is None:
            try:
                self._text_stream.write(self.encode(text).decode(self.encoding))
                self._text_stream.flush()
            except BrokenPipeError:
                raise
            except OSError as exc:
                raise Error(f"cannot write to {self.name}: {exc.strerror or exc}") from None
            return
        data = memoryview(self.encode(text))
        try:
            while data:
                self._wait_writable()
                try:
                    written = os.write(self.fd, data[:self._piece])
                except BlockingIOError:
                    continue
                data = data[written:]
        except BrokenPipeError:
            raise
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise BrokenPipeError(errno.EPIPE, "the reader went away") from None
            raise Error(f"cannot write to {self.name}: {exc.strerror or exc}") from None

    @property
    def watch_fd(self) -> Optional[int]:
        """The descriptor to watch for a reader that went away (pipes and
        sockets only), so ``kvm_stat -l -z | head`` ends even when no row
        is due; None for anything else."""
        if self.fd is None:
            return None
        try:
            mode = os.fstat(self.fd).st_mode
        except OSError:
            return None
        return self.fd if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) else None


class Notes:
    """Notes (``kvm_stat: ...``) and the ``Error:`` line, on standard error.

    Text from outside inside a message is escaped (one line, nothing
    interpreted).  When standard error is closed, or a write to it fails,
    they go nowhere: never to standard output.
    """

    def __init__(self):
        self._out: Optional[OutputStream]
        try:
            self._out = OutputStream.standard(2)
        except StreamClosed:
            self._out = None

    def _say(self, line: str) -> None:
        if self._out is None:
            return
        try:
            self._out.write(safe_text(line) + "\n")
        except (OSError, Error):
            self._out = None  # stderr is gone: say nothing more

    def note(self, message: str) -> None:
        """``kvm_stat: <message>``."""
        self._say(f"kvm_stat: {message}")

    def error(self, message: str) -> None:
        """``Error: <message>``."""
        self._say(f"Error: {message}")
