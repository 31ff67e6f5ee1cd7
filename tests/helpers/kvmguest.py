#!/usr/bin/env python3
"""A tiny KVM guest in pure Python, for tests and benchmarks.

It talks to /dev/kvm directly (ioctl + mmap), so it needs no QEMU and no
kvmstat code.  The guest is a few bytes of 16-bit real-mode code at guest
physical address 0x1000 in a single 64 KiB memory slot.  Programs:

``pio``
    ``mov dx,0x3f8; mov al,'A'; out dx,al; jmp <out>``.  Every KVM_RUN call
    returns exactly once with KVM_EXIT_IO, so N calls make exactly N
    ``kvm_pio`` and N ``kvm_userspace_exit`` (reason IO) events.
``hlt``
    ``hlt; jmp <hlt>``.  Without an in-kernel irqchip every KVM_RUN returns
    KVM_EXIT_HLT: N calls make N ``kvm_userspace_exit`` (reason HLT).
``idle``
    ``cli; hlt; jmp <hlt>`` with an in-kernel irqchip: the vCPU halts inside
    the kernel (KVM_RUN blocks in ``kvm_vcpu_block``) until a signal ends the
    wait.  :meth:`Guest.halt_waits` makes exactly N such waits, so KVM's
    ``halt_wait_hist`` binary statistic gains exactly N samples.
``cpuid-loop``
    An endless loop that increments a 64-bit counter in guest memory and runs
    ``cpuid`` (handled inside the kernel, ``kvm_cpuid`` fires, KVM_RUN does not
    return).  Start it with :meth:`Guest.start_loop`, read the live counter with
    :meth:`Guest.loop_iterations`, stop it with :meth:`Guest.stop_loop` (sets
    ``kvm_run->immediate_exit`` and signals the vCPU thread with SIGUSR1, so
    KVM_RUN returns EINTR).  Each vCPU has its own counter.

Every KVM_RUN return is checked; anything unexpected raises :class:`GuestError`.

Process form (for tests that watch a VM process from outside)::

    python tests/helpers/kvmguest.py [--program pio] [--vcpus N] [-name NAME]

prints ``ready <pid>`` and then reads one command per line on stdin, answering
one line on stdout: ``ok [value]`` or ``error <message>``.  Commands:

=====================  ==========================================================
``run N [VCPU]``       N checked KVM_RUN calls on VCPU (default 0); ``ok``
``hold N MS [VCPU]``   the same, each exit held MS milliseconds (busy-wait) in
                       user space before the next KVM_RUN (``Guest.run(hold=)``)
``thread N``           :meth:`Guest.run_in_new_thread`; ``ok <tid of the thread>``
``vcpu``               :meth:`Guest.add_vcpu`; ``ok <vcpu index>``
``stats``              :meth:`Guest.stats_fds`; ``ok <number of fds>``
``idle N [VCPU]``      :meth:`Guest.halt_waits` (idle only); ``ok``
``churn SECONDS``      the main thread starts and joins short threads for that long;
                       ``ok <number of threads>``
``loop [VCPU]``        :meth:`Guest.start_loop` (cpuid-loop only); ``ok <tid>``
``stop``               :meth:`Guest.stop_loop`; ``ok <iterations>``
``count [VCPU]``       :meth:`Guest.loop_iterations`; ``ok <counter>`` (while it runs)
``tids``               ``ok <tid> <tid> ...`` of the threads of this process
``quit``               ``ok``, then exit 0
=====================  ==========================================================

:class:`GuestProcess` spawns and drives that process.

This module imports nothing from the project, so it also runs as a script.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import mmap
import os
import selectors
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

__all__ = ["Guest", "GuestError", "GuestProcess", "PROGRAMS", "kvm_available"]

# ---------------------------------------------------------------------------
# Constants from <linux/kvm.h> (x86_64).

KVMIO = 0xAE
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr: int) -> int:
    return _ioc(_IOC_NONE, nr, 0)


def _ior(nr: int, size: int) -> int:
    return _ioc(_IOC_READ, nr, size)


def _iow(nr: int, size: int) -> int:
    return _ioc(_IOC_WRITE, nr, size)


KVM_REGS_SIZE = 144  # struct kvm_regs: 18 x __u64
KVM_SREGS_SIZE = 312  # struct kvm_sregs
KVM_USERSPACE_MEMORY_REGION_SIZE = 32

KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_CREATE_VCPU = _io(0x41)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, KVM_USERSPACE_MEMORY_REGION_SIZE)
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, KVM_REGS_SIZE)
KVM_SET_REGS = _iow(0x82, KVM_REGS_SIZE)
KVM_GET_SREGS = _ior(0x83, KVM_SREGS_SIZE)
KVM_SET_SREGS = _iow(0x84, KVM_SREGS_SIZE)
KVM_GET_STATS_FD = _io(0xCE)
KVM_CREATE_IRQCHIP = _io(0x60)

# Exit reasons (kvm_run.exit_reason).
EXIT_REASONS = {
    0: "UNKNOWN", 1: "EXCEPTION", 2: "IO", 3: "HYPERCALL", 4: "DEBUG",
    5: "HLT", 6: "MMIO", 7: "IRQ_WINDOW_OPEN", 8: "SHUTDOWN", 9: "FAIL_ENTRY",
    10: "INTR", 11: "SET_TPR", 12: "TPR_ACCESS", 13: "S390_SIEIC",
    14: "S390_RESET", 15: "DCR", 16: "NMI", 17: "INTERNAL_ERROR", 18: "OSI",
    19: "PAPR_HCALL", 20: "S390_UCONTROL", 21: "WATCHDOG", 22: "S390_TSCH",
    23: "EPR", 24: "SYSTEM_EVENT", 25: "S390_STSI", 26: "IOAPIC_EOI",
    27: "HYPERV", 28: "ARM_NISV", 29: "X86_RDMSR", 30: "X86_WRMSR",
    31: "DIRTY_RING_FULL", 32: "AP_RESET_HOLD", 33: "X86_BUS_LOCK", 34: "XEN",
    35: "RISCV_SBI", 36: "RISCV_CSR", 37: "NOTIFY", 38: "LOONGARCH_IOCSR",
    39: "MEMORY_FAULT", 40: "TDX",
}
KVM_EXIT_IO = 2
KVM_EXIT_HLT = 5
KVM_EXIT_INTR = 10
KVM_EXIT_IO_OUT = 1

# struct kvm_run offsets.
RUN_IMMEDIATE_EXIT = 1
RUN_EXIT_REASON = 8
RUN_UNION = 32  # io: direction u8, size u8, port u16, count u32, data_offset u64

# Guest layout.
MEM_SIZE = 0x10000
CODE_ADDR = 0x1000
COUNTER_BASE = 0x2000  # cpuid-loop: one u64 counter per vCPU at COUNTER_BASE + 8*i
MAX_VCPUS = 256
SERIAL_PORT = 0x3F8

# 16-bit real-mode machine code, loaded at CODE_ADDR.
PROGRAMS = {
    # 1000: mov dx,0x3f8 / 1003: mov al,'A' / 1005: out dx,al / 1006: jmp 1005
    "pio": bytes([0xBA, 0xF8, 0x03, 0xB0, 0x41, 0xEE, 0xEB, 0xFD]),
    # 1000: hlt / 1001: jmp 1000
    "hlt": bytes([0xF4, 0xEB, 0xFD]),
    # 1000: cli / 1001: hlt / 1002: jmp 1001   (with an in-kernel irqchip)
    "idle": bytes([0xFA, 0xF4, 0xEB, 0xFD]),
    # 1000: add dword [di],1 / 1004: adc dword [di+4],0 / 1009: xor eax,eax
    # 100c: cpuid / 100e: jmp 1000       (di = this vCPU's counter address)
    "cpuid-loop": bytes([
        0x66, 0x83, 0x05, 0x01,
        0x66, 0x83, 0x55, 0x04, 0x00,
        0x66, 0x31, 0xC0,
        0x0F, 0xA2,
        0xEB, 0xF0,
    ]),
}
EXPECTED_EXIT = {"pio": KVM_EXIT_IO, "hlt": KVM_EXIT_HLT, "idle": None, "cpuid-loop": None}

LOOP_SIGNAL = signal.SIGUSR1


class GuestError(RuntimeError):
    """The guest did something it should not have, or KVM refused a request."""


def kvm_available() -> "str | None":
    """None if /dev/kvm can be used to run a guest, else the reason why not."""
    if not os.path.exists("/dev/kvm"):
        return "/dev/kvm does not exist (KVM module not loaded or no virtualization)"
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return f"cannot open /dev/kvm: {e.strerror}"
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as e:
        return f"/dev/kvm is not a KVM device (KVM_GET_API_VERSION: {e.strerror})"
    finally:
        os.close(fd)
    if version != 12:
        return f"unexpected KVM API version {version}"
    return None


def _exit_name(reason: int) -> str:
    return f"KVM_EXIT_{EXIT_REASONS.get(reason, 'UNKNOWN_%d' % reason)}"


class _Vcpu:
    def __init__(self, index: int, fd: int, run: mmap.mmap):
        self.index = index
        self.fd = fd
        self.run = run
        self.lock = threading.Lock()  # one KVM_RUN caller at a time
        self.runs = 0  # number of checked KVM_RUN returns


class Guest:
    """One VM with ``vcpus`` vCPUs, all running ``program`` (see module doc)."""

    def __init__(self, program: str = "pio", vcpus: int = 1):
        if program not in PROGRAMS:
            raise ValueError(f"unknown program {program!r}; choose from {sorted(PROGRAMS)}")
        if vcpus < 1:
            raise ValueError("vcpus must be at least 1")
        self.program = program
        self.kvm_fd = -1
        self.vm_fd = -1
        self._vcpus: list[_Vcpu] = []
        self._stats_fds: list[int] = []
        self._mem = None
        self._mem_anchor = None
        self._loop_thread: "threading.Thread | None" = None
        self._loop_vcpu: "_Vcpu | None" = None
        self._loop_error: "BaseException | None" = None
        self._loop_tid = 0
        self._loop_start = 0
        self._lock = threading.Lock()
        try:
            self._setup()
            for _ in range(vcpus):
                self.add_vcpu()
        except BaseException:
            self.close()
            raise

    # -- set-up ------------------------------------------------------------
    def _setup(self) -> None:
        try:
            self.kvm_fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise GuestError(f"cannot open /dev/kvm: {e.strerror}") from e
        version = fcntl.ioctl(self.kvm_fd, KVM_GET_API_VERSION)
        if version != 12:
            raise GuestError(f"unexpected KVM API version {version}")
        self.vm_fd = self._ioctl(self.kvm_fd, KVM_CREATE_VM, 0, "KVM_CREATE_VM")
        self._mmap_size = self._ioctl(self.kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0,
                                      "KVM_GET_VCPU_MMAP_SIZE")
        self._mem = mmap.mmap(-1, MEM_SIZE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                              mmap.PROT_READ | mmap.PROT_WRITE)
        code = PROGRAMS[self.program]
        self._mem[CODE_ADDR:CODE_ADDR + len(code)] = code
        self._mem_anchor = ctypes.c_char.from_buffer(self._mem)
        addr = ctypes.addressof(self._mem_anchor)
        region = struct.pack("<IIQQQ", 0, 0, 0, MEM_SIZE, addr)
        self._ioctl(self.vm_fd, KVM_SET_USER_MEMORY_REGION, region,
                    "KVM_SET_USER_MEMORY_REGION")
        if self.program == "idle":
            # HLT is then handled in the kernel (before any vCPU exists).
            self._ioctl(self.vm_fd, KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP")

    @staticmethod
    def _ioctl(fd, request, arg, what):
        try:
            return fcntl.ioctl(fd, request, arg)
        except OSError as e:
            raise GuestError(f"{what} failed: {e.strerror} (errno {e.errno})") from e

    def add_vcpu(self) -> int:
        """Create one more vCPU, ready to run the program; returns its index."""
        with self._lock:
            index = len(self._vcpus)
            if index >= MAX_VCPUS:
                raise GuestError(f"at most {MAX_VCPUS} vCPUs")
            fd = self._ioctl(self.vm_fd, KVM_CREATE_VCPU, index, "KVM_CREATE_VCPU")
            try:
                run = mmap.mmap(fd, self._mmap_size, mmap.MAP_SHARED,
                                mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
            except OSError:
                os.close(fd)
                raise
            vcpu = _Vcpu(index, fd, run)
            self._vcpus.append(vcpu)
        # Real mode, flat: every segment base 0, selector 0.
        sregs = bytearray(self._ioctl(fd, KVM_GET_SREGS, bytes(KVM_SREGS_SIZE),
                                      "KVM_GET_SREGS"))
        for seg in range(6):  # cs, ds, es, fs, gs, ss (struct kvm_segment: 24 bytes)
            off = seg * 24
            struct.pack_into("<Q", sregs, off, 0)  # base
            struct.pack_into("<H", sregs, off + 12, 0)  # selector
        self._ioctl(fd, KVM_SET_SREGS, bytes(sregs), "KVM_SET_SREGS")
        regs = bytearray(KVM_REGS_SIZE)
        # rax rbx rcx rdx rsi rdi rsp rbp r8..r15 rip rflags
        struct.pack_into("<Q", regs, 5 * 8, COUNTER_BASE + 8 * index)  # rdi
        struct.pack_into("<Q", regs, 6 * 8, 0xF000)  # rsp (unused)
        struct.pack_into("<Q", regs, 16 * 8, CODE_ADDR)  # rip
        struct.pack_into("<Q", regs, 17 * 8, 0x2)  # rflags: reserved bit 1 only
        self._ioctl(fd, KVM_SET_REGS, bytes(regs), "KVM_SET_REGS")
        return index

    # -- running -----------------------------------------------------------
    @property
    def vcpus(self) -> int:
        return len(self._vcpus)

    @property
    def fds(self) -> dict:
        """The open file descriptors: {'kvm': fd, 'vm': fd, 'vcpus': [fd, ...]}."""
        return {"kvm": self.kvm_fd, "vm": self.vm_fd,
                "vcpus": [v.fd for v in self._vcpus]}

    def _vcpu(self, vcpu: int) -> _Vcpu:
        if self.vm_fd < 0:
            raise GuestError("guest is closed")
        try:
            return self._vcpus[vcpu]
        except IndexError:
            raise GuestError(f"no vCPU {vcpu} (guest has {len(self._vcpus)})") from None

    def run(self, n: int, vcpu: int = 0, hold: float = 0.0) -> None:
        """Call KVM_RUN n times on ``vcpu``, checking every exit (pio/hlt only).

        With ``hold`` (seconds), each exit is held that long in user space
        before the next KVM_RUN (also after the last one), busy-waiting on
        the monotonic clock so that the thread stays on its CPU: the exact
        VMM time the durations tests measure."""
        expected = EXPECTED_EXIT[self.program]
        if expected is None:
            raise GuestError(f"program {self.program!r} never exits; use start_loop()")
        v = self._vcpu(vcpu)
        with v.lock:
            for _ in range(n):
                try:
                    fcntl.ioctl(v.fd, KVM_RUN, 0)
                except OSError as e:
                    raise GuestError(
                        f"KVM_RUN on vCPU {v.index} failed after {v.runs} runs: "
                        f"{e.strerror} (errno {e.errno}); exit reason "
                        f"{_exit_name(self._exit_reason(v))}") from e
                self._check_exit(v, expected)
                v.runs += 1
                if hold > 0:
                    _busy_wait(hold)

    @staticmethod
    def _exit_reason(v: _Vcpu) -> int:
        return struct.unpack_from("<I", v.run, RUN_EXIT_REASON)[0]

    def _check_exit(self, v: _Vcpu, expected: int) -> None:
        reason = self._exit_reason(v)
        if reason != expected:
            detail = ""
            try:
                regs = fcntl.ioctl(v.fd, KVM_GET_REGS, bytes(KVM_REGS_SIZE))
                detail = " at rip=%#x" % struct.unpack_from("<Q", regs, 16 * 8)[0]
            except OSError:
                pass
            if reason in (9, 17):  # FAIL_ENTRY, INTERNAL_ERROR: show the first words
                detail += " data=" + v.run[RUN_UNION:RUN_UNION + 24].hex()
            raise GuestError(
                f"vCPU {v.index} run {v.runs + 1} of program {self.program!r}: "
                f"expected {_exit_name(expected)}, got {_exit_name(reason)}{detail}")
        if reason == KVM_EXIT_IO:
            direction, size, port, count, data_offset = struct.unpack_from(
                "<BBHIQ", v.run, RUN_UNION)
            data = v.run[data_offset:data_offset + size * count]
            if (direction, size, port, count, data) != (KVM_EXIT_IO_OUT, 1, SERIAL_PORT, 1, b"A"):
                raise GuestError(
                    f"vCPU {v.index}: unexpected I/O exit: direction={direction} "
                    f"size={size} port={port:#x} count={count} data={data!r}")

    def run_in_new_thread(self, n: int) -> int:
        """Create a new vCPU and run n exits on it in a new thread, which has
        ended when this returns.  Returns the thread's native id (tid)."""
        index = self.add_vcpu()
        result: dict = {}

        def body():
            result["tid"] = threading.get_native_id()
            try:
                self.run(n, index)
            except BaseException as e:  # re-raised in the caller
                result["error"] = e

        t = threading.Thread(target=body, name=f"kvmguest-vcpu{index}")
        t.start()
        t.join()
        if "error" in result:
            raise result["error"]
        return result["tid"]

    # -- idle ------------------------------------------------------------------
    def halt_waits(self, n: int, vcpu: int = 0, timeout: float = 10.0) -> None:
        """Program ``idle``: make ``vcpu`` wait in the kernel's halt n times.

        A helper thread calls KVM_RUN n times; each time this waits until
        the thread blocks in ``kvm_vcpu_block`` (so the wait has begun and
        KVM will record it), then ends the wait with a signal (EINTR).
        Must be called from the main thread the first time (it installs a
        no-op SIGUSR1 handler).
        """
        if self.program != "idle":
            raise GuestError(f"halt_waits needs program 'idle', not {self.program!r}")
        _install_loop_signal_handler()
        v = self._vcpu(vcpu)
        entering = threading.Semaphore(0)
        result: dict = {"runs": 0}

        def body():
            result["tid"] = threading.get_native_id()
            with v.lock:
                for _ in range(n):
                    entering.release()
                    try:
                        fcntl.ioctl(v.fd, KVM_RUN, 0)
                    except InterruptedError:
                        result["runs"] += 1
                        continue
                    except OSError as e:
                        result["error"] = GuestError(f"KVM_RUN on vCPU {v.index} failed: "
                                                     f"{e.strerror}")
                    else:
                        result["error"] = GuestError(
                            f"idle on vCPU {v.index}: unexpected "
                            f"{_exit_name(self._exit_reason(v))}")
                    return

        t = threading.Thread(target=body, name=f"kvmguest-idle{vcpu}", daemon=True)
        t.start()
        deadline = time.monotonic() + timeout
        for i in range(n):
            while not entering.acquire(timeout=0.01):
                if not t.is_alive() or time.monotonic() > deadline:
                    break
            while t.is_alive() and _wchan(result.get("tid")) != "kvm_vcpu_block":
                if time.monotonic() > deadline:
                    raise GuestError(f"vCPU {v.index} did not halt in the kernel")
                time.sleep(0.001)
            # One signal ends the wait (a second one could end the next
            # wait before it began); sent again only if nothing happened.
            while t.is_alive() and result["runs"] == i:
                signal.pthread_kill(t.ident, LOOP_SIGNAL)
                resend = time.monotonic() + 1.0
                while t.is_alive() and result["runs"] == i and time.monotonic() < resend:
                    t.join(0.002)
                if time.monotonic() > deadline:
                    raise GuestError(f"vCPU {v.index} did not leave its halt")
        t.join(timeout)
        if "error" in result:
            raise result["error"]
        if result["runs"] != n:
            raise GuestError(f"vCPU {v.index}: {result['runs']} of {n} halt waits")

    # -- cpuid-loop ----------------------------------------------------------
    def start_loop(self, vcpu: int = 0) -> int:
        """Run the cpuid-loop program on ``vcpu`` in a background thread until
        :meth:`stop_loop`.  Returns the thread's tid.  Must be called from the
        main thread the first time (it installs a no-op SIGUSR1 handler)."""
        if self.program != "cpuid-loop":
            raise GuestError(f"start_loop needs program 'cpuid-loop', not {self.program!r}")
        if self._loop_thread is not None:
            raise GuestError("the loop is already running")
        _install_loop_signal_handler()
        v = self._vcpu(vcpu)
        v.run[RUN_IMMEDIATE_EXIT] = 0
        started = threading.Event()
        self._loop_error = None

        def body():
            self._loop_tid = threading.get_native_id()
            started.set()
            with v.lock:
                while True:
                    try:
                        fcntl.ioctl(v.fd, KVM_RUN, 0)
                    except InterruptedError:
                        if v.run[RUN_IMMEDIATE_EXIT]:
                            return
                        continue  # some other signal: keep looping
                    except OSError as e:
                        self._loop_error = GuestError(
                            f"KVM_RUN on vCPU {v.index} failed: {e.strerror}")
                        return
                    # Returned without EINTR: the loop never exits on its own.
                    self._loop_error = GuestError(
                        f"cpuid-loop on vCPU {v.index}: unexpected "
                        f"{_exit_name(self._exit_reason(v))}")
                    return

        self._loop_vcpu = v
        self._loop_start = self.loop_iterations(v.index)
        self._loop_thread = threading.Thread(target=body, name=f"kvmguest-loop{vcpu}",
                                             daemon=True)
        self._loop_thread.start()
        started.wait()
        return self._loop_tid

    def loop_iterations(self, vcpu: int = 0) -> int:
        """The guest's loop counter of ``vcpu`` (readable while it runs)."""
        off = COUNTER_BASE + 8 * vcpu
        return struct.unpack_from("<Q", self._mem, off)[0]

    def stop_loop(self, timeout: float = 10.0) -> int:
        """Stop the loop started by :meth:`start_loop`; returns the number of
        iterations since that start_loop call."""
        t, v = self._loop_thread, self._loop_vcpu
        if t is None or v is None:
            raise GuestError("the loop is not running")
        v.run[RUN_IMMEDIATE_EXIT] = 1
        deadline = time.monotonic() + timeout
        while t.is_alive():
            if time.monotonic() > deadline:
                raise GuestError("the vCPU thread did not stop")
            try:
                signal.pthread_kill(t.ident, LOOP_SIGNAL)
            except ProcessLookupError:
                pass
            t.join(0.01)
        v.run[RUN_IMMEDIATE_EXIT] = 0
        self._loop_thread = self._loop_vcpu = None
        if self._loop_error is not None:
            raise self._loop_error
        return self.loop_iterations(v.index) - self._loop_start

    # -- binary stats ----------------------------------------------------------
    def stats_fds(self) -> list:
        """KVM_GET_STATS_FD of the VM and of every vCPU (VM first); kept open
        until close().  Calling again opens fds only for new vCPUs."""
        with self._lock:
            if not self._stats_fds:
                self._stats_fds.append(self._ioctl(self.vm_fd, KVM_GET_STATS_FD, 0,
                                                   "KVM_GET_STATS_FD (vm)"))
            for v in self._vcpus[len(self._stats_fds) - 1:]:
                self._stats_fds.append(self._ioctl(v.fd, KVM_GET_STATS_FD, 0,
                                                   "KVM_GET_STATS_FD (vcpu)"))
            return list(self._stats_fds)

    # -- teardown ------------------------------------------------------------
    def close(self) -> None:
        if self._loop_thread is not None:
            try:
                self.stop_loop()
            except GuestError:
                pass
        for fd in self._stats_fds:
            os.close(fd)
        self._stats_fds = []
        for v in self._vcpus:
            v.run.close()
            os.close(v.fd)
        self._vcpus = []
        for attr in ("vm_fd", "kvm_fd"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)
        self._mem_anchor = None
        if self._mem is not None:
            self._mem.close()
            self._mem = None

    def __enter__(self) -> "Guest":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _busy_wait(seconds: float) -> None:
    """Spin on the monotonic clock for at least ``seconds`` (no sleeping)."""
    end = time.monotonic_ns() + int(seconds * 1e9)
    while time.monotonic_ns() < end:
        pass


