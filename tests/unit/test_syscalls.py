"""The one syscall shim: numbers per machine, errno on failure."""

import errno
import os
import struct

import pytest

from kvmstat.host import syscalls


def test_numbers_per_machine():
    assert syscalls.syscall_number("perf_event_open", "x86_64") == 298
    assert syscalls.syscall_number("perf_event_open", "aarch64") == 241
    assert syscalls.syscall_number("perf_event_open", "sparc64") is None
    assert syscalls.syscall_number("pidfd_getfd", "x86_64") == 438
    assert syscalls.syscall_number("pidfd_getfd", "aarch64") == 438
    assert syscalls.syscall_number("pidfd_open", "alpha") == 544
    assert syscalls.syscall_number("pidfd_open", "mips64") is None
    assert syscalls.syscall_number("no_such_call", "x86_64") is None


def test_pidfd_calls_raise_the_kernels_errno():
    own = syscalls.pidfd_open(os.getpid())
    try:
        r, w = os.pipe()
        try:
            copy = syscalls.pidfd_getfd(own, r)
            assert os.path.sameopenfile(copy, r)
            os.close(copy)
        finally:
            os.close(r)
            os.close(w)
        with pytest.raises(OSError) as bad:
            syscalls.pidfd_getfd(own, 999999)
        assert bad.value.errno == errno.EBADF
    finally:
        os.close(own)


def test_mount_failure_is_an_oserror_naming_the_target(tmp_path):
    with pytest.raises(OSError) as failed:
        syscalls.mount("tracefs", str(tmp_path / "missing"), "tracefs")
    assert failed.value.errno in (errno.ENOENT, errno.EPERM)
    assert failed.value.filename == str(tmp_path / "missing")


def test_perf_event_open_of_an_unknown_event_type_raises_its_errno():
    # A whole 64-byte attribute (PERF_ATTR_SIZE_VER0) of a type no PMU has.
    attr = struct.pack("=II", 0xFFFF, 64) + b"\0" * 56
    with pytest.raises(OSError) as bad:
        syscalls.perf_event_open(attr, 0, -1, -1, 0)
    assert bad.value.errno in (errno.ENOENT, errno.EINVAL, errno.EACCES, errno.EPERM)
