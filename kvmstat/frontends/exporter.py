"""The Prometheus/OpenMetrics exporter behind ``kvm_stat --serve [HOST:]PORT``.

:class:`KvmCollector` is a prometheus_client collector that reads a
:class:`~kvmstat.sampling.sampler.Sampler` at scrape time: there is no background
sampling, a scrape costs one read per provider.  :class:`MetricsServer` serves
it at ``http://HOST:PORT/metrics`` through prometheus_client's WSGI app, which
answers in the Prometheus text format, or in OpenMetrics when the scraper asks
for ``application/openmetrics-text`` in its ``Accept`` header.

Metric names and labels (SPEC §3.4):

* every field becomes a counter family named after the event with ``kvm_``
  prepended unless the name already starts with it; samples carry the
  ``_total`` suffix: ``kvm_pio`` -> ``kvm_pio_total``, debugfs ``exits`` ->
  ``kvm_exits_total``.  Fields that are current levels, not counts
  (:attr:`Provider.levels <kvmstat.providers.base.Provider.levels>`: debugfs
  and binary-stats instant and peak values such as ``pages_4k``), are gauges
  without the suffix: ``kvm_pages_4k``;
* a child field is a series of its parent's family with a ``reason`` label:
  ``kvm_exit(HLT)`` -> ``kvm_exit_total{reason="HLT"}``.  The series
  *without* a ``reason`` label is the parent itself, i.e. every reason
  together, so do not ``sum()`` over both: use ``kvm_exit_total{reason=""}``
  for the total and ``kvm_exit_total{reason!=""}`` for the breakdown;
* per-VM series carry ``pid`` and ``guest`` labels (``guest`` is empty for a
  VM without a name).  Host-wide series have neither label.  When the
  providers give a per-VM breakdown both are served, so select
  ``{pid=""}`` for host totals or ``{pid!=""}`` for the VMs, never both in
  one ``sum()``.  With a watched VM (``-p``/``-g``) there is no host total:
  every series is that VM's and carries its ``pid`` and ``guest``;
* ``kvmstat_sample_seconds`` (gauge) is how long reading the providers took
  during this scrape; with a watched VM, ``kvmstat_vm_running{pid,guest}`` is
  1 while it runs and 0 once it has exited and been dropped.

Values are counts since the exporter opened its providers (a restart starts
them from zero again, which Prometheus' ``rate()`` handles as a reset).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import re
import signal
import socket
import socketserver
import sys
import threading
import time
from dataclasses import dataclass
from typing import (Callable, Dict, FrozenSet, Iterable, Iterator, List, Optional, Sequence,
                    Tuple)
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..errors import Error, InvalidArgument, NotAvailable, error_from_errno
from ..sampling.fields import parent_of, reason_of
from ..sampling.sampler import FieldValues, Sample, Sampler, vm_exited_message
from ..host.vms import VM

__all__ = [
    "DEFAULT_HOST", "ServeAddress", "parse_serve_address", "family_name",
    "KvmCollector", "MetricsServer", "stop_on_signals", "serve_until_stopped",
]

#: Where ``--serve PORT`` listens when no host is given: loopback only.
DEFAULT_HOST = "127.0.0.1"

_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?")
_INVALID_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_:]")


# ---------------------------------------------------------------------------
# [HOST:]PORT

@dataclass(frozen=True)
class ServeAddress:
    """Where the exporter listens: a host (IP address or name) and a TCP port.

    Port 0 asks the kernel for any free port (the server reports the one it got).
    """

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _parse_port(text: str, whole: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise InvalidArgument(f"--serve '{whole}': '{text}' is not a port number (0 to 65535)")
    port = int(text)
    if port > 65535:
        raise InvalidArgument(f"--serve '{whole}': port {port} is out of range (0 to 65535)")
    return port


def parse_serve_address(text: str) -> ServeAddress:
    """Parse the ``--serve`` value ``[HOST:]PORT``.

    ``PORT`` alone listens on :data:`DEFAULT_HOST` (loopback).  ``HOST`` is
    an IPv4 address, a host name, or an IPv6 address in brackets
    (``[::1]:9000``).  Raises :class:`InvalidArgument` with a one-line
    message for anything else.  No name is resolved here.
    """
    if text.startswith("["):
        inside, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise InvalidArgument(f"--serve '{text}': write an IPv6 address as [ADDRESS]:PORT, "
                                  f"e.g. [::1]:9000")
        try:
            ipaddress.IPv6Address(inside)
        except ValueError:
            raise InvalidArgument(f"--serve '{text}': '{inside}' is not an IPv6 address") from None
        return ServeAddress(inside, _parse_port(rest[1:], text))
    if text.count(":") > 1:
        raise InvalidArgument(f"--serve '{text}': put an IPv6 address in brackets, "
                              f"e.g. [::1]:9000")
    host, sep, port_text = text.rpartition(":")
    if not sep:
        return ServeAddress(DEFAULT_HOST, _parse_port(text, text))
    if not host:
        raise InvalidArgument(f"--serve '{text}': the host is empty; give PORT alone for "
                              f"{DEFAULT_HOST}, or 0.0.0.0:PORT for every interface")
    if not _HOSTNAME.fullmatch(host) or len(host) > 253:
        raise InvalidArgument(f"--serve '{text}': '{host}' is not a host name or address")
    if host.replace(".", "").isdigit():
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise InvalidArgument(f"--serve '{text}': '{host}' is not an IPv4 address") from None
    return ServeAddress(host, _parse_port(port_text, text))


# ---------------------------------------------------------------------------
# Names

def family_name(field: str) -> str:
    """The metric family of *field*, without the ``_total`` suffix.

    ``kvm_pio`` -> ``kvm_pio``, ``exits`` -> ``kvm_exits``, ``kvm_exit(HLT)``
    -> ``kvm_exit`` (the reason becomes a label).  Characters a metric name
    cannot hold become ``_``.
    """
    name = _INVALID_NAME_CHARS.sub("_", parent_of(field))
    if not name.startswith("kvm_"):
        name = "kvm_" + name
    if name.endswith("_total"):  # the suffix belongs to the samples
        name = name[: -len("_total")]
    return name


@dataclass
class _Family:
    name: str
    documentation: str
    #: (field, labels) in output order: the parent first, then its children
    series: List[Tuple[str, Dict[str, str]]]
    #: "counter", or "gauge" for a current level (samples without ``_total``)
    type: str = "counter"

    @property
    def sample_name(self) -> str:
        return self.name + "_total" if self.type == "counter" else self.name


def _layout(fields: Iterable[str], provider_of: Dict[str, str],
            levels: FrozenSet[str] = frozenset()) -> Tuple[List[_Family], List[str]]:
    """Group fields into families; returns (families, fields left out).

    Fields in *levels* (current values such as ``pages_4k``, which can go
    down) become gauges, every other field a counter.  A field left out is
    one whose family and labels another field already took (two providers
    naming different things alike): it is reported once instead of making
    every scrape invalid with duplicate series.
    """
    families: Dict[str, _Family] = {}
    owner: Dict[str, str] = {}  # family name -> parent field that owns it
    skipped: List[str] = []
    # Parents sort before their children ("kvm_exit" < "kvm_exit(").
    for field in sorted(fields):
        name = family_name(field)
        parent = parent_of(field)
        if owner.setdefault(name, parent) != parent:
            skipped.append(field)
            continue
        family = families.get(name)
        if family is None:
            provider = provider_of.get(field, "kvmstat")
            if parent in levels:
                family = families[name] = _Family(
                    name, f"current {parent} as read by the {provider} provider", [], "gauge")
            else:
                family = families[name] = _Family(
                    name, f"{parent} events counted by the {provider} provider", [])
        reason = reason_of(field)
        family.series.append((field, {} if reason is None else {"reason": reason}))
    for family in families.values():
        if len(family.series) > 1:
            family.documentation += ("; a series with a reason label counts that reason, "
                                     "the one without counts every reason")
    return [families[n] for n in sorted(families)], skipped


# ---------------------------------------------------------------------------
# The collector

def _vm_labels(pid: int, name: Optional[str]) -> Dict[str, str]:
    return {"pid": str(pid), "guest": name or ""}


def _families_of(families: List[_Family], values: FieldValues,
                 host_labels: Optional[Dict[str, str]],
                 per_vm: Sequence[Tuple[Dict[str, str], FieldValues]]) -> Iterator[Metric]:
    """One family per event: host (or watched VM) series, then per-VM series."""
    for family in families:
        metric = Metric(family.name, family.documentation, family.type)
        sample_name = family.sample_name
        for field, labels in family.series:
            metric.add_sample(sample_name, {**host_labels, **labels} if host_labels else labels,
                              values[field][0])
        for vm_labels, vm_values in per_vm:
            for field, labels in family.series:
                counts = vm_values.get(field)
                if counts is not None:
                    metric.add_sample(sample_name, {**vm_labels, **labels}, counts[0])
        yield metric


class KvmCollector:
    """A prometheus_client collector reading *sampler* at every scrape.

    Register it with a :class:`prometheus_client.CollectorRegistry` (or use
    :class:`MetricsServer`).  Scrapes may run concurrently: a lock makes one
    read the sampler at a time.  *vm* is the watched VM when the sampler was
    opened for one VM process (``pid=``): its series then carry ``pid`` and
    ``guest`` labels, and when that VM exits (``sampler.done``)
    the collector drops the sampler, hands it to *release* (default: its
    ``close``) and keeps answering with no event series.  Without *vm*, the
    per-VM series come from ``Sample.by_vm`` and ``Sample.vm_names`` (open
    the sampler with ``by_vm=True``).  *notify* receives
    one-line notes (the drop, fields left out).
    """

    def __init__(self, sampler: Sampler, *, vm: Optional[VM] = None,
                 release: Optional[Callable[[Sampler], None]] = None,
                 notify: Optional[Callable[[str], None]] = None):
        self._sampler: Optional[Sampler] = sampler
        self._vm = vm
        self._release = release or (lambda s: s.close())
        self._notify = notify or (lambda message: None)
        self._lock = threading.Lock()
        self._fields_seen: Optional[frozenset] = None
        self._families: List[_Family] = []
        self._provider_of: Dict[str, str] = {}
        levels = set()
        for provider in getattr(sampler, "providers", ()):
            for field in provider.fields:
                self._provider_of.setdefault(field, provider.name)
            levels.update(provider.levels)
        self._levels = frozenset(levels)

    @property
    def dropped(self) -> bool:
        """True once the watched VM has exited and its sampler was released."""
        return self._sampler is None

    def describe(self) -> List[Metric]:
        """Nothing: registering the collector must not read the kernel."""
        return []

    def _read(self) -> Tuple[Optional[Sample], List[_Family], float]:
        """Take one sample under the lock: (sample, its families, seconds it took).

        The sample is None once the watched VM has been dropped.
        """
        with self._lock:
            sampler = self._sampler
            if sampler is None:
                return None, [], 0.0
            start = time.monotonic()
            sample = sampler.sample()
            if sampler.done:
                self._sampler = None
                self._notify(f"{vm_exited_message(sampler.pid)}: dropped it, still serving")
                self._release(sampler)
                return None, [], 0.0
            elapsed = time.monotonic() - start
            fields = frozenset(sample.values)
            if fields != self._fields_seen:
                self._families, skipped = _layout(fields, self._provider_of, self._levels)
                self._fields_seen = fields
                if skipped:
                    self._notify("left out of the metrics (their names clash with other "
                                 "fields): " + ", ".join(skipped))
            return sample, self._families, elapsed

    def collect(self) -> Iterator[Metric]:
        """Read the providers once and yield one counter family per event."""
        sample, families, elapsed = self._read()
        if self._vm is not None:
            running = GaugeMetricFamily(
                "kvmstat_vm_running", "1 while the watched VM runs, 0 once it has exited",
                labels=["pid", "guest"])
            running.add_metric([str(self._vm.pid), self._vm.name or ""], 0 if sample is None else 1)
            yield running
        if sample is None:
            return
        yield GaugeMetricFamily("kvmstat_sample_seconds",
                                "Seconds spent reading the providers for this scrape", elapsed)
        if self._vm is not None:
            host_labels: Optional[Dict[str, str]] = _vm_labels(self._vm.pid, self._vm.name)
            per_vm: Sequence[Tuple[Dict[str, str], FieldValues]] = ()
        else:
            host_labels = None
            per_vm = [(_vm_labels(pid, sample.vm_names.get(pid)), values)
                      for pid, values in sorted((sample.by_vm or {}).items())]
        yield from _families_of(families, sample.values, host_labels, per_vm)

    def close(self) -> None:
        """Close the sampler (if not dropped already); later scrapes serve no events."""
        with self._lock:
            sampler, self._sampler = self._sampler, None
        if sampler is not None:
            sampler.close()

    def __enter__(self) -> "KvmCollector":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------
# The HTTP server

_LANDING_PAGE = (b"<html><head><title>kvmstat exporter</title></head><body>"
                 b"<h1>kvmstat exporter</h1><p><a href=\"/metrics\">/metrics</a></p>"
                 b"</body></html>\n")


class _QuietHandler(WSGIRequestHandler):
    """No access log; a stuck client cannot hold a thread forever."""

    timeout = 60

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Log nothing (a scrape every few seconds would flood stderr)."""


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    """One thread per request; *report* receives request errors as one line."""

    daemon_threads = True

    def __init__(self, sockaddr: Tuple[str, int], family: int, report: Callable[[str], None]):
        self.address_family = family  # read by TCPServer.__init__ to create the socket
        self.report = report
        super().__init__(sockaddr, _QuietHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host name up (getfqdn), which may
        # wait for DNS; the WSGI environment only needs the address.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
        self.setup_environ()

    def handle_error(self, request, client_address) -> None:
        """One line instead of socketserver's traceback."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, TimeoutError)):
            self.report(f"request from {client_address[0]} failed: {exc}")


def _bind_error(address: ServeAddress, exc: OSError) -> Error:
    where = f"cannot listen on {address}"
    if exc.errno == errno.EADDRINUSE:
        return NotAvailable(f"{where}: the port is already in use (stop the other program "
                            f"or choose another port)")
    if exc.errno == errno.EADDRNOTAVAIL:
        return InvalidArgument(f"{where}: {address.host} is not an address of this host")
    return error_from_errno(exc.errno or errno.EIO, f"listening on {address}",
                            fix="ports below 1024 need root or CAP_NET_BIND_SERVICE"
                            if exc.errno in (errno.EACCES, errno.EPERM) else "",
                            other=NotAvailable)


class MetricsServer:
    """An HTTP server for ``/metrics``, bound (but not yet serving) on creation.

    Binding first lets a busy port fail at once, before any event is opened.
    Add collectors with :meth:`register`, then :meth:`start` serves in a
    background thread (one thread per request).  Errors while serving are
    passed to *notify* as one line; the scraper gets a 500 answer.
    """

    def __init__(self, address: ServeAddress, *,
                 notify: Optional[Callable[[str], None]] = None):
        self._notify = notify or (lambda message: None)
        self.registry = CollectorRegistry(auto_describe=False)
        try:
            infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise InvalidArgument(f"cannot listen on {address}: unknown host "
                                  f"'{address.host}' ({exc.strerror})") from None
        family, _, _, _, sockaddr = infos[0]
        try:
            self._server = _ThreadingServer(sockaddr[:2], family, self._notify)
        except OSError as exc:
            raise _bind_error(address, exc) from None
        self._server.set_app(self._app)
        self._metrics_app = make_wsgi_app(self.registry)
        self._thread: Optional[threading.Thread] = None
        host, port = self._server.server_address[:2]
        self.address = ServeAddress(str(host), int(port))

    @property
    def url(self) -> str:
        """The URL scrapers use, e.g. ``http://127.0.0.1:9000/metrics``."""
        return f"http://{self.address}/metrics"

    def register(self, collector: Collector) -> None:
        """Serve *collector*'s metrics too."""
        self.registry.register(collector)

    def _app(self, environ, start_response) -> List[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            try:
                return self._metrics_app(environ, start_response)
            except Exception as exc:  # a scrape must never print a traceback
                message = str(exc) if isinstance(exc, Error) else f"{type(exc).__name__}: {exc}"
                self._notify(f"scrape failed: {message}")
                start_response("500 Internal Server Error",
                               [("Content-Type", "text/plain; charset=utf-8")])
                return [f"scrape failed: {message}\n".encode()]
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [_LANDING_PAGE]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: the metrics are at /metrics\n"]

    def start(self) -> None:
        """Serve requests in a background thread until :meth:`close`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever,
                                            kwargs={"poll_interval": 0.2},
                                            name="kvmstat-exporter", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop serving and close the listening socket; idempotent."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> "MetricsServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def stop_on_signals(signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)
                    ) -> Iterator[threading.Event]:
    """Within the block, *signals* set the yielded event instead of killing the process.

    Handlers are installed only in the main thread (elsewhere the event is
    just returned) and the previous ones are restored on exit.
    """
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in signals:
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def serve_until_stopped(server: MetricsServer, stop: threading.Event) -> None:
    """Serve in the background until *stop* is set, then close *server*."""
    try:
        server.start()
        # A timeout, so that signal handlers (which only run in the main
        # thread, between waits) get their turn promptly.
        while not stop.wait(0.5):
            pass
    finally:
        server.close()