def _churn_threads(seconds: float) -> int:
    """Start and join short-lived threads from the calling thread for *seconds*."""
    deadline = time.monotonic() + seconds
    started = 0
    while time.monotonic() < deadline:
        t = threading.Thread(target=time.sleep, args=(0.0005,))
        t.start()
        t.join()
        started += 1
    return started


def _wchan(tid) -> str:
    """Where thread *tid* of this process sleeps in the kernel ("" if unknown)."""
    try:
        with open(f"/proc/self/task/{tid}/wchan") as f:
            return f.read()
    except (OSError, TypeError):
        return ""


def _noop_handler(signum, frame):
    pass


def _install_loop_signal_handler() -> None:
    current = signal.getsignal(LOOP_SIGNAL)
    if current in (signal.SIG_DFL, signal.SIG_IGN, None):
        if threading.current_thread() is not threading.main_thread():
            raise GuestError("start_loop: call it once from the main thread first "
                             "(it must install a SIGUSR1 handler)")
        signal.signal(LOOP_SIGNAL, _noop_handler)


# ---------------------------------------------------------------------------
# Process form.

def _serve(guest: Guest, stdin, stdout) -> int:
    def reply(line: str) -> None:
        stdout.write(line + "\n")
        stdout.flush()

    reply(f"ready {os.getpid()}")
    for line in stdin:
        words = line.split()
        if not words:
            continue
        cmd, args = words[0], words[1:]
        try:
            if cmd == "run" and len(args) in (1, 2):
                guest.run(int(args[0]), int(args[1]) if len(args) == 2 else 0)
                reply("ok")
            elif cmd == "hold" and len(args) in (2, 3):
                guest.run(int(args[0]), int(args[2]) if len(args) == 3 else 0,
                          hold=float(args[1]) / 1000)
                reply("ok")
            elif cmd == "thread" and len(args) == 1:
                reply(f"ok {guest.run_in_new_thread(int(args[0]))}")
            elif cmd == "vcpu" and not args:
                reply(f"ok {guest.add_vcpu()}")
            elif cmd == "stats" and not args:
                reply(f"ok {len(guest.stats_fds())}")
            elif cmd == "idle" and len(args) in (1, 2):
                guest.halt_waits(int(args[0]), int(args[1]) if len(args) == 2 else 0)
                reply("ok")
            elif cmd == "churn" and len(args) == 1:
                reply(f"ok {_churn_threads(float(args[0]))}")
            elif cmd == "loop" and len(args) <= 1:
                reply(f"ok {guest.start_loop(int(args[0]) if args else 0)}")
            elif cmd == "stop" and not args:
                reply(f"ok {guest.stop_loop()}")
            elif cmd == "count" and len(args) <= 1:
                reply(f"ok {guest.loop_iterations(int(args[0]) if args else 0)}")
            elif cmd == "tids" and not args:
                reply("ok " + " ".join(sorted(os.listdir("/proc/self/task"), key=int)))
            elif cmd == "quit" and not args:
                reply("ok")
                return 0
            else:
                reply(f"error bad command: {line.strip()!r}")
        except Exception as e:  # report and keep serving
            reply("error " + " ".join(f"{type(e).__name__}: {e}".split()))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Run a tiny KVM guest driven by stdin commands.")
    p.add_argument("--program", default="pio", choices=sorted(PROGRAMS))
    p.add_argument("--vcpus", type=int, default=1)
    p.add_argument("-name", "--name", dest="name", default=None,
                   help="guest name (only shown in the command line, QEMU style)")
    args = p.parse_args(argv)
    try:
        guest = Guest(args.program, args.vcpus)
    except (GuestError, OSError) as e:
        print(f"kvmguest: {e}", file=sys.stderr)
        return 1
    with guest:
        return _serve(guest, sys.stdin, sys.stdout)


