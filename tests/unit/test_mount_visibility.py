"""Only the visible (top) mount at a mount point counts (mounts files as fakes)."""

from kvmstat.host.paths import find_mount, find_mounts


def test_covered_mount_point_is_not_that_filesystem(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("debugfs /sys/kernel/debug debugfs rw 0 0\n"
                      "tracefs /sys/kernel/debug/tracing tracefs rw 0 0\n"
                      "debugfs /sys/kernel/debug tmpfs rw 0 0\n"
                      "debugfs /elsewhere debugfs rw 0 0\n")
    assert find_mounts("debugfs", str(mounts)) == ["/elsewhere"]
    assert find_mount("tmpfs", str(mounts)) == "/sys/kernel/debug"
    assert find_mount("tracefs", str(mounts)) == "/sys/kernel/debug/tracing"


def test_mounted_again_on_top_counts(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("debugfs /sys/kernel/debug debugfs rw 0 0\n"
                      "x /sys/kernel/debug tmpfs rw 0 0\n"
                      "debugfs /sys/kernel/debug debugfs rw 0 0\n")
    assert find_mounts("debugfs", str(mounts)) == ["/sys/kernel/debug"]
