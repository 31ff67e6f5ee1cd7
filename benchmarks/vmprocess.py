#!/usr/bin/env python3
"""A VM process whose vCPU threads all sleep: many perf groups, no guest load.

``kvm_stat -p PID`` opens one perf group per thread of the VM process, so a
VM with N threads costs kvm_stat what N CPUs cost it host-wide.  This
process has exactly *threads* threads: it creates a VM with that many vCPUs
(none ever runs, so KVM starts no helper thread either), keeps vCPU 0 in its
main thread and parks each other vCPU's thread on a pipe read::

    python benchmarks/vmprocess.py THREADS

prints ``ready <pid>`` and runs until its stdin closes.  :class:`ParkedVM`
starts and stops it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import support  # noqa: F401  (puts tests/ on sys.path, for helpers.kvmguest)


def serve(threads: int) -> int:
    """Body of the VM process (see the module documentation)."""
    from helpers.kvmguest import Guest

    guest = Guest("pio", vcpus=threads)
    wake_r, wake_w = os.pipe()
    # Each parked thread blocks in read() until the pipe's write end closes.
    parked = [threading.Thread(target=os.read, args=(wake_r, 1), daemon=True)
              for _ in range(threads - 1)]
    for thread in parked:
        thread.start()
    print(f"ready {os.getpid()}", flush=True)
    sys.stdin.read()
    os.close(wake_w)
    for thread in parked:
        thread.join()
    guest.close()
    return 0


class ParkedVM:
    """The VM process of this module with *threads* threads; context manager."""

    def __init__(self, threads: int):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        words = self.proc.stdout.readline().split()
        if len(words) != 2 or words[0] != "ready":
            self.close()
            raise RuntimeError(f"the VM process did not start (it said {words!r})")
        self.pid = int(words[1])

    @property
    def threads(self) -> int:
        """The number of threads of the process now."""
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def close(self) -> None:
        """Let the process end and wait for it."""
        self.proc.stdin.close()
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()

    def __enter__(self) -> "ParkedVM":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1])))
