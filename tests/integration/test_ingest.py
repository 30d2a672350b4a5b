"""IngestService on both backends: validate -> blob -> index, duplicate policies, clean-up."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from pacs.dicom.attributes import Level
from pacs.dicom.query import Query
from pacs.errors import (
    DatabaseUnavailable,
    DuplicateInstance,
    InvalidDicom,
    NotFound,
    StorageUnavailable,
    StudyMismatch,
)
from pacs.index.repository import IndexRepository, Outcome
from pacs.ingest import IngestService
from pacs.services import Services
from tests.conftest import make_settings
from tests.support.factories import make_ct, make_series, to_bytes
from tests.support.storage_listing import blob_keys


def write(directory: Path, *datasets: Dataset) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        path = directory / f"{i:03d}-{ds.SOPInstanceUID}.dcm"
        path.write_bytes(to_bytes(ds))
        paths.append(path)
    return paths




def read_blob(services: Services, key: str) -> bytes:
    return b"".join(services.blobs.iter_range(key))


def stored_blob(services: Services, ds: Dataset) -> bytes:
    [stored] = services.index.locate(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    return read_blob(services, stored.blob_key)


def outcomes(reports: list[Any]) -> list[Outcome | str]:
    return [r.outcome if r.ok else type(r.error).__name__ for r in reports]


@pytest.fixture
def ingest(services: Services) -> IngestService:
    return services.ingest


def test_batch_is_stored_and_indexed(services: Services, ingest: IngestService, tmp_path: Path) -> None:
    instances = make_series(4, PatientID="ING-1")
    paths = write(tmp_path / "in", *instances)
    reports = ingest.store_files(paths)
    assert outcomes(reports) == [Outcome.STORED] * 4
    assert [r.sop_instance_uid for r in reports] == [ds.SOPInstanceUID for ds in instances]
    assert all(r.study_instance_uid == instances[0].StudyInstanceUID for r in reports)
    assert services.index.counts() == {"patients": 1, "studies": 1, "series": 1, "instances": 4}
    for ds in instances:
        assert stored_blob(services, ds) == to_bytes(ds)
    # Without consume the sources stay where they were.
    assert all(p.exists() for p in paths)
    assert len(blob_keys(services)) == 4
    # Each blob key names study/series/instance, and is unique per write.
    keys = blob_keys(services)
    assert all(k.startswith(f"{instances[0].StudyInstanceUID}/{instances[0].SeriesInstanceUID}/") for k in keys)


def test_consume_removes_every_source_whatever_happened(services: Services, ingest: IngestService, tmp_path: Path) -> None:
    good = make_ct()
    paths = write(tmp_path / "in", good, make_ct(SOPClassUID=None))
    junk = tmp_path / "in" / "junk.bin"
    junk.write_bytes(b"\x00" * 300)
    reports = ingest.store_files([*paths, junk], consume=True)
    assert outcomes(reports) == [Outcome.STORED, "InvalidDicom", "InvalidDicom"]
    assert [p for p in (tmp_path / "in").iterdir()] == []
    assert stored_blob(services, good) == to_bytes(good)


def test_known_instance_is_not_written_again_with_keep(services: Services, ingest: IngestService, tmp_path: Path) -> None:
    ds = make_ct()
    [first] = ingest.store_files(write(tmp_path / "a", ds))
    keys = blob_keys(services)
    changed = make_ct(seed=7, SOPInstanceUID=ds.SOPInstanceUID, StudyInstanceUID=ds.StudyInstanceUID,
                      SeriesInstanceUID=ds.SeriesInstanceUID)
    [second] = ingest.store_files(write(tmp_path / "b", changed), consume=True)
    assert (first.outcome, second.outcome) == (Outcome.STORED, Outcome.ALREADY_STORED)
    assert blob_keys(services) == keys
    assert stored_blob(services, ds) == to_bytes(ds)
    assert list((tmp_path / "b").iterdir()) == []


def test_same_instance_twice_in_one_batch(services: Services, ingest: IngestService, tmp_path: Path) -> None:
    ds = make_ct()
    paths = write(tmp_path / "in", ds, ds)
    assert outcomes(ingest.store_files(paths)) == [Outcome.STORED, Outcome.ALREADY_STORED]
    assert services.index.counts()["instances"] == 1
    assert len(blob_keys(services)) == 1


def test_expected_study_refuses_others(services: Services, ingest: IngestService, tmp_path: Path) -> None:
    ours, other = make_ct(), make_ct()
    reports = ingest.store_files(write(tmp_path / "in", ours, other), expected_study=ours.StudyInstanceUID)
    assert outcomes(reports) == [Outcome.STORED, "StudyMismatch"]
    assert isinstance(reports[1].error, StudyMismatch)
    assert reports[1].sop_instance_uid == other.SOPInstanceUID
    assert services.index.counts()["instances"] == 1
    assert len(blob_keys(services)) == 1


def test_bare_data_set_is_stored_with_a_file_header(services: Services, ingest: IngestService, tmp_path: Path) -> None:
    ds = make_ct()
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    bare = copy.deepcopy(ds)
    del bare.file_meta
    write_dataset(fp, bare)
    source = tmp_path / "bare.dcm"
    source.write_bytes(fp.getvalue())
    [report] = ingest.store_files([source])
    assert report.outcome is Outcome.STORED
    data = stored_blob(services, ds)
    assert data[128:132] == b"DICM" and data.endswith(fp.getvalue())
    assert source.read_bytes() == fp.getvalue()  # not consumed, not changed
    [stored] = services.index.locate(ds.StudyInstanceUID)
    assert stored.blob_size == len(data)
    # The frame layout points into the stored file, header included.
    layout = stored.frame_layout
    assert layout is not None
    assert data[layout["offset"] : layout["offset"] + layout["frame_length"]] == ds.PixelData
    assert list(services.settings.data_dir.joinpath("tmp").iterdir()) == []


def test_delete_removes_rows_parents_and_blobs(services: Services, ingest: IngestService, tmp_path: Path) -> None:
    first, second = make_series(2)
    other = make_ct(PatientID="OTHER")
    ingest.store_files(write(tmp_path / "in", first, second, other))
    assert ingest.delete(first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPInstanceUID) == 1
    assert services.index.counts() == {"patients": 2, "studies": 2, "series": 2, "instances": 2}
    assert ingest.delete(first.StudyInstanceUID) == 1
    assert services.index.counts() == {"patients": 1, "studies": 1, "series": 1, "instances": 1}
    assert len(blob_keys(services)) == 1
    assert stored_blob(services, other) == to_bytes(other)
    with pytest.raises(NotFound):
        ingest.delete(first.StudyInstanceUID)


# ---- duplicate policies, both backends ---------------------------------------------------------


@pytest.fixture(params=["sqlite-fs", "postgres-s3"])
def policy_services(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    def build(policy: str) -> Iterator[Services]:
        for settings in make_settings(request.param, tmp_path, request, duplicate_policy=policy):
            services = Services.build(settings)
            try:
                yield services
            finally:
                services.close()

    return build


def test_overwrite_replaces_row_and_blob(policy_services: Any, tmp_path: Path) -> None:
    for services in policy_services("overwrite"):
        ds = make_ct(PatientName="First^Copy")
        services.ingest.store_files(write(tmp_path / "a", ds))
        [old_key] = blob_keys(services)
        changed = make_ct(seed=3, SOPInstanceUID=ds.SOPInstanceUID, StudyInstanceUID=ds.StudyInstanceUID,
                          SeriesInstanceUID=ds.SeriesInstanceUID, PatientName="Second^Copy")
        [report] = services.ingest.store_files(write(tmp_path / "b", changed))
        assert report.outcome is Outcome.REPLACED
        assert stored_blob(services, ds) == to_bytes(changed)
        assert old_key not in blob_keys(services) and len(blob_keys(services)) == 1
        [document] = services.index.metadata(ds.StudyInstanceUID)
        assert "Second^Copy" in document and "First^Copy" not in document


def test_overwrite_into_another_series_leaves_no_empty_parents(policy_services: Any, tmp_path: Path) -> None:
    for services in policy_services("overwrite"):
        ds = make_ct(PatientID="MOVED-FROM")
        services.ingest.store_files(write(tmp_path / "a", ds))
        moved = make_ct(SOPInstanceUID=ds.SOPInstanceUID, PatientID="MOVED-TO")
        [report] = services.ingest.store_files(write(tmp_path / "b", moved))
        assert report.outcome is Outcome.REPLACED
        assert services.index.counts() == {"patients": 1, "studies": 1, "series": 1, "instances": 1}
        with pytest.raises(NotFound):
            services.index.locate(ds.StudyInstanceUID)
        [stored] = services.index.locate(moved.StudyInstanceUID)
        assert stored.series_instance_uid == moved.SeriesInstanceUID


def test_reject_refuses_known_and_batch_duplicates(policy_services: Any, tmp_path: Path) -> None:
    for services in policy_services("reject"):
        ds = make_ct()
        assert outcomes(services.ingest.store_files(write(tmp_path / "a", ds))) == [Outcome.STORED]
        keys = blob_keys(services)
        new = make_ct()
        reports = services.ingest.store_files(write(tmp_path / "b", ds, new, new))
        assert outcomes(reports) == ["DuplicateInstance", Outcome.STORED, "DuplicateInstance"]
        assert isinstance(reports[0].error, DuplicateInstance)
        assert services.index.counts()["instances"] == 2
        assert len(blob_keys(services) - keys) == 1


def test_series_uid_of_another_study_is_refused(services: Services, ingest: IngestService, tmp_path: Path) -> None:
    # A series belongs to one study: filing an instance under another study's series would
    # make it unreachable by the URL its own StudyInstanceUID gives.
    ds = make_ct()
    ingest.store_files(write(tmp_path / "a", ds))
    stray = make_ct(SeriesInstanceUID=ds.SeriesInstanceUID)
    good = make_ct(StudyInstanceUID=ds.StudyInstanceUID, SeriesInstanceUID=ds.SeriesInstanceUID)
    reports = ingest.store_files(write(tmp_path / "b", stray, good))
    assert outcomes(reports) == ["StudyMismatch", Outcome.STORED]
    assert stray.StudyInstanceUID in str(reports[0].error)
    with pytest.raises(NotFound):
        services.index.locate(stray.StudyInstanceUID)
    assert len(services.index.locate(ds.StudyInstanceUID)) == 2
    assert len(blob_keys(services)) == 2


def test_copy_claiming_another_place_is_refused_with_keep(services: Services, ingest: IngestService, tmp_path: Path) -> None:
    # Same SOP Instance UID, another study: not the same object, so "already stored" would be
    # a false promise that it can be found under its own study.
    ds = make_ct()
    ingest.store_files(write(tmp_path / "a", ds))
    elsewhere = make_ct(SOPInstanceUID=ds.SOPInstanceUID)
    other_series = make_ct(SOPInstanceUID=ds.SOPInstanceUID, StudyInstanceUID=ds.StudyInstanceUID)
    reports = ingest.store_files(write(tmp_path / "b", elsewhere, other_series))
    assert outcomes(reports) == ["StudyMismatch", "StudyMismatch"]
    assert ds.StudyInstanceUID in str(reports[0].error)
    assert services.index.counts()["instances"] == 1
    assert len(blob_keys(services)) == 1
    assert stored_blob(services, ds) == to_bytes(ds)


def test_copy_claiming_another_place_within_one_batch(services: Services, ingest: IngestService, tmp_path: Path) -> None:
    ds = make_ct()
    elsewhere = make_ct(SOPInstanceUID=ds.SOPInstanceUID)
    reports = ingest.store_files(write(tmp_path / "a", ds, elsewhere, ds))
    assert outcomes(reports) == [Outcome.STORED, "StudyMismatch", Outcome.ALREADY_STORED]
    assert services.index.counts() == {"patients": 1, "studies": 1, "series": 1, "instances": 1}
    assert len(blob_keys(services)) == 1


# ---- failures -------------------------------------------------------------------------------------


def test_index_failure_removes_written_blobs(
    services: Services, ingest: IngestService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: IndexRepository, items: Any, policy: str) -> Any:
        raise DatabaseUnavailable("database unavailable: connection refused")

    monkeypatch.setattr(IndexRepository, "commit_instances", broken)
    reports = ingest.store_files(write(tmp_path / "in", *make_series(3)))
    assert outcomes(reports) == ["DatabaseUnavailable"] * 3
    assert blob_keys(services) == set()
    monkeypatch.undo()
    assert services.index.counts()["instances"] == 0


def test_unexpected_index_error_removes_written_blobs_and_propagates(
    services: Services, ingest: IngestService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: IndexRepository, items: Any, policy: str) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(IndexRepository, "commit_instances", broken)
    with pytest.raises(RuntimeError):
        ingest.store_files(write(tmp_path / "in", *make_series(2)), consume=True)
    assert blob_keys(services) == set()
    assert list((tmp_path / "in").iterdir()) == []


def test_storage_failure_writes_no_row(
    services: Services, ingest: IngestService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Any, key: str, path: Path, *, move: bool = False, synced: bool = False) -> int:
        raise StorageUnavailable("cannot store: no space left on device")

    monkeypatch.setattr(type(services.blobs), "put_file", broken)
    paths = write(tmp_path / "in", *make_series(2))
    reports = ingest.store_files(paths, consume=True)
    assert outcomes(reports) == ["StorageUnavailable"] * 2
    assert services.index.counts()["instances"] == 0
    assert [p for p in paths if p.exists()] == []
    assert list(services.settings.data_dir.joinpath("tmp").iterdir()) == []


def test_os_error_while_writing_is_a_storage_failure(
    services: Services, ingest: IngestService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Any, key: str, path: Path, *, move: bool = False, synced: bool = False) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(services.blobs), "put_file", broken)
    [report] = ingest.store_files(write(tmp_path / "in", make_ct()))
    assert isinstance(report.error, StorageUnavailable)
    assert "No space left on device" in str(report.error)
    assert services.index.counts()["instances"] == 0


def test_invalid_file_reports_why(ingest: IngestService, tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(b"plain text, not DICOM\n" * 20)
    [report] = ingest.store_files([path])
    assert isinstance(report.error, InvalidDicom)
    assert report.sop_instance_uid is None
    assert str(report.error)


def test_unreadable_source_is_refused_alone(services: Services, ingest: IngestService, tmp_path: Path) -> None:
    [good] = write(tmp_path / "in", make_ct())
    reports = ingest.store_files([tmp_path / "in" / "vanished.dcm", good])
    assert outcomes(reports) == ["InvalidInput", Outcome.STORED]
    assert "cannot read the file" in str(reports[0].error)
    assert services.index.counts()["instances"] == 1


def test_indexed_attributes_are_searchable(services: Services, ingest: IngestService, tmp_path: Path) -> None:
    ds = make_ct(PatientName="Searchable^Sam", AccessionNumber="ACC-42", StudyDescription="CHEST")
    ingest.store_files(write(tmp_path / "in", *[ds, make_ct(StudyInstanceUID=ds.StudyInstanceUID, Modality="MR")]))
    [row] = services.index.search(Query(level=Level.STUDY))
    assert row["study_instance_uid"] == ds.StudyInstanceUID
    assert (row["patient_name"], row["patient_name_norm"]) == ("Searchable^Sam", "SEARCHABLE^SAM")
    assert (row["accession_number"], row["study_description"]) == ("ACC-42", "CHEST")
    assert sorted(row["modalities_in_study"]) == ["CT", "MR"]
    assert row["number_of_study_related_series"] == 2
    assert row["number_of_study_related_instances"] == 2


def test_concurrent_batches_creating_the_same_patients_in_opposite_orders(services: Services, tmp_path: Path) -> None:
    """Two index batches that create the same new patients, one in the other's reverse order,
    both commit (on PostgreSQL each waited on the other's new rows until one was aborted as a
    deadlock, and its instances were refused as out of resources)."""
    import threading

    from pacs.dicom.instance import inspect_instance
    from pacs.index.repository import NewInstance

    def batch(paths: list[Path]) -> list[NewInstance]:
        return [NewInstance(inspect_instance(p), f"key-{p.name}", p.stat().st_size) for p in paths]

    for round_number in range(6):
        first = [make_ct(8, seed=n, PatientID=f"R{round_number}-P{n:02d}") for n in range(40)]
        second = [make_ct(8, seed=100 + n, PatientID=ds.PatientID) for n, ds in enumerate(first)]
        batches = {"a": batch(write(tmp_path / f"a{round_number}", *first)),
                   "b": list(reversed(batch(write(tmp_path / f"b{round_number}", *second))))}
        start = threading.Barrier(2)
        results: dict[str, list[Any]] = {}

        def commit(name: str, start: threading.Barrier, batch: list[NewInstance], results: dict[str, list[Any]]) -> None:
            start.wait()
            try:
                results[name] = services.index.commit_instances(batch, "keep")
            except Exception as exc:  # noqa: BLE001 - reported below
                results[name] = [exc]

        threads = [threading.Thread(target=commit, args=(name, start, items, results)) for name, items in batches.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        failed = [r for r in results["a"] + results["b"] if isinstance(r, Exception)]
        assert failed == []
        assert all(r.outcome == Outcome.STORED for r in results["a"] + results["b"])
    patients = services.index.search(Query(level=Level.PATIENT, limit=None))
    assert len({row["patient_id"] for row in patients}) == 6 * 40


def test_a_receiver_s_synced_file_is_moved_without_another_sync(
    services: Services, ingest: IngestService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a receiver hands over with its file (head, size, synced) spares the ingest a read
    of the header and, in a folder store, the sync of the moved file; the result is the same."""
    import storage.fs
    from pacs.dicom.instance import HEAD_BYTES
    from pacs.ingest import Arrival

    synced_paths: list[Path] = []
    real_sync = storage.fs._fsync_path
    monkeypatch.setattr(storage.fs, "_fsync_path", lambda path: (synced_paths.append(path), real_sync(path)))
    first, second = make_series(2)
    [received, plain] = write(tmp_path / "in", first, second)
    data = received.read_bytes()
    report = ingest.store_file(received, consume=True, arrival=Arrival(data[:HEAD_BYTES], len(data), synced=True))
    assert report.outcome is Outcome.STORED and not received.exists()
    assert stored_blob(services, first) == data
    if services.settings.storage_url.startswith("s3"):
        return
    assert synced_paths == []
    assert ingest.store_file(plain, consume=True).outcome is Outcome.STORED
    assert synced_paths == [plain]  # without an arrival, the move syncs the file itself
