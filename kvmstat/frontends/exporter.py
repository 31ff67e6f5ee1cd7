"""The Prometheus/OpenMetrics exporter behind ``kvm_stat --serve [HOST:]PORT``.

:class:`KvmCollector` reads a :class:`~kvmstat.sampling.sampler.Sampler` at scrape time (no
background sampling: a scrape costs one read per provider) and writes the answer
itself, family by family (:mod:`kvmstat.frontends.exporter_render`), with the names of
:mod:`kvmstat.frontends.exporter_names`.  :class:`MetricsServer` serves it at
``http://HOST:PORT/metrics`` in the Prometheus text format, or in OpenMetrics when
the scraper asks for ``application/openmetrics-text`` in its ``Accept`` header,
gzip-compressed when asked; with a web configuration file
(:mod:`kvmstat.frontends.exporter_web`) over TLS and behind basic authentication.

What the series mean and how they add up: docs/metrics.md.  Values are counts
since the exporter opened its providers (a restart starts them from zero again,
which Prometheus' ``rate()`` handles as a reset).
"""

from __future__ import annotations

import errno
import gzip
import ipaddress
import re
import socket
import socketserver
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from ..errors import Error, InvalidArgument, NotAvailable, error_from_errno
from .exporter_names import (DEFAULT_VM_SERIES, FamilySpec, HistogramSpec, escape_label_value, histogram_spec,
                             layout_families)
from .exporter_render import render_families, render_histograms, render_vcpus, vm_label_text
from .exporter_web import WebConfig
from ..sampling.fields import parent_of
from ..providers.base import Histograms, Totals
from ..sampling.sampler import Sampler, vm_exited_message
from ..host.vms import VM

__all__ = [
    "DEFAULT_HOST", "DEFAULT_VM_SERIES", "ServeAddress", "parse_serve_address",
    "compile_series_regex", "KvmCollector", "MetricsServer",
]

#: Where ``--serve PORT`` listens when no host is given: loopback only.
DEFAULT_HOST = "127.0.0.1"

_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?")


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
# The collector

TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_FORMAT = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def compile_series_regex(regex: Optional[str], option: str) -> "Optional[re.Pattern[str]]":
    """The ``--vm-series``/``--vcpu-series`` pattern; None (no such series) for None.

    Raises :class:`InvalidArgument` with a one-line message for a bad regex.
    """
    if regex is None:
        return None
    try:
        return re.compile(regex)
    except (re.error, OverflowError, RecursionError) as exc:
        raise InvalidArgument(f'{option} "{regex}": not a valid regular expression '
                              f"({exc})") from None


@dataclass
class _Reading:
    """What one scrape read from every provider, merged (raw totals: the exporter
    needs no deltas)."""

    totals: Totals
    by_vm: Optional[Dict[int, Totals]]
    histograms: Histograms
    vm_histograms: Optional[Dict[int, Histograms]]
    by_vcpu: Dict[int, Dict[int, Totals]]
    ended: set


#: ``writer(lines, openmetrics, vm_labels) -> series written``: see
#: :meth:`KvmCollector.add_families`
FamilyWriter = Callable[[List[str], bool, Dict[int, str]], int]


