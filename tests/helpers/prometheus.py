"""A real Prometheus server for tests: Debian's ``prometheus`` binary with a temporary
configuration and storage, listening on 127.0.0.1 (its system service is never
started).  No kvmstat imports.

    with PrometheusServer({"kvmstat": exporter_url}, rule_files=[...]) as prom:
        prom.wait_for_sample('kvmstat_exporter_info{job="kvmstat"}', after=t)
        prom.query('sum(kvm_tracepoint_pio_total)', at=t)   # -> [(labels, value)]
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Dict, List, Optional, Sequence, Tuple

from .commands import wait_for

__all__ = ["PrometheusServer", "PrometheusError"]


class PrometheusError(AssertionError):
    """The server refused a query (e.g. it does not parse)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrometheusServer:
    """``prometheus`` scraping *targets* (job name -> ``http://host:port/metrics``)
    every *interval* seconds, evaluating *rule_files*."""

    def __init__(self, targets: Dict[str, str], rule_files: Sequence[str] = (),
                 interval: float = 1.0, timeout: float = 60.0):
        self._dir = tempfile.mkdtemp(prefix="kvmstat-prometheus-")
        config = os.path.join(self._dir, "prometheus.yml")
        jobs = []
        for job, url in targets.items():
            parts = urllib.parse.urlsplit(url)
            jobs.append({"job_name": job, "metrics_path": parts.path, "scheme": parts.scheme,
                         "static_configs": [{"targets": [parts.netloc]}]})
        with open(config, "w") as f:
            # JSON is YAML: no YAML writer needed.
            json.dump({"global": {"scrape_interval": f"{int(interval * 1000)}ms",
                                  "scrape_timeout": f"{int(interval * 1000)}ms",
                                  "evaluation_interval": f"{int(interval * 1000)}ms"},
                       "rule_files": list(rule_files), "scrape_configs": jobs}, f)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(os.path.join(self._dir, "prometheus.log"), "w+")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}",
             f"--storage.tsdb.path={os.path.join(self._dir, 'data')}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=self._dir)
        try:
            wait_for(self._ready, "Prometheus to be ready", timeout, proc=self.proc,
                     interval=0.1, details=self.log)
        except BaseException:
            self.close()
            raise

    def log(self) -> str:
        """What the server logged so far."""
        self._log.flush()
        with open(self._log.name) as f:
            return f.read()

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def api(self, path: str, **params: str) -> dict:
        """GET /api/v1/*path*; the ``data`` of a success, else :class:`PrometheusError`."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as exc:
            answer = json.load(exc)
        if answer.get("status") != "success":
            raise PrometheusError(f"{params}: {answer.get('errorType')}: {answer.get('error')}")
        return answer["data"]

    def query(self, expr: str, at: Optional[float] = None) -> List[Tuple[dict, float]]:
        """An instant query: [(labels, value)] (a scalar result is one pair)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]

    def value(self, expr: str, at: Optional[float] = None) -> float:
        """The one value of *expr* (AssertionError unless exactly one)."""
        result = self.query(expr, at)
        assert len(result) == 1, (expr, result)
        return result[0][1]

    def wait_for_sample(self, selector: str, after: float, timeout: float = 60.0) -> None:
        """Wait until every series of *selector* has a sample scraped after *after*."""
        def scraped() -> bool:
            times = self.query(f"timestamp({selector})")
            return bool(times) and min(v for _, v in times) > after
        wait_for(scraped, f"Prometheus to scrape {selector}", timeout, interval=0.1)

    def close(self) -> None:
        """Stop the server and remove its configuration and storage."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "PrometheusServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
