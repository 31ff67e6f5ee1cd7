"""A real QEMU guest for tests: a 512-byte boot sector under qemu-system-x86_64.

Two boot sectors.  The default one (:func:`boot_sector`) loops forever on::

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
BIOS leaves it at 18.2 Hz).  The BIOS's own timer handler runs on every
tick too; with the port write and the cpuid, a tick costs the guest 0.3 to
0.5 ms on the development host.

The halt sector (:func:`halt_sector`, ``QemuGuest(..., halt_only=True)``)
is for measuring halts: its own timer handler only acknowledges the
interrupt to the PIC, and after each tick it stays awake until the PIT's
counter says a quarter of the period has gone, then halts until the next
tick.  Everything it touches (PIT, PIC, hlt) is emulated in the kernel, so
it never exits to QEMU, and its halts last 3/4 of the tick period plus the
lateness of the wake-up that ends them, whatever the lateness of the one
before.  It writes one mark to the debugcon at start and none afterwards.

The debugcon output (a file) shows when the BIOS has handed over to the
boot sector, which takes seconds where the BIOS runs emulated.  No kvmstat
code here.
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

__all__ = ["BOOT_SECTOR", "PIT_HZ", "QemuGuest", "boot_sector", "halt_sector", "pit_program"]

_MARK = 0xA5
#: where the BIOS loads a boot sector and jumps to (segment 0)
_ORIGIN = 0x7C00
_HLT = 0xF4


def _sector(code: bytes) -> bytes:
    """*code* padded to a 512-byte boot sector, with its signature."""
    return code + bytes(510 - len(code)) + b"\x55\xAA"


_CODE = bytes([0xB0, _MARK, 0xE6, 0xE9, 0x66, 0x31, 0xC0, 0x0F, 0xA2, 0xFB, 0xF4, 0xEB, 0xF3])
BOOT_SECTOR = _sector(_CODE)

#: the PIT's input clock
PIT_HZ = 1193182


def _pit_divisor(hz: int) -> int:
    """PIT channel 0's reload value for *hz* ticks a second."""
    divisor = round(PIT_HZ / hz)
    if not 1 < divisor < 0x10000:
        raise ValueError(f"the PIT cannot tick at {hz} Hz")
    return divisor


def pit_program(hz: int) -> bytes:
    """Real-mode code setting PIT channel 0 to a rate generator of *hz*:
    ``mov al,0x34; out 0x43,al; mov al,lo; out 0x40,al; mov al,hi; out 0x40,al``."""
    divisor = _pit_divisor(hz)
    return bytes([0xB0, 0x34, 0xE6, 0x43, 0xB0, divisor & 0xFF, 0xE6, 0x40,
                  0xB0, divisor >> 8, 0xE6, 0x40])


def boot_sector(pit_hz: "int | None" = None) -> bytes:
    """:data:`BOOT_SECTOR`, with the PIT set to *pit_hz* first when given
    (the loop's jump is relative, so it still loops on itself)."""
    return _sector((pit_program(pit_hz) if pit_hz else b"") + _CODE)


def _halt_sector_head(pit_hz: int, handler_at: int) -> bytes:
    """The halt sector's set-up: the timer handler at *handler_at* becomes
    IRQ0's, then the PIT ticks at *pit_hz* and the mark is written.
    Interrupts stay off until the loop's sti.  IRQ0 of the master PIC is
    interrupt vector 8 in real mode (the BIOS programs the PIC so), whose far
    pointer (offset, segment) sits at 0x20 in the vector table."""
    return bytes([
        0xFA,              # cli
        0x31, 0xC0,        # xor ax, ax
        0x8E, 0xD8,        # mov ds, ax       the vector table is at 0000:0000
        0xC7, 0x06, 0x20, 0x00, handler_at & 0xFF, handler_at >> 8,
                           # mov word [0x0020], handler_at   vector 8's offset
        0xC7, 0x06, 0x22, 0x00, 0x00, 0x00,
                           # mov word [0x0022], 0x0000       its segment
        0xB0, 0xFE,        # mov al, 0xfe
        0xE6, 0x21,        # out 0x21, al     master PIC mask: only IRQ0 (the PIT) interrupts
    ]) + pit_program(pit_hz) + bytes([
        0xB0, _MARK,       # mov al, 0xa5
        0xE6, 0xE9,        # out 0xe9, al     the mark: the sector runs
    ])


#: the share of each tick period the halt sector stays awake, by the PIT's counter
AWAKE_SHARE = 0.25


def _halt_loop(pit_hz: int) -> bytes:
    """The halt sector's loop: halt until a tick, then stay awake until the
    PIT's counter (counting down from the divisor, reloaded at each tick)
    has gone :data:`AWAKE_SHARE` of the way, and halt again."""
    divisor = _pit_divisor(pit_hz)
    awake_until = divisor - round(divisor * AWAKE_SHARE)
    return bytes([
        0xFB,              # loop: sti
        0xF4,              #       hlt               until the next tick
        0xB0, 0x00,        # wait: mov al, 0x00      latch channel 0's counter
        0xE6, 0x43,        #       out 0x43, al
        0xE4, 0x40,        #       in al, 0x40       its low byte
        0x88, 0xC4,        #       mov ah, al
        0xE4, 0x40,        #       in al, 0x40       its high byte
        0x86, 0xC4,        #       xchg al, ah       ax = the counter
        0x3D, awake_until & 0xFF, awake_until >> 8,
                           #       cmp ax, awake_until
        0x77, 0xEF,        #       ja wait           (rel8 -17)
        0xEB, 0xEB,        #       jmp loop          (rel8 -21)
    ])


