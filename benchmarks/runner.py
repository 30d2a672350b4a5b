"""One benchmark run against one server: the same prepared data, the same sequence of phases."""

from __future__ import annotations

import os
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

from benchmarks import dicomgen, dimse, rendering, workloads
from benchmarks.dicomgen import Study
from benchmarks.memory import CpuMeter, RssSampler, drop_page_cache, wait_until_quiet
from benchmarks.servers import Server, temp_folder
from benchmarks.workloads import Latency, Throughput

QUERY_KINDS = ("PatientID", "PatientName *x*", "StudyDate 30 days", "AccessionNumber", "ModalitiesInStudy",
               "no filter, limit=100")
STUDY_SIZE = 100  # instances per study in the STOW ingest figures
SERIES_BATCH = 10  # instances per request when seeding the WADO series
QIDO_BATCH = 100  # instances per request when seeding the QIDO studies
DIMSE_PHASES = ("store_1", "store_4", "find", "move", "get")


@dataclass
class Options:
    instances: int
    studies: int
    series_size: int
    queries: int
    metadata_runs: int
    wado_runs: int
    big_frames: int  # 0: no huge STOW
    wait_quiet: float = 0.0  # seconds to wait, before each measured phase, for other work to stop
    dimse: bool = False  # also the DIMSE figures (C-STORE, C-FIND, C-MOVE, C-GET)
    dicomweb: bool = True  # the DICOMweb figures (off with --dimse-only and --pixels-only)
    render: rendering.RenderSizes | None = None  # the rendering figures (with --pixels), run last
    drop_cache: bool = True  # drop the page cache before each ingest phase (see _fresh_memory)


@dataclass
class Prepared:
    """Request bodies and queries, built once and sent unchanged to every server."""

    stow_single: list[bytes]
    stow_multi: list[bytes]
    series_bodies: list[bytes]
    series_study: str
    series_uid: str
    qido_bodies: list[bytes]
    queries: dict[str, list[str]]
    warmup: list[bytes]
    series_bytes: int = 0  # the series' Part 10 files, summed
    cstore: dimse.CStoreFiles | None = None  # C-STORE input files (with --dimse)
    pixels: rendering.PixelData | None = None  # the rendering data (with --pixels)


@dataclass
class TargetResult:
    server: Server
    stow_1: Throughput | None = None
    stow_4: Throughput | None = None
    qido: dict[str, Latency] = field(default_factory=dict)
    wado: Throughput | None = None
    metadata: Latency | None = None
    big: Throughput | None = None
    big_rss: int | None = None  # peak summed PSS sampled during the huge STOW
    dimse: dimse.DimseResult | None = None
    pixels: rendering.PixelResult | None = None
    peak_rss: int | None = None  # peak summed PSS sampled over the run (before the rendering phases)
    peak_hwm: int | None = None  # summed VmHWM at the end of the run: an upper bound
    seeding: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)  # phase -> CPU seconds by whom


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def prepare(options: Options, dimse_folder: Path | None = None, pixel_folder: Path | None = None) -> Prepared:
    """Everything sent to the servers; with ``options.dimse`` the C-STORE files go to ``dimse_folder``,
    with ``options.render`` the multi-frame instance to ``pixel_folder``."""
    began = time.perf_counter()
    pool = dicomgen.pixel_pool(512, 512)
    stow_single = _ingest_bodies(options.instances, pool, seed=11) if options.dicomweb else []
    stow_multi = _ingest_bodies(options.instances, pool, seed=12) if options.dicomweb else []
    seeded = options.dicomweb or options.dimse  # the QIDO-RS studies and the series
    series_study = dicomgen.make_studies(1, seed=13, accession_base=8_000_000)[0]
    series = list(dicomgen.series_instances(series_study, options.series_size if seeded else 0, rows=512,
                                            columns=512, pool=pool))
    series_uid = _series_uid_of(series[0]) if series else ""
    series_bytes = sum(map(len, series))
    series_bodies = [dicomgen.stow_body(series[i : i + SERIES_BATCH]) for i in range(0, len(series), SERIES_BATCH)]
    studies = dicomgen.make_studies(options.studies, seed=14) if seeded else []
    small = dicomgen.pixel_pool(16, 16)
    encoded = [dicomgen.encode_instance(s, _uid(), 1, 1, 16, 16, small[i % len(small)]) for i, s in enumerate(studies)]
    qido_bodies = [dicomgen.stow_body(encoded[i : i + QIDO_BATCH]) for i in range(0, len(encoded), QIDO_BATCH)]
    warm = dicomgen.make_studies(1, seed=15, accession_base=7_000_000)[0]
    warmup = [dicomgen.stow_body([x]) for x in dicomgen.series_instances(warm, 4, rows=16, columns=16, pool=small)]
    cstore = None
    if options.dimse:
        assert dimse_folder is not None
        cstore = dimse.write_cstore_files(dimse_folder, options.instances, pool, study_size=STUDY_SIZE)
    pixels = None
    if options.render:
        assert pixel_folder is not None
        pixels = rendering.prepare(options.render, pixel_folder)
    extras = [name for name, made in (("C-STORE files", cstore), ("rendering data", pixels)) if made]
    say(f"prepared request bodies{''.join(f' and {e}' for e in extras)} in {time.perf_counter() - began:.1f} s")
    return Prepared(stow_single, stow_multi, series_bodies, series_study.study_uid, series_uid, qido_bodies,
                    build_queries(studies, options.queries) if studies else {}, warmup, series_bytes, cstore,
                    pixels)


