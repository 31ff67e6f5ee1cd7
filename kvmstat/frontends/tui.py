"""The interactive display (docs/design.md §6.8): curses drawing and keys.

:class:`Display` owns one :class:`~kvmstat.sampling.sampler.Sampler` at a time, obtained
from an *opener*; keys that change what is counted (``b c f g p t x``) open a
new sampler and release the old one.  What the screen shows comes from
:mod:`kvmstat.frontends.tui_layout`; this module only draws it and reads keys.

Rates: each refresh shows the counts of one sample divided by that sample's
own interval (one monotonic clock, read together with the counters), and a
key press never starts an interval shorter than :data:`MIN_INTERVAL`, so a
burst of keys cannot turn the rates into noise.

Leaving (``q``, Ctrl-C, SIGTERM, SIGHUP): the terminal is restored first,
then the perf events are handed to a detached process
(:func:`~kvmstat.sampling.teardown.close_detached`) so the shell comes back at once.
"""

from __future__ import annotations

import curses
import dataclasses
import time
from typing import Callable, Dict, Optional, Sequence, Tuple

from . import tui_layout as layout
from ..errors import Error, NoSuchVM, NotAvailable
from ..sampling.fields import FieldFilter
from ..sampling.sampler import Sample, Sampler
from ..sampling.teardown import close_detached
from ..sampling.options import SamplerOptions
from .arguments import DELAY_RANGE, parse_delay, parse_pid
from .hints import with_flags
from ..textsafe import safe_text
from .signals import Signals
from .tui_durations import durations_screen
from .tui_layout import Line, View
from ..host.vms import find_vm, find_vm_by_name, list_vms

__all__ = ["Display", "run_tui", "check_terminal", "Opener", "MIN_INTERVAL"]

#: opener(field filter, pid or None, per-VM breakdown) -> a new Sampler; the
#: durations view (key t) also passes ``durations=True``
Opener = Callable[[FieldFilter, Optional[int], bool], Sampler]

#: Shortest sample interval a key press may start (seconds); shorter ones
#: would show the rates of a few events as if they were a trend.
MIN_INTERVAL = 0.5
#: Delay of the first refresh after (re)opening: quick, but a real interval.
FIRST_REFRESH = 0.5
#: Longest single wait for a key, so signal handlers run promptly even if
#: the curses library retries interrupted reads.
KEY_SLICE = 0.25
#: Milliseconds curses waits after ESC for the rest of a function-key sequence.
ESC_DELAY_MS = 25


class _Stop(Exception):
    """Raised when a stop signal (SIGTERM, SIGINT, SIGHUP) was seen: leave
    the display cleanly."""


def check_terminal(term: Optional[str], fd: int) -> None:
    """Refuse a terminal the display cannot draw on: an unknown TERM, or one
    without cursor addressing (``TERM=dumb``), which would get every screen
    on one line.  Raises :class:`~kvmstat.errors.NotAvailable` naming batch
    and log mode."""
    shown = safe_text(term) if term else "(unset)"
    try:
        curses.setupterm(term, fd)
        addressable = curses.tigetstr("cup") is not None
    except curses.error:
        raise NotAvailable(f"the interactive display does not know the terminal TERM={shown}: "
                           "use -1 (batch mode) or -l (log mode), or set TERM") from None
    if not addressable:
        raise NotAvailable(f"the terminal TERM={shown} cannot move its cursor, which the "
                           "interactive display needs: use -1 (batch mode) or -l (log mode)")


