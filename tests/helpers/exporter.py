"""Run ``python -m kvmstat --serve`` as a real process and scrape it (no kvmstat imports).

    with ExporterProcess(["-p", str(pid)]) as exporter:
        families = exporter.scrape()            # {family name: Metric}, text format
        value(families, "kvm_tracepoint_pio_total", pid=str(pid), guest="")

The exporter listens on 127.0.0.1 port 0 (the kernel picks a free port) unless
an address is given; the URL is read from its "serving metrics at URL" line.
"""

from __future__ import annotations

import re
import signal
import subprocess
import tempfile
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from . import REPO_ROOT
from .commands import KVM_STAT, fd_links, perf_event_fds, wait_for

__all__ = ["ExporterProcess", "value", "value_or_zero", "total", "series", "OPENMETRICS"]

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
_URL = re.compile(r"serving metrics at (https?://\S+)")


def series(families: dict, name: str) -> dict:
    """{frozenset(labels.items()): value} of every sample called *name*."""
    out = {}
    for family in families.values():
        for sample in family.samples:
            if sample.name == name:
                key = frozenset(sample.labels.items())
                if key in out:
                    raise AssertionError(f"duplicate series {name}{sample.labels}")
                out[key] = sample.value
    return out


def value(families: dict, name: str, **labels: str) -> float:
    """The value of the series *name* with exactly *labels* (KeyError if absent)."""
    return series(families, name)[frozenset(labels.items())]


def value_or_zero(families: dict, name: str, **labels: str) -> float:
    """Like :func:`value`, 0 for an absent series (a VM's series appear at their
    first non-zero count)."""
    return series(families, name).get(frozenset(labels.items()), 0)


def total(families: dict, name: str, **labels: str) -> float:
    """The sum of every series *name* whose labels include *labels* (``sum()``)."""
    wanted = set(labels.items())
    return sum(v for key, v in series(families, name).items() if wanted <= set(key))


class ExporterProcess:
    """``python -m kvmstat --serve ADDRESS *args`` in the repository root (or in
    *cwd*, another working tree, whose kvmstat package ``-m`` then runs)."""

    def __init__(self, args=(), address: str = "127.0.0.1:0", timeout: float = 120.0,
                 env=None, cwd=None):
        self._stderr = tempfile.TemporaryFile(mode="w+b")
        self.proc = subprocess.Popen(
            [*KVM_STAT, "--serve", address, *args],
            stdout=subprocess.PIPE, stderr=self._stderr, cwd=cwd or REPO_ROOT,
            env=env)
        self.pid = self.proc.pid
        self.stdout: "bytes | None" = None
        self.url = self._wait_for_url(timeout)

    def _wait_for_url(self, timeout: float) -> str:
        try:
            wait_for(lambda: _URL.search(self.stderr()), "the exporter to serve", timeout,
                     proc=self.proc, interval=0.05, details=self.stderr)
        except BaseException:
            self.kill()
            self._stderr.close()
            raise
        return _URL.search(self.stderr()).group(1)

    def stderr(self) -> str:
        """Everything the exporter wrote on stderr so far."""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def get(self, accept: "str | None" = None, timeout: float = 60.0):
        """(status, content type, body text) of one GET /metrics."""
        request = urllib.request.Request(self.url, headers={"Accept": accept} if accept else {})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()

    def scrape(self, openmetrics: bool = False) -> dict:
        """One scrape parsed by prometheus_client's own parser: {family name: Metric}."""
        status, ctype, body = self.get(OPENMETRICS if openmetrics else None)
        assert status == 200, status
        if openmetrics:
            assert ctype.startswith("application/openmetrics-text"), ctype
            families = parse_openmetrics(body)
        else:
            assert ctype.startswith("text/plain"), ctype
            families = text_string_to_metric_families(body)
        return {family.name: family for family in families}

    def fds(self) -> "list[str]":
        """Link targets of the exporter's open file descriptors."""
        return fd_links(self.pid)

    def perf_fds(self) -> int:
        """How many perf events the exporter holds."""
        return perf_event_fds(self.pid)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send *signum*, wait, return the exit status (stdout is then in .stdout)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            self.stdout, _ = self.proc.communicate(timeout=timeout)
            return self.proc.returncode
        finally:
            self._close_pipes()

    def kill(self) -> None:
        """Kill the exporter (test clean-up)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_pipes()

    def _close_pipes(self) -> None:
        if self.proc.stdout:
            self.proc.stdout.close()

    def __enter__(self) -> "ExporterProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
        self._stderr.close()
