"""One result out of several rounds of the same measurements (``--rounds``).

One run per server leaves a ratio near 1.0 at the mercy of a noisy machine: back-to-back runs of
the same code differ by 20 to 30% here. Each round starts fresh servers, in alternating order, and
the figures are combined so that one slow or fast round cannot decide a verdict:

- throughput: the median time over the rounds (the same work is done in each);
- latency: every sample of every round pooled, so p95 is taken over all the requests;
- CPU: summed over the rounds, so the per-instance figure is the mean;
- memory: the highest peak of any round;
- anything else (notes, the server description): the first round's.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable
from typing import Any, TypeVar

from benchmarks.rendering import RenderFigure
from benchmarks.workloads import Latency, Throughput

T = TypeVar("T")

PEAK_FIELDS = frozenset({"peak_rss", "peak_hwm", "big_rss"})


def combine(rounds: list[T]) -> T:
    """The rounds' results (dataclasses of the same type) as one result of that type."""
    first = rounds[0]
    if len(rounds) == 1:
        return first
    return _combine_value(rounds, name="")  # type: ignore[no-any-return]


def _combine_value(values: list[Any], *, name: str) -> Any:
    present = [v for v in values if v is not None]
    if not present:
        return None
    first = present[0]
    if isinstance(first, Throughput):
        return _throughput(present)
    if isinstance(first, Latency):
        return _latency(present)
    if isinstance(first, RenderFigure):
        return _render_figure(present)
    if name == "cpu":
        return _summed_cpu(present)
    if name in PEAK_FIELDS:
        return max(present)
    if isinstance(first, dict):
        keys = list(dict.fromkeys(k for v in present for k in v))
        return {k: _combine_value([v.get(k) for v in present], name=k) for k in keys}
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        fields = {f.name: _combine_value([getattr(v, f.name) for v in present], name=f.name)
                  for f in dataclasses.fields(first)}
        return dataclasses.replace(first, **fields)
    if isinstance(first, float):  # seconds spent seeding
        return statistics.median(present)
    return first


def _throughput(rounds: list[Throughput]) -> Throughput:
    failures = sum(t.failures for t in rounds)
    first_error = next((t.first_error for t in rounds if t.first_error), "")
    return Throughput(rounds[0].items, rounds[0].bytes, statistics.median(t.seconds for t in rounds),
                      failures, first_error)


def _latency(rounds: list[Latency]) -> Latency:
    return Latency([s for r in rounds for s in r.samples_ms], [n for r in rounds for n in r.results],
                   max(r.response_bytes for r in rounds), rounds[0].encoding)


def _render_figure(rounds: list[RenderFigure]) -> RenderFigure:
    peaks = [r.peak_rss for r in rounds if r.peak_rss is not None]
    return RenderFigure([s for r in rounds for s in r.samples_ms], sum(r.requested for r in rounds),
                        rounds[0].image_bytes, next((r.error for r in rounds if r.error), ""),
                        statistics.median(r.seconds for r in rounds), max(peaks) if peaks else None)


def _summed_cpu(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    total: dict[str, dict[str, float]] = {}
    for phases in rounds:
        for phase, spent in phases.items():
            into = total.setdefault(phase, {})
            for key, seconds in spent.items():
                into[key] = into.get(key, 0.0) + seconds
    return total


def per_round_ratios(mine: list[Any], theirs: list[Any], figures: dict[str, Callable[[Any], Throughput | None]]) -> str:
    """Each round's minipacs / Orthanc throughput ratio per figure ("STOW-RS 4 clients 1.04x,
    0.95x, 1.18x; ..."), so that a reader sees how far the rounds behind a median spread.
    Figures missing from any round are left out."""
    parts = []
    for label, pick in figures.items():
        ratios = []
        for m, o in zip(mine, theirs, strict=True):
            ours, other = pick(m), pick(o)
            if ours is None or other is None or ours.seconds <= 0 or other.seconds <= 0 or not other.bytes:
                break
            ratios.append(f"{ours.bytes / ours.seconds / (other.bytes / other.seconds):.2f}x")
        else:
            if ratios:
                parts.append(f"{label} {', '.join(ratios)}")
    return "; ".join(parts)
