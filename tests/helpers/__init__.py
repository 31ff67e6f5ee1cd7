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
``logfiles``
    running ``kvm_stat`` as a process (``start_kvm_stat``, ``wait_for``) and
    checking the CSV files it writes (``check_csv``, ``column_sum``).
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
