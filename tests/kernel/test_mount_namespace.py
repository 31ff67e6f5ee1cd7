"""Mount safety for real: fake "debugfs"/"tracefs" mounts in a private mount namespace.

Each test runs a shell in its own mount namespace (``unshare --mount``,
private propagation, so nothing leaks to the host), replaces or covers the
real debugfs/tracefs with a tmpfs whose *source* is named "debugfs" or
"tracefs" and which holds fake kvm files, then runs kvm_stat.  kvm_stat must
never read the fakes: as root it mounts the real filesystem, as nobody it
says which mount command to run.
"""

import os
import shlex
import shutil
import subprocess
import sys

import pytest

from kvmstat.host.paths import Paths
from kvmstat.providers.debugfs import probe_debugfs

from helpers.commands import AS_NOBODY, PACKAGE_ROOT, nobody_runner

FAKE_VALUE = "31337"


@pytest.fixture(scope="module", autouse=True)
def need_unshare():
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")


def fake_kvm_tree(where):
    """Shell lines filling *where* with fake debugfs kvm files."""
    return [f"mkdir -p {where}/kvm/4242-7",
            f"echo {FAKE_VALUE} > {where}/kvm/fake_marker",
            f"echo {FAKE_VALUE} > {where}/kvm/pages_4k",
            f"echo {FAKE_VALUE} > {where}/kvm/4242-7/pages_4k"]


def fake_tracefs_tree(where):
    return [f"mkdir -p {where}/events/kvm/kvm_fake_event",
            f"echo 99999 > {where}/events/kvm/kvm_fake_event/id"]


def in_namespace(setup, args, as_nobody=False):
    """Run *setup* shell lines then kvm_stat ARGS in a private mount namespace."""
    if as_nobody:
        runner = nobody_runner()
        if runner is None:
            pytest.skip("no Python that user nobody can run (or no setpriv)")
        command = [*AS_NOBODY, runner.python, "-m", "kvmstat", *args]
        pythonpath = runner.pythonpath
    else:
        command = [sys.executable, "-m", "kvmstat", *args]
        pythonpath = PACKAGE_ROOT
    script = "set -e\n" + "\n".join(setup) + "\nexec " + shlex.join(command) + "\n"
    env = dict(os.environ, PYTHONPATH=pythonpath)
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, env=env, timeout=120, cwd="/")


REPLACE_DEBUGFS = ["umount -l /sys/kernel/debug",
                   "mount -t tmpfs debugfs /sys/kernel/debug"] + fake_kvm_tree("/sys/kernel/debug")
COVER_DEBUGFS = ["mount -t tmpfs debugfs /sys/kernel/debug"] + fake_kvm_tree("/sys/kernel/debug")
REPLACE_TRACEFS = ["umount -l /sys/kernel/debug",
                   "umount -l /sys/kernel/tracing",
                   "mount -t tmpfs tracefs /sys/kernel/tracing"] + fake_tracefs_tree("/sys/kernel/tracing")


@pytest.fixture(scope="module")
def real_fields():
    return probe_debugfs(Paths().find_debugfs()).fields


def batch_names(stdout):
    return [line[:42].rstrip() for line in stdout.splitlines()]


@pytest.mark.parametrize("setup", [REPLACE_DEBUGFS, COVER_DEBUGFS], ids=["replaced", "covered"])
def test_root_mounts_the_real_debugfs(setup, real_fields):
    result = in_namespace(setup, ["-1", "-d"])
    assert result.returncode == 0, result.stderr
    assert "kvm_stat: mounted debugfs at /sys/kernel/debug" in result.stderr
    assert batch_names(result.stdout) == real_fields
    assert "fake_marker" not in result.stdout
    assert FAKE_VALUE not in result.stdout


def test_fake_debugfs_is_not_debugfs_for_nobody():
    result = in_namespace(REPLACE_DEBUGFS, ["-1", "-d"], as_nobody=True)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == ("Error: debugfs is not mounted: run "
                             "'mount -t debugfs debugfs /sys/kernel/debug' as root\n")


def test_fake_tracefs_is_not_tracefs_for_nobody():
    result = in_namespace(REPLACE_TRACEFS, ["-1"], as_nobody=True)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == ("Error: tracefs is not mounted: run "
                             "'mount -t tracefs tracefs /sys/kernel/tracing' as root\n")


def test_root_mounts_the_real_tracefs():
    result = in_namespace(REPLACE_TRACEFS, ["-f", "help"])
    assert result.returncode == 0, result.stderr
    assert "kvm_stat: mounted tracefs at /sys/kernel/tracing" in result.stderr
    events = [line.strip() for line in result.stdout.splitlines()]
    assert "kvm_fake_event" not in events
    assert "kvm_userspace_exit" in events
