"""STOW-RS (PS3.18 10.5) on both backends: the answer, partial failures, duplicates,
concurrency, bad input, and that nothing refused is left behind in the index or storage."""

from __future__ import annotations

import contextlib
import copy
import io
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from starlette.testclient import TestClient

from dicomweb.multipart import iter_multipart, multipart_content_type, new_boundary
from pacs.app import build_app
from pacs.config import Settings
from pacs.errors import DatabaseUnavailable, StorageUnavailable
from pacs.index.repository import IndexRepository
from pacs.services import Services
from tests.conftest import bearer_headers, make_settings
from tests.support.server import create_user
from tests.support.factories import (
    make_ct,
    make_series,
    split_multipart,
    stow_body,
    to_bytes,
)
from tests.support.processes import stop_process
from tests.support.s3server import free_port
from tests.support.storage_listing import blob_keys

STUDIES = "/dicom-web/studies"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
# FailureReason values (PS3.18 10.5.3, from the PS3.4 Annex B C-STORE statuses).
CANNOT_UNDERSTAND = 0xC000
STUDY_MISMATCH = 0xA900
DUPLICATE = 0x0111
OUT_OF_RESOURCES = 0xA700
PROCESSING_FAILURE = 0x0110


# ---- helpers ------------------------------------------------------------------------------


def post(
    client: TestClient, parts: list[bytes | Dataset | tuple[str, bytes]], *, url: str = STUDIES
) -> httpx.Response:
    """STOW the parts; a (content type, bytes) tuple sends a part with its own Content-Type."""
    boundary = new_boundary()
    encoded = []
    for part in parts:
        if isinstance(part, tuple):
            encoded.append(({"Content-Type": part[0]}, [part[1]]))
        else:
            encoded.append(({"Content-Type": "application/dicom"}, [part if isinstance(part, bytes) else to_bytes(part)]))
    body = b"".join(iter_multipart(encoded, boundary))
    return client.post(url, content=body, headers={"Content-Type": multipart_content_type("application/dicom", boundary)})


def referenced(answer: httpx.Response) -> list[dict[str, Any]]:
    return answer.json().get("00081199", {}).get("Value", [])


def failed(answer: httpx.Response) -> list[dict[str, Any]]:
    return answer.json().get("00081198", {}).get("Value", [])


def value(item: dict[str, Any], tag: str) -> Any:
    return item[tag]["Value"][0]




def temp_files(services: Services) -> list[Path]:
    return [p for p in (services.settings.data_dir / "tmp").rglob("*") if p.is_file()]


def retrieve(client: TestClient, ds: Dataset) -> bytes:
    url = f"{STUDIES}/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    answer = client.get(url)
    assert answer.status_code == 200, answer.text
    [(_, data)] = split_multipart(answer.headers["content-type"], answer.content)
    return data


def study_instance_count(client: TestClient, study: str) -> int | None:
    found = client.get(STUDIES, params={"StudyInstanceUID": study}).json()
    return found[0]["00201208"]["Value"][0] if found else None


@pytest.fixture
def stored(client: TestClient, services: Services) -> Dataset:
    """One instance stored before the test runs: it must survive whatever the test sends."""
    ds = make_ct(PatientID="EARLIER")
    assert post(client, [ds]).status_code == 200
    return ds


def assert_unchanged(client: TestClient, services: Services, earlier: Dataset, blobs: set[str]) -> None:
    """Only the earlier data is there, intact, and no temp file was left over."""
    assert services.index.counts() == {"patients": 1, "studies": 1, "series": 1, "instances": 1}
    assert blob_keys(services) == blobs
    assert temp_files(services) == []
    assert retrieve(client, earlier) == to_bytes(earlier)
    assert client.get("/health").json() == {"status": "ok"}


def build_client(settings: Settings) -> Iterator[tuple[TestClient, Services]]:
    services = Services.build(settings)
    try:
        with TestClient(build_app(settings, services), headers=bearer_headers(services)) as client:
            yield client, services
    finally:
        services.close()


# ---- the answer -----------------------------------------------------------------------