class GuestProcess:
    """A guest in a child process (``python kvmguest.py ...``) driven by pipes.

    Any failure (error reply, child death, timeout) raises GuestError with the
    child's stderr.
    """

    def __init__(self, program: str = "pio", vcpus: int = 1, name: "str | None" = None,
                 timeout: float = 30.0, extra_args=()):
        self.timeout = timeout
        self.program = program
        self.name = name
        self._stderr = tempfile.TemporaryFile(mode="w+b")
        cmd = [sys.executable, os.path.abspath(__file__), "--program", program,
               "--vcpus", str(vcpus)]
        if name is not None:
            cmd += ["-name", name]
        cmd += list(extra_args)
        self.args = cmd
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._stderr, text=True, bufsize=1,
                                      close_fds=True)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._proc.stdout, selectors.EVENT_READ)
        self._closed = False
        try:
            words = self._read_line().split()
            if len(words) != 2 or words[0] != "ready":
                raise GuestError(f"kvmguest process: unexpected greeting {words!r}"
                                 + self._stderr_text())
            self.pid = int(words[1])
        except BaseException:
            self._kill()
            raise

    # -- protocol ----------------------------------------------------------
    def _stderr_text(self) -> str:
        try:
            self._stderr.seek(0)
            text = self._stderr.read().decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""
        return f"\n--- kvmguest stderr ---\n{text}" if text else ""

    def _read_line(self) -> str:
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise GuestError(f"kvmguest process {self._proc.pid}: no answer within "
                                 f"{self.timeout}s" + self._stderr_text())
            if self._sel.select(left):
                line = self._proc.stdout.readline()
                if not line:
                    rc = self._proc.wait(timeout=5)
                    raise GuestError(f"kvmguest process {self._proc.pid} died (status {rc})"
                                     + self._stderr_text())
                return line.rstrip("\n")

    def command(self, line: str) -> str:
        """Send one command; return the value after ``ok`` (maybe empty)."""
        if self._closed:
            raise GuestError("kvmguest process is closed")
        try:
            self._proc.stdin.write(line + "\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            rc = self._proc.wait(timeout=5)
            raise GuestError(f"kvmguest process {self._proc.pid} died (status {rc})"
                             + self._stderr_text()) from None
        answer = self._read_line()
        if answer == "ok":
            return ""
        if answer.startswith("ok "):
            return answer[3:]
        raise GuestError(f"kvmguest process {self._proc.pid}: {line!r} -> {answer}"
                         + self._stderr_text())

    # -- API mirroring Guest -------------------------------------------------
    def run(self, n: int, vcpu: int = 0, hold: float = 0.0) -> None:
        if hold > 0:
            self.command(f"hold {n} {hold * 1000!r} {vcpu}")
        else:
            self.command(f"run {n} {vcpu}")

    def thread(self, n: int) -> int:
        """run_in_new_thread in the child; returns the (ended) thread's tid."""
        return int(self.command(f"thread {n}"))

    def add_vcpu(self) -> int:
        return int(self.command("vcpu"))

    def stats(self) -> int:
        return int(self.command("stats"))

    def halt_waits(self, n: int, vcpu: int = 0) -> None:
        self.command(f"idle {n} {vcpu}")

    def churn(self, seconds: float) -> int:
        return int(self.command(f"churn {seconds}"))

    def start_loop(self, vcpu: int = 0) -> int:
        return int(self.command(f"loop {vcpu}"))

    def stop_loop(self) -> int:
        return int(self.command("stop"))

    def loop_iterations(self, vcpu: int = 0) -> int:
        """The guest's loop counter of *vcpu*, readable while the loop runs."""
        return int(self.command(f"count {vcpu}"))

    def tids(self) -> list:
        return [int(t) for t in self.command("tids").split()]

    @property
    def returncode(self):
        return self._proc.poll()

    def _kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        self._closed = True
        self._sel.close()
        for f in (self._proc.stdin, self._proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self._stderr.close()

    def close(self) -> None:
        """Ask the child to quit and wait for it; kill it if it does not."""
        if self._closed:
            return
        try:
            if self._proc.poll() is None:
                try:
                    self.command("quit")
                except GuestError:
                    pass
                try:
                    self._proc.wait(timeout=self.timeout)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
        finally:
            if not self._closed:
                self._cleanup()

    def __enter__(self) -> "GuestProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(main())
