"""``kvm_stat --binstats`` against a real QEMU.

QEMU 8.1 and newer keep a statistics descriptor open for each vCPU; older
QEMU (Debian 12 ships 7.2) opens them only while answering the QMP command
query-stats, so there is nothing to borrow and kvm_stat must say why.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from helpers.commands import fd_links, kvm_stat, wait_for

pytestmark = pytest.mark.qemu


def qemu_version():
    out = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True,
                         timeout=30).stdout
    match = re.search(r"version (\d+)\.(\d+)", out)
    assert match, out
    return int(match.group(1)), int(match.group(2))


@pytest.fixture
def qemu_vm():
    """A paused QEMU/KVM machine (its VM and vCPU exist, no guest code runs)."""
    proc = subprocess.Popen(
        ["qemu-system-x86_64", "-accel", "kvm", "-machine", "pc", "-m", "32", "-smp", "1",
         "-nodefaults", "-no-user-config", "-display", "none", "-S", "-name", "kvmstat-binstats"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: "anon_inode:kvm-vcpu:0" in fd_links(proc.pid), "QEMU's vCPU",
                 timeout=30, proc=proc, interval=0.05)
        yield proc
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()


def test_kvm_stat_binstats_with_this_qemu(qemu_vm):
    result = kvm_stat(["-1", "--binstats", "-p", str(qemu_vm.pid)])
    if qemu_version() >= (8, 1):
        # QEMU keeps each vCPU's statistics descriptor open: kvm_stat reads them.
        assert any(link.startswith("anon_inode:kvm-vcpu-stats:") for link in fd_links(qemu_vm.pid))
        assert result.returncode == 0, result.stderr
        assert re.search(r"^exits +\d+ +\d+$", result.stdout, re.M), result.stdout
    else:
        assert not any("stats" in link for link in fd_links(qemu_vm.pid))
        assert result.returncode == 1
        assert result.stdout == ""
        # The message names the cause and the fix, on one line.
        assert re.fullmatch(
            rf"Error: (VM process {qemu_vm.pid} holds no|no VM process holds) KVM binary "
            r"statistics file descriptors: only a VM's own process can create them .*QEMU "
            r"keeps them open from version 8\.1 on.*use the tracepoint \(-t\) or debugfs "
            r"\(-d\) provider instead\n", result.stderr), result.stderr
