"""close_detached: the caller closes at once, a detached process drops the last references."""

import os
import select
import time

from kvmstat.sampling import teardown


class PipeEnd:
    """A resource holding the write end of a pipe; the test watches the read end."""

    def __init__(self):
        self.read_fd, self.write_fd = os.pipe()
        self.closed = False
        self.others_held_it = None

    def close(self):
        os.close(self.write_fd)
        self.closed = True
        # EOF would mean nobody else holds the write end any more.
        readable, _, _ = select.select([self.read_fd], [], [], 0.2)
        self.others_held_it = not readable


def wait_eof(fd, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        readable, _, _ = select.select([fd], [], [], 0.1)
        if readable and os.read(fd, 1) == b"":
            return True
    return False


def test_the_detached_process_holds_the_references_until_the_caller_closed():
    resource = PipeEnd()
    try:
        assert teardown.close_detached(resource) is True
        assert resource.closed
        assert resource.others_held_it            # the detached copy was still open
        assert wait_eof(resource.read_fd)         # and it went away afterwards
    finally:
        os.close(resource.read_fd)


def test_without_fork_it_closes_in_place(monkeypatch):
    def no_fork():
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(teardown.os, "fork", no_fork)
    resource = PipeEnd()
    try:
        assert teardown.close_detached(resource) is False
        assert resource.closed and resource.others_held_it is False
    finally:
        os.close(resource.read_fd)
