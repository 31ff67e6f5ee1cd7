"""release_in_background: the slow last close happens in a detached child."""

import os
import select
import subprocess
import sys
import textwrap
import time


def test_child_holds_the_last_reference_then_lets_go():
    from kvmstat.teardown import release_in_background

    r, w = os.pipe()
    closed = []
    assert release_in_background(lambda: (os.close(w), closed.append(True)))
    assert closed == [True]
    # The child held `w` and exits on its own: the read end then sees EOF.
    ready, _, _ = select.select([r], [], [], 10)
    assert ready and os.read(r, 1) == b""
    os.close(r)


def test_callers_stdout_pipe_is_not_held_open():
    script = textwrap.dedent("""
        import os, sys, time
        from kvmstat.teardown import release_in_background
        r, w = os.pipe()
        # The resource's child-side close takes a while; the caller must not wait for it.
        release_in_background(lambda: os.close(w))
        print("done", flush=True)
    """)
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=30, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert out.stdout == "done\n" and out.returncode == 0, out.stderr
    assert time.monotonic() - start < 10
