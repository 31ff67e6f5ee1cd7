"""Test helpers for kvmstat (no kvmstat code in here).

How tests import them
---------------------
``tests/`` is put on ``sys.path`` by ``tests/conftest.py`` (explicitly, so it
does not depend on pytest's import mode), and the helpers are imported as the
top-level package ``helpers``::

    from helpers.kvmguest import Guest, GuestProcess, GuestError
    from helpers.tracecount import TraceCounter

This works from the repository root with both ``python -m pytest`` and plain
``pytest``.  Do not write ``from tests.helpers ...``: ``tests`` is not a
package (no ``tests/__init__.py``) and is not importable under plain ``pytest``.

Modules
-------
``kvmguest``
    :class:`~helpers.kvmguest.Guest` (a KVM guest in this process: programs
    ``pio``, ``hlt``, ``cpuid-loop``), :class:`~helpers.kvmguest.GuestProcess`
    (the same guest in a child process driven by stdin commands, for watching a
    VM process from outside, e.g. ``kvm_stat -p``), ``kvm_available()``.
    Run ``python tests/helpers/kvmguest.py --help`` for the process form.
``tracecount``
    :class:`~helpers.tracecount.TraceCounter`: counts tracepoint hits through a
    private tracefs instance, an independent referee for kvmstat's numbers.
``commands``
    the one definition of running ``kvm_stat`` (``python -m kvmstat``):
    ``KVM_STAT``, ``kvm_stat`` (run to the end, as root or as nobody),
    ``start_kvm_stat`` (a process with pipes), ``wait_for`` (poll a condition
    while it runs), ``killed_on_failure``, and what a process holds
    (``fd_links``, ``perf_event_fds``).
``batchwindow``
    ``start_batch``: ``kvm_stat -1`` started and inside its one-second window.
``logfiles``
    checking the CSV files log mode writes (``check_csv``, ``column_sum``).
``exporter``
    ``ExporterProcess``: ``kvm_stat --serve`` as a process, scraped.
``ptyterm``
    :class:`~helpers.ptyterm.PtyTerminal`: runs a program on a pseudo-terminal
    (its controlling tty) and keeps a pyte screen of what it draws; keys,
    resizing, termios modes.

Fixtures (tests/conftest.py): ``tracefs``, ``guest`` (parametrize indirectly
with a program name, default ``"pio"``), ``guest_process`` (a factory taking
GuestProcess's arguments; all are closed at teardown), ``kvm_host``.
Markers: ``kernel`` (needs KVM, root and kvm tracepoints) and ``qemu`` (needs
qemu-system-x86_64): skipped when missing, failed when KVMSTAT_REQUIRE_KVM=1.
Every test under tests/kernel/ is marked ``kernel`` automatically.
"""

import os as _os

#: the repository root (the directory holding kvmstat/, tests/, README.md)
REPO_ROOT = _os.path.dirname(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))
