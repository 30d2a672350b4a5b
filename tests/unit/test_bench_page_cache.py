"""benchmarks: the page cache is dropped before each ingest phase, when the machine allows it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks import runner
from benchmarks.memory import drop_page_cache
from benchmarks.servers import Server


def _cached_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Cached:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no Cached line in /proc/meminfo")


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping the page cache needs root")
def test_dropping_the_page_cache_frees_a_file_just_written(tmp_path: Path) -> None:
    size = 256 << 20
    with (tmp_path / "scratch").open("wb") as out:
        for _ in range(size >> 20):
            out.write(os.urandom(1 << 20))
    before = _cached_bytes()
    assert drop_page_cache()
    assert before - _cached_bytes() > size // 2


def test_ingest_phases_note_once_when_the_cache_cannot_be_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    dropped: list[bool] = []
    monkeypatch.setattr(runner, "drop_page_cache", lambda: dropped.append(True) or False)
    server = Server("minipacs", "http://127.0.0.1/x")
    options = runner.Options(1, 1, 1, 1, 1, 1, 0)
    runner._fresh_memory(server, options)
    runner._fresh_memory(server, options)
    assert len(dropped) == 2 and len([n for n in server.notes if "page cache" in n]) == 1

    kept = runner.Options(1, 1, 1, 1, 1, 1, 0, drop_cache=False)
    runner._fresh_memory(server, kept)
    assert len(dropped) == 2  # --keep-page-cache: not even tried
