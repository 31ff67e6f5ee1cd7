"""close_detached: the caller closes at once, a child holds the descriptors
until the caller has exited, then lets them go; stdout/stderr are not held."""

import os
import select
import subprocess
import sys
import textwrap
import time

PROGRAM = textwrap.dedent("""
    import os, sys
    from kvmstat.teardown import close_detached

    class Resource:
        closed = False
        def close(self):
            os.close(int(sys.argv[1]))
            self.closed = True

    resource = Resource()
    close_detached(resource)
    print("closed" if resource.closed else "not closed", flush=True)
    sys.stdin.readline()  # the test looks at the pipe, then lets us exit
""")


def test_the_caller_closes_and_the_child_lets_go_after_it_exits():
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen([sys.executable, "-c", PROGRAM, str(write_end)],
                                pass_fds=[write_end], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        os.close(write_end)
        write_end = None
        assert proc.stdout.readline() == "closed\n"
        # The caller has closed its copy, yet the write end is still open: the child holds it.
        assert select.select([read_end], [], [], 0.2)[0] == []
        # communicate() returns only when nobody holds stdout/stderr: the
        # child must not keep them.
        out, err = proc.communicate("go\n", timeout=30)
        assert proc.returncode == 0, err
        assert out == "" and err == ""
        # The child held the pipe's write end past the caller's close and
        # exit, and lets it go right after.
        ready, _, _ = select.select([read_end], [], [], 30)
        assert ready and os.read(read_end, 1) == b""
    finally:
        os.close(read_end)
        if write_end is not None:
            os.close(write_end)


def test_without_fork_it_closes_the_ordinary_way(monkeypatch):
    from kvmstat import teardown

    def no_fork():
        raise OSError(11, "Resource temporarily unavailable")
    monkeypatch.setattr(teardown.os, "fork", no_fork)
    closed = []

    class Resource:
        def close(self):
            closed.append(time.monotonic())
    teardown.close_detached(Resource())
    assert len(closed) == 1