def test_all_stored_answers_200_with_referenced_sop_sequence(client: TestClient, services: Services) -> None:
    instances = make_series(3)
    study, series = instances[0].StudyInstanceUID, instances[0].SeriesInstanceUID
    answer = post(client, instances)

    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/dicom+json")
    body = answer.json()
    assert "00081198" not in body
    assert body["00081190"] == {"vr": "UR", "Value": [f"http://testserver/dicom-web/studies/{study}"]}
    items = referenced(answer)
    assert [value(i, "00081155") for i in items] == [ds.SOPInstanceUID for ds in instances]
    for item, ds in zip(items, instances):
        assert item["00081150"] == {"vr": "UI", "Value": [CT_IMAGE_STORAGE]}
        assert item["00081190"]["vr"] == "UR"
        assert value(item, "00081190") == (
            f"http://testserver/dicom-web/studies/{study}/series/{series}/instances/{ds.SOPInstanceUID}"
        )
        # The RetrieveURL answers with the very bytes that were sent.
        answer = client.get(value(item, "00081190"))
        [(_, data)] = split_multipart(answer.headers["content-type"], answer.content)
        assert data == to_bytes(ds)
    assert services.index.counts() == {"patients": 1, "studies": 1, "series": 1, "instances": 3}
    assert len(blob_keys(services)) == 3
    assert temp_files(services) == []


def test_store_into_the_named_study(client: TestClient) -> None:
    instances = make_series(2)
    study = instances[0].StudyInstanceUID
    answer = post(client, instances, url=f"{STUDIES}/{study}")
    assert answer.status_code == 200, answer.text
    assert {value(i, "00081155") for i in referenced(answer)} == {ds.SOPInstanceUID for ds in instances}
    assert study_instance_count(client, study) == 2


def test_instance_of_another_study_is_refused_alone(client: TestClient, services: Services) -> None:
    ours = make_series(2)
    stranger = make_ct()
    answer = post(client, [ours[0], stranger, ours[1]], url=f"{STUDIES}/{ours[0].StudyInstanceUID}")

    assert answer.status_code == 202
    assert [value(i, "00081155") for i in referenced(answer)] == [ours[0].SOPInstanceUID, ours[1].SOPInstanceUID]
    [refusal] = failed(answer)
    assert value(refusal, "00081155") == stranger.SOPInstanceUID
    assert value(refusal, "00081150") == CT_IMAGE_STORAGE
    assert value(refusal, "00081197") == STUDY_MISMATCH
    assert stranger.StudyInstanceUID in value(refusal, "00091001")
    assert study_instance_count(client, ours[0].StudyInstanceUID) == 2
    assert study_instance_count(client, stranger.StudyInstanceUID) is None
    assert not any(stranger.SOPInstanceUID in key for key in blob_keys(services))
    assert len(blob_keys(services)) == 2


def test_nothing_stored_answers_409(client: TestClient, services: Services) -> None:
    answer = post(client, [b"not dicom at all" * 10, make_ct(SOPInstanceUID=None)])
    assert answer.status_code == 409
    assert answer.headers["content-type"].startswith("application/dicom+json")
    assert "00081199" not in answer.json()
    reasons = failed(answer)
    assert [value(i, "00081197") for i in reasons] == [CANNOT_UNDERSTAND, CANNOT_UNDERSTAND]
    assert "SOPInstanceUID is missing" in value(reasons[1], "00091001")
    assert services.index.counts()["instances"] == 0
    assert blob_keys(services) == set()


def test_part_that_is_not_application_dicom_gets_a_failed_item(client: TestClient, services: Services) -> None:
    ds = make_ct()
    answer = post(client, [("application/json", b'{"00100010": {}}'), ds, ("image/png", b"\x89PNG\r\n\x1a\n")])
    assert answer.status_code == 202
    assert [value(i, "00081155") for i in referenced(answer)] == [ds.SOPInstanceUID]
    refusals = failed(answer)
    assert len(refusals) == 2
    assert "application/json" in value(refusals[0], "00091001")
    assert "image/png" in value(refusals[1], "00091001")
    assert [value(i, "00081197") for i in refusals] == [PROCESSING_FAILURE] * 2
    assert services.index.counts()["instances"] == 1


def test_part_with_a_malformed_content_type_is_refused_alone(client: TestClient, services: Services) -> None:
    ds = make_ct()
    answer = post(client, [("not a media type", to_bytes(make_ct())), ds])
    assert answer.status_code == 202, answer.text
    assert [value(i, "00081155") for i in referenced(answer)] == [ds.SOPInstanceUID]
    [refusal] = failed(answer)
    assert "not a media type" in value(refusal, "00091001")
    assert services.index.counts()["instances"] == 1


