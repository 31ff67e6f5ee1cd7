"""`kvm_stat` (the curses display) in a pseudo-terminal, watching real guests.

The screen is read with the pyte terminal emulator (helpers.ptyterm).
"""

import errno
import os
import re
import select
import signal
import termios
import threading
import time

import pytest

from helpers.commands import KVM_STAT, perf_event_fds, wait_for
from helpers.ptyterm import PtyTerminal
from kvmstat.sampling import teardown
from kvmstat.providers.tracepoints import online_cpus
from kvmstat.sampling.sources import list_fields

HEADER = '%-40s %10s%7s %8s' % ('Event', 'Total', '%Total', 'CurAvg/s')
GUEST_HEADER = '%-40s %10s%7s %8s' % ('Guest Name', 'Total', '%Total', 'CurAvg/s')


def kvm_stat(*args, **kwargs):
    return PtyTerminal([*KVM_STAT, *args], **kwargs)


def has_total(term):
    return any(line.startswith("Total ") for line in term.lines())


def body(term):
    """The rows under the header, right-stripped, without trailing blank rows."""
    return term.text().rstrip("\n").splitlines()[3:]


def row(term, name):
    """The (total, rate) of row *name*; rate is None when blank."""
    for line in term.lines():
        if line[:40].rstrip() == name:
            try:
                total = int(line[41:51])
                rate = line[59:67].strip()
                return total, (float(rate) if rate else None)
            except ValueError:
                return None  # not drawn completely yet
    return None


def refresh_until(term, predicate, timeout=10.0):
    """Press space (refresh) until *predicate* holds."""
    deadline = time.monotonic() + timeout
    while True:
        term.send(" ")
        try:
            return term.wait_for(predicate, timeout=0.8)
        except AssertionError:
            if time.monotonic() > deadline:
                raise


@pytest.mark.parametrize("engine", ["bpf", "perf"])
def test_layout_and_exact_counts_of_a_guest(guest_process, engine):
    guest = guest_process("pio", name="tui-exact")
    with kvm_stat("-p", str(guest.pid), "-f", "kvm_(pio|userspace_exit)", "-s", "25",
                  "--engine", engine) as term:
        term.wait_for(f"kvm statistics - pid {guest.pid} (tui-exact) ({engine})")
        # Nothing has happened yet: every row is zero and hidden.
        term.wait_for("No matching events reported yet")
        guest.run(1234)
        refresh_until(term, lambda t: row(t, "kvm_pio") is not None)
        lines = term.text().splitlines()
        assert lines[0] == f"kvm statistics - pid {guest.pid} (tui-exact) ({engine})"
        assert lines[1] == "Sort: CurAvg/s   regex filter: kvm_(pio|userspace_exit)"
        assert lines[2] == HEADER
        assert term.row_style(0, 0) == (True, False)
        assert term.row_style(2, 0) == (False, True)
        assert term.row_style(5, 0) == (True, False)
        pio, exits, total = lines[3:6]
        assert pio[:58] == "kvm_pio                                        1234   50.0"
        assert exits[:58] == "kvm_userspace_exit                             1234   50.0"
        assert total[:58].rstrip() == "Total                                          2468"
        # Both counted the same 1234 events over the same interval.
        assert row(term, "kvm_pio")[1] == row(term, "kvm_userspace_exit")[1] > 0
        assert row(term, "Total")[1] == pytest.approx(2 * row(term, "kvm_pio")[1], rel=0.01)
        # The next refresh without guest activity: totals stay, rates are blank.
        refresh_until(term, lambda t: row(t, "kvm_pio") == (1234, None))
        assert body(term) == [
            "kvm_pio                                        1234   50.0",
            "kvm_userspace_exit                             1234   50.0",
            "Total                                          2468"]
        # x: child events are opened (counting restarts) and shown under their parent.
        term.send("x")
        term.wait_for("Collecting data...")
        term.wait_for("No matching events reported yet")
        guest.run(500)
        refresh_until(term, lambda t: row(t, "kvm_pio") == (500, None))
        assert body(term) == [
            "kvm_pio                                         500   50.0",
            "kvm_userspace_exit                              500   50.0",
            "  kvm_userspace_exit(IO)                        500  100.0",
            "Total                                          1000"]
        term.send("q")
        assert term.wait_exit(5) == 0