class Display:
    """The curses display of one kvm_stat session.

    *opener* opens samplers (see :data:`Opener`); *delay* is the refresh
    interval; *proc* is where VMs
    are looked up.  :meth:`run` opens the first sampler before the screen is
    touched, so errors there reach the caller as exceptions.
    """

    def __init__(self, opener: Opener, *, delay: float,
                 regex: Optional[str] = None, pid: Optional[int] = None,
                 by_guest: bool = False, children: bool = False, durations: bool = False,
                 proc: str = "/proc", clock: Callable[[], float] = time.monotonic):
        self._opener = opener
        self._proc = proc
        self._clock = clock
        self.delay = delay
        self.view = View(regex=regex or None, pid=pid, by_guest=by_guest, children=children,
                         durations=durations)
        self.sampler: Optional[Sampler] = None
        self.sample: Optional[Sample] = None
        self._names: Dict[int, Optional[str]] = {}  # guest names looked up here
        self._scr = None
        self._due: Optional[float] = None   # when the next refresh is due
        self._last = 0.0                    # when the last sample was taken
        self._signals: Optional[Signals] = None

    # -- samplers ------------------------------------------------------------
    def _guest_name(self, pid: int) -> Optional[str]:
        try:
            return find_vm(pid, self._proc).name
        except NoSuchVM:
            return None

    def _open(self, regex: Optional[str], pid: Optional[int], children: bool,
              by_vm: bool, durations: bool = False) -> Sampler:
        # Only a durations view asks the opener for durations (key t).
        extra = {"durations": True} if durations else {}
        sampler = self._opener(FieldFilter(regex, children=children), pid, by_vm, **extra)
        try:
            sampler.sample()  # the first interval starts now
        except BaseException:
            close_detached(sampler)
            raise
        return sampler

    def _started(self) -> None:
        """A sampler was (re)opened or reset: wait for its first real interval."""
        now = self._clock()
        self.sample = None
        self.view.dead = False
        self._last = now
        self._due = now + min(self.delay, FIRST_REFRESH)

    def open(self) -> None:
        """Open the first sampler (errors propagate; nothing is drawn yet)."""
        v = self.view
        self.sampler = self._open(v.regex, v.pid, v.children, v.by_guest, v.durations)
        v.engine = self.sampler.engine
        if v.pid is not None:
            v.guest = self._guest_name(v.pid)
        self._started()

    def _switch(self, **changes) -> Optional[str]:
        """Reopen with some of regex/pid/children/by_guest changed.

        Returns None on success, else the error message (the old sampler and
        view stay as they were).
        """
        wanted = dataclasses.replace(self.view, **changes)
        try:
            sampler = self._open(wanted.regex, wanted.pid, wanted.children, wanted.by_guest,
                                 wanted.durations)
        except Error as exc:
            return with_flags(str(exc))
        old, self.sampler = self.sampler, sampler
        if old is not None:
            close_detached(old)
        if wanted.pid != self.view.pid:
            wanted.guest = None if wanted.pid is None else self._guest_name(wanted.pid)
        wanted.engine = sampler.engine
        wanted.message = None
        self.view = wanted
        self._started()
        return None

    def close(self) -> None:
        """Release the sampler without waiting for the kernel's teardown."""
        if self.sampler is not None:
            sampler, self.sampler = self.sampler, None
            close_detached(sampler)

    def refresh(self) -> None:
        """Take a sample now (or notice that the watched VM has exited)."""
        if self.view.dead or self.sampler is None:
            self._due = None
            return
        if self.sampler.done:  # it exited as the sampler was opened
            self._vm_exited(self.sample)
            return
        try:
            sample = self.sampler.sample()
        except Error as exc:
            self.view.message = with_flags(str(exc))
            sample = None
        if sample is not None and self.sampler.done:
            self._vm_exited(sample)  # this sample holds its counts up to the exit
            return
        now = self._clock()
        if sample is not None:
            self.sample = sample
        self._last = now
        self._due = now + self.delay

    def _vm_exited(self, last: Optional[Sample]) -> None:
        """The watched VM has exited: show *last* (its counts up to the exit) for good."""
        self.view.dead = True
        self._due = None
        if last is not None:
            # Keep the totals; there is no current rate any more.
            self.sample = dataclasses.replace(last, interval=0.0)

    def refresh_soon(self) -> None:
        """Any other key: refresh now, or as soon as the shortest interval allows."""
        if self._due is None:
            return
        earliest = self._last + min(MIN_INTERVAL, self.delay)
        self._due = min(self._due, max(self._clock(), earliest))

    def guest_names(self) -> Dict[int, Optional[str]]:
        """Names of the VMs in the current sample that the sample leaves unnamed."""
        sample = self.sample
        if self.view.by_guest and sample is not None and sample.by_vm:
            for pid in sample.by_vm:
                if pid not in sample.vm_names and pid not in self._names:
                    self._names[pid] = self._guest_name(pid)
        return self._names

    # -- curses --------------------------------------------------------------
    def _paint(self, lines: Sequence[Line], cursor: Optional[Tuple[int, int]] = None) -> None:
        scr = self._scr
        height, width = scr.getmaxyx()
        scr.erase()
        styles = {"bold": curses.A_BOLD, "standout": curses.A_STANDOUT}
        for line in layout.clip(lines, width, height):
            try:
                scr.addstr(line.y, line.x, line.text, styles.get(line.style, curses.A_NORMAL))
            except curses.error:
                # Writing the bottom-right cell moves the cursor off the
                # screen, which curses reports after having drawn the text.
                pass
        if cursor is not None:
            try:
                scr.move(min(cursor[0], height - 1), min(cursor[1], width - 1))
            except curses.error:
                pass
        scr.refresh()

    def _draw(self) -> None:
        height, width = self._scr.getmaxyx()
        draw = durations_screen if self.view.durations else layout.screen
        self._paint(draw(self.sample, self.view, width, height, self.guest_names()))

    def _wait_key(self, seconds: Optional[float], text: bool = False):
        """The next key, or None after *seconds* (None: no time limit).

        Keys are int codes; with *text*, characters come as ``str`` (any
        Unicode character) and function keys as int codes.  Waits in slices
        so that a stop signal (Ctrl-C, SIGTERM, SIGHUP) is seen promptly:
        it raises :class:`_Stop`.
        """
        deadline = None if seconds is None else self._clock() + seconds
        while True:
            if self._signals is not None and self._signals.stopping:
                raise _Stop()
            left = KEY_SLICE if deadline is None else min(KEY_SLICE, deadline - self._clock())
            self._scr.timeout(max(0, int(left * 1000)))
            if text:
                try:
                    return self._scr.get_wch()
                except curses.error:
                    pass  # no key within the slice
            else:
                key = self._scr.getch()
                if key != -1:
                    return key
            if deadline is not None and self._clock() >= deadline:
                return None

    def _show_cursor(self, visible: bool) -> None:
        try:
            curses.curs_set(1 if visible else 0)
        except curses.error:
            pass  # the terminal cannot hide or show its cursor

    def _read_answer(self, info: Sequence[str], prompt: str, error: Optional[str]) -> Optional[str]:
        """Edit one line of text; None when ESC cancels it."""
        text = ""
        self._show_cursor(True)
        try:
            while True:
                height, width = self._scr.getmaxyx()
                lines, cursor = layout.prompt_screen(info, prompt, text, error, width, height)
                self._paint(lines, cursor)
                key = self._wait_key(None, text=True)
                if key == "\x1b":  # ESC
                    return None
                if key in ("\n", "\r", curses.KEY_ENTER):
                    return text
                if key in ("\x7f", "\b", curses.KEY_BACKSPACE):
                    text = text[:-1]
                elif key == "\x15":  # Ctrl-U
                    text = ""
                elif key == curses.KEY_RESIZE:
                    self._scr.clear()
                elif isinstance(key, str) and key.isprintable():
                    text += key
        finally:
            self._show_cursor(False)

    def _ask(self, info: Sequence[str], prompt: str,
             accept: Callable[[str], Optional[str]]) -> None:
        """Prompt until *accept* takes the answer, the user cancels (ESC) or
        keeps the current value (empty answer).

        *accept* returns None when done, or an error message (or raises
        :class:`~kvmstat.errors.Error`) to show before asking again.
        """
        error = None
        while True:
            answer = self._read_answer(info, prompt, error)
            if not answer:
                return
            try:
                error = accept(answer)
            except Error as exc:
                error = with_flags(str(exc))
            if error is None:
                return

    def _ask_regex(self) -> None:
        def accept(answer: str) -> Optional[str]:
            FieldFilter(answer)  # an invalid regex is reported before opening anything
            return self._switch(regex=answer)

        self._ask(["Show only the events whose name matches a regular expression",
                   "(matched from the start of the name, e.g. kvm_exit or .*IO).",
                   f"Current filter: {self.view.regex or '(none: every event)'}", "",
                   "Enter: set  empty: keep the current filter  ESC: cancel  (c clears)"],
                  "Regex: ", accept)

    def _ask_vm(self, what: str, prompt: str, to_pid: Callable[[str], int]) -> None:
        """The g and p prompts: list the running VMs, take one by *what*."""
        current = "(none: every VM)" if self.view.pid is None else layout.watched(self.view)
        vms = [(vm.pid, vm.name) for vm in list_vms(self._proc)]
        info = [f"Show only one VM, chosen by {what}.", f"Current: {current}", "",
                *layout.vm_table(vms), "",
                "Enter: set  empty: keep the current one  ESC: cancel  (c clears)"]
        self._ask(info, prompt, lambda answer: self._switch(pid=to_pid(answer)))

    def _ask_delay(self) -> None:
        def accept(answer: str) -> None:
            self.delay = parse_delay(answer.strip())
            if self._due is not None:
                self._due = self._last + self.delay

        self._ask([f"Refresh interval: {self.delay:g} s", "",
                   "Enter: set  empty: keep the current interval  ESC: cancel"],
                  f"New interval in seconds ({DELAY_RANGE}): ", accept)

    def _show_help(self) -> None:
        while True:
            self._paint(layout.help_screen(self.delay))
            if self._wait_key(None) != curses.KEY_RESIZE:
                return

    def _reset(self) -> None:
        try:
            self.sampler.reset()
            self.sampler.sample()
        except Error as exc:
            self.view.message = with_flags(str(exc))
            return
        self._started()

    def handle_key(self, key: int) -> bool:
        """Act on one key of the main screen; False when it means quit."""
        v = self.view
        if key == curses.KEY_RESIZE:
            self._scr.clear()
            return True
        v.message = None
        char = chr(key) if 0 <= key < 256 else ""
        if char == "q":
            return False
        if char == "b":
            v.message = self._switch(by_guest=not v.by_guest)
        elif char == "c":
            if v.regex is not None or v.pid is not None:
                v.message = self._switch(regex=None, pid=None)
        elif char == "f":
            self._ask_regex()
        elif char == "g":
            self._ask_vm("guest name", "Guest name: ",
                         lambda answer: find_vm_by_name(answer, self._proc).pid)
        elif char == "h":
            self._show_help()
        elif char == "o":
            v.sort = layout.SORT_TOTAL if v.sort == layout.SORT_RATE else layout.SORT_RATE
        elif char == "p":
            self._ask_vm("process id", "PID: ",
                         lambda answer: find_vm(parse_pid(answer.strip()), self._proc).pid)
        elif char == "r":
            self._reset()
        elif char == "s":
            self._ask_delay()
        elif char == "t":
            v.message = self._switch(durations=not v.durations)
        elif char == "x":
            v.message = self._switch(children=not v.children)
        else:
            self.refresh_soon()
        return True

    def _loop(self) -> None:
        while True:
            now = self._clock()
            if self._due is not None and now >= self._due:
                self.refresh()
            self._draw()
            wait = None if self._due is None else max(0.0, self._due - self._clock())
            key = self._wait_key(wait)
            if key is not None and not self.handle_key(key):
                return

    def _restore_terminal(self) -> None:
        for step in (lambda: self._scr.keypad(False), curses.echo, curses.nocbreak,
                     curses.endwin):
            try:
                step()
            except curses.error:
                pass  # the terminal may be gone (hang-up): restore what can be

    def run(self) -> int:
        """Open the first sampler, show the display until the user quits or a
        stop signal comes (SIGTERM, SIGINT, SIGHUP: one
        :class:`~kvmstat.frontends.signals.Signals`); returns 0.

        The terminal is restored before the perf events are released, and
        their release does not keep the caller waiting.
        """
        self.open()
        # SIGHUP: the terminal has gone, so leave as for SIGTERM and Ctrl-C.
        with Signals(hangup="stop") as signals:
            self._signals = signals
            try:
                self._show()
            finally:
                self._signals = None
                self.close()
        return 0

    def _show(self) -> None:
        """Set the terminal up, run the key loop until quit or a stop signal,
        restore the terminal."""
        try:
            self._scr = curses.initscr()
        except curses.error as exc:
            raise NotAvailable(f"cannot start the interactive display ({exc}): "
                               "check TERM, or use -1 (batch mode) or -l (log mode)") from None
        try:
            curses.noecho()
            curses.cbreak()
            self._scr.keypad(True)
            self._show_cursor(False)
            curses.set_escdelay(ESC_DELAY_MS)
            self._loop()
        except (KeyboardInterrupt, _Stop):
            pass
        finally:
            self._restore_terminal()


def run_tui(options: SamplerOptions, *, delay: float,
            notify: Optional[Callable[[str], None]] = None) -> int:
    """Run the display on what *options* says to count (its fields and pid
    are where the display starts; the keys change them)."""
    from ..sampling.sources import sampler_for

    display: Optional[Display] = None

    def tell(message: str) -> None:
        # While the screen is up, notices go to its message line.
        if display is not None and display.sampler is not None:
            display.view.message = with_flags(message)
        elif notify is not None:
            notify(message)

    def opener(selection: FieldFilter, vm_pid: Optional[int], by_vm: bool,
               durations: bool = False) -> Sampler:
        return sampler_for(dataclasses.replace(options, fields=selection, pid=vm_pid,
                                               by_vm=by_vm, durations=durations), notify=tell)

    display = Display(opener, delay=delay, regex=options.field_filter.regex,
                      pid=options.pid, durations=options.durations, proc=options.paths.proc)
    return display.run()