def _uid() -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid())


def _series_uid_of(data: bytes) -> str:
    import io

    import pydicom

    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SeriesInstanceUID)


def _ingest_bodies(count: int, pool: list[bytes], *, seed: int) -> list[bytes]:
    """``count`` single-instance bodies of 512x512 CT, in studies of STUDY_SIZE instances."""
    bodies: list[bytes] = []
    studies = dicomgen.make_studies(max(1, -(-count // STUDY_SIZE)), seed=seed, accession_base=seed * 100_000)
    for study in studies:
        size = min(STUDY_SIZE, count - len(bodies))
        bodies += [dicomgen.stow_body([x]) for x in dicomgen.series_instances(study, size, rows=512, columns=512, pool=pool)]
    return bodies


def build_queries(studies: list[Study], count: int) -> dict[str, list[str]]:
    """``count`` raw query strings per kind, each aimed at a few of the seeded studies."""
    rng = random.Random(5)
    picks = [rng.choice(studies) for _ in range(count)]
    dates = []
    for _ in range(count):
        first = date(2005, 1, 1) + timedelta(days=rng.randrange(20 * 365 - 30))
        dates.append(f"StudyDate={first:%Y%m%d}-{first + timedelta(days=29):%Y%m%d}")
    return {
        "PatientID": [f"PatientID={s.patient_id}" for s in picks],
        "PatientName *x*": [f"PatientName=*{s.patient_name.split('^')[0]}*" for s in picks],
        "StudyDate 30 days": dates,
        "AccessionNumber": [f"AccessionNumber={s.accession}" for s in picks],
        "ModalitiesInStudy": [f"ModalitiesInStudy={dicomgen.RARE_MODALITY}"] * count,
        "no filter, limit=100": ["limit=100"] * count,
    }


def run_target(server: Server, data: Prepared, options: Options) -> TargetResult:
    result = TargetResult(server)
    url = server.dicomweb_url
    cpu = CpuMeter(server.pid, server.helper_pids, server.database)
    with RssSampler(server.pid) as rss:
        workloads.seed(url, data.warmup, clients=1)
        rss.set_phase("stow")
        if options.dicomweb:
            _stow_phases(server, data, options, result, cpu)
        if options.dimse:
            rss.set_phase("c-store")
            result.dimse = dimse.DimseResult()
            with temp_folder("bench-dimse-logs-") as logs:
                _cstore_phases(server, data, options, result.dimse, cpu, logs)
        if options.dicomweb or options.dimse:
            rss.set_phase("seed")
            say(f"{server.name}: seeding a {options.series_size}-instance series and {options.studies} studies")
            result.seeding["series"] = workloads.seed(url, data.series_bodies)
            result.seeding["studies"] = workloads.seed(url, data.qido_bodies)
        rss.set_phase("read")
        if options.dicomweb:
            _read_phases(server, data, options, result, cpu)
        if result.dimse is not None:
            rss.set_phase("dimse-read")
            with temp_folder("bench-dimse-") as work:
                _dimse_read_phases(server, data, options, result.dimse, cpu, work)
        if options.big_frames and options.dicomweb:
            rss.set_phase("big")
            _quiet(server, options)
            with cpu.phase("big"):
                result.big = _big_stow(server, options.big_frames)
            rss.set_phase("end")
            result.big_rss = rss.peaks.get("big")
        rss.sample()
        if server.pid:
            say(f"{server.name}: peak memory (PSS) per phase: "
                + ", ".join(f"{phase} {peak / 2**20:.0f} MB" for phase, peak in rss.peaks.items()))
        result.peak_rss = rss.sampled_peak if server.pid else None
        result.peak_hwm = rss.hwm_seen if server.pid else None
        if options.render and data.pixels is not None:
            def before(message: str) -> None:
                _quiet(server, options)
                say(f"{server.name}: {message}")

            result.pixels = rendering.run(url, data.pixels, options.render, rss, cpu, before)
    result.cpu = cpu.phases
    _check(server, result)
    return result


def _stow_phases(server: Server, data: Prepared, options: Options, result: TargetResult, cpu: CpuMeter) -> None:
    url = server.dicomweb_url
    _quiet(server, options)
    _fresh_memory(server, options)
    say(f"{server.name}: STOW-RS {len(data.stow_single)} instances, 1 client")
    with cpu.phase("stow_1"):
        result.stow_1 = workloads.stow(url, data.stow_single, 1)
    _quiet(server, options)
    _fresh_memory(server, options)
    say(f"{server.name}: STOW-RS {len(data.stow_multi)} instances, 4 clients")
    with cpu.phase("stow_4"):
        result.stow_4 = workloads.stow(url, data.stow_multi, 4)
    cpu.phases["stow_4"]["instances"] = result.stow_4.items


def _endpoint(server: Server) -> dimse.Endpoint:
    if server.dicom_port is None:
        raise workloads.BenchmarkError(f"{server.name}: no DICOM port known; the DIMSE figures need a server "
                                       "this benchmark starts")
    return dimse.Endpoint("127.0.0.1", server.dicom_port, server.ae_title)


def _cstore_phases(server: Server, data: Prepared, options: Options, result: dimse.DimseResult, cpu: CpuMeter,
                   logs: Path) -> None:
    files = data.cstore
    assert files is not None
    endpoint = _endpoint(server)
    for name, folders, studies, size in (("store_1", [files.single], files.single_studies, files.single_bytes),
                                         ("store_4", files.parallel, files.parallel_studies, files.parallel_bytes)):
        _quiet(server, options)
        _fresh_memory(server, options)
        dimse.read_into_cache(folders)
        say(f"{server.name}: C-STORE {files.count} instances with storescu, {len(folders)} association(s)")
        with cpu.phase(name):
            outcome = dimse.cstore(endpoint, folders, items=files.count, size=size, logs=logs)
        cpu.phases[name]["instances"] = files.count
        with dimse.FindClient(endpoint) as client:
            stored = dimse.stored_instances(client, studies)
        outcome.failures = max(0, files.count - stored)
        if outcome.failures and not outcome.first_error:
            outcome.first_error = f"the server holds {stored} of the {files.count} instances sent"
        setattr(result, name, outcome)


def _dimse_read_phases(server: Server, data: Prepared, options: Options, result: dimse.DimseResult,
                       cpu: CpuMeter, work: Path) -> None:
    endpoint = _endpoint(server)
    _quiet(server, options)
    say(f"{server.name}: C-ECHO and C-FIND ({options.queries} of each kind) on one association")
    with cpu.phase("find"), dimse.FindClient(endpoint) as client:
        result.echo = dimse.echo_latency(client, options.queries)
        for kind in dimse.FIND_KINDS:
            result.find[kind] = dimse.find_latency(client, [dimse.find_keys(q) for q in data.queries[kind]])
    if server.receiver_port is None:
        raise workloads.BenchmarkError(f"{server.name}: started without a C-MOVE destination")
    size = options.series_size
    with dimse.receiver(server.receiver_port, work / "storescp") as received:
        _quiet(server, options)
        say(f"{server.name}: C-MOVE of the {size}-instance series to storescp ({options.wado_runs} runs)")
        with cpu.phase("move"):
            result.move = dimse.retrieve("move", endpoint, data.series_study, data.series_uid, items=size,
                                         size=data.series_bytes, received=received, runs=options.wado_runs,
                                         logs=work)
        cpu.phases["move"]["instances"] = size * options.wado_runs
    fetched = work / "getscu"
    fetched.mkdir()
    _quiet(server, options)
    say(f"{server.name}: C-GET of the {size}-instance series with getscu ({options.wado_runs} runs)")
    with cpu.phase("get"):
        result.get = dimse.retrieve("get", endpoint, data.series_study, data.series_uid, items=size,
                                    size=data.series_bytes, received=fetched, runs=options.wado_runs, logs=work)
    cpu.phases["get"]["instances"] = size * options.wado_runs


def _read_phases(server: Server, data: Prepared, options: Options, result: TargetResult, cpu: CpuMeter) -> None:
    url = server.dicomweb_url
    _quiet(server, options)
    say(f"{server.name}: QIDO-RS ({options.queries} searches of each kind), WADO-RS, metadata")
    with cpu.phase("qido"):
        result.qido = {kind: workloads.qido(url, queries) for kind, queries in data.queries.items()}
    _quiet(server, options)
    with cpu.phase("wado"):
        result.wado = workloads.retrieve_series(url, data.series_study, data.series_uid, runs=options.wado_runs)
    cpu.phases["wado"]["mb"] = result.wado.bytes * options.wado_runs / workloads.MB
    _quiet(server, options)
    with cpu.phase("metadata"):
        result.metadata = workloads.series_metadata(url, data.series_study, data.series_uid, runs=options.metadata_runs)


PAGE_CACHE_KEPT = ("the page cache could not be dropped before the ingest phases (that needs root): "
                   "their figures depend on the order the servers ran in")


def _fresh_memory(server: Server, options: Options) -> None:
    """Before an ingest phase: drop the page cache, so that each server's phase writes into memory
    the machine holds. Left as it is, the page cache grows into memory a virtual machine's
    hypervisor may have taken back, where each first write costs about ten times more, and which
    server meets that depends on the order of the run (see "Reading the figures" in the README)."""
    if not options.drop_cache:
        return
    if not drop_page_cache() and PAGE_CACHE_KEPT not in server.notes:
        server.notes.append(PAGE_CACHE_KEPT)


def _quiet(server: Server, options: Options) -> None:
    # Dirty pages of earlier phases (the prepared C-STORE files, the other server's data) would
    # otherwise be written back during the next phase and slow whichever server's fsyncs meet them.
    os.sync()
    if options.wait_quiet <= 0:
        return
    if not wait_until_quiet(timeout=options.wait_quiet, cores=os.cpu_count() or 1):
        say(f"other processes kept the machine busy for {options.wait_quiet:.0f} s; measuring anyway")


def _big_stow(server: Server, frames: int) -> Throughput:
    with temp_folder("bench-big-") as folder:
        path = folder / "multiframe.dcm"
        began = time.perf_counter()
        size = dicomgen.write_multiframe(path, frames=frames, rows=1024, columns=1024)
        say(f"{server.name}: wrote a {size / 1e9:.2f} GB multi-frame file in {time.perf_counter() - began:.1f} s; "
            "sending it as one STOW-RS request")
        return workloads.stow_file(server.dicomweb_url, Path(path))


def _check(server: Server, result: TargetResult) -> None:
    cores = os.cpu_count() or 1
    for phase, spent in result.cpu.items():
        if spent["wall"] > 0.5 and spent["others"] > 0.1 * spent["wall"] * cores:
            notes = server.notes
            if result.dimse is not None and phase in DIMSE_PHASES:
                notes = result.dimse.notes
            elif result.pixels is not None and phase.startswith("render"):
                notes = result.pixels.notes
            notes.append(f"{server.name} {phase}: other processes used {spent['others']:.1f} CPU s of "
                         f"{spent['wall'] * cores:.1f} available; this figure may be disturbed")
    for name, figure in (("STOW 1 client", result.stow_1), ("STOW 4 clients", result.stow_4)):
        if figure and figure.failures:
            server.notes.append(f"{name}: {figure.failures} failed request(s), first: {figure.first_error}")
    if result.dimse is not None:
        for name, figure in (("C-STORE 1 association", result.dimse.store_1),
                             ("C-STORE 4 associations", result.dimse.store_4),
                             ("C-MOVE", result.dimse.move), ("C-GET", result.dimse.get)):
            if figure and (figure.failures or figure.first_error):
                result.dimse.notes.append(f"{server.name} {name}: {figure.failures} instance(s) missing; "
                                          f"{figure.first_error}")
    if result.big and result.big.failures:
        server.notes.append(f"2 GB STOW failed: {result.big.first_error}")
    if result.pixels is not None:
        for key, rendered in result.pixels.figures.items():
            if rendered.error:
                result.pixels.notes.append(f"{server.name}, {rendering.DESCRIPTIONS[key]}: {rendered.error}")
