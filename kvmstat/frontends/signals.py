"""The one signal mechanism of the front-ends: log mode, the display, the exporter.

:class:`Signals` turns SIGTERM and SIGINT into a stop request and SIGHUP into
what the mode wants (``stop`` for the display, whose terminal has gone;
``reload`` for ``-L FILE`` and the exporter; ``ignore`` for ``-l``).  The
handlers only set flags and wake a pipe (``signal.set_wakeup_fd``), so:

- the work happens in the mode's own loop, between rows or scrapes, and a
  row is never torn by a handler;
- every wait goes through :meth:`Signals.wait`, which polls the wake-up pipe
  with the descriptors the caller waits for (a pipe's reader going away, an
  output becoming writable), so a signal is seen at once even while an
  output is blocked (:mod:`kvmstat.frontends.streams` writes through it).
"""

from __future__ import annotations

import math
import os
import select
import signal
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ["Signals", "HANGUP_ACTIONS"]

#: what SIGHUP may mean
HANGUP_ACTIONS = ("stop", "reload", "ignore")

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Signals:
    """Stop and reload requests from signals; a context manager.

    Handlers are installed on entry when entered in the main thread (the
    only one Python delivers signals to) and the previous ones restored on
    exit; elsewhere the object still works, through :meth:`request_stop`.
    :attr:`stop` holds the number of the first stop signal (or -1 for
    :meth:`request_stop`), None while running.
    """

    def __init__(self, hangup: str = "ignore", clock: Callable[[], float] = time.monotonic):
        if hangup not in HANGUP_ACTIONS:
            raise ValueError(f"hangup must be one of {HANGUP_ACTIONS}, not {hangup!r}")
        self._hangup = hangup
        self._clock = clock
        self.stop: Optional[int] = None
        self._reload = False
        self._old_handlers: Dict[int, object] = {}
        self._old_wakeup: Optional[int] = None
        self._pipe: Optional[Tuple[int, int]] = None

    @property
    def stopping(self) -> bool:
        """True once a stop was asked for."""
        return self.stop is not None

    # -- handlers --------------------------------------------------------------
    def _on_stop(self, signum, frame) -> None:
        if self.stop is None:
            self.stop = signum

    def _on_hangup(self, signum, frame) -> None:
        if self._hangup == "stop":
            self._on_stop(signum, frame)
        else:
            self._reload = True

    def request_stop(self) -> None:
        """Ask to stop as a stop signal would (from any thread)."""
        if self.stop is None:
            self.stop = -1
        self._wake()

    def take_reload(self) -> bool:
        """True once per pending SIGHUP reload request."""
        pending, self._reload = self._reload, False
        return pending

    def _wake(self) -> None:
        if self._pipe is not None:
            try:
                os.write(self._pipe[1], b"\0")
            except OSError:
                pass  # full: a wake-up is pending anyway

    # -- life cycle ------------------------------------------------------------
    def __enter__(self) -> "Signals":
        self._pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        if threading.current_thread() is not threading.main_thread():
            return self
        try:
            # A signal writes a byte to the pipe, which wakes poll() at once.
            self._old_wakeup = signal.set_wakeup_fd(self._pipe[1], warn_on_full_buffer=False)
            for signum in _STOP_SIGNALS:
                self._old_handlers[signum] = signal.signal(signum, self._on_stop)
            self._old_handlers[signal.SIGHUP] = signal.signal(
                signal.SIGHUP, signal.SIG_IGN if self._hangup == "ignore" else self._on_hangup)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        self._old_handlers = {}
        if self._old_wakeup is not None:
            signal.set_wakeup_fd(self._old_wakeup)
            self._old_wakeup = None
        if self._pipe is not None:
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None

    # -- waiting ---------------------------------------------------------------
    def _drain(self) -> None:
        try:
            while os.read(self._pipe[0], 512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def wait(self, deadline: Optional[float], fds: Sequence[Tuple[int, int]] = (),
             *, stop_wakes: bool = True) -> List[Tuple[int, int]]:
        """Sleep until *deadline* (monotonic clock; None: no limit), a pending
        stop or reload request (with *stop_wakes*), or an event on one of *fds*
        (``(fd, poll events)`` pairs; events 0 watches for POLLHUP/POLLERR
        only).  Returns the ``(fd, revents)`` pairs that fired (empty when
        woken by a signal or the deadline).
        """
        if self._pipe is None:
            raise RuntimeError("Signals.wait outside its 'with' block")
        poller = select.poll()
        poller.register(self._pipe[0], select.POLLIN)
        for fd, events in fds:
            poller.register(fd, events)
        while True:
            if stop_wakes and (self.stop is not None or self._reload):
                return []
            if deadline is None:
                timeout = None
            else:
                left = deadline - self._clock()
                if left <= 0:
                    return []
                timeout = math.ceil(left * 1000)
            fired = []
            for fd, revents in poller.poll(timeout):
                if fd == self._pipe[0]:
                    self._drain()
                else:
                    fired.append((fd, revents))
            if fired:
                return fired