def test_every_key_on_a_real_guest(guest_process):
    guest = guest_process("pio", name="tui-keys")
    with kvm_stat("-f", "kvm_pio", "-s", "25") as term:
        term.wait_for("kvm statistics - summary")
        term.wait_for(lambda t: "Collecting data..." not in t.text())
        # p: the prompt lists running VMs with their names.
        term.send("p")
        term.wait_for("PID:")
        assert re.search(rf"^ *{guest.pid}  tui-keys$", term.text(), re.M)
        term.send("x\r")
        term.wait_for("'x' is not a process id")
        term.send(f"\x15{guest.pid}\r")
        term.wait_for(f"kvm statistics - pid {guest.pid} (tui-keys)")
        guest.run(77)
        refresh_until(term, lambda t: row(t, "kvm_pio") is not None and row(t, "kvm_pio")[0] == 77)
        # r: counting starts again from zero.
        term.send("r")
        term.wait_for("Collecting data...")
        guest.run(5)
        refresh_until(term, lambda t: row(t, "kvm_pio") is not None and row(t, "kvm_pio")[0] == 5)
        # c, then g by name.
        term.send("c")
        term.wait_for("kvm statistics - summary")
        assert "regex filter" not in term.text()
        term.send("g")
        term.wait_for("Guest name:")
        assert re.search(rf"^ *{guest.pid}  tui-keys$", term.text(), re.M)
        term.send("no-such-guest\r")
        term.wait_for("no VM named 'no-such-guest'")
        term.key("esc")
        term.wait_for("kvm statistics - summary")
        term.send("g")
        term.wait_for("Guest name:")
        term.send("tui-keys\r")
        term.wait_for(f"kvm statistics - pid {guest.pid} (tui-keys)")
        # f: invalid regex, ESC, then a valid one.
        term.send("f")
        term.wait_for("Regex:")
        term.send("kvm_(\r")
        term.wait_for('"kvm_(": Not a valid regular expression')
        term.key("esc")
        term.wait_for("Sort: CurAvg/s")
        assert "regex filter" not in term.text()
        term.send("f")
        term.wait_for("Regex:")
        term.send("kvm_userspace_exit\\(IO\r")
        term.wait_for("regex filter: kvm_userspace_exit\\(IO")
        guest.run(9)
        refresh_until(term, lambda t: row(t, "kvm_userspace_exit") is not None
                      and row(t, "kvm_userspace_exit")[0] == 9)
        # s: out of range, ESC.
        term.send("s")
        term.wait_for("Refresh interval: 25 s")
        term.send("0.01\r")
        term.wait_for("delay must be between 0.1 and 25.5 seconds")
        term.key("esc")
        term.wait_for("Sort: CurAvg/s")
        # o, h, b.
        term.send("o")
        term.wait_for("Sort: Total")
        term.send("h")
        term.wait_for("Help: interactive keys")
        term.key("F5")
        term.wait_for("Sort: Total")
        term.send("b")
        term.wait_for(GUEST_HEADER)
        # By guest: per-VM tracepoint counting (restarted by b) shows this
        # guest's row with its exact count, and the Total under it.
        guest.run(3)
        refresh_until(term, lambda t: row(t, "tui-keys") is not None
                      and row(t, "tui-keys")[0] == 3)
        guest_row, total_row = body(term)
        assert guest_row.startswith("%-40s %10d%7s" % ("tui-keys", 3, "100.0"))
        assert total_row.startswith("%-40s %10d" % ("Total", 3))
        term.send("b")
        term.wait_for(HEADER)
        term.send("q")
        assert term.wait_exit(5) == 0


