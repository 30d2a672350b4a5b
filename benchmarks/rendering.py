"""Rendered-image figures (``--pixels``): WADO-RS rendered frames and thumbnails (PS3.18 8.3.5,
10.7) of the same synthetic CT on every server.

The data, built once and stored over STOW-RS on every server before its rendering phases
(untimed), are smooth CT-like 512x512 slices (``dicomgen.ct_phantom``):

- the *warm* instance (Explicit VR Little Endian): its rendered JPEG, rendered PNG and thumbnail
  are each requested ``warm`` times, after 2 warm-ups;
- ``cold`` other instances of each kind (uncompressed, JPEG-LS lossless, JPEG 2000 lossless),
  each requested once, as JPEG: a frame the server has never rendered;
- a series of ``frames`` single-frame instances and one instance of ``frames`` frames, every
  frame rendered once, in order, while the server's resident memory is sampled.

Frames are asked for with the files' own window (``window=40,400,linear``): without it Orthanc
renders the frame's full range and minipacs the file's VOI; with it both send the same image.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, generate_uid

from benchmarks import dicomgen
from benchmarks.memory import CpuMeter, RssSampler
from benchmarks.workloads import BenchmarkError, client, percentile, seed, stow_file

ROWS = COLUMNS = 512
WINDOW = "40,400,linear"  # the WindowCenter / WindowWidth that dicomgen writes
JPEG, PNG = "image/jpeg", "image/png"
MAGIC = {JPEG: b"\xff\xd8", PNG: b"\x89PNG\r\n\x1a\n"}
WARMUP = 2
STOW_BATCH = 10  # instances per STOW-RS request when seeding
COLD_KINDS = {"jpeg_cold": "native", "jpegls_cold": "jpegls", "j2k_cold": "j2k"}
WALKS = ("series_walk", "multiframe_walk")
DESCRIPTIONS = {
    "jpeg_warm": "rendered JPEG, warm", "png_warm": "rendered PNG, warm", "thumbnail_warm": "thumbnail, warm",
    "jpeg_cold": "rendered JPEG, cold", "jpegls_cold": "JPEG-LS lossless frame rendered as JPEG, cold",
    "j2k_cold": "JPEG 2000 lossless frame rendered as JPEG, cold",
    "series_walk": "every instance of the series rendered", "multiframe_walk": "every frame of the multi-frame "
    "instance rendered",
}
POOL = 8  # distinct slices the walked frames cycle through


@dataclass
class RenderSizes:
    warm: int = 50  # requests per warm figure
    cold: int = 30  # instances per cold figure
    frames: int = 1000  # frames of the walked series and of the multi-frame instance
    budget: float = 120.0  # seconds per walk; a slower server renders fewer frames


@dataclass(frozen=True)
class InstanceRef:
    study: str
    series: str
    sop: str

    def rendered(self, root: str, frame: int = 1) -> str:
        return f"{self._base(root)}/frames/{frame}/rendered?window={WINDOW}"

    def thumbnail(self, root: str) -> str:
        return f"{self._base(root)}/thumbnail"

    def _base(self, root: str) -> str:
        return f"{root}/studies/{self.study}/series/{self.series}/instances/{self.sop}"


@dataclass
class PixelData:
    """What every server stores before its rendering phases, and the instances asked for."""

    warm: InstanceRef
    cold: dict[str, list[InstanceRef]]  # "native", "jpegls", "j2k"
    bodies: list[bytes]  # STOW-RS bodies of the warm and cold instances
    walk: list[InstanceRef]
    walk_headers: list[bytes]  # Part 10 bytes up to the Pixel Data value, per walked instance
    pool: list[bytes]  # their pixels, cycled
    multiframe: InstanceRef
    multiframe_path: Path
    frames: int


@dataclass
class RenderFigure:
    samples_ms: list[float] = field(default_factory=list)
    requested: int = 0
    image_bytes: int = 0  # the last image's size
    error: str = ""  # the answer of a request that failed (a figure with no samples shows "-")
    seconds: float = 0.0
    peak_rss: int | None = None  # walks: the server's peak summed PSS sampled meanwhile

    @property
    def p50(self) -> float:
        return percentile(self.samples_ms, 50)

    @property
    def p95(self) -> float:
        return percentile(self.samples_ms, 95)


@dataclass
class PixelResult:
    figures: dict[str, RenderFigure] = field(default_factory=dict)
    seeding: float = 0.0  # seconds to store the rendering data
    notes: list[str] = field(default_factory=list)


# ---- data ---------------------------------------------------------------------------------

def prepare(sizes: RenderSizes, folder: Path) -> PixelData:
    """The rendering data; the multi-frame instance is written to ``folder`` (and streamed from it)."""
    study = dicomgen.make_studies(1, seed=41, accession_base=6_000_000)[0]

    def header(series: str, number: int, instance: int, frames: int = 1) -> Dataset:
        return dicomgen.header_dataset(study, series, number, instance, ROWS, COLUMNS, frames=frames)

    def ref(ds: Dataset) -> InstanceRef:
        return InstanceRef(study.study_uid, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))

    native, jpegls, j2k = (str(generate_uid()) for _ in range(3))
    files: list[bytes] = []
    refs: dict[str, list[InstanceRef]] = {"native": [], "jpegls": [], "j2k": []}
    for n in range(sizes.cold + 1):  # native instance 1 is the warm one
        ds = header(native, 1, n + 1)
        pixels = dicomgen.ct_phantom(ROWS, COLUMNS, n)
        files.append(dicomgen.header_bytes(ds, pixels.nbytes) + pixels.tobytes())
        refs["native"].append(ref(ds))
    for kind, series, number, syntax, first in (("jpegls", jpegls, 2, JPEGLSLossless, 100),
                                                ("j2k", j2k, 3, JPEG2000Lossless, 200)):
        for n in range(sizes.cold):
            ds = header(series, number, n + 1)
            files.append(dicomgen.encode_compressed(ds, dicomgen.ct_phantom(ROWS, COLUMNS, first + n), syntax))
            refs[kind].append(ref(ds))
    warm = refs["native"].pop(0)
    bodies = [dicomgen.stow_body(files[i : i + STOW_BATCH]) for i in range(0, len(files), STOW_BATCH)]
    pool = [dicomgen.ct_phantom(ROWS, COLUMNS, 300 + n).tobytes() for n in range(POOL)]
    walk_series = str(generate_uid())
    walk, headers = [], []
    for n in range(sizes.frames):
        ds = header(walk_series, 4, n + 1)
        headers.append(dicomgen.header_bytes(ds, len(pool[0])))
        walk.append(ref(ds))
    ds = header(str(generate_uid()), 5, 1, frames=sizes.frames)
    path = folder / "multiframe.dcm"
    dicomgen.write_multiframe(path, frames=sizes.frames, rows=ROWS, columns=COLUMNS, pool=pool, ds=ds)
    return PixelData(warm, refs, bodies, walk, headers, pool, ref(ds), path, sizes.frames)


def _walk_bodies(data: PixelData, per_call: int = 100) -> Iterator[list[bytes]]:
    """The walked series as STOW-RS bodies, ``per_call`` instances at a time (never all in memory)."""
    for start in range(0, len(data.walk_headers), per_call):
        files = [h + data.pool[(start + k) % len(data.pool)]
                 for k, h in enumerate(data.walk_headers[start : start + per_call])]
        yield [dicomgen.stow_body(files[i : i + STOW_BATCH]) for i in range(0, len(files), STOW_BATCH)]


def store(url: str, data: PixelData) -> float:
    """Store the rendering data on the server at ``url``; returns the seconds it took."""
    began = time.perf_counter()
    seed(url, data.bodies)
    for bodies in _walk_bodies(data):
        seed(url, bodies)
    upload = stow_file(url, data.multiframe_path)
    if upload.failures:
        raise BenchmarkError(f"storing the {data.frames}-frame instance failed: {upload.first_error}")
    return time.perf_counter() - began


# ---- requests -----------------------------------------------------------------------------

def fetch(http: httpx.Client, url: str, accept: str) -> tuple[float, bytes, str]:
    """(milliseconds until the whole image is read, the image, "" or why it is not an image)."""
    began = time.perf_counter()
    response = http.get(url, headers={"Accept": accept})
    body = response.content
    elapsed = (time.perf_counter() - began) * 1000
    if response.status_code != 200:
        return elapsed, body, f"HTTP {response.status_code} ({_message(body)})"
    if not body.startswith(MAGIC[accept]):
        return elapsed, body, f"HTTP 200 but not {accept} (Content-Type {response.headers.get('content-type')})"
    return elapsed, body, ""


def _message(body: bytes) -> str:
    """Orthanc ("Message") and minipacs ("error") answer errors with a JSON object; keep its message."""
    try:
        document = json.loads(body)
        if isinstance(document, dict) and (document.get("Message") or document.get("error")):
            return str(document.get("Message") or document.get("error"))
    except ValueError:
        pass
    return body[:200].decode(errors="replace").strip() or "empty body"


def latency(http: httpx.Client, urls: list[str], accept: str, warmup: int = 0) -> RenderFigure:
    """GET each URL in turn (the first ``warmup`` ones twice, untimed first); a failed request
    ends the figure without samples."""
    figure = RenderFigure(requested=len(urls))
    for n, url in enumerate(urls[:warmup] + urls):
        elapsed, body, error = fetch(http, url, accept)
        if error:
            return RenderFigure(requested=len(urls), error=error)
        if n >= warmup:
            figure.samples_ms.append(elapsed)
            figure.image_bytes = len(body)
    return figure


def walk(http: httpx.Client, urls: list[str], budget: float) -> RenderFigure:
    """Render every URL once, in order, as JPEG, until done or ``budget`` seconds have passed."""
    figure = RenderFigure(requested=len(urls))
    began = time.perf_counter()
    for url in urls:
        if time.perf_counter() - began > budget:
            break
        elapsed, body, error = fetch(http, url, JPEG)
        if error:
            figure.error = error
            break
        figure.samples_ms.append(elapsed)
        figure.image_bytes = len(body)
    figure.seconds = time.perf_counter() - began
    return figure


# ---- the phases ---------------------------------------------------------------------------

def run(url: str, data: PixelData, sizes: RenderSizes, rss: RssSampler, cpu: CpuMeter,
        before: Callable[[str], None]) -> PixelResult:
    """The rendering phases against the DICOMweb root ``url``; ``before(message)`` is called
    before each measured phase (progress, waiting for a quiet machine)."""
    result = PixelResult()
    before(f"storing the rendering data ({2 * sizes.cold + 1} instances, a {data.frames}-instance series, "
           f"a {data.frames}-frame instance)")
    rss.set_phase("render_seed")
    result.seeding = store(url, data)
    rss.set_phase("render")
    figures = result.figures
    with client() as http:
        before(f"rendered JPEG, PNG and thumbnail, warm ({sizes.warm} requests each)")
        with cpu.phase("render_warm"):
            figures["jpeg_warm"] = latency(http, [data.warm.rendered(url)] * sizes.warm, JPEG, WARMUP)
            figures["png_warm"] = latency(http, [data.warm.rendered(url)] * sizes.warm, PNG, WARMUP)
            figures["thumbnail_warm"] = latency(http, [data.warm.thumbnail(url)] * sizes.warm, JPEG, WARMUP)
        before(f"rendered JPEG, cold ({sizes.cold} instances each: uncompressed, JPEG-LS, JPEG 2000)")
        with cpu.phase("render_cold"):
            for key, kind in COLD_KINDS.items():
                figures[key] = latency(http, [ref.rendered(url) for ref in data.cold[kind]], JPEG)
        walks = {"series_walk": [ref.rendered(url) for ref in data.walk],
                 "multiframe_walk": [data.multiframe.rendered(url, f) for f in range(1, data.frames + 1)]}
        for key, urls in walks.items():
            what = "instance of the series" if key == "series_walk" else "frame of the multi-frame instance"
            before(f"rendering every {what} ({len(urls)}, at most {sizes.budget:.0f} s)")
            rss.set_phase(key)
            with cpu.phase(f"render_{key}"):
                figure = figures[key] = walk(http, urls, sizes.budget)
            rss.set_phase("render")
            figure.peak_rss = rss.peaks.get(key) if rss.pid else None
            cpu.phases[f"render_{key}"]["frames"] = len(figure.samples_ms)
    return result