class KvmCollector:
    """Reads the providers of *sampler* at every scrape and writes the answer
    (:meth:`render`).

    There is no background sampling: a scrape costs one snapshot per provider,
    taken directly (the sampler's per-VM deltas, which the exporter does not
    serve, would cost in proportion to VMs x fields).  Scrapes may run
    concurrently: a lock makes one read and write at a time.

    *vm* is the watched VM when the sampler was opened for one VM process
    (``pid=``): every series then carries its ``pid`` and ``guest`` labels, and
    when it exits (a reading lists it as ended) the collector drops the
    sampler, hands it to *release* (default: its ``close``) and keeps answering
    with the exporter's own metrics only.  Without *vm*, per-VM series come
    from the providers' per-VM breakdown (when ``sampler.by_vm``) for the
    families whose parent field *vm_series* matches (``re.match``; None: no
    per-VM series).  *vcpu_series* does the same for per-vCPU series of the
    binary-statistics provider.  *histograms* selects the histogram statistics
    served by name (None: none).  *names* maps a VM pid to its guest name; it is
    asked once per VM, when the VM first appears.  *notify* receives one-line
    notes (the drop, fields left out, read errors).
    """

    def __init__(self, sampler: Sampler, *, vm: Optional[VM] = None,
                 release: Optional[Callable[[Sampler], None]] = None,
                 notify: Optional[Callable[[str], None]] = None,
                 vm_series: "Optional[re.Pattern[str]]" = None,
                 vcpu_series: "Optional[re.Pattern[str]]" = None,
                 names: Optional[Callable[[int], Optional[str]]] = None,
                 histograms: Optional[Callable[[str], bool]] = None,
                 version: str = ""):
        self._sampler: Optional[Sampler] = sampler
        self._vm = vm
        self._release = release or (lambda s: s.close())
        self._notify = notify or (lambda message: None)
        self._names = names or (lambda pid: None)
        self._vcpu_series = vcpu_series
        self._histogram_filter = histograms
        self._by_vm = bool(getattr(sampler, "by_vm", False)) and vm is None
        self._lock = threading.Lock()
        self._fields_seen: Optional[frozenset] = None
        self._families: List[FamilySpec] = []
        self._histograms: Dict[str, Optional[HistogramSpec]] = {}
        self._provider_of: Dict[str, str] = {}
        self._vm_labels: Dict[int, str] = {}
        self._gauges_seen: Dict[int, set] = {}
        self._read_errors = 0
        self._last_seconds = 0.0
        self._last_series = 0
        self._writers: List[FamilyWriter] = []
        per_vm_providers = []
        levels = set()
        for provider in getattr(sampler, "providers", ()):
            for field in provider.fields:
                self._provider_of.setdefault(field, provider.name)
            levels.update(provider.levels)
            if getattr(sampler, "by_vm", False) and provider.supports_by_vm:
                per_vm_providers.append(provider.name)
        self._levels = frozenset(levels)
        self._per_vm_providers = frozenset(per_vm_providers)
        self._vm_series = vm_series if vm is None else None
        # Per-vCPU values: binary statistics only.
        self._vcpu_providers = [p for p in getattr(sampler, "providers", ())
                                if vcpu_series is not None and p.name == "binstats"]
        engine = getattr(sampler, "engine", None) or "none"
        providers = ",".join(sorted({p.name for p in getattr(sampler, "providers", ())}))
        self._info = (f'kvmstat_exporter_info{{engine="{escape_label_value(engine)}",'
                      f'providers="{escape_label_value(providers)}",'
                      f'version="{escape_label_value(version)}"}} 1\n')
        self._watched_labels = vm_label_text(vm.pid, vm.name) if vm is not None else ""

    def add_families(self, writer: "FamilyWriter") -> None:
        """Serve more families after KVM's: ``writer(lines, openmetrics, vm_labels)``
        appends complete families (``# HELP``/``# TYPE`` lines, then samples) to
        *lines* and returns the number of series it wrote; *vm_labels* maps each VM
        pid present to its escaped ``pid="...",guest="..."`` text.  The room for
        other sources, such as exit-duration histograms."""
        with self._lock:
            self._writers.append(writer)

    @property
    def dropped(self) -> bool:
        """True once the watched VM has exited and its sampler was released."""
        return self._sampler is None

    def _relayout(self, fields: frozenset) -> None:
        per_vm = self._vm_series
        provider_of = self._provider_of
        # Families of providers without a per-VM breakdown keep host series only.
        selectable = [f for f in fields
                      if provider_of.get(parent_of(f), provider_of.get(f)) in self._per_vm_providers]
        self._families, skipped = layout_families(fields, provider_of, self._levels, per_vm)
        if per_vm is not None:
            allowed = {parent_of(f) for f in selectable}
            for family in self._families:
                family.per_vm = family.per_vm and family.parent in allowed
        self._fields_seen = fields
        if skipped:
            self._notify("left out of the metrics (their names clash with other fields): "
                         + ", ".join(skipped))

    def _histogram_specs(self, histograms: Histograms, fields: frozenset) -> List[HistogramSpec]:
        specs = []
        for name in sorted(histograms):
            if name not in self._histograms:
                h = histograms[name]
                per_vm = self._vm_series is not None and self._vm_series.match(name) is not None
                self._histograms[name] = histogram_spec(
                    name, len(h.counts), h.bounds, h.unit, h.base, h.exponent, fields, per_vm)
            spec = self._histograms[name]
            if spec is not None:
                specs.append(spec)
        return specs

    def _follow_vms(self, by_vm: Dict[int, Totals]) -> None:
        """Labels of the VMs present (names asked once per VM); forget those gone."""
        if by_vm.keys() == self._vm_labels.keys():
            return
        labels = {}
        for pid in sorted(by_vm):
            known = self._vm_labels.get(pid)
            labels[pid] = known if known is not None else vm_label_text(pid, self._names(pid))
        self._vm_labels = labels
        for pid in list(self._gauges_seen):
            if pid not in labels:
                del self._gauges_seen[pid]

    def _read_providers(self, sampler: Sampler) -> _Reading:
        """Follow VMs that came or went, then one snapshot per provider, merged."""
        wanted = self._histogram_filter
        reading = _Reading({}, {} if self._by_vm else None, {},
                           {} if self._by_vm and wanted else None, {}, set())
        for provider in sampler.providers:
            provider.refresh()
            part = provider.snapshot(by_vm=self._by_vm, histograms=wanted is not None,
                                     by_vcpu=provider in self._vcpu_providers)
            reading.totals.update(part.totals)
            if reading.by_vm is not None:
                if not reading.by_vm:
                    # The first (usually only) provider's rows as they are: copying
                    # them would cost VMs x fields.
                    reading.by_vm = dict(part.by_vm)
                else:
                    for pid, totals in part.by_vm.items():
                        mine = reading.by_vm.get(pid)
                        # New dicts: the providers' own are never changed.
                        reading.by_vm[pid] = totals if mine is None else {**mine, **totals}
            if wanted is not None:
                reading.histograms.update((n, h) for n, h in part.histograms.items() if wanted(n))
                if reading.vm_histograms is not None:
                    for pid, histograms in part.vm_histograms.items():
                        mine = reading.vm_histograms.setdefault(pid, {})
                        mine.update((n, h) for n, h in histograms.items() if wanted(n))
            reading.by_vcpu.update(part.by_vcpu)
            reading.ended.update(part.ended)
        return reading

    def _read(self, sampler: Sampler) -> Optional[_Reading]:
        """One reading; None when the watched VM has gone or the read failed."""
        try:
            reading = self._read_providers(sampler)
        except Error as exc:
            self._read_errors += 1
            self._notify(f"reading the counters failed: {exc}")
            return None
        if self._vm is not None and self._vm.pid in reading.ended:
            self._sampler = None
            self._notify(f"{vm_exited_message(self._vm.pid)}: dropped it, still serving")
            self._release(sampler)
            return None
        return reading

    def render(self, openmetrics: bool = False) -> bytes:
        """Read the providers once and return the whole answer, in the Prometheus
        text format or (*openmetrics*) in OpenMetrics."""
        with self._lock:
            start = time.monotonic()
            lines: List[str] = []
            series = 0
            sampler = self._sampler
            reading = self._read(sampler) if sampler is not None else None
            read_seconds = time.monotonic() - start
            if reading is not None:
                series = self._render_reading(lines, reading, openmetrics)
                for writer in self._writers:
                    series += writer(lines, openmetrics, self._vm_labels)
            self._render_health(lines, reading, read_seconds, openmetrics)
            if openmetrics:
                lines.append("# EOF\n")
            body = "".join(lines).encode("utf-8", "replace")
            self._last_seconds = time.monotonic() - start
            self._last_series = series
            return body

    def _render_reading(self, lines: List[str], reading: _Reading, openmetrics: bool) -> int:
        fields = frozenset(reading.totals)
        if fields != self._fields_seen:
            self._relayout(fields)
        by_vm = reading.by_vm if self._vm_series is not None else None
        if reading.by_vm is not None:
            self._follow_vms(reading.by_vm)
        vm_labels = self._vm_labels
        scope = self._watched_labels
        series = render_families(lines, self._families, reading.totals, scope, by_vm,
                                 vm_labels, self._gauges_seen, openmetrics)
        if reading.histograms:
            specs = self._histogram_specs(reading.histograms, fields)
            vm_histograms = reading.vm_histograms if by_vm is not None else None
            series += render_histograms(lines, specs, reading.histograms, reading.totals, scope,
                                        vm_histograms, by_vm, vm_labels, openmetrics)
        by_vcpu = reading.by_vcpu
        if by_vcpu and self._vcpu_series is not None:
            if self._vm is not None:
                vm_labels = {self._vm.pid: self._watched_labels}
            series += render_vcpus(lines, by_vcpu, lambda f: self._vcpu_series.match(f) is not None,
                                   self._levels, vm_labels, openmetrics)
        return series

    def _render_health(self, lines: List[str], reading: Optional[_Reading], read_seconds: float,
                       openmetrics: bool) -> None:
        def family(name: str, kind: str, help_text: str, *samples: str) -> None:
            shown = name[: -len("_total")] if openmetrics and kind == "counter" else name
            lines.append(f"# HELP {shown} {help_text}\n# TYPE {shown} {kind}\n")
            lines.extend(samples)

        family("kvmstat_exporter_info", "gauge",
               "Always 1: how the exporter counts (engine: bpf, perf, none) and from which "
               "providers", self._info)
        family("kvmstat_read_duration_seconds", "gauge",
               "Seconds this scrape spent reading the providers",
               f"kvmstat_read_duration_seconds {read_seconds!r}\n")
        family("kvmstat_last_scrape_duration_seconds", "gauge",
               "Seconds the previous scrape took from its start to its last byte written",
               f"kvmstat_last_scrape_duration_seconds {self._last_seconds!r}\n")
        family("kvmstat_last_scrape_series", "gauge",
               "KVM series (not counting the exporter's own) in the previous scrape's answer",
               f"kvmstat_last_scrape_series {self._last_series}\n")
        family("kvmstat_read_errors_total", "counter",
               "Scrapes whose reading of the providers failed (their answer had no KVM series)",
               f"kvmstat_read_errors_total {self._read_errors}\n")
        if self._vm is not None:
            running = 0 if self._sampler is None else 1
            family("kvmstat_vms", "gauge", "VM processes watched", f"kvmstat_vms {running}\n")
            family("kvmstat_vm_running", "gauge",
                   "1 while the watched VM runs, 0 once it has exited",
                   f"kvmstat_vm_running{{{self._watched_labels}}} {running}\n")
            return
        watched = len(reading.by_vm or {}) if reading is not None else 0
        family("kvmstat_vms", "gauge", "VM processes watched (with a per-VM breakdown; "
               "0 without one)", f"kvmstat_vms {watched}\n")

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
    """No access log; a stuck client cannot hold a thread forever; the TLS
    handshake (if any) happens here, in the request's thread, not in the
    accepting one."""

    timeout = 60

    def setup(self) -> None:
        """Set the timeout, then shake hands on a TLS connection."""
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Log nothing (a scrape every few seconds would flood stderr)."""


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    """One thread per request; *report* receives request errors as one line;
    with *tls*, connections are wrapped in it."""

    daemon_threads = True

    def __init__(self, sockaddr: Tuple[str, int], family: int, report: Callable[[str], None],
                 tls: Optional[ssl.SSLContext] = None):
        self.address_family = family  # read by TCPServer.__init__ to create the socket
        self.report = report
        self.tls = tls
        super().__init__(sockaddr, _QuietHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host name up (getfqdn), which may
        # wait for DNS; the WSGI environment only needs the address.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
        self.setup_environ()

    def get_request(self):
        """Accept a connection; with TLS, wrap it (handshake later, in its thread)."""
        connection, address = super().get_request()
        if self.tls is not None:
            connection = self.tls.wrap_socket(connection, server_side=True,
                                              do_handshake_on_connect=False)
        return connection, address

    def handle_error(self, request, client_address) -> None:
        """One line instead of socketserver's traceback; clients that fail the TLS
        handshake or go away are not worth one."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, TimeoutError, ssl.SSLError)):
            self.report(f"request from {client_address[0]} failed: {exc}")


