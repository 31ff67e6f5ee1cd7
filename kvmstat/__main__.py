"""``python -m kvmstat`` and the ``kvm_stat`` command's entry point.

This module is imported only to run the command, so it may set the process
up at import time: until :func:`console_main` hands over to
:func:`kvmstat.frontends.cli.main`, Ctrl-C ends the process as SIGINT does by default
(status 130 in the shell, no traceback), even while the command's modules
are still being imported.
"""

# The built-in _signal, not signal: that module takes milliseconds to
# import (it builds enums), and Ctrl-C then would still print a traceback.
import _signal

_signal.signal(_signal.SIGINT, _signal.SIG_DFL)

import signal  # noqa: E402
import sys  # noqa: E402

from .frontends.cli import main  # noqa: E402


def console_main() -> None:
    """Run ``kvm_stat``: ``sys.exit(main())``, Ctrl-C handled by :func:`main`."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())


if __name__ == "__main__":
    console_main()
