"""benchmarks.rounds: several rounds of figures combined into one result."""

from __future__ import annotations

from pathlib import Path

from benchmarks.dimse import DimseResult
from benchmarks.__main__ import DICOMWEB_ROUND_FIGURES, DIMSE_ROUND_FIGURES
from benchmarks.rounds import combine, per_round_ratios
from benchmarks.runner import TargetResult
from benchmarks.servers import Server
from benchmarks.workloads import Latency, Throughput


def _round(seconds: float, samples: list[float], *, cpu: float, rss: int, move: float | None) -> TargetResult:
    server = Server("minipacs", f"http://127.0.0.1/{seconds}")
    dimse = DimseResult(move=Throughput(300, 3_000, move) if move is not None else None, notes=[f"n{seconds}"])
    return TargetResult(server, stow_4=Throughput(1000, 10_000, seconds), qido={"PatientID": Latency(samples, [1] * len(samples))},
                        dimse=dimse, peak_rss=rss, cpu={"stow_4": {"server": cpu, "instances": 1000.0}},
                        seeding={"qido": seconds})


def test_throughput_comes_from_the_median_round_not_the_best_or_the_mean() -> None:
    result = combine([_round(2.0, [1.0], cpu=1, rss=1, move=1.0), _round(9.0, [1.0], cpu=1, rss=1, move=1.0),
                      _round(3.0, [1.0], cpu=1, rss=1, move=1.0)])
    assert result.stow_4 is not None
    assert result.stow_4.seconds == 3.0
    assert result.stow_4.per_second == 1000 / 3.0
    assert result.seeding == {"qido": 3.0}


def test_latency_samples_are_pooled_so_p95_spans_every_round() -> None:
    fast = [1.0] * 19 + [2.0]
    slow = [10.0] * 20
    result = combine([_round(1.0, fast, cpu=1, rss=1, move=1.0), _round(1.0, slow, cpu=1, rss=1, move=1.0)])
    pooled = result.qido["PatientID"]
    assert len(pooled.samples_ms) == 40
    assert pooled.p95 == 10.0
    assert pooled.p50 == 2.0


def test_cpu_is_summed_memory_is_the_worst_peak_and_nested_results_combine() -> None:
    result = combine([_round(1.0, [1.0], cpu=2.0, rss=100, move=2.0), _round(1.0, [1.0], cpu=4.0, rss=300, move=None),
                      _round(1.0, [1.0], cpu=3.0, rss=200, move=4.0)])
    assert result.cpu == {"stow_4": {"server": 9.0, "instances": 3000.0}}
    assert result.peak_rss == 300
    assert result.dimse is not None and result.dimse.move is not None
    assert result.dimse.move.seconds == 3.0  # the round without the figure does not count
    assert result.dimse.notes == ["n1.0"]
    assert result.server.dicomweb_url == "http://127.0.0.1/1.0"


def test_each_rounds_ratio_is_listed_in_round_order() -> None:
    """The note under a multi-round table: minipacs / Orthanc per round, from each round's own
    pair of figures (not from the combined medians)."""
    mine = [_round(2.0, [1.0], cpu=1, rss=1, move=1.0), _round(4.0, [1.0], cpu=1, rss=1, move=2.0),
            _round(2.5, [1.0], cpu=1, rss=1, move=1.0)]
    theirs = [_round(2.2, [1.0], cpu=1, rss=1, move=0.5), _round(3.0, [1.0], cpu=1, rss=1, move=0.5),
              _round(2.5, [1.0], cpu=1, rss=1, move=0.5)]
    assert per_round_ratios(mine, theirs, DICOMWEB_ROUND_FIGURES) == "STOW-RS 4 clients 1.10x, 0.75x, 1.00x"
    assert per_round_ratios(mine, theirs, DIMSE_ROUND_FIGURES) == "C-MOVE 0.50x, 0.25x, 0.50x"
    # A figure missing from one round (or one server) is left out rather than half listed.
    theirs[1].dimse.move = None  # type: ignore[union-attr]
    assert per_round_ratios(mine, theirs, DIMSE_ROUND_FIGURES) == ""


def test_one_round_is_returned_as_is() -> None:
    only = _round(5.0, [1.0], cpu=1, rss=1, move=1.0)
    assert combine([only]) is only


def test_c_store_input_is_read_whole_before_the_clock_starts(tmp_path: Path) -> None:
    from benchmarks import dimse

    folders = [tmp_path / "a", tmp_path / "b"]
    for n, folder in enumerate(folders):
        folder.mkdir()
        (folder / "1.dcm").write_bytes(b"x" * (3 << 20) + bytes(n))
        (folder / "2.dcm").write_bytes(b"y" * 10)
    assert dimse.read_into_cache(folders) == 2 * (3 << 20) + 1 + 20
