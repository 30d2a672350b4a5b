"""`python -m benchmarks` / `minipacs bench`: minipacs (and Orthanc) under the same DICOMweb (and DIMSE) load.

See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks import dimse, rendering, report, rounds
from benchmarks.runner import PAGE_CACHE_KEPT, Options, TargetResult, prepare, run_target, say
from benchmarks.servers import (
    Server,
    free_port,
    orthanc_available,
    orthanc_version,
    postgres_available,
    removal_at_end,
    running_minipacs,
    running_orthanc,
    temp_folder,
)
from benchmarks.workloads import Throughput

QUICK = {"instances": 100, "studies": 500, "series_size": 50, "render_frames": 100}
FULL = {"instances": 1000, "studies": 10_000, "series_size": 300, "render_frames": 1000}


def build_parser(prog: str = "python -m benchmarks") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="sqlite",
                   help="sqlite: SQLite + folder; postgres: PostgreSQL + S3 (moto) for minipacs, "
                        "PostgreSQL + folder for Orthanc (default sqlite)")
    p.add_argument("--target", choices=("minipacs", "orthanc", "both"),
                   help="servers to measure (default both when Orthanc is installed, else minipacs)")
    p.add_argument("--instances", type=int, help="512x512 CT instances per STOW-RS figure (default 1000)")
    p.add_argument("--studies", type=int, help="studies indexed for the QIDO-RS figures (default 10000)")
    p.add_argument("--series-size", type=int, help="instances in the WADO-RS / metadata series (default 300)")
    p.add_argument("--queries", type=int, default=50, help="requests per QIDO-RS search kind (default 50)")
    p.add_argument("--metadata-runs", type=int, default=20, help="series metadata requests (default 20)")
    p.add_argument("--wado-runs", type=int, default=9,
                   help="whole-series retrievals (WADO-RS, C-MOVE, C-GET); the median is kept (default 9)")
    p.add_argument("--quick", action="store_true", help="smoke-run sizes: 100 instances, 500 studies, 50-instance series")
    p.add_argument("--big", action="store_true", help="also send one ~2 GB multi-frame instance (needs ~6 GB disk)")
    p.add_argument("--big-frames", type=int, default=1000, help="frames of 1024x1024x16 bit in the --big instance")
    p.add_argument("--workers", type=int, default=0,
                   help="minipacs worker processes (default: the server's own, one per CPU core up to 4)")
    p.add_argument("--minipacs-storage", choices=("s3", "folder"), default="s3",
                   help="minipacs blob store on the postgres pair (default s3, a moto server)")
    p.add_argument("--url", help="measure an already running DICOMweb server at this root instead")
    p.add_argument("--pid", type=int, help="with --url: the server's process id, for its memory figures")
    p.add_argument("--orthanc-set", action="append", default=[], metavar="KEY=JSON",
                   help='override an Orthanc option, e.g. StorageAccessOnFind=\'"Never"\' (repeatable)')
    p.add_argument("--dimse", action="store_true",
                   help="also measure DIMSE: C-STORE (storescu), C-FIND, C-MOVE (to storescp), C-GET (getscu)")
    p.add_argument("--dimse-only", action="store_true",
                   help="only the DIMSE figures (the QIDO studies and the series are still seeded over STOW-RS)")
    p.add_argument("--pixels", action="store_true",
                   help="also measure rendering: rendered JPEG/PNG frames (warm, cold, JPEG-LS, JPEG 2000), "
                        "thumbnails, memory while rendering 1000 frames")
    p.add_argument("--pixels-only", action="store_true",
                   help="only the rendering figures (nothing else is seeded)")
    p.add_argument("--render-frames", type=int, metavar="F",
                   help="frames rendered one by one for the memory figures (default 1000, --quick 100)")
    p.add_argument("--rounds", type=int, default=1, metavar="N",
                   help="measure each server N times, fresh each time and alternating which goes first; "
                        "throughputs are the median round, latencies pooled over the rounds (default 1)")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each measured phase, wait up to this long for other processes to go idle")
    p.add_argument("--keep-page-cache", action="store_true",
                   help="do not drop the page cache before each ingest phase (STOW-RS, C-STORE); see the README")
    p.add_argument("--json", metavar="PATH", help="also write every raw figure to this JSON file")
    return p


def options_from(args: argparse.Namespace) -> Options:
    sizes = QUICK if args.quick else FULL
    pick = lambda name: getattr(args, name) if getattr(args, name) is not None else sizes[name]
    only = args.dimse_only or args.pixels_only
    render = None
    if args.pixels or args.pixels_only:
        render = rendering.RenderSizes(frames=pick("render_frames"))
        if args.quick:
            render.warm, render.cold, render.budget = 20, 10, 30.0
    return Options(pick("instances"), pick("studies"), pick("series_size"), args.queries, args.metadata_runs,
                   args.wado_runs, args.big_frames if args.big and not only else 0, args.wait_quiet,
                   dimse=args.dimse or args.dimse_only, dicomweb=not only, render=render,
                   drop_cache=not args.keep_page_cache)


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m benchmarks") -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["--"]:  # `minipacs bench -- --quick` still works
        arguments = arguments[1:]
    args = build_parser(prog).parse_args(arguments)
    try:
        overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.orthanc_set)}
    except ValueError as exc:
        print(f"--orthanc-set expects KEY=JSON: {exc}", file=sys.stderr)
        return 2
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run(args, options_from(args), overrides)
    except KeyboardInterrupt:
        print("interrupted: every server this run started has been stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _run(args: argparse.Namespace, options: Options, overrides: dict[str, Any]) -> int:
    if args.rounds < 1 or (args.url and args.rounds > 1):
        print("--rounds must be at least 1, and 1 with --url (a server seen again already holds the data)",
              file=sys.stderr)
        return 2
    plan = _plan(args)
    if not plan:
        return 2
    if options.dimse and (reason := _dimse_unavailable(args)):
        print(reason, file=sys.stderr)
        return 2
    env = environment()
    print(f"minipacs {env['minipacs_rev']} | Orthanc {env['orthanc']} | {env['nproc']} CPUs, {env['memory_gib']} GiB RAM "
          f"| Python {env['python']} | {env['date']}\n", flush=True)
    raw: list[dict[str, Any]] = []
    failed = 0
    with ExitStack() as stack:
        stack.enter_context(removal_at_end())
        files = stack.enter_context(temp_folder("bench-cstore-")) if options.dimse else None
        pixels = stack.enter_context(temp_folder("bench-pixels-")) if options.render else None
        data = prepare(options, files, pixels)
        for backend, targets in plan:
            measured: dict[str, list[TargetResult]] = {t: [] for t in targets}
            for round_index in range(args.rounds):
                # Alternate the order so that neither server always runs on the fresher machine.
                for target in targets if round_index % 2 == 0 else targets[::-1]:
                    with _server(args, options, backend, target, overrides) as server:
                        say(f"{_round_label(round_index, args.rounds)}{server.name} up ({server.description}) "
                            f"at {server.dicomweb_url}")
                        measured[target].append(run_target(server, data, options))
            results = {t: rounds.combine(r) for t, r in measured.items()}
            raw.append({"backend": backend, "results": {t: _raw(r) for t, r in results.items()},
                        "rounds": [{t: _raw(r[i]) for t, r in measured.items()} for i in range(args.rounds)]})
            for section, fails in _sections(backend, results, options, args, measured):
                failed += fails
                print(section, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "options": asdict(options),
                                               "runs": raw}, indent=2, default=str))
    return 1 if failed else 0


def _ingest_note(options: Options, results: dict[str, TargetResult]) -> list[str]:
    if not options.drop_cache:
        return ["the page cache was left as it was before the ingest phases (--keep-page-cache)"]
    if any(PAGE_CACHE_KEPT in r.server.notes for r in results.values()):
        return []  # that server note says so
    return [("before each ingest phase (STOW-RS, C-STORE) the page cache was dropped, so that both servers "
             "write into memory the machine holds (see \"Reading the figures\" in benchmarks/README.md)")]


# The throughput figures whose ratio to Orthanc's is given round by round (see _rounds_note).
DICOMWEB_ROUND_FIGURES: dict[str, Callable[[TargetResult], Throughput | None]] = {
    "STOW-RS 1 client": lambda r: r.stow_1,
    "STOW-RS 4 clients": lambda r: r.stow_4,
    "WADO-RS": lambda r: r.wado,
}
DIMSE_ROUND_FIGURES: dict[str, Callable[[TargetResult], Throughput | None]] = {
    "C-STORE 1 association": lambda r: r.dimse.store_1 if r.dimse else None,
    f"C-STORE {dimse.PARALLEL} associations": lambda r: r.dimse.store_4 if r.dimse else None,
    "C-MOVE": lambda r: r.dimse.move if r.dimse else None,
    "C-GET": lambda r: r.dimse.get if r.dimse else None,
}


def _rounds_note(args: argparse.Namespace, measured: dict[str, list[TargetResult]],
                 figures: dict[str, Callable[[TargetResult], Throughput | None]]) -> list[str]:
    if args.rounds == 1:
        return []
    notes = [(f"{args.rounds} rounds, each server started fresh in each, alternating which went first: throughput "
              "from the median round's time, latency percentiles over the samples of every round, CPU per unit "
              "the mean, memory the highest peak")]
    if "minipacs" in measured and "orthanc" in measured:
        spread = rounds.per_round_ratios(measured["minipacs"], measured["orthanc"], figures)
        if spread:
            notes.append(f"ratio in each round, in order: {spread}")
    return notes


def _round_label(index: int, total: int) -> str:
    return f"round {index + 1}/{total}: " if total > 1 else ""


def _plan(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    if args.url:
        return [("external", ["external"])]
    targets = [args.target] if args.target and args.target != "both" else ["minipacs", "orthanc"]
    if args.target is None and not orthanc_available():
        targets = ["minipacs"]
    if "orthanc" in targets and not orthanc_available():
        print("Orthanc is not installed (/usr/sbin/Orthanc with the DICOMweb plugin): measuring minipacs only; "
              "install the Debian packages orthanc, orthanc-dicomweb and orthanc-postgresql to compare",
              file=sys.stderr)
        targets = [t for t in targets if t != "orthanc"]
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    if "postgres" in backends and (reason := postgres_available()):
        print(f"{reason}: skipping the postgres pair", file=sys.stderr)
        backends.remove("postgres")
    return [(b, targets) for b in backends if targets]


def _dimse_unavailable(args: argparse.Namespace) -> str | None:
    if args.url:
        return "--dimse and --dimse-only need servers this benchmark starts (not --url)"
    if (args.instances or 0) and args.instances < dimse.PARALLEL:
        return f"--dimse needs --instances of at least {dimse.PARALLEL} (one file per parallel association)"
    if missing := dimse.missing_tools():
        return (f"the DIMSE figures need dcmtk ({', '.join(str(dimse.DCMTK / m) for m in missing)} missing): "
                "install the Debian package dcmtk")
    return None


def _server(args: argparse.Namespace, options: Options, backend: str, target: str,
            overrides: dict[str, Any]) -> AbstractContextManager[Server]:
    if target == "external":
        return _external(args.url.rstrip("/"), args.pid)
    receiver = free_port() if options.dimse else None  # the storescp C-MOVE sends to, registered at start
    if target == "orthanc":
        return running_orthanc(backend, overrides, receiver_port=receiver)
    return running_minipacs(backend, args.workers, qido_max_limit=1000, storage=args.minipacs_storage,
                            receiver_port=receiver)


class _external(AbstractContextManager[Server]):
    def __init__(self, url: str, pid: int | None) -> None:
        self.server = Server("server", url, pid, "already running, started elsewhere")

    def __enter__(self) -> Server:
        return self.server

    def __exit__(self, *exc: object) -> None:
        return None


def _sections(backend: str, results: dict[str, TargetResult], options: Options,
              args: argparse.Namespace, measured: dict[str, list[TargetResult]]) -> list[tuple[str, int]]:
    sections = []
    if options.dicomweb:
        sections.append(_section(backend, results, options, args, measured))
    if options.dimse:
        sections.append(_dimse_section(backend, results, options, args, measured))
    if options.render:
        sections.append(_render_section(backend, results, options, args, measured))
    return sections


def _pair_title(backend: str, args: argparse.Namespace) -> str:
    return {"sqlite": "sqlite pair", "postgres": "postgres pair", "external": f"server at {args.url}"}[backend]


def _section(backend: str, results: dict[str, TargetResult], options: Options, args: argparse.Namespace,
             measured: dict[str, list[TargetResult]]) -> tuple[str, int]:
    mine = results.get("minipacs") or results.get("external")
    theirs = results.get("orthanc")
    rows = report.build_rows(mine, theirs, options.studies)
    names = (mine.server.name if mine else "minipacs", "Orthanc")
    notes = [f"{r.server.name}: {r.server.description}" for r in results.values()]
    notes += [note for r in results.values() for note in r.server.notes]
    notes.append("ratio = minipacs / Orthanc (throughput: higher is better; latency and memory: lower is better)")
    notes += _ingest_note(options, results)
    notes += _rounds_note(args, measured, DICOMWEB_ROUND_FIGURES)
    passed, failed = report.tally(rows)
    title = _pair_title(backend, args)
    title += f" ({options.instances} instances, {options.studies:,} studies, {options.series_size}-instance series)"
    notes.append(f"targets: {passed} PASS, {failed} FAIL")
    return report.render(title, names, rows, notes), failed


def _dimse_section(backend: str, results: dict[str, TargetResult], options: Options,
                   args: argparse.Namespace, measured: dict[str, list[TargetResult]]) -> tuple[str, int]:
    mine, theirs = results.get("minipacs"), results.get("orthanc")
    rows = report.build_dimse_rows(mine, theirs, options.studies, options.series_size)
    notes = [f"{r.server.name}: {r.server.description}" for r in results.values()]
    if options.dicomweb:  # the other section already lists them
        notes = []
    notes += [
        (f"C-STORE: /usr/bin/storescu (dcmtk), one process per association, each sending a folder (`+sd`) of "
         f"files written beforehand ({options.instances} files over 1 association; {options.instances} others, a "
         f"quarter per process, over {dimse.PARALLEL}); the clock runs from the first process start to the last exit"),
        (f"C-ECHO and C-FIND: a pynetdicom {_pynetdicom_version()} SCU in the benchmark process (with minipacs's "
         "reactor, pacs/dimse/reactor.py: stock pynetdicom polls every millisecond, and a request racing its "
         "reactor could wait out the DIMSE timeout), Study Root, "
         f"{options.queries} queries of each kind after 2 warm-ups, all on one association; time from sending the "
         f"request to the final response, {len(dimse.FIND_KEYS)} return keys; the C-ECHO row is the round-trip "
         "floor of this client and the server's DIMSE stack"),
        (f"C-MOVE: /usr/bin/movescu to a /usr/bin/storescp on loopback that writes the files; C-GET: "
         f"/usr/bin/getscu writing to a folder; wall time of the movescu/getscu process, median of "
         f"{options.wado_runs} runs"),
        ("dcmtk runs with TCP_NODELAY=1 and its default PDU size (16 KB receive); Orthanc at its defaults "
         "(MaximumPduLength 16384), minipacs at its defaults (MINIPACS_DICOM_MAX_PDU 262144)"),
    ]
    notes += [note for r in results.values() if r.dimse for note in r.dimse.notes]
    notes.append("ratio = minipacs / Orthanc (throughput: higher is better; latency: lower is better)")
    notes += _ingest_note(options, results)
    notes += _rounds_note(args, measured, DIMSE_ROUND_FIGURES)
    passed, failed = report.tally(rows)
    notes.append(f"targets: {passed} PASS, {failed} FAIL")
    title = (f"{_pair_title(backend, args)}, DIMSE ({options.instances} instances per "
             f"C-STORE figure, {options.studies:,} studies, {options.series_size}-instance series)")
    names = ("minipacs", "Orthanc")
    return report.render(title, names, rows, notes), failed


def _render_section(backend: str, results: dict[str, TargetResult], options: Options,
                    args: argparse.Namespace, measured: dict[str, list[TargetResult]]) -> tuple[str, int]:
    sizes = options.render
    assert sizes is not None
    mine = results.get("minipacs") or results.get("external")
    theirs = results.get("orthanc")
    rows = report.build_render_rows(mine, theirs, sizes.frames)
    notes = []
    if not options.dicomweb and not options.dimse:  # no other section lists them
        notes = [f"{r.server.name}: {r.server.description}" for r in results.values()]
        notes += [note for r in results.values() for note in r.server.notes]
    notes += [
        (f"GET .../instances/{{i}}/frames/{{f}}/rendered?window={rendering.WINDOW} (the files' own window; "
         "without it Orthanc renders the full range) and .../instances/{i}/thumbnail, one client, one request at "
         "a time, time until the whole image is read; 512x512 CT slices, 12 bits stored in 16"),
        (f"warm: the same request {sizes.warm} times after 2 warm-ups; cold: {sizes.cold} instances of each kind, "
         "each rendered once (never rendered before), JPEG-LS and JPEG 2000 files made by pydicom's encoders"),
        (f"memory: every instance of a {sizes.frames}-instance series, then every frame of a {sizes.frames}-frame "
         f"instance, rendered once in order (at most {sizes.budget:.0f} s each); peak summed VmRSS sampled every "
         "0.1 s during that phase"),
    ]
    notes += [note for r in results.values() if r.pixels for note in r.pixels.notes]
    notes.append("ratio = minipacs / Orthanc (latency and memory: lower is better)")
    notes += _rounds_note(args, measured, {})
    passed, failed = report.tally(rows)
    notes.append(f"targets: {passed} PASS, {failed} FAIL")
    title = f"{_pair_title(backend, args)}, rendering ({sizes.frames} frames for the memory figures)"
    names = (mine.server.name if mine else "minipacs", "Orthanc")
    return report.render(title, names, rows, notes), failed


def _pynetdicom_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pynetdicom")
    except PackageNotFoundError:
        return "(unknown version)"


def _raw(result: TargetResult) -> dict[str, Any]:
    data = asdict(result)
    for name in ("qido",):
        data[name] = {k: {**asdict(v), "p50": v.p50, "p95": v.p95} for k, v in getattr(result, name).items()}
    if result.metadata:
        data["metadata"] = {**asdict(result.metadata), "p50": result.metadata.p50, "p95": result.metadata.p95}
    if result.pixels is not None:
        data["pixels"]["percentiles"] = {k: {"p50": v.p50, "p95": v.p95}
                                         for k, v in result.pixels.figures.items() if v.samples_ms}
    if result.dimse is not None:
        latencies = {"echo": result.dimse.echo, **{f"find {k}": v for k, v in result.dimse.find.items()}}
        data["dimse"]["latency_percentiles"] = {k: {"p50": v.p50, "p95": v.p95} for k, v in latencies.items() if v}
    return data


def environment() -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30), 1),
        "python": platform.python_version(),
        "minipacs_rev": _git_rev(),
        "orthanc": orthanc_version(),
    }


def _git_rev() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