def test_guest_that_exits_is_dead_with_its_last_totals(guest_process):
    guest = guest_process("pio", name="tui-dead")
    title = f"kvm statistics - pid {guest.pid} (tui-dead) (perf)"
    with kvm_stat("-p", str(guest.pid), "-f", "kvm_pio", "-s", "25", "--engine", "perf") as term:
        term.wait_for(title)
        term.wait_for("No matching events reported yet")
        guest.run(42)
        refresh_until(term, lambda t: row(t, "kvm_pio") is not None
                      and row(t, "kvm_pio")[0] == 42)
        guest.run(8)  # after the last refresh, right before the guest exits
        guest.close()
        refresh_until(term, f"{title}  Guest is DEAD")
        # The totals up to the exit stay; there is no current rate any more.
        assert body(term) == [
            "kvm_pio                                          50  100.0",
            "Total                                            50"]
        term.send(" ")  # nothing to refresh any more, still responsive
        term.settle(0.5)
        assert term.text().splitlines()[0] == f"{title}  Guest is DEAD"
        assert row(term, "kvm_pio") == (50, None)
        term.send("q")
        assert term.wait_exit(5) == 0


class Pacer:
    """Makes the guest exit at a steady rate: *batch* port writes every *period* s."""

    def __init__(self, guest, batch=20, period=0.02):
        self.guest, self.batch, self.period = guest, batch, period
        self.done = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def rate(self):
        return self.batch / self.period

    def _run(self):
        due = time.monotonic()
        while not self._stop.is_set():
            self.guest.run(self.batch)
            self.done += self.batch
            due += self.period
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def __enter__(self):
        self.start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.elapsed = time.monotonic() - self.start


def test_function_key_burst_keeps_the_rate_true(guest_process):
    guest = guest_process("pio", name="tui-rate")
    with kvm_stat("-p", str(guest.pid), "-f", "kvm_pio", "-s", "1") as term, \
            Pacer(guest) as pacer:
        refresh_until(term, lambda t: row(t, "kvm_pio") is not None and row(t, "kvm_pio")[1])
        time.sleep(1.2)  # at least one refresh on the ordinary schedule
        seen = []
        for _ in range(8):
            for _ in range(20):
                term.key("F5")
                time.sleep(0.003)
            term.settle(0.1)
            seen.append(row(term, "kvm_pio")[1])
        term.settle(1.2)
        seen.append(row(term, "kvm_pio")[1])
    true_rate = pacer.done / pacer.elapsed
    assert true_rate > 0.6 * pacer.rate, "the guest could not keep its pace"
    assert seen
    for rate in seen:
        assert rate == pytest.approx(true_rate, rel=0.2), (seen, true_rate)


def releasing_processes():
    """Pids of the detached processes that finish closing perf events."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == teardown.PROCESS_NAME:
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def wait_for_releases(timeout=30.0):
    """Wait until perf events released in the background are closed (not forever)."""
    wait_for(lambda: not releasing_processes(), "the detached teardown to finish", timeout,
             interval=0.1)


@pytest.mark.parametrize("how", ["q", "ctrl-c", "SIGTERM"])
def test_leaving_is_immediate_with_every_event_open_on_every_cpu(how):
    # Perf groups: the events whose teardown takes seconds.
    with kvm_stat("--engine", "perf") as term:
        term.wait_for("kvm statistics - summary")
        term.send("x")  # children too: every kvm event and reason
        term.wait_for(lambda t: has_total(t) or "No matching events" in t.text(), timeout=20)
        fds = perf_event_fds(term.proc.pid)
        assert fds == len(list_fields()) * len(online_cpus())
        wait_for_releases()  # of the events opened before x
        start = time.monotonic()
        if how == "q":
            term.send("q")
        elif how == "ctrl-c":
            term.key("ctrl-c")
        else:
            term.proc.send_signal(signal.SIGTERM)
        status = term.wait_exit(10)
        elapsed = time.monotonic() - start
        print(f"{how}: {fds} perf events, back at the shell after {elapsed * 1000:.0f} ms")
        assert status == 0
        assert elapsed < 0.5, f"{how} took {elapsed:.3f} s with {fds} perf events open"
        modes = term.modes()
        assert modes == term.initial_modes
        assert modes[3] & termios.ICANON and modes[3] & termios.ECHO
        assert releasing_processes(), "no detached process took over the perf events"
        # The terminal is not held by it (an ssh session would wait for that):
        # with the last slave descriptor closed, the master reads EIO.
        os.close(term.slave)
        select.select([term.master], [], [], 1.0)
        with pytest.raises(OSError) as hung_up:
            while os.read(term.master, 4096):
                pass
        assert hung_up.value.errno == errno.EIO
    wait_for_releases()
