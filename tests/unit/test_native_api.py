"""The counting core's Python interface: checks, backend choice, error messages.

No perf event is opened here; the last test makes one perf_event_open call
that fails on every host.
"""

from __future__ import annotations

import errno
import os
import sys

import pytest

from kvmstat.counting import native
from kvmstat.counting.common import error_from_errno
from kvmstat.errors import (AccessDenied, InvalidArgument, NativeError,
                            NotAvailable, TooManyEvents)
from kvmstat.counting.native import (PER_CPU, PER_THREAD, CounterSet, EventSpec,
                            available_backends, open_counter_set)

EV = EventSpec("kvm_pio", 1234)
BACKENDS = available_backends()


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def test_constants_and_spec():
    assert (PER_CPU, PER_THREAD, native.PER_THREAD_INHERIT) == (0, 1, 2)
    spec = EventSpec("kvm_exit(HLT)", 7, "exit_reason==12")
    assert spec.filter == "exit_reason==12"
    assert EventSpec("x", 1).filter is None
    with pytest.raises(AttributeError):
        spec.name = "y"  # frozen


def test_python_backend_always_available():
    assert "python" in available_backends()
    assert available_backends()[-1] == "python"


@pytest.mark.parametrize("events", [[], "kvm_pio", [("kvm_pio", 1)],
                                    [EventSpec("x", -1)], [EventSpec("x", "12")],
                                    [EventSpec("x", 1, "a==1\0")]])
def test_bad_events_rejected(backend, events):
    with pytest.raises(InvalidArgument):
        open_counter_set(events, PER_CPU, backend)


@pytest.mark.parametrize("mode", [3, -1, None, "cpu", True])
def test_bad_mode_rejected(backend, mode):
    with pytest.raises(InvalidArgument):
        open_counter_set([EV], mode, backend)


def test_new_set_is_empty(backend):
    with open_counter_set([EV, EventSpec("kvm_msr", 5, "ecx==1")], PER_THREAD, backend) as cs:
        assert isinstance(cs, CounterSet)
        assert cs.events == (EV, EventSpec("kvm_msr", 5, "ecx==1"))
        assert cs.mode == PER_THREAD
        assert (cs.groups, cs.fds) == (0, 0)
        assert cs.read() == ([0, 0], None)
        assert cs.read(2) == ([0, 0], [0, 0, 0, 0])
        cs.enable(), cs.disable(), cs.reset()  # no groups: nothing to do


@pytest.mark.parametrize("target,bucket", [(-1, 0), (1.5, 0), (True, 0), (0, -1),
                                           (0, "a"), (2**31, 0)])
def test_bad_add_arguments(backend, target, bucket):
    with open_counter_set([EV], PER_CPU, backend) as cs:
        with pytest.raises(InvalidArgument):
            cs.add(target, bucket)


def test_bad_retire_and_read_arguments(backend):
    with open_counter_set([EV], PER_CPU, backend) as cs:
        for slot in (0, -1, 99, "0", None):
            with pytest.raises(InvalidArgument):
                cs.retire(slot)
        for nb in (-1, 1.0, None):
            with pytest.raises(InvalidArgument):
                cs.read(nb)
        for bucket in (-1, 1.5, None, 2**31):
            with pytest.raises(InvalidArgument):
                cs.clear_bucket(bucket)


def test_clear_bucket_without_groups(backend):
    with open_counter_set([EV], native.PER_THREAD_INHERIT, backend) as cs:
        cs.clear_bucket(0)
        cs.clear_bucket(7)  # a bucket never used: nothing to forget
        assert cs.read(8) == ([0], [0] * 8)


def test_closed_set_refuses_use(backend):
    cs = open_counter_set([EV], PER_CPU, backend)
    cs.close()
    cs.close()  # idempotent
    assert cs.groups == 0 and cs.fds == 0
    for call in (cs.read, cs.enable, cs.disable, cs.reset, lambda: cs.add(0),
                 lambda: cs.retire(0), lambda: cs.clear_bucket(0)):
        with pytest.raises(InvalidArgument, match="closed"):
            call()


def test_backend_from_environment(monkeypatch):
    monkeypatch.setenv("KVMSTAT_BACKEND", "python")
    with open_counter_set([EV], PER_CPU) as cs:
        assert type(cs).__module__ == "kvmstat.counting.pybackend"
    monkeypatch.setenv("KVMSTAT_BACKEND", "fortran")
    with pytest.raises(InvalidArgument, match="KVMSTAT_BACKEND"):
        open_counter_set([EV], PER_CPU)


