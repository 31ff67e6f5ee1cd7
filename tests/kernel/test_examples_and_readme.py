"""The library example of docs/library.md and the examples/ scripts, run against test guests
(docs/design.md §6.12)."""

import os
import re
import subprocess
import sys
import time

from helpers import REPO_ROOT

# The tree under test comes first, whatever kvmstat is installed.
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p))


#: where the library's runnable example lives (the README points to it)
LIBRARY_DOC = os.path.join(REPO_ROOT, "docs", "library.md")


def python_blocks(path):
    with open(path) as f:
        return re.findall(r"^```python\n(.*?)^```", f.read(), re.S | re.M)


def start(script, *args):
    return subprocess.Popen([sys.executable, os.path.join(REPO_ROOT, "examples", script), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV, cwd=REPO_ROOT)


def test_library_example_runs_as_written(guest_process):
    blocks = python_blocks(LIBRARY_DOC)
    assert len(blocks) == 1, "docs/library.md has one library example"
    guest = guest_process("pio", name="readme-guest")
    out = subprocess.run([sys.executable, "-c", blocks[0]], capture_output=True, text=True,
                         env=ENV, cwd=REPO_ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert f"VM {guest.pid} readme-guest\n" in out.stdout
    assert re.search(r"^kvm_userspace_exit\(IO\) +\d+ +\d+$", out.stdout, re.M)
    assert "error: no process with pid 999999999" in out.stdout


def test_host_summary_lists_the_guest_and_its_port_writes(guest_process):
    guest = guest_process("pio", name="summary-guest")
    proc = start("host_summary.py", "--interval", "2", "--top", "40")
    # The script says on stderr when its counting window has begun.
    assert proc.stderr.readline().startswith("counting for 2 s")
    guest.run(400)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"pid {guest.pid:<8} summary-guest" in out
    row = re.search(r"^  kvm_pio +(\d+) +[\d.]+/s", out, re.M)
    assert row and int(row.group(1)) >= 400, out  # host-wide: other VMs may add more
    assert re.search(r"^  kvm_userspace_exit +\d+ .*\(.*IO \d+", out, re.M), out


def test_watch_vm_exits_counts_each_guest_exactly_and_follows_exits(guest_process):
    pio = guest_process("pio", name="watched-pio")
    hlt = guest_process("hlt", name="watched-hlt")
    short = guest_process("pio", name="short-lived")
    proc = start("watch_vm_exits.py", "--interval", "0.5", "--duration", "4")
    first = proc.stdout.readline()
    assert first.startswith("watching ") and f"pid {pio.pid} (watched-pio)" in first
    pio.run(250)
    hlt.run(30)
    short.run(5)
    time.sleep(1)
    short.close()
    pio.run(50)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert err == ""
    lines = out.splitlines()
    assert f"pid {short.pid} (short-lived) exited" in lines
    assert (f"total pid {pio.pid} (watched-pio): kvm_userspace_exit=300 "
            f"kvm_userspace_exit(IO)=300") in lines
    assert (f"total pid {hlt.pid} (watched-hlt): kvm_userspace_exit=30 "
            f"kvm_userspace_exit(HLT)=30") in lines
    # Interval lines: rates and the busiest reasons.
    assert any(f"pid {pio.pid} (watched-pio)" in line and "[kvm_userspace_exit(IO) " in line
               for line in lines)


def test_watch_one_vm_by_name(guest_process):
    guest = guest_process("pio", name="by-name")
    proc = start("watch_vm_exits.py", "-g", "by-name", "--interval", "0.5", "--duration", "2")
    assert proc.stdout.readline() == f"watching pid {guest.pid} (by-name)\n"
    guest.run(42)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.splitlines()[-1] == (f"total pid {guest.pid} (by-name): kvm_userspace_exit=42 "
                                    f"kvm_userspace_exit(IO)=42")


def test_examples_report_errors_in_one_line():
    proc = start("watch_vm_exits.py", "-g", "no-such-guest-name", "--duration", "1")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert err.startswith("watch_vm_exits: no VM named 'no-such-guest-name'")
    assert err.count("\n") == 1
