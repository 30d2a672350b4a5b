"""Render results as a Markdown table per backend pair, with the targets and PASS/FAIL."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from benchmarks.dimse import FIND_KINDS, PARALLEL, DimseResult
from benchmarks.rendering import PixelResult, RenderFigure
from benchmarks.runner import QUERY_KINDS, TargetResult
from benchmarks.workloads import MB, Latency, Throughput

RSS_LIMIT = 300 * MB
QIDO_LIMIT_MS = 50.0
CFIND_LIMIT_MS = 50.0
METADATA_LIMIT_MS = 50.0
RENDER_COLD_LIMIT_MS = 25.0  # an uncompressed 512x512 CT frame, never rendered before, folder storage
RENDER_DECODE_LIMIT_MS = 60.0  # a JPEG-LS or JPEG 2000 frame, never rendered before
THUMBNAIL_LIMIT_MS = 10.0


@dataclass
class Row:
    label: str
    mine: str
    theirs: str
    ratio: str = ""
    target: str = ""
    verdict: str = ""


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def _ratio(mine: float | None, theirs: float | None) -> float | None:
    if mine is None or theirs is None or not theirs:
        return None
    return mine / theirs


def _x(ratio: float | None) -> str:
    return "" if ratio is None else f"{ratio:.2f}x"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else "PASS" if ok else "FAIL"


def _stow_row(label: str, m: Throughput | None, o: Throughput | None, target: bool, minimum: float = 1.0) -> Row:
    """Instances/s (MB/s); with ``target``, PASS when at least ``minimum`` times Orthanc's rate
    and nothing failed."""
    def fmt(t: Throughput | None) -> str:
        if t is None:
            return "-"
        failed = f", {t.failures} failed" if t.failures else ""
        return f"{_num(t.per_second)} ({_num(t.mb_per_second)} MB/s{failed})"

    ratio = _ratio(m.per_second if m else None, o.per_second if o else None)
    row = Row(label, fmt(m), fmt(o), _x(ratio))
    if target:
        row.target = f">= {minimum:.1f}x Orthanc"
        ok = None if ratio is None or m is None else ratio >= minimum and not m.failures
        row.verdict = _verdict(ok)
    return row


def _qido_row(kind: str, m: Latency | None, o: Latency | None, studies: int, *, label: str = "QIDO",
              limit_ms: float = QIDO_LIMIT_MS) -> Row:
    def fmt(lat: Latency | None) -> str:
        return "-" if lat is None else f"{_num(lat.p50)} / {_num(lat.p95)} ({_num(lat.median_results, 0)} hits)"

    ratio = _ratio(m.p95 if m else None, o.p95 if o else None)
    row = Row(f"{label} {kind}: p50 / p95 ms", fmt(m), fmt(o), _x(ratio),
              f"p95 <= 0.5x Orthanc and < {limit_ms:.0f} ms")
    if m is not None:
        absolute = m.p95 < limit_ms
        row.verdict = _verdict(absolute and (ratio is None or ratio <= 0.5))
        if ratio is None:
            row.verdict += " (abs. only)"
        if studies < 10_000:
            row.verdict += f" ({studies:,} studies)"
    return row


def _rss_row(label: str, mine: int | None, theirs: int | None) -> Row:
    ok = None if mine is None else mine < RSS_LIMIT

    def fmt(value: int | None) -> str:
        return "-" if value is None else _num(value / MB, 0)

    return Row(label, fmt(mine), fmt(theirs), _x(_ratio(mine, theirs)), f"< {RSS_LIMIT // MB} MB", _verdict(ok))


def _info_mb_row(label: str, mine: int | None, theirs: int | None) -> Row:
    def fmt(value: int | None) -> str:
        return "-" if value is None else _num(value / MB, 0)

    return Row(label, fmt(mine), fmt(theirs), _x(_ratio(mine, theirs)))


def _cpu_row(label: str, phase: str, unit: str, m: TargetResult | None, o: TargetResult | None) -> Row:
    """CPU milliseconds per unit of work (instance, MB) spent by the server, its S3 server and
    PostgreSQL."""
    def fmt(r: TargetResult | None) -> str:
        spent = r.cpu.get(phase, {}) if r else {}
        if not spent.get(unit) or not spent.get("wall"):
            return "-"
        text = _num(spent["server"] * 1000 / spent[unit], 2)
        if "server_kernel" in spent:
            text += f" (kernel {_num(spent['server_kernel'] * 1000 / spent[unit], 2)})"
        for key, name in (("helpers", "S3"), ("database", "PostgreSQL")):
            if spent.get(key, 0) > 0:
                text += f" +{_num(spent[key] * 1000 / spent[unit], 2)} {name}"
        return text
    return Row(label, fmt(m), fmt(o))


def build_rows(m: TargetResult | None, o: TargetResult | None, studies: int) -> list[Row]:
    rows = [
        _stow_row("STOW-RS 1 client: instances/s (MB/s)", _get(m, "stow_1"), _get(o, "stow_1"), False),
        _stow_row("STOW-RS 4 clients: instances/s (MB/s)", _get(m, "stow_4"), _get(o, "stow_4"), True),
        _cpu_row("(STOW-RS 4 clients: server CPU ms per instance)", "stow_4", "instances", m, o),
    ]
    for kind in QUERY_KINDS:
        mine, theirs = (m.qido.get(kind) if m else None), (o.qido.get(kind) if o else None)
        if mine or theirs:
            rows.append(_qido_row(kind, mine, theirs, studies))
    rows += _read_rows(m, o)
    rows += _memory_rows(m, o)
    for phase in ("series", "studies"):
        ms, os_ = (m.seeding.get(phase) if m else None), (o.seeding.get(phase) if o else None)
        rows.append(Row(f"(seeding the {phase}, s; not a target)", _num(ms), _num(os_), _x(_ratio(ms, os_))))
    return rows


def _get(result: TargetResult | None, name: str) -> Any:
    return None if result is None else getattr(result, name)


def _read_rows(m: TargetResult | None, o: TargetResult | None) -> list[Row]:
    mw, ow = _get(m, "wado"), _get(o, "wado")
    mine, theirs = (mw.mb_per_second if mw else None), (ow.mb_per_second if ow else None)
    wado_ratio = _ratio(mine, theirs)
    mm, om = _get(m, "metadata"), _get(o, "metadata")

    def meta(lat: Latency | None) -> str:
        return "-" if lat is None else f"{_num(lat.p50)} / {_num(lat.p95)}"

    return [
        Row("WADO-RS whole series: MB/s", _num(mine), _num(theirs), _x(wado_ratio), ">= 1.0x Orthanc",
            _verdict(None if wado_ratio is None else wado_ratio >= 1.0)),
        _cpu_row("(WADO-RS: server CPU ms per MB)", "wado", "mb", m, o),
        Row("Series /metadata: p50 / p95 ms", meta(mm), meta(om),
            _x(_ratio(mm.p50 if mm else None, om.p50 if om else None)), f"p50 < {METADATA_LIMIT_MS:.0f} ms",
            _verdict(None if mm is None else mm.p50 < METADATA_LIMIT_MS)),
    ]


def _memory_rows(m: TargetResult | None, o: TargetResult | None) -> list[Row]:
    rows = [
        _rss_row("Peak server memory (PSS), whole run (MB)", _get(m, "peak_rss"), _get(o, "peak_rss")),
        _info_mb_row("(summed peak RSS of its processes, VmHWM, MB)", _get(m, "peak_hwm"), _get(o, "peak_hwm")),
    ]
    bigs = [t for t in (_get(m, "big"), _get(o, "big")) if t is not None]
    if not bigs:
        return rows

    def big(t: Throughput | None) -> str:
        if t is None:
            return "-"
        return f"{_num(t.seconds)} s ({_num(t.mb_per_second)} MB/s)" + (" FAILED" if t.failures else "")

    size = max(t.bytes for t in bigs) / 1e9
    name = f"{size:.1f} GB" if size >= 1 else f"{size * 1000:.0f} MB"
    rows.append(Row(f"{name} STOW-RS (one request): time", big(_get(m, "big")), big(_get(o, "big"))))
    rows.append(_rss_row(f"Server memory (PSS) during the {name} STOW (MB)", _get(m, "big_rss"), _get(o, "big_rss")))
    return rows


def build_dimse_rows(m: TargetResult | None, o: TargetResult | None, studies: int, series_size: int) -> list[Row]:
    md: DimseResult | None = _get(m, "dimse")
    od: DimseResult | None = _get(o, "dimse")

    def pick(result: DimseResult | None, name: str) -> Any:
        return None if result is None else getattr(result, name)

    def echo(lat: Latency | None) -> str:
        return "-" if lat is None else f"{_num(lat.p50, 2)} / {_num(lat.p95, 2)}"

    me, oe = pick(md, "echo"), pick(od, "echo")
    rows = [
        _stow_row("C-STORE 1 association: instances/s (MB/s)", pick(md, "store_1"), pick(od, "store_1"), True),
        _stow_row(f"C-STORE {PARALLEL} associations: instances/s (MB/s)", pick(md, "store_4"),
                  pick(od, "store_4"), True),
        _cpu_row(f"(C-STORE {PARALLEL} associations: server CPU ms per instance)", "store_4", "instances", m, o),
        Row("(C-ECHO round trip: p50 / p95 ms)", echo(me), echo(oe),
            _x(_ratio(me.p50 if me else None, oe.p50 if oe else None))),
    ]
    for kind in FIND_KINDS:
        mine = md.find.get(kind) if md else None
        theirs = od.find.get(kind) if od else None
        if mine or theirs:
            rows.append(_qido_row(kind, mine, theirs, studies, label="C-FIND", limit_ms=CFIND_LIMIT_MS))
    rows += [
        _stow_row(f"C-MOVE series ({series_size} instances) to storescp: instances/s (MB/s)", pick(md, "move"),
                  pick(od, "move"), True, minimum=0.5),
        _cpu_row("(C-MOVE: server CPU ms per instance)", "move", "instances", m, o),
        _stow_row(f"C-GET series ({series_size} instances) with getscu: instances/s (MB/s)", pick(md, "get"),
                  pick(od, "get"), True, minimum=0.5),
    ]
    return rows


def build_render_rows(m: TargetResult | None, o: TargetResult | None, frames: int) -> list[Row]:
    mp: PixelResult | None = _get(m, "pixels")
    op: PixelResult | None = _get(o, "pixels")

    def pick(result: PixelResult | None, key: str) -> RenderFigure | None:
        return None if result is None else result.figures.get(key)

    def latency_row(key: str, label: str, *, ratio_max: float | None = None, limit_ms: float | None = None) -> Row:
        mine, theirs = pick(mp, key), pick(op, key)
        ratio = _ratio(_p50(mine), _p50(theirs))
        row = Row(f"{label}: p50 / p95 ms", _latency(mine), _latency(theirs), _x(ratio))
        if ratio_max is not None:
            row.target = f"p50 <= {ratio_max:.1f}x Orthanc"
            row.verdict = _verdict(None if ratio is None else ratio <= ratio_max)
        elif limit_ms is not None:
            row.target = f"p50 < {limit_ms:.0f} ms"
            p50 = _p50(mine)
            row.verdict = _verdict(None if p50 is None else p50 < limit_ms)
        return row

    rows = [
        latency_row("jpeg_warm", "Rendered JPEG 512x512 CT frame, warm", ratio_max=1.0),
        latency_row("jpeg_cold", "Rendered JPEG 512x512 CT frame, cold", limit_ms=RENDER_COLD_LIMIT_MS),
        latency_row("png_warm", "Rendered PNG 512x512 CT frame, warm", ratio_max=0.5),
        latency_row("jpegls_cold", "JPEG-LS lossless frame as JPEG, cold", limit_ms=RENDER_DECODE_LIMIT_MS),
        latency_row("j2k_cold", "JPEG 2000 lossless frame as JPEG, cold", limit_ms=RENDER_DECODE_LIMIT_MS),
        latency_row("thumbnail_warm", "Instance thumbnail, warm", limit_ms=THUMBNAIL_LIMIT_MS),
    ]
    for key, what, phase in (("series_walk", f"{frames:,}-instance series", "render_series_walk"),
                             ("multiframe_walk", f"{frames:,}-frame instance", "render_multiframe_walk")):
        mine, theirs = pick(mp, key), pick(op, key)
        peak = _rss_row(f"Peak server memory (PSS) rendering every frame of a {what} (MB)", _peak(mine), _peak(theirs))
        peak.mine, peak.theirs = _walked(peak.mine, mine), _walked(peak.theirs, theirs)
        rows += [peak, Row(f"({what}: p50 / p95 ms per frame)", _latency(mine), _latency(theirs),
                           _x(_ratio(_p50(mine), _p50(theirs)))),
                 _cpu_row(f"({what}: server CPU ms per frame)", phase, "frames", m, o)]
    ms, os_ = (mp.seeding if mp else None), (op.seeding if op else None)
    rows.append(Row("(storing the rendering data, s; not a target)", _num(ms), _num(os_), _x(_ratio(ms, os_))))
    return rows


def _p50(figure: RenderFigure | None) -> float | None:
    return figure.p50 if figure is not None and figure.samples_ms else None


def _latency(figure: RenderFigure | None) -> str:
    if figure is None or not figure.samples_ms:
        return "-"
    return f"{_num(figure.p50)} / {_num(figure.p95)}"


def _peak(figure: RenderFigure | None) -> int | None:
    return None if figure is None or not figure.samples_ms else figure.peak_rss


def _walked(cell: str, figure: RenderFigure | None) -> str:
    """A walk that did not reach the end says how far it got."""
    if figure is None or cell == "-" or len(figure.samples_ms) == figure.requested:
        return cell
    return f"{cell} ({len(figure.samples_ms):,} of {figure.requested:,} frames in {figure.seconds:.0f} s)"


def render(title: str, names: tuple[str, str], rows: list[Row], notes: list[str]) -> str:
    header = ["Figure", names[0], names[1], "ratio", "target", "verdict"]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.label, row.mine, row.theirs, row.ratio, row.target, row.verdict]
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines.append("")
        lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def tally(rows: list[Row]) -> tuple[int, int]:
    passed = sum(r.verdict.startswith("PASS") for r in rows)
    failed = sum(r.verdict.startswith("FAIL") for r in rows)
    return passed, failed