def test_default_backend_is_c(monkeypatch):
    monkeypatch.delenv("KVMSTAT_BACKEND", raising=False)
    if "c" not in BACKENDS:
        pytest.skip("C extension not built")
    with open_counter_set([EV], PER_CPU) as cs:
        assert type(cs).__module__ == "kvmstat.counting.native"


def test_unknown_backend_argument():
    with pytest.raises(InvalidArgument, match="'c' or 'python'"):
        open_counter_set([EV], PER_CPU, backend="rust")


def test_missing_extension(monkeypatch):
    # None in sys.modules makes `import kvmstat._native` raise ImportError.
    monkeypatch.setitem(sys.modules, "kvmstat._native", None)
    assert available_backends() == ["python"]
    with pytest.raises(NotAvailable) as info:
        open_counter_set([EV], PER_CPU, backend="c")
    msg = str(info.value)
    assert "not built" in msg and "pip install ." in msg and "\n" not in msg
    with open_counter_set([EV], PER_CPU, backend="python") as cs:
        assert cs.read() == ([0], None)


# --- errno -> exception ----------------------------------------------------

def _paranoid(tmp_path, value="2"):
    path = tmp_path / "perf_event_paranoid"
    path.write_text(value + "\n")
    return str(path)


@pytest.mark.parametrize("err", [errno.EACCES, errno.EPERM])
def test_permission_error_names_cause_and_fix(tmp_path, err):
    path = _paranoid(tmp_path, "3")
    exc = error_from_errno(err, event=EV, target=0, mode=PER_CPU, paranoid_path=path)
    assert isinstance(exc, AccessDenied) and isinstance(exc, PermissionError)
    msg = str(exc)
    assert msg == (f"perf_event_open denied for kvm_pio on CPU 0 ({os.strerror(err)}): run as "
                   f"root or grant CAP_PERFMON, or lower {path} (now 3)")


def test_permission_error_unreadable_paranoid(tmp_path):
    exc = error_from_errno(errno.EACCES, event=EV, target=9, mode=PER_THREAD,
                           paranoid_path=str(tmp_path / "missing"))
    assert "thread 9" in str(exc) and "(now unreadable)" in str(exc)


@pytest.mark.parametrize("err", [errno.EMFILE, errno.ENFILE])
def test_too_many_files(err):
    exc = error_from_errno(err, event=EV, target=3, mode=PER_CPU, needed=4000)
    assert isinstance(exc, TooManyEvents)
    assert exc.needed == 4000
    assert "4000" in str(exc) and "ulimit -n" in str(exc) and "CPU 3" in str(exc)


def test_other_errors_are_native_errors():
    exc = error_from_errno(errno.ESRCH, event=EV, target=1234, mode=PER_THREAD)
    assert isinstance(exc, NativeError) and isinstance(exc, OSError)
    assert (exc.errno, exc.event, exc.target) == (errno.ESRCH, "kvm_pio", 1234)
    assert str(exc) == "perf_event_open failed for kvm_pio on thread 1234: No such process"


def test_bad_filter_error_shows_filter():
    ev = EventSpec("kvm_exit(HLT)", 7, "exit_reasn==12")
    exc = error_from_errno(errno.EINVAL, event=ev, target=0, mode=PER_CPU)
    assert "kvm_exit(HLT) on CPU 0" in str(exc)
    assert "Invalid argument" in str(exc) and "'exit_reasn==12'" in str(exc)


def test_error_without_event():
    exc = error_from_errno(errno.EBADF, event=None, target=None, mode=PER_CPU,
                           action="reading counters")
    assert isinstance(exc, NativeError) and exc.event is None and exc.target is None
    assert str(exc).startswith("reading counters failed")


def test_both_backends_use_the_one_mapping(monkeypatch, backend, tmp_path):
    """A set maps a failing open through the shared function (with its
    paranoid path); simulated with an injected errno in the shared helper."""
    seen = []
    real = error_from_errno

    def spy(err, **kw):
        seen.append((err, kw["event"], kw["target"], kw["paranoid_path"]))
        return real(err, **kw)

    import kvmstat.counting.common as common
    monkeypatch.setattr(common, "error_from_errno", spy)
    path = _paranoid(tmp_path)
    # Tracepoint id 2**64-1 does not exist: the kernel refuses the open.
    bad = EventSpec("nosuch", 2**64 - 1)
    with open_counter_set([bad], PER_THREAD, backend, paranoid_path=path) as cs:
        with pytest.raises((NativeError, AccessDenied)):
            cs.add(1)
        assert cs.groups == 0 and cs.fds == 0
    assert seen and seen[0][1] == bad and seen[0][2] == 1 and seen[0][3] == path