def _bind_error(address: ServeAddress, exc: OSError) -> Error:
    where = f"cannot listen on {address}"
    if exc.errno == errno.EADDRINUSE:
        return NotAvailable(f"{where}: the port is already in use (stop the other program "
                            f"or choose another port)")
    if exc.errno == errno.EADDRNOTAVAIL:
        return InvalidArgument(f"{where}: {address.host} is not an address of this host")
    return error_from_errno(exc.errno or errno.EIO, f"listening on {address}",
                            fixes={errno.EACCES: _LOW_PORTS, errno.EPERM: _LOW_PORTS},
                            other=NotAvailable)


_LOW_PORTS = "ports below 1024 need root or CAP_NET_BIND_SERVICE"


def _wants_openmetrics(accept: str) -> bool:
    return any(part.split(";")[0].strip() == "application/openmetrics-text"
               for part in accept.split(","))


def _wants_gzip(accept_encoding: str) -> bool:
    return any(part.split(";")[0].strip() == "gzip" for part in accept_encoding.split(","))


class MetricsServer:
    """An HTTP server for ``/metrics``, bound (but not yet serving) on creation.

    Binding first lets a busy port fail at once, before any event is opened.
    :meth:`register` the :class:`KvmCollector` (anything with ``render(openmetrics)
    -> bytes``), then :meth:`start` serves in a background thread (one thread per
    request).  *web* (from :func:`~kvmstat.frontends.exporter_web.load_web_config`) adds TLS
    and basic authentication.  Errors while serving are passed to *notify* as one
    line; the scraper gets a 500 answer.
    """

    def __init__(self, address: ServeAddress, *,
                 notify: Optional[Callable[[str], None]] = None,
                 web: Optional[WebConfig] = None):
        self._notify = notify or (lambda message: None)
        self._web = web or WebConfig()
        self._collector = None
        try:
            infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise InvalidArgument(f"cannot listen on {address}: unknown host "
                                  f"'{address.host}' ({exc.strerror})") from None
        family, _, _, _, sockaddr = infos[0]
        try:
            self._server = _ThreadingServer(sockaddr[:2], family, self._notify, self._web.tls)
        except OSError as exc:
            raise _bind_error(address, exc) from None
        self._server.set_app(self._app)
        self._thread: Optional[threading.Thread] = None
        host, port = self._server.server_address[:2]
        self.address = ServeAddress(str(host), int(port))

    @property
    def url(self) -> str:
        """The URL scrapers use, e.g. ``http://127.0.0.1:9000/metrics``."""
        scheme = "https" if self._web.tls is not None else "http"
        return f"{scheme}://{self.address}/metrics"

    def register(self, collector) -> None:
        """Serve *collector*'s answer at ``/metrics``."""
        self._collector = collector

    def _metrics(self, environ, start_response) -> List[bytes]:
        openmetrics = _wants_openmetrics(environ.get("HTTP_ACCEPT", ""))
        collector = self._collector
        body = collector.render(openmetrics) if collector is not None else b""
        headers = [("Content-Type", OPENMETRICS_FORMAT if openmetrics else TEXT_FORMAT)]
        if _wants_gzip(environ.get("HTTP_ACCEPT_ENCODING", "")):
            body = gzip.compress(body, compresslevel=1)
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Content-Length", str(len(body))))
        start_response("200 OK", headers)
        return [body]

    def _app(self, environ, start_response) -> List[bytes]:
        if not self._web.authorized(environ.get("HTTP_AUTHORIZATION")):
            start_response("401 Unauthorized",
                           [("Content-Type", "text/plain; charset=utf-8"),
                            ("WWW-Authenticate", 'Basic realm="kvmstat"')])
            return [b"unauthorized\n"]
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            try:
                return self._metrics(environ, start_response)
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
