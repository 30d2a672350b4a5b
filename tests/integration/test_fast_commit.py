"""The plain-SQL path for new instances of known series (pacs.index.fast_commit) on both
backends: it indexes what it can take whole, and leaves anything else untouched for the
general path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from pacs.dicom.instance import inspect_instance
from pacs.index.fast_commit import FastCommit
from pacs.index.repository import NewInstance, Outcome, _instance_values, fit_columns
from pacs.index.schema import instances
from pacs.services import Services
from tests.support.factories import make_series, to_bytes


def rows_for(tmp_path: Path, datasets: list[Dataset]) -> tuple[list[NewInstance], list[tuple[str, str, dict[str, Any]]]]:
    items, rows = [], []
    for n, ds in enumerate(datasets):
        path = tmp_path / f"{n}-{ds.SOPInstanceUID}.dcm"
        path.write_bytes(to_bytes(ds))
        item = NewInstance(inspect_instance(path), f"key-{ds.SOPInstanceUID}", path.stat().st_size)
        items.append(item)
        parsed = item.parsed
        rows.append((parsed.series_instance_uid, parsed.study_instance_uid, fit_columns(instances, _instance_values(item))))
    return items, rows


def count(services: Services) -> int:
    return services.index.counts()["instances"]


def test_new_instances_of_a_known_series_are_indexed(services: Services, tmp_path: Path) -> None:
    series = make_series(4, size=8)
    items, rows = rows_for(tmp_path, series)
    assert services.index.commit_instances(items[:1], "keep")[0].outcome is Outcome.STORED  # type: ignore[union-attr]
    fast = FastCommit(services.engine)
    assert fast.commit(rows[1:])
    assert count(services) == 4
    located = services.index.locate(series[0].StudyInstanceUID)
    assert sorted(i.sop_instance_uid for i in located) == sorted(ds.SOPInstanceUID for ds in series)
    assert services.index.metadata(series[0].StudyInstanceUID, series[0].SeriesInstanceUID, series[3].SOPInstanceUID)


def test_a_new_series_is_left_to_the_general_path(services: Services, tmp_path: Path) -> None:
    _, rows = rows_for(tmp_path, make_series(2, size=8))
    assert not FastCommit(services.engine).commit(rows)
    assert count(services) == 0


def test_a_batch_with_a_held_instance_is_left_whole(services: Services, tmp_path: Path) -> None:
    series = make_series(3, size=8)
    items, rows = rows_for(tmp_path, series)
    services.index.commit_instances(items[:2], "keep")
    assert not FastCommit(services.engine).commit([rows[2], rows[1]])  # the new one comes first
    assert count(services) == 2  # nothing of the batch stayed


def test_a_series_of_another_study_is_left_to_the_general_path(services: Services, tmp_path: Path) -> None:
    first = make_series(1, size=8)
    items, _ = rows_for(tmp_path, first)
    services.index.commit_instances(items, "keep")
    stray = make_series(1, size=8, SeriesInstanceUID=first[0].SeriesInstanceUID)  # another study
    _, rows = rows_for(tmp_path, stray)
    assert not FastCommit(services.engine).commit(rows)
    assert count(services) == 1