_TICK_HANDLER = bytes([
    0x50,                  # push ax
    0xB0, 0x20,            # mov al, 0x20
    0xE6, 0x20,            # out 0x20, al     end of interrupt, to the in-kernel PIC
    0x58,                  # pop ax
    0xCF,                  # iret
])


def halt_sector(pit_hz: int) -> bytes:
    """A boot sector that sets the PIT to *pit_hz* and halts until every
    tick, awake for the first :data:`AWAKE_SHARE` of each period as the
    PIT's counter tells (the same addresses at any rate; the values for
    1000 Hz, divisor 0x04a9)::

        7c00: cli                       FA
        7c01: xor ax, ax                31 C0
        7c03: mov ds, ax                8E D8
        7c05: mov word [0x20], 0x7c3a   C7 06 20 00 3A 7C   IRQ0's vector -> 7c3a
        7c0b: mov word [0x22], 0        C7 06 22 00 00 00
        7c11: mov al, 0xfe              B0 FE
        7c13: out 0x21, al              E6 21               mask every IRQ but IRQ0
        7c15: (pit_program(pit_hz), 12 bytes)
        7c21: mov al, 0xa5              B0 A5
        7c23: out 0xe9, al              E6 E9               the debugcon mark, once
        7c25: sti                       FB
        7c26: hlt                       F4
        7c27: mov al, 0                 B0 00               latch the PIT's counter 0
        7c29: out 0x43, al              E6 43
        7c2b: in al, 0x40               E4 40
        7c2d: mov ah, al                88 C4
        7c2f: in al, 0x40               E4 40
        7c31: xchg al, ah               86 C4
        7c33: cmp ax, 0x037f            3D 7F 03            0x04a9 - 0x04a9 / 4
        7c36: ja 7c27                   77 EF
        7c38: jmp 7c25                  EB EB
        7c3a: push ax                   50                  the timer handler
        7c3b: mov al, 0x20              B0 20
        7c3d: out 0x20, al              E6 20               EOI to the master PIC
        7c3f: pop ax                    58
        7c40: iret                      CF

    So each halt starts a fixed time after a tick, by the PIT's own clock,
    however late the vCPU woke up for it, and lasts the rest of the
    period (3/4 of it) plus the lateness of the next wake-up.  The guest
    exits only to KVM: the halt and the port accesses to the PIT and the
    PIC are all handled in the kernel with QEMU's default in-kernel irqchip.
    """
    loop = _halt_loop(pit_hz)
    head_length = len(_halt_sector_head(pit_hz, 0))
    handler_at = _ORIGIN + head_length + len(loop)
    return _sector(_halt_sector_head(pit_hz, handler_at) + loop + _TICK_HANDLER)


def _halted_at(pit_hz: "int | None", halt_only: bool) -> int:
    """The address just after the hlt of the sector booted with these
    options: where a halted vCPU 0 waits."""
    if halt_only:
        return _ORIGIN + len(_halt_sector_head(pit_hz, 0)) + _halt_loop(pit_hz).index(_HLT) + 1
    return _ORIGIN + len(pit_program(pit_hz) if pit_hz else b"") + _CODE.index(_HLT) + 1


class QemuGuest:
    """``qemu-system-x86_64 -accel kvm -name guest=NAME,debug-threads=on -smp VCPUS ...``

    booting :func:`boot_sector` (*pit_hz*), or :func:`halt_sector` (*pit_hz*,
    required then) with *halt_only*; *qemu* is the binary and its own options
    (``helpers.qemu10.QemuBinary.argv``).  :attr:`pid` is QEMU's process id; the
    constructor returns once its vCPU threads (``CPU <n>/KVM``) and the
    ``kvm-pit/<pid>`` kernel thread exist and the boot sector runs.
    """

    def __init__(self, name: str, vcpus: int = 2, timeout: float = 120.0,
                 qemu: "tuple[str, ...]" = ("qemu-system-x86_64",),
                 pit_hz: "int | None" = None, halt_only: bool = False):
        if halt_only and not pit_hz:
            raise ValueError("the halt sector needs a PIT rate (pit_hz)")
        self.name = name
        self.vcpus = vcpus
        self.halt_only = halt_only
        self._halted_at = _halted_at(pit_hz, halt_only)
        self._dir = tempfile.mkdtemp(prefix="kvmstat-qemu-")
        image = os.path.join(self._dir, "boot.img")
        self._debugcon = os.path.join(self._dir, "debugcon.out")
        self._qmp_path = os.path.join(self._dir, "qmp.sock")
        self._qmp: "socket.socket | None" = None
        with open(image, "wb") as f:
            f.write(halt_sector(pit_hz) if halt_only else boot_sector(pit_hz))
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
        and one hlt).  The halt sector writes one mark only: not for it."""
        if self.halt_only:
            raise RuntimeError("the halt sector does not count its loops")
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
        that every loop counted by :meth:`loops` (of the default sector) has halted.  Paused in the
        middle of a loop (its mark written, its ``hlt`` to come), it resumes
        and tries again."""
        deadline = time.monotonic() + timeout
        while True:
            self.pause()
            registers = self.qmp("human-monitor-command", **{"command-line": "info registers"})
            # Halted, just after the boot sector's hlt.
            if re.search(rf"EIP=0000_?{self._halted_at:04x} .*HLT=1", registers["return"]):
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
