"""Shared pytest set-up for kvmstat: markers, host checks, guest fixtures.

See tests/helpers/__init__.py for how tests import the helpers.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys

import pytest

_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from helpers.kvmguest import Guest, GuestProcess, kvm_available  # noqa: E402
from helpers.tracecount import mount_tracefs  # noqa: E402

REQUIRE_ENV = "KVMSTAT_REQUIRE_KVM"


def require_kvm_env() -> bool:
    """True when missing KVM/QEMU must fail the tests instead of skipping them."""
    return os.environ.get(REQUIRE_ENV, "") == "1"


def pytest_configure(config):
    # Also declared in pyproject.toml; repeated so the markers exist even when
    # pytest is run with another config file.
    config.addinivalue_line(
        "markers", "kernel: needs a real KVM host (skips without one unless KVMSTAT_REQUIRE_KVM=1)")
    config.addinivalue_line("markers", "qemu: needs qemu-system-x86_64")
    config.addinivalue_line(
        "markers", "prometheus: needs Debian's prometheus package (prometheus, promtool)")


def pytest_collection_modifyitems(config, items):
    kernel_dir = os.path.join(_TESTS_DIR, "kernel") + os.sep
    for item in items:
        if str(item.fspath).startswith(kernel_dir):
            item.add_marker(pytest.mark.kernel)


@functools.lru_cache(maxsize=None)
def _tracefs_path() -> "str | None":
    return mount_tracefs()


@functools.lru_cache(maxsize=None)
def kvm_missing_reason() -> "str | None":
    """None if this host can run the kernel tests, else why not."""
    if os.geteuid() != 0:
        return "not root (kernel tests need root for perf events and tracefs)"
    reason = kvm_available()
    if reason:
        return reason
    tracefs = _tracefs_path()
    if tracefs is None:
        return "tracefs is not mounted and could not be mounted at /sys/kernel/tracing"
    if not os.path.isdir(os.path.join(tracefs, "events", "kvm")):
        return f"no kvm tracepoints under {tracefs}/events/kvm"
    return None


@functools.lru_cache(maxsize=None)
def qemu_missing_reason() -> "str | None":
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed"
    return None


@functools.lru_cache(maxsize=None)
def prometheus_missing_reason() -> "str | None":
    for tool in ("prometheus", "promtool"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install prometheus)"
    return None


def _skip_or_fail(reason: str) -> None:
    if require_kvm_env():
        pytest.fail(f"{REQUIRE_ENV}=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def require_kvm() -> None:
    reason = kvm_missing_reason()
    if reason:
        _skip_or_fail(reason)


def require_qemu() -> None:
    reason = qemu_missing_reason()
    if reason:
        _skip_or_fail(reason)


def pytest_runtest_setup(item):
    if item.get_closest_marker("kernel") is not None:
        require_kvm()
    if item.get_closest_marker("qemu") is not None:
        require_kvm()
        require_qemu()
    if item.get_closest_marker("prometheus") is not None:
        reason = prometheus_missing_reason()
        if reason:
            _skip_or_fail(reason)


# ---------------------------------------------------------------------------
# Fixtures.

@pytest.fixture(scope="session")
def kvm_host():
    """Skips (or fails under KVMSTAT_REQUIRE_KVM=1) unless KVM tests can run."""
    require_kvm()
    return True


@pytest.fixture(scope="session")
def tracefs():
    """Path of a mounted tracefs (mounted at /sys/kernel/tracing if absent and root)."""
    path = _tracefs_path()
    if path is None:
        _skip_or_fail("tracefs is not mounted and could not be mounted")
    return path


@pytest.fixture
def guest(request):
    """An in-process Guest; program from indirect parametrization, default "pio"."""
    require_kvm()
    program = getattr(request, "param", "pio")
    g = Guest(program)
    yield g
    g.close()


@pytest.fixture
def guest_process():
    """Factory: guest_process(program="pio", vcpus=1, name=None) -> GuestProcess.
    Every process it started is closed at teardown."""
    require_kvm()
    procs = []

    def start(*args, **kwargs) -> GuestProcess:
        p = GuestProcess(*args, **kwargs)
        procs.append(p)
        return p

    yield start
    for p in reversed(procs):
        p.close()
