"""Run a program on a pseudo-terminal and watch its screen (no kvmstat code).

:class:`PtyTerminal` starts a command as the session leader of a new pty (the
pty is its controlling terminal, so Ctrl-C, SIGWINCH and hang-ups work as in a
real terminal) and feeds everything it writes into a pyte screen::

    with PtyTerminal([sys.executable, "-m", "kvmstat"]) as term:
        term.wait_for("kvm statistics")
        term.send("q")
        assert term.wait_exit(5) == 0

``TERM`` is ``tmux`` by default: its terminfo entry (in ncurses-base) uses only
sequences pyte understands (xterm's ``rep`` is not one of them), draws
standout as reverse video and has xterm's function keys.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import termios
import time

import pyte

from . import REPO_ROOT

__all__ = ["PtyTerminal", "KEYS"]

#: Key sequences of TERM=tmux (the same as xterm's for these keys).
KEYS = {
    "F1": "\x1bOP", "F5": "\x1b[15~", "F10": "\x1b[21~",
    "up": "\x1bOA", "down": "\x1bOB", "right": "\x1bOC", "left": "\x1bOD",
    "enter": "\r", "esc": "\x1b", "backspace": "\x7f", "ctrl-c": "\x03",
}


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _take_terminal() -> None:
    # Runs in the child after setsid(): make the pty (fd 0) the controlling tty.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtyTerminal:
    """A command on a pty of *rows* x *cols*, with a pyte screen of its output."""

    def __init__(self, argv, *, rows: int = 24, cols: int = 80, env=None,
                 term: str = "tmux", cwd: str = REPO_ROOT):
        self.master, self.slave = os.openpty()
        _set_size(self.slave, rows, cols)
        #: terminal modes before the program ran (cooked mode)
        self.initial_modes = termios.tcgetattr(self.slave)
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        self.output = bytearray()
        full_env = dict(os.environ if env is None else env)
        full_env.update(TERM=term, LC_ALL="C.UTF-8")
        full_env.pop("COLUMNS", None)
        full_env.pop("LINES", None)
        self.proc = subprocess.Popen(argv, stdin=self.slave, stdout=self.slave,
                                     stderr=self.slave, env=full_env, cwd=cwd,
                                     start_new_session=True, preexec_fn=_take_terminal,
                                     close_fds=True)

    # -- output --------------------------------------------------------------
    def pump(self, timeout: float = 0.0) -> bool:
        """Read what the program wrote (waiting up to *timeout*); True if anything."""
        got = False
        while True:
            ready, _, _ = select.select([self.master], [], [], timeout)
            if not ready:
                return got
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return got
            if not data:
                return got
            got = True
            self.output += data
            self.stream.feed(data)
            timeout = 0.0

    def lines(self):
        """The screen as a list of strings (one per row, padded to the width)."""
        return list(self.screen.display)

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def wait_for(self, what, timeout: float = 10.0):
        """Wait until *what* (a string, or a predicate on this terminal) holds
        and the program has stopped writing for a moment (so the screen is
        not caught half-drawn).

        Returns the screen text; raises AssertionError with the screen on timeout.
        """
        check = (lambda t: what in t.text()) if isinstance(what, str) else what
        deadline = time.monotonic() + timeout
        while True:
            self.pump(0.0)
            if check(self) and not self.pump(0.05) and check(self):
                return self.text()
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what!r}; screen:\n{self.text()}")
            if self.proc.poll() is not None:
                self.pump(0.1)
                if check(self):
                    return self.text()
                raise AssertionError(f"program exited ({self.proc.returncode}) while waiting "
                                     f"for {what!r}; screen:\n{self.text()}")
            self.pump(min(left, 0.05))

    def settle(self, quiet: float = 0.3, timeout: float = 5.0) -> str:
        """Wait until the program wrote nothing for *quiet* seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.pump(quiet):
                break
        return self.text()

    def row_style(self, y: int, x: int):
        """(bold, reverse) of the character at row *y*, column *x*."""
        char = self.screen.buffer[y][x]
        return char.bold, char.reverse

    # -- input ---------------------------------------------------------------
    def send(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def key(self, name: str) -> None:
        self.send(KEYS[name])

    def resize(self, rows: int, cols: int) -> None:
        """Change the terminal size; the kernel sends SIGWINCH to the program."""
        _set_size(self.master, rows, cols)
        self.screen.resize(rows, cols)
        os.killpg(self.proc.pid, signal.SIGWINCH)  # in case the size did not change

    def modes(self):
        """The terminal's current termios attributes."""
        return termios.tcgetattr(self.slave)

    # -- lifetime ------------------------------------------------------------
    def wait_exit(self, timeout: float = 10.0) -> int:
        """Wait for the program to exit (reading its output); returns its status."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() >= deadline:
                raise AssertionError(f"program still running after {timeout}s; "
                                     f"screen:\n{self.text()}")
            self.pump(0.02)
        self.pump(0.05)
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> "PtyTerminal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