def test_part_without_content_type_is_taken_as_dicom(client: TestClient) -> None:
    ds = make_ct()
    boundary = new_boundary()
    body = b"".join(iter_multipart([({}, [to_bytes(ds)])], boundary))
    answer = client.post(STUDIES, content=body, headers={"Content-Type": multipart_content_type("application/dicom", boundary)})
    assert answer.status_code == 200
    assert retrieve(client, ds) == to_bytes(ds)


# ---- the request itself is unusable ---------------------------------------------------------


def _framing_cases() -> dict[str, tuple[str | None, bytes, int, str]]:
    """name -> (Content-Type, body, status, words the message must contain)."""
    data = to_bytes(make_ct(seed=3))
    good, ctype = stow_body([data])
    boundary = ctype.split("boundary=")[1]
    return {
        "application/json": ("application/json", b'{"a": 1}', 415, "application/json"),
        "no content type": (None, good, 415, "Content-Type"),
        "wrong type parameter": (
            f'multipart/related; type="application/dicom+json"; boundary={boundary}', good, 415, "application/dicom+json",
        ),
        "missing boundary": ('multipart/related; type="application/dicom"', good, 415, "boundary"),
        "wrong boundary": (
            'multipart/related; type="application/dicom"; boundary=nothing-like-it', good, 400, "nothing-like-it",
        ),
        "no closing delimiter": (ctype, good[: good.rindex(b"--" + boundary.encode())], 400, "truncated"),
        "cut inside a part": (ctype, good[: len(good) // 2], 400, "truncated"),
        "empty body": (ctype, b"", 400, "no part"),
        "no parts": (ctype, f"--{boundary}--\r\n".encode(), 400, "no DICOM instances"),
    }


FRAMING = _framing_cases()


@pytest.mark.parametrize("case", list(FRAMING))
def test_unusable_request_is_refused_and_changes_nothing(
    case: str, client: TestClient, services: Services, stored: Dataset
) -> None:
    content_type, body, status, words = FRAMING[case]
    blobs = blob_keys(services)
    # httpx sends no Content-Type of its own for raw content; "" stands for "none at all".
    answer = client.post(STUDIES, content=body, headers={"Content-Type": content_type or ""})
    assert answer.status_code == status, answer.text
    assert words.lower() in answer.json()["error"].lower()
    assert_unchanged(client, services, stored, blobs)


def test_body_broken_off_after_stored_batches_says_what_was_stored(
    client: TestClient, services: Services, stored: Dataset
) -> None:
    # More parts than one ingest batch, and the closing delimiter never comes: the batches
    # ingested while the body streamed in are listed (a 400 would say nothing was stored),
    # the parts after them are dropped, and the damage is reported.
    instances = make_series(40, size=8)
    body, content_type = stow_body(instances)
    cut = body[: body.rindex(b"\r\n--")]  # the last part is whole, the closing delimiter missing
    answer = client.post(STUDIES, content=cut, headers={"Content-Type": content_type})
    assert answer.status_code == 202, answer.text
    listed = [value(i, "00081155") for i in referenced(answer)]
    assert listed == [ds.SOPInstanceUID for ds in instances[: len(listed)]]
    assert 0 < len(listed) < 40
    [damage] = failed(answer)
    assert value(damage, "00081197") == CANNOT_UNDERSTAND
    assert "truncated" in value(damage, "00091001")
    assert "00081155" not in damage
    # The index and storage hold exactly what the answer lists.
    assert services.index.counts()["instances"] == 1 + len(listed)
    found = client.get(f"{STUDIES}/{instances[0].StudyInstanceUID}/instances", params={"limit": 100}).json()
    assert sorted(i["00080018"]["Value"][0] for i in found) == sorted(listed)
    assert len(blob_keys(services)) == 1 + len(listed)
    assert temp_files(services) == []
    assert retrieve(client, stored) == to_bytes(stored)


# ---- one part is unusable -----------------------------------------------------------------


def _with_invalid_uid(keyword: str, uid: str) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns when it writes an invalid UI value
        ds = make_ct()
        setattr(ds, keyword, uid)
        return to_bytes(ds)


def _bad_parts() -> dict[str, tuple[bytes, str]]:
    """name -> (part bytes, words the failure reason must contain)."""
    sample = make_ct(seed=5)
    whole = to_bytes(sample)
    pixels_at = whole.rindex(b"\xe0\x7f\x10\x00")
    # Cut 10 characters into the SeriesInstanceUID: what is left still looks like a UID.
    uid_at = whole.rindex(sample.SeriesInstanceUID.encode())
    return {
        "random bytes": (bytes(range(256)) * 8, "not a DICOM file"),
        "png": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 200, "not a DICOM file"),
        "text": (b"Patient notes, not an image\n" * 20, "not a DICOM file"),
        "cut in the header": (whole[: uid_at + 10], "truncated"),
        "cut in the pixel data": (whole[: pixels_at + 500], "truncated"),
        "no SOPInstanceUID": (to_bytes(make_ct(SOPInstanceUID=None)), "SOPInstanceUID"),
        "no StudyInstanceUID": (to_bytes(make_ct(StudyInstanceUID=None)), "StudyInstanceUID"),
        "no SeriesInstanceUID": (to_bytes(make_ct(SeriesInstanceUID=None)), "SeriesInstanceUID"),
        "no SOPClassUID": (to_bytes(make_ct(SOPClassUID=None)), "SOPClassUID"),
        "letters in a UID": (_with_invalid_uid("SOPInstanceUID", "1.2.abc"), "1.2.abc"),
        "65 character UID": (_with_invalid_uid("StudyInstanceUID", "1." + "2" * 63), "StudyInstanceUID"),
        "empty part": (b"", "not a DICOM file"),
    }


BAD_PARTS = _bad_parts()


@pytest.mark.parametrize("case", list(BAD_PARTS))
def test_unusable_part_is_refused_with_a_reason_and_leaves_nothing(
    case: str, client: TestClient, services: Services, stored: Dataset
) -> None:
    data, words = BAD_PARTS[case]
    blobs = blob_keys(services)
    answer = post(client, [data])
    assert answer.status_code == 409, answer.text
    assert "00081199" not in answer.json()
    [refusal] = failed(answer)
    assert value(refusal, "00081197") == CANNOT_UNDERSTAND
    reason = value(refusal, "00091001")
    assert reason and words.lower() in reason.lower()
    assert_unchanged(client, services, stored, blobs)


def test_unusable_part_does_not_stop_the_others(client: TestClient, services: Services) -> None:
    instances = make_series(2)
    answer = post(client, [instances[0], BAD_PARTS["cut in the pixel data"][0], instances[1]])
    assert answer.status_code == 202
    assert [value(i, "00081155") for i in referenced(answer)] == [ds.SOPInstanceUID for ds in instances]
    assert [value(i, "00081197") for i in failed(answer)] == [CANNOT_UNDERSTAND]
    assert services.index.counts()["instances"] == 2
    assert len(blob_keys(services)) == 2


def test_nul_characters_in_text_do_not_break_the_index(client: TestClient, services: Services) -> None:
    # PostgreSQL refuses NUL in text; such bytes turn up in files from old modalities.
    ds = make_ct(PatientName="Nul\x00Name", StudyDescription="CT\x00HEAD")
    answer = post(client, [ds])
    assert answer.status_code == 200, answer.text
    [study] = client.get(STUDIES, params={"StudyInstanceUID": ds.StudyInstanceUID}).json()
    assert study["00100010"]["Value"] == [{"Alphabetic": "NulName"}]
    assert study["00081030"]["Value"] == ["CTHEAD"]
    assert retrieve(client, ds) == to_bytes(ds)


def test_many_parts_are_ingested_in_batches(client: TestClient, services: Services) -> None:
    instances = make_series(70, size=8)
    answer = post(client, instances)
    assert answer.status_code == 200
    assert [value(i, "00081155") for i in referenced(answer)] == [ds.SOPInstanceUID for ds in instances]
    assert study_instance_count(client, instances[0].StudyInstanceUID) == 70
    assert len(blob_keys(services)) == 70
    assert temp_files(services) == []


def test_type_parameter_may_be_left_out(client: TestClient) -> None:
    ds = make_ct()
    body, content_type = stow_body([ds])
    bare_type = "multipart/related; boundary=" + content_type.split("boundary=")[1]
    answer = client.post(STUDIES, content=body, headers={"Content-Type": bare_type})
    assert answer.status_code == 200
    assert retrieve(client, ds) == to_bytes(ds)


# ---- duplicates -----------------------------------------------------------------------------


def _changed_copy(ds: Dataset) -> Dataset:
    """Another object under the same SOP Instance UID, in the same study and series."""
    changed = make_ct(seed=99, SOPInstanceUID=ds.SOPInstanceUID, StudyInstanceUID=ds.StudyInstanceUID,
                      SeriesInstanceUID=ds.SeriesInstanceUID, PatientName="Second^Copy")
    assert to_bytes(changed) != to_bytes(ds)
    return changed


def test_duplicate_is_acknowledged_and_first_copy_kept_by_default(client: TestClient, services: Services) -> None:
    assert services.settings.duplicate_policy == "keep"
    first = make_ct()
    assert post(client, [first]).status_code == 200
    blobs = blob_keys(services)
    second = _changed_copy(first)
    answer = post(client, [second])
    assert answer.status_code == 200
    assert [value(i, "00081155") for i in referenced(answer)] == [first.SOPInstanceUID]
    assert services.index.counts()["instances"] == 1
    assert retrieve(client, first) == to_bytes(first)
    assert blob_keys(services) == blobs  # the second copy was never written
    metadata = client.get(f"{STUDIES}/{first.StudyInstanceUID}/metadata").json()
    assert metadata[0]["00100010"]["Value"] == [{"Alphabetic": "Test^Patient"}]


def test_duplicate_claiming_another_study_is_refused(client: TestClient, services: Services) -> None:
    first = make_ct()
    assert post(client, [first]).status_code == 200
    elsewhere = make_ct(SOPInstanceUID=first.SOPInstanceUID)
    answer = post(client, [elsewhere], url=f"{STUDIES}/{elsewhere.StudyInstanceUID}")
    assert answer.status_code == 409
    [refusal] = failed(answer)
    assert value(refusal, "00081197") == STUDY_MISMATCH
    assert first.StudyInstanceUID in value(refusal, "00091001")
    assert study_instance_count(client, elsewhere.StudyInstanceUID) is None
    assert retrieve(client, first) == to_bytes(first)


def test_duplicate_within_one_request_is_stored_once(client: TestClient, services: Services) -> None:
    first = make_ct()
    answer = post(client, [first, _changed_copy(first)])
    assert answer.status_code == 200
    assert len(referenced(answer)) == 2
    assert services.index.counts()["instances"] == 1
    assert retrieve(client, first) == to_bytes(first)
    assert len(blob_keys(services)) == 1


@pytest.fixture(params=["sqlite-fs", "postgres-s3"])
def policy_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _client_with_policy(kind: str, policy: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[TestClient, Services]]:
    for settings in make_settings(kind, tmp_path, request, duplicate_policy=policy):
        yield from build_client(settings)


def test_overwrite_serves_the_new_copy_and_drops_the_old_blob(
    policy_backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    for client, services in _client_with_policy(policy_backend, "overwrite", tmp_path, request):
        first = make_ct()
        assert post(client, [first]).status_code == 200
        [old_key] = blob_keys(services)
        second = _changed_copy(first)
        answer = post(client, [second])
        assert answer.status_code == 200
        assert [value(i, "00081155") for i in referenced(answer)] == [first.SOPInstanceUID]
        assert retrieve(client, first) == to_bytes(second)
        keys = blob_keys(services)
        assert len(keys) == 1 and old_key not in keys
        assert services.index.counts()["instances"] == 1
        metadata = client.get(f"{STUDIES}/{first.StudyInstanceUID}/metadata").json()
        assert metadata[0]["00100010"]["Value"] == [{"Alphabetic": "Second^Copy"}]


def test_reject_refuses_the_duplicate_with_0111(
    policy_backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    for client, services in _client_with_policy(policy_backend, "reject", tmp_path, request):
        first = make_ct()
        assert post(client, [first]).status_code == 200
        blobs = blob_keys(services)
        answer = post(client, [_changed_copy(first)])
        assert answer.status_code == 409
        [refusal] = failed(answer)
        assert value(refusal, "00081197") == DUPLICATE
        assert value(refusal, "00081155") == first.SOPInstanceUID
        assert "already stored" in value(refusal, "00091001")
        assert retrieve(client, first) == to_bytes(first)
        assert blob_keys(services) == blobs
        # A new instance next to the duplicate is stored: 202.
        other = make_ct(StudyInstanceUID=first.StudyInstanceUID)
        answer = post(client, [_changed_copy(first), other])
        assert answer.status_code == 202
        assert [value(i, "00081155") for i in referenced(answer)] == [other.SOPInstanceUID]


# ---- concurrency ------------------------------------------------------------------------------


def test_concurrent_stores_of_one_new_study(client: TestClient, services: Services) -> None:
    instances = make_series(16, size=16, PatientID="CONC-1")
    study = instances[0].StudyInstanceUID
    bodies = [stow_body(instances[i::8]) for i in range(8)]
    barrier = threading.Barrier(8)
    answers: list[int] = []
    errors: list[BaseException] = []

    def send(body: bytes, content_type: str) -> None:
        try:
            barrier.wait(timeout=10)
            answers.append(client.post(STUDIES, content=body, headers={"Content-Type": content_type}).status_code)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=body) for body in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert answers == [200] * 8
    assert services.index.counts() == {"patients": 1, "studies": 1, "series": 1, "instances": 16}
    assert study_instance_count(client, study) == 16
    found = client.get(f"{STUDIES}/{study}/instances").json()
    assert sorted(i["00080018"]["Value"][0] for i in found) == sorted(ds.SOPInstanceUID for ds in instances)
    assert len(blob_keys(services)) == 16


def test_concurrent_stores_of_the_same_instance_keep_one(client: TestClient, services: Services) -> None:
    ds = make_ct()
    body, content_type = stow_body([ds])
    barrier = threading.Barrier(6)
    answers: list[int] = []

    def send() -> None:
        barrier.wait(timeout=10)
        answers.append(client.post(STUDIES, content=body, headers={"Content-Type": content_type}).status_code)

    threads = [threading.Thread(target=send) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert answers == [200] * 6
    assert services.index.counts()["instances"] == 1
    assert len(blob_keys(services)) == 1
    assert retrieve(client, ds) == to_bytes(ds)


# ---- crash safety (SQLite + folder) ---------------------------------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> Iterator[tuple[TestClient, Services]]:
    yield from build_client(Settings.from_mapping({"data_dir": tmp_path / "data"}))


def test_failed_index_commit_reports_a700_and_removes_the_blob(
    local: tuple[TestClient, Services], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, services = local
    written: list[str] = []
    real_put = type(services.blobs).put_file

    def spy_put(self: Any, key: str, path: Path, *, move: bool = False, synced: bool = False) -> int:
        written.append(key)
        return real_put(self, key, path, move=move, synced=synced)

    def broken_commit(self: IndexRepository, items: Any, policy: str) -> Any:
        raise DatabaseUnavailable("database unavailable: disk I/O error")

    monkeypatch.setattr(type(services.blobs), "put_file", spy_put)
    monkeypatch.setattr(IndexRepository, "commit_instances", broken_commit)
    ds = make_ct()
    answer = post(client, [ds])
    assert answer.status_code == 409
    [refusal] = failed(answer)
    assert value(refusal, "00081197") == OUT_OF_RESOURCES
    assert value(refusal, "00081155") == ds.SOPInstanceUID
    assert "database unavailable" in value(refusal, "00091001")
    assert len(written) == 1  # the blob was written before the commit failed ...
    assert blob_keys(services) == set()  # ... and removed afterwards
    assert services.index.counts()["instances"] == 0
    assert temp_files(services) == []


def test_failed_blob_write_writes_no_row(local: tuple[TestClient, Services], monkeypatch: pytest.MonkeyPatch) -> None:
    client, services = local
    commits: list[int] = []
    real_commit = IndexRepository.commit_instances

    def broken_put(self: Any, key: str, path: Path, *, move: bool = False, synced: bool = False) -> int:
        raise StorageUnavailable("cannot store in the archive: No space left on device")

    def spy_commit(self: IndexRepository, items: Any, policy: str) -> Any:
        commits.append(len(items))
        return real_commit(self, items, policy)

    monkeypatch.setattr(type(services.blobs), "put_file", broken_put)
    monkeypatch.setattr(IndexRepository, "commit_instances", spy_commit)
    instances = make_series(2)
    answer = post(client, instances)
    assert answer.status_code == 409
    assert [value(i, "00081197") for i in failed(answer)] == [OUT_OF_RESOURCES] * 2
    assert "No space left" in value(failed(answer)[0], "00091001")
    assert commits == []
    assert services.index.counts()["instances"] == 0
    assert blob_keys(services) == set()
    assert temp_files(services) == []


def test_failed_blob_write_of_one_instance_spares_the_others(
    local: tuple[TestClient, Services], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, services = local
    instances = make_series(3)
    doomed = instances[1].SOPInstanceUID
    real_put = type(services.blobs).put_file

    def flaky_put(self: Any, key: str, path: Path, *, move: bool = False, synced: bool = False) -> int:
        if doomed in key:
            raise StorageUnavailable("cannot store: I/O error")
        return real_put(self, key, path, move=move, synced=synced)

    monkeypatch.setattr(type(services.blobs), "put_file", flaky_put)
    answer = post(client, instances)
    assert answer.status_code == 202
    assert [value(i, "00081155") for i in failed(answer)] == [doomed]
    assert services.index.counts()["instances"] == 2
    assert len(blob_keys(services)) == 2
    assert temp_files(services) == []


def test_unexpected_index_error_is_a_500_and_leaves_no_blob(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = Services.build(Settings.from_mapping({"data_dir": tmp_path / "data"}))

    def broken(self: IndexRepository, items: Any, policy: str) -> Any:
        raise RuntimeError("bug in the index code")

    monkeypatch.setattr(IndexRepository, "commit_instances", broken)
    try:
        with TestClient(
            build_app(services.settings, services), raise_server_exceptions=False, headers=bearer_headers(services)
        ) as client:
            answer = post(client, [make_ct()])
            assert answer.status_code == 500
            assert "bug in the index code" not in answer.text  # no internals in the answer
            assert blob_keys(services) == set()
            assert temp_files(services) == []
    finally:
        services.close()


def test_bare_dataset_gains_a_part10_header(client: TestClient) -> None:
    ds = make_ct()
    bare = _bare_dataset(ds)
    answer = post(client, [bare])
    assert answer.status_code == 200, answer.text
    data = retrieve(client, ds)
    assert data[128:132] == b"DICM"
    assert data.endswith(bare)
    back = pydicom.dcmread(io.BytesIO(data))
    assert back.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert back.file_meta.MediaStorageSOPClassUID == CT_IMAGE_STORAGE
    assert back.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert back.PixelData == ds.PixelData


def _bare_dataset(ds: Dataset) -> bytes:
    """The data set alone, Explicit VR Little Endian, without preamble or File Meta Information."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    bare = copy.deepcopy(ds)
    del bare.file_meta
    write_dataset(fp, bare)
    return fp.getvalue()


# ---- memory stays flat ------------------------------------------------------------------------

FRAMES, SIDE = 150, 1024  # 150 frames of 1024 x 1024 16-bit pixels: 300 MiB of pixel data


def _write_big_instance(path: Path) -> Dataset:
    """A multi-frame instance written straight to disk: the header with pydicom, then the
    Pixel Data element frame by frame (frame k holds the value k everywhere)."""
    ds = make_ct(8, NumberOfFrames=FRAMES)
    ds.Rows = ds.Columns = SIDE
    del ds.PixelData
    with path.open("wb") as out:
        ds.save_as(out, enforce_file_format=True)
        frame_bytes = SIDE * SIDE * 2
        out.write(b"\xe0\x7f\x10\x00OW\x00\x00" + (frame_bytes * FRAMES).to_bytes(4, "little"))
        for k in range(FRAMES):
            out.write(k.to_bytes(2, "little") * (SIDE * SIDE))
    return ds


def _peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


@contextlib.contextmanager
def _server(data_dir: Path) -> Iterator[tuple[str, int, dict[str, str]]]:
    """A real `minipacs serve`: its root URL, its pid, and a technologist's Authorization header."""
    _, token = create_user(Settings.from_mapping({"data_dir": data_dir}), "technologist")
    port = free_port()
    env = {**os.environ, "MINIPACS_DATA_DIR": str(data_dir), "MINIPACS_HTTP_PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pacs.cli", "serve", "--no-dicom", "--no-hl7"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    root = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, "the server exited during start-up"
            try:
                if httpx.get(f"{root}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not answer /health"
            time.sleep(0.1)
        yield root, proc.pid, {"Authorization": f"Bearer {token}"}
    finally:
        stop_process(proc)


def test_storing_a_300_mb_instance_keeps_server_memory_flat(tmp_path: Path) -> None:
    source = tmp_path / "big.dcm"
    ds = _write_big_instance(source)
    size = source.stat().st_size
    assert size > 300 * 1024 * 1024
    boundary = new_boundary()
    content_type = multipart_content_type("application/dicom", boundary)

    def body() -> Iterator[bytes]:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        with source.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    with _server(tmp_path / "data") as (root, pid, auth), httpx.Client(base_url=root, timeout=120, headers=auth) as http:
        # Warm up (imports, first connections) so the baseline is the steady state.
        warm, warm_type = stow_body([make_ct()])
        assert http.post("/dicom-web/studies", content=warm, headers={"Content-Type": warm_type}).status_code == 200
        baseline = _peak_rss_kib(pid)
        answer = http.post("/dicom-web/studies", content=body(), headers={"Content-Type": content_type})
        assert answer.status_code == 200, answer.text
        grown_mib = (_peak_rss_kib(pid) - baseline) / 1024
        assert grown_mib < 100, f"server peak memory grew by {grown_mib:.0f} MiB"

        base = f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        frames = http.get(f"{base}/frames/1,{FRAMES}", headers={"Accept": "multipart/related; type=application/octet-stream"})
        assert frames.status_code == 200
        parts = split_multipart(frames.headers["content-type"], frames.content)
        assert [p for _, p in parts] == [
            (0).to_bytes(2, "little") * (SIDE * SIDE), (FRAMES - 1).to_bytes(2, "little") * (SIDE * SIDE),
        ]
    stored = [p for p in (tmp_path / "data" / "storage").rglob("*.dcm")]
    assert max(p.stat().st_size for p in stored) == size


def test_client_that_hangs_up_mid_body_leaves_nothing_behind(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    earlier = make_ct()
    with _server(data_dir) as (root, _pid, auth):
        body, content_type = stow_body([earlier])
        stored = httpx.post(f"{root}/dicom-web/studies", content=body, headers={"Content-Type": content_type, **auth})
        assert stored.status_code == 200
        blobs = {p.name for p in (data_dir / "storage").rglob("*.dcm")}
        # Promise 10 MB, send a whole first part and half of a second, then hang up.
        parts, content_type = stow_body([make_ct(), make_ct(256)])
        partial = parts[: len(parts) - 60_000]
        port = int(root.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            head = (
                f"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
                f"Authorization: {auth['Authorization']}\r\n"
                f"Content-Length: {10_000_000}\r\n\r\n"
            )
            sock.sendall(head.encode() + partial)
            time.sleep(0.3)  # let the server take in what was sent before the line drops
        deadline = time.monotonic() + 10
        while list((data_dir / "tmp").iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list((data_dir / "tmp").iterdir()) == []
        assert {p.name for p in (data_dir / "storage").rglob("*.dcm")} == blobs
        found = httpx.get(f"{root}/dicom-web/studies", headers=auth).json()
        assert [s["0020000D"]["Value"][0] for s in found] == [earlier.StudyInstanceUID]
        assert httpx.get(f"{root}/health").status_code == 200


def test_overwrite_corrects_patient_and_study_attributes(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A corrected copy under "overwrite" reaches QIDO: new name, new PatientID, new description."""
    for settings in make_settings("sqlite-fs", tmp_path, request, duplicate_policy="overwrite"):
        with TestClient(build_app(settings.replace(auth="off"))) as client:
            first = make_ct(PatientName="Wrong^Name", PatientID="OLD-ID", StudyDescription="CT HEAD")
            body, content_type = stow_body([first])
            assert client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type}).status_code == 200
            corrected = copy.deepcopy(first)
            corrected.PatientName = "Right^Name"
            corrected.PatientID = "NEW-ID"
            corrected.StudyDescription = "CT HEAD W/O"
            body, content_type = stow_body([corrected])
            assert client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type}).status_code == 200
            [study] = client.get("/dicom-web/studies").json()
            assert study["00100010"]["Value"] == [{"Alphabetic": "Right^Name"}]
            assert study["00100020"]["Value"] == ["NEW-ID"]
            assert study["00081030"]["Value"] == ["CT HEAD W/O"]
            assert client.get("/dicom-web/studies", params={"PatientID": "OLD-ID"}).json() == []


def test_parts_reach_the_ingest_with_their_head_and_size(
    local: tuple[TestClient, Services], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ingest reads each part's header from the bytes STOW kept while writing it."""
    from pacs.dicom.instance import HEAD_BYTES
    from pacs.ingest import IngestService

    client, services = local
    seen: list[tuple[bytes, bytes, int]] = []
    real_store = IngestService.store_files

    def spy(self: IngestService, paths: Any, **options: Any) -> Any:
        for path in paths:
            arrival = options["arrivals"][path]
            seen.append((path.read_bytes(), arrival.head, arrival.size))
        return real_store(self, paths, **options)

    monkeypatch.setattr(IngestService, "store_files", spy)
    instances = [make_ct(128), make_ct(8)]
    assert post(client, instances).status_code == 200
    assert len(seen) == 2
    for data, head, size in seen:
        assert size == len(data) and head == data[:HEAD_BYTES]
    assert len(seen[0][1]) == HEAD_BYTES and len(seen[1][1]) == seen[1][2]  # a short part is kept whole
