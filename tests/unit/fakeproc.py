"""A fake /proc tree for tests of VM discovery and following.

It holds what kvmstat reads: ``<pid>/stat`` (state, ppid, start time),
``comm``, ``status`` (Name, Tgid), ``cmdline``, ``task/<tid>/`` and ``fd/``
links (``anon_inode:kvm-vm`` for VM processes), and kthreadd's
``2/task/2/children``.
"""

from __future__ import annotations

import os
import shutil


class FakeProc:
    def __init__(self, root):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.kthreads = []
        self._clock = 1000
        self.add_process(2, "kthreadd", ppid=0)
        self._write_children()

    @property
    def path(self) -> str:
        return str(self.root)

    def _stat(self, pid, comm, state, ppid, start):
        # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
        # majflt cmajflt utime stime cutime cstime priority nice threads
        # itrealvalue starttime ...
        rest = [state, ppid] + [0] * 17 + [start] + [0] * 5
        return f"{pid} ({comm}) " + " ".join(str(v) for v in rest) + "\n"

    def add_process(self, pid, comm="proc", *, ppid=1, argv=None, tids=None,
                    fds=(), state="S", tgid=None, start=None):
        """A process (or, with tgid, a thread reachable as /proc/<tid>)."""
        d = self.root / str(pid)
        (d / "fd").mkdir(parents=True, exist_ok=True)
        if start is None:
            self._clock += 1
            start = self._clock
        (d / "stat").write_text(self._stat(pid, comm, state, ppid, start))
        (d / "comm").write_text(comm[:15] + "\n")
        (d / "status").write_text(f"Name:\t{comm}\nUmask:\t0022\nState:\t{state}\n"
                                  f"Tgid:\t{tgid or pid}\nPid:\t{pid}\n")
        (d / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in (argv or [comm])))
        for tid in tids if tids is not None else [pid]:
            (d / "task" / str(tid)).mkdir(parents=True, exist_ok=True)
        for fd, target in fds:
            os.symlink(target, d / "fd" / str(fd))
        return pid

    def add_vm(self, pid, name=None, *, tids=None, vm_fd=11, argv=None, **kwargs):
        """A QEMU-like VM process holding a kvm-vm descriptor."""
        if argv is None:
            argv = ["qemu-system-x86_64", "-accel", "kvm"]
            if name is not None:
                argv += ["-name", f"guest={name},debug-threads=on"]
        fds = [(3, "/dev/kvm"), (vm_fd, "anon_inode:kvm-vm"), (vm_fd + 1, "anon_inode:kvm-vcpu:0")]
        return self.add_process(pid, "qemu-system-x86", argv=argv, tids=tids, fds=fds, **kwargs)

    def add_thread(self, pid, tid):
        (self.root / str(pid) / "task" / str(tid)).mkdir(parents=True)

    def set_thread_stat(self, tid, state="S", flags=0):
        """``/proc/<tid>/stat`` of a thread (reachable by its id, as in the real
        /proc) with that state and task flags (field 9)."""
        rest = [state, 1, 0, 0, 0, 0, flags] + [0] * 12 + [self._clock] + [0] * 5
        (self.root / str(tid)).mkdir(exist_ok=True)
        (self.root / str(tid) / "stat").write_text(
            f"{tid} (thread) " + " ".join(str(v) for v in rest) + "\n")

    def remove_thread_stat(self, tid):
        shutil.rmtree(self.root / str(tid))

    def remove_thread(self, pid, tid):
        shutil.rmtree(self.root / str(pid) / "task" / str(tid))

    def add_kthread(self, tid, name):
        """A kernel thread: a child of kthreadd with this (full) name."""
        self.add_process(tid, name, ppid=2)
        self.kthreads.append(tid)
        self._write_children()

    def _write_children(self):
        children = self.root / "2" / "task" / "2" / "children"
        children.parent.mkdir(parents=True, exist_ok=True)
        children.write_text("".join(f"{t} " for t in self.kthreads))

    def remove(self, pid):
        """The process (or kernel thread) exited and was reaped."""
        shutil.rmtree(self.root / str(pid))
        if pid in self.kthreads:
            self.kthreads.remove(pid)
            self._write_children()

    def set_state(self, pid, state):
        stat = self.root / str(pid) / "stat"
        text = stat.read_text()
        head, _, tail = text.rpartition(") ")
        stat.write_text(f"{head}) {state}{tail[1:]}")
