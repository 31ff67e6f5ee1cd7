"""A real QEMU guest for tests: a 512-byte boot sector under qemu-system-x86_64.

The boot sector loops forever on::

    7c00: mov al, 0xa5    B0 A5
    7c02: out 0xe9, al    E6 E9      QEMU's debugcon, in user space: kvm_pio
    7c04: xor eax, eax    66 31 C0
    7c07: cpuid           0F A2      handled in the kernel (kvm_cpuid)
    7c09: sti             FB
    7c0a: hlt             F4         woken by the BIOS's timer interrupt
    7c0b: jmp 7c00        EB F3

so every timer tick (the in-kernel PIT, run by the ``kvm-pit/<pid>`` kernel
thread) makes one port write, one cpuid and one halt.  ``pit_hz`` puts
:func:`pit_program` before the loop: the PIT then ticks at that rate (the
BIOS leaves it at 18.2 Hz), e.g. 1000 for a halt of about 1 ms per tick.  The debugcon output
(a file) shows when the BIOS has handed over to the boot sector, which takes
seconds where the BIOS runs emulated.  No kvmstat code here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time

__all__ = ["BOOT_SECTOR", "PIT_HZ", "QemuGuest", "boot_sector", "pit_program"]

_MARK = 0xA5
_CODE = bytes([0xB0, _MARK, 0xE6, 0xE9, 0x66, 0x31, 0xC0, 0x0F, 0xA2, 0xFB, 0xF4, 0xEB, 0xF3])
BOOT_SECTOR = _CODE + bytes(510 - len(_CODE)) + b"\x55\xAA"

#: the PIT's input clock
PIT_HZ = 1193182


def pit_program(hz: int) -> bytes:
    """Real-mode code setting PIT channel 0 to a rate generator of *hz*:
    ``mov al,0x34; out 0x43,al; mov al,lo; out 0x40,al; mov al,hi; out 0x40,al``."""
    divisor = round(PIT_HZ / hz)
    if not 1 < divisor < 0x10000:
        raise ValueError(f"the PIT cannot tick at {hz} Hz")
    return bytes([0xB0, 0x34, 0xE6, 0x43, 0xB0, divisor & 0xFF, 0xE6, 0x40,
                  0xB0, divisor >> 8, 0xE6, 0x40])


def boot_sector(pit_hz: "int | None" = None) -> bytes:
    """:data:`BOOT_SECTOR`, with the PIT set to *pit_hz* first when given
    (the loop's jump is relative, so it still loops on itself)."""
    code = (pit_program(pit_hz) if pit_hz else b"") + _CODE
    return code + bytes(510 - len(code)) + b"\x55\xAA"


class QemuGuest:
    """``qemu-system-x86_64 -accel kvm -name guest=NAME,debug-threads=on -smp VCPUS ...``

    booting :func:`boot_sector` (*pit_hz*); *qemu* is the binary and its own options
    (``helpers.qemu10.QemuBinary.argv``).  :attr:`pid` is QEMU's process id; the
    constructor returns once its vCPU threads (``CPU <n>/KVM``) and the
    ``kvm-pit/<pid>`` kernel thread exist and the boot sector runs.
    """

    def __init__(self, name: str, vcpus: int = 2, timeout: float = 120.0,
                 qemu: "tuple[str, ...]" = ("qemu-system-x86_64",),
                 pit_hz: "int | None" = None):
        self.name = name
        self.vcpus = vcpus
        self._dir = tempfile.mkdtemp(prefix="kvmstat-qemu-")
        image = os.path.join(self._dir, "boot.img")
        self._debugcon = os.path.join(self._dir, "debugcon.out")
        self._qmp_path = os.path.join(self._dir, "qmp.sock")
        self._qmp: "socket.socket | None" = None
        with open(image, "wb") as f:
            f.write(boot_sector(pit_hz))
        self.args = [*qemu, "-accel", "kvm",
                     "-name", f"guest={name},debug-threads=on", "-smp", str(vcpus),
                     "-m", "64", "-display", "none", "-nodefaults", "-no-reboot",
                     "-debugcon", f"file:{self._debugcon}",
                     "-qmp", f"unix:{self._qmp_path},server=on,wait=off",
                     "-drive", f"file={image},format=raw,if=ide,snapshot=on"]
        self._stderr = tempfile.TemporaryFile(mode="w+b")
        self._proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=self._stderr)
        self.pid = self._proc.pid
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        wanted = {f"CPU {i}/KVM" for i in range(self.vcpus)}
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"QEMU exited with status {self._proc.returncode}: "
                                   f"{self.stderr_text()}")
            if (self._boot_sector_runs() and wanted <= set(self.threads().values())
                    and self.pit_thread() is not None):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"QEMU did not run the boot sector within {timeout}s: "
                                   f"{self.stderr_text()}")
            time.sleep(0.05)

    def _boot_sector_runs(self) -> bool:
        try:
            with open(self._debugcon, "rb") as f:
                return bytes([_MARK]) in f.read()
        except OSError:
            return False

    def loops(self) -> int:
        """Times the boot sector has gone round its loop so far: the marks it
        wrote to the debugcon file (each loop is one port write, one cpuid
        and one hlt)."""
        with open(self._debugcon, "rb") as f:
            return f.read().count(bytes([_MARK]))

    def qmp(self, command: str, **arguments) -> dict:
        """Runs one QMP *command* and returns its answer."""
        if self._qmp is None:
            self._qmp = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._qmp.settimeout(30)
            self._qmp.connect(self._qmp_path)
            self._qmp_file = self._qmp.makefile("rwb")
            self._qmp_answer()  # the greeting
            self._qmp_send("qmp_capabilities")
        self._qmp_send(command, arguments)
        return self._qmp_answer()

    def _qmp_send(self, command: str, arguments: "dict | None" = None) -> None:
        message = {"execute": command, **({"arguments": arguments} if arguments else {})}
        self._qmp_file.write(json.dumps(message).encode() + b"\n")
        self._qmp_file.flush()
        if command != "qmp_capabilities":
            return
        self._qmp_answer()

    def _qmp_answer(self) -> dict:
        while True:  # events (STOP, RESUME...) come on the same stream
            line = self._qmp_file.readline()
            if not line:
                raise RuntimeError(f"QEMU closed its QMP socket: {self.stderr_text()}")
            message = json.loads(line)
            if "event" not in message:
                if "error" in message:
                    raise RuntimeError(f"QMP error: {message['error']}")
                return message

    def pause(self) -> None:
        """Stops the vCPUs (QMP ``stop``): the guest does nothing until :meth:`resume`."""
        self.qmp("stop")

    def pause_halted(self, timeout: float = 30.0) -> None:
        """:meth:`pause` with vCPU 0 waiting in the boot sector's ``hlt``, so
        that every loop counted by :meth:`loops` has halted.  Paused in the
        middle of a loop (its mark written, its ``hlt`` to come), it resumes
        and tries again."""
        deadline = time.monotonic() + timeout
        while True:
            self.pause()
            registers = self.qmp("human-monitor-command", **{"command-line": "info registers"})
            # Halted, just after the boot sector's hlt (at 7c0b).
            if re.search(r"EIP=0000_?7c0b .*HLT=1", registers["return"]):
                return
            self.resume()
            if time.monotonic() > deadline:
                raise RuntimeError(f"vCPU 0 was never paused halted within {timeout}s")
            time.sleep(0.005)

    def resume(self) -> None:
        """Lets the vCPUs run again (QMP ``cont``)."""
        self.qmp("cont")

    def stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace").strip()

    def threads(self) -> "dict[int, str]":
        """tid -> thread name of every thread of the QEMU process."""
        names = {}
        try:
            tids = os.listdir(f"/proc/{self.pid}/task")
        except OSError:
            return {}
        for tid in tids:
            try:
                with open(f"/proc/{self.pid}/task/{tid}/comm") as f:
                    names[int(tid)] = f.read().rstrip("\n")
            except OSError:
                continue
        return names

    def pit_thread(self) -> "int | None":
        """tid of the ``kvm-pit/<pid>`` kernel thread, if there is one."""
        try:
            with open("/proc/2/task/2/children") as f:
                kthreads = f.read().split()
        except OSError:
            kthreads = [p for p in os.listdir("/proc") if p.isdigit()]
        for tid in kthreads:
            try:
                with open(f"/proc/{tid}/comm") as f:
                    if f.read().rstrip("\n") == f"kvm-pit/{self.pid}":
                        return int(tid)
            except OSError:
                continue
        return None

    def close(self) -> None:
        if self._qmp is not None:
            self._qmp_file.close()
            self._qmp.close()
            self._qmp = None
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._stderr.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "QemuGuest":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
