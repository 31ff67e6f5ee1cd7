"""kvm_stat without privileges: as user nobody, and as root without capabilities.

Every failure is one ``Error:`` line naming the cause and the fix, with
status 1; ``--help`` works for anyone; nothing prints a traceback.
"""

import pytest

from helpers.commands import WITHOUT_CAPABILITIES, kvm_stat, nobody_runner


@pytest.fixture(scope="module")
def nobody():
    runner = nobody_runner()
    if runner is None:
        pytest.skip("cannot run commands as nobody here (not root, no setpriv, "
                    "or no Python that nobody may execute)")
    return runner


def paranoid():
    with open("/proc/sys/kernel/perf_event_paranoid") as f:
        return f.read().strip()


def one_error_line(result):
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def test_help_as_nobody(nobody):
    result = nobody.run(["--help"])
    assert result.returncode == 0
    assert result.stdout.startswith("usage: kvm_stat")
    assert result.stderr == ""


def test_tracepoints_as_nobody(nobody):
    line = one_error_line(nobody.run(["-1"]))
    assert "Permission denied" in line
    assert "run kvm_stat as root" in line
    assert f"perf_event_paranoid is {paranoid()}" in line


def test_field_list_as_nobody(nobody):
    line = one_error_line(nobody.run(["-f", "help"]))
    assert "run kvm_stat as root" in line


def test_debugfs_as_nobody(nobody):
    line = one_error_line(nobody.run(["-1", "-d"]))
    assert "Permission denied" in line
    assert "debugfs is readable by root only: run kvm_stat as root" in line


def test_pid_of_a_vm_as_nobody(nobody, guest_process):
    guest = guest_process("pio")
    line = one_error_line(nobody.run(["-1", "-p", str(guest.pid)]))
    assert line == (f"Error: cannot inspect process {guest.pid} (Permission denied): "
                    f"run kvm_stat as root")


def test_check_as_nobody(nobody):
    result = nobody.run(["--check"])
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    table = result.stdout.splitlines()
    assert table[0].split() == ["provider", "status", "reason"]
    rows = {line.split("  ")[0]: line for line in table[1:5] if not line.startswith(" ")}
    assert all("not available" in row for row in rows.values())
    assert f"perf_event_paranoid is {paranoid()}" in result.stdout


def test_paranoid_named_without_capabilities():
    # Root without capabilities can read tracefs (it owns it) but
    # perf_event_open refuses it: the message names perf_event_paranoid.
    if int(paranoid()) < 0:
        pytest.skip("perf_event_paranoid is below 0: unprivileged counting is allowed here")
    line = one_error_line(kvm_stat(["-1"], WITHOUT_CAPABILITIES))
    assert "perf_event_open denied" in line
    assert "CAP_PERFMON" in line
    assert f"perf_event_paranoid (now {paranoid()})" in line


def test_check_without_capabilities():
    if int(paranoid()) < 0:
        pytest.skip("perf_event_paranoid is below 0: unprivileged counting is allowed here")
    result = kvm_stat(["--check"], WITHOUT_CAPABILITIES)
    assert "Traceback" not in result.stderr
    [tracepoints] = [l for l in result.stdout.splitlines() if l.startswith("tracepoints")]
    assert "not available" in tracepoints
    assert f"perf_event_paranoid is {paranoid()}" in tracepoints
    # debugfs still works (root owns it), so the check passes
    [debugfs] = [l for l in result.stdout.splitlines() if l.startswith("debugfs")]
    assert (result.returncode == 0) == ("not available" not in debugfs)


def test_guest_name_as_nobody_names_the_permission_problem(nobody, guest_process):
    """-g as a user who cannot list other processes' descriptors: not
    "running VMs: none" but the permission problem (issue 18, case 4)."""
    guest_process("pio", name="nobody-cannot-see")
    line = one_error_line(nobody.run(["-1", "-g", "nobody-cannot-see"]))
    assert line.startswith("Error: no VM named 'nobody-cannot-see' among the processes that "
                           "can be inspected;")
    assert "(Permission denied): run kvm_stat as root" in line
