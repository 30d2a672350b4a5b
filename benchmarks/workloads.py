"""The measured workloads, each against one DICOMweb root: STOW-RS ingest, QIDO-RS searches,
WADO-RS series retrieval, series metadata, and one huge STOW-RS request.

Request bodies are built before the clock starts, so the client's own work is only HTTP.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.dicomgen import STOW_CONTENT_TYPE, stow_envelope_size, stream_file_as_stow

MB = 1_000_000
DICOM_JSON = "application/dicom+json"
SERIES_ACCEPT = 'multipart/related; type="application/dicom"'
TIMEOUT = httpx.Timeout(300.0, connect=10.0)


class BenchmarkError(RuntimeError):
    """A server answered a request the benchmark needs with an error."""


@dataclass
class Throughput:
    items: int
    bytes: int
    seconds: float
    failures: int = 0
    first_error: str = ""

    @property
    def per_second(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0

    @property
    def mb_per_second(self) -> float:
        return self.bytes / MB / self.seconds if self.seconds else 0.0


@dataclass
class Latency:
    samples_ms: list[float]
    results: list[int] = field(default_factory=list)  # result count per request (QIDO)
    response_bytes: int = 0
    encoding: str = ""

    @property
    def p50(self) -> float:
        return percentile(self.samples_ms, 50)

    @property
    def p95(self) -> float:
        return percentile(self.samples_ms, 95)

    @property
    def median_results(self) -> float:
        return statistics.median(self.results) if self.results else 0.0


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (p95 of 50 samples is the 48th smallest)."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def client() -> httpx.Client:
    return httpx.Client(timeout=TIMEOUT)


# ---- STOW-RS ------------------------------------------------------------------------------

def stow(url: str, bodies: list[bytes], clients: int, *, instances_per_body: int = 1) -> Throughput:
    """POST every body to ``url``/studies from ``clients`` threads (one httpx.Client each)."""
    lock = threading.Lock()
    queue = iter(range(len(bodies)))
    outcome = Throughput(len(bodies) * instances_per_body, sum(map(len, bodies)), 0.0)
    start = threading.Barrier(clients + 1)

    def work() -> None:
        with client() as http:
            start.wait()
            while True:
                with lock:
                    index = next(queue, None)
                if index is None:
                    return
                error = _post_stow(http, url, bodies[index])
                if error:
                    with lock:
                        outcome.failures += 1
                        outcome.first_error = outcome.first_error or error

    threads = [threading.Thread(target=work, daemon=True, name=f"stow-{n}") for n in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    outcome.seconds = time.perf_counter() - began
    return outcome


def _post_stow(http: httpx.Client, url: str, body: bytes) -> str:
    try:
        response = http.post(f"{url}/studies", content=body,
                             headers={"Content-Type": STOW_CONTENT_TYPE, "Accept": DICOM_JSON})
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {_failure_reasons(response)}"
    return ""


def _failure_reasons(response: httpx.Response) -> str:
    """The FailureReason and comment of each failed instance of a STOW-RS answer, else its start."""
    try:
        failed = response.json().get("00081198", {}).get("Value", [])
        reasons = [f"{item['00081197']['Value'][0]:#06x} {item.get('00091001', {}).get('Value', [''])[0]}"
                   for item in failed]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        reasons = []
    return "; ".join(reasons)[:600] if reasons else response.text[:300]


def seed(url: str, bodies: Iterable[bytes], clients: int = 2) -> float:
    """Store seed data (not a measured figure); returns the seconds it took. Fails loudly."""
    batch = list(bodies)
    result = stow(url, batch, clients)
    if result.failures:
        raise BenchmarkError(f"seeding failed for {result.failures} request(s): {result.first_error}")
    return result.seconds


# ---- QIDO-RS ------------------------------------------------------------------------------

def qido(url: str, queries: list[str], warmup: int = 2) -> Latency:
    """Run each query string (raw, so that '*' reaches the server unencoded) one after another."""
    latency = Latency([])
    with client() as http:
        for n, query in enumerate(queries[:warmup] + queries):
            began = time.perf_counter()
            response = http.get(f"{url}/studies?{query}", headers={"Accept": DICOM_JSON})
            body = response.content
            elapsed = (time.perf_counter() - began) * 1000
            if response.status_code not in (200, 204):
                raise BenchmarkError(f"QIDO {query!r}: HTTP {response.status_code} {body[:300]!r}")
            if n >= warmup:
                latency.samples_ms.append(elapsed)
                latency.results.append(len(response.json()) if response.status_code == 200 and body else 0)
    return latency


# ---- WADO-RS ------------------------------------------------------------------------------

def retrieve_series(url: str, study: str, series: str, runs: int = 3) -> Throughput:
    """Stream the whole series ``runs`` times (bytes counted, not kept); the median run is kept."""
    outcomes = []
    with client() as http:
        for _ in range(runs):
            began = time.perf_counter()
            count = 0
            with http.stream("GET", f"{url}/studies/{study}/series/{series}", headers={"Accept": SERIES_ACCEPT}) as r:
                if r.status_code != 200:
                    raise BenchmarkError(f"WADO-RS series: HTTP {r.status_code} {r.read()[:300]!r}")
                for chunk in r.iter_raw(1 << 20):
                    count += len(chunk)
            outcomes.append(Throughput(1, count, time.perf_counter() - began))
    outcomes.sort(key=lambda t: t.seconds)
    return outcomes[len(outcomes) // 2]


def series_metadata(url: str, study: str, series: str, runs: int = 20, warmup: int = 2) -> Latency:
    """GET .../metadata with httpx's default Accept-Encoding (gzip); time until decoded."""
    latency = Latency([])
    with client() as http:
        for n in range(warmup + runs):
            began = time.perf_counter()
            response = http.get(f"{url}/studies/{study}/series/{series}/metadata", headers={"Accept": DICOM_JSON})
            body = response.content
            elapsed = (time.perf_counter() - began) * 1000
            if response.status_code != 200:
                raise BenchmarkError(f"series metadata: HTTP {response.status_code} {body[:300]!r}")
            if n >= warmup:
                latency.samples_ms.append(elapsed)
        latency.response_bytes = len(body)
        latency.encoding = response.headers.get("content-encoding", "identity")
        latency.results = [len(response.json())]
    return latency


# ---- one huge STOW-RS request -------------------------------------------------------------

def stow_file(url: str, path: Path) -> Throughput:
    """POST one file as a single-part STOW-RS body streamed from disk (with Content-Length)."""
    size = path.stat().st_size
    length = size + stow_envelope_size()
    began = time.perf_counter()
    error = ""
    try:
        with client() as http:
            response = http.post(
                f"{url}/studies", content=stream_file_as_stow(path),
                headers={"Content-Type": STOW_CONTENT_TYPE, "Accept": DICOM_JSON, "Content-Length": str(length)},
                timeout=httpx.Timeout(1800.0, connect=10.0),
            )
        if response.status_code != 200:
            error = f"HTTP {response.status_code}: {response.text[:300]}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    return Throughput(1, size, time.perf_counter() - began, failures=1 if error else 0, first_error=error)

