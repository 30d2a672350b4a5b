"""Store, search, retrieve and delete through DICOMweb on both backends."""

from __future__ import annotations

import pydicom
from starlette.testclient import TestClient

from tests.support.factories import make_series, split_multipart, stow_body, to_bytes

FRAME_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"


def test_stored_series_is_searchable_and_retrievable_byte_for_byte(client: TestClient) -> None:
    instances = make_series(3, PatientName="Doe^Jane", PatientID="P-77")
    body, content_type = stow_body(instances)
    response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text
    assert len(response.json()["00081199"]["Value"]) == 3

    study = instances[0].StudyInstanceUID
    found = client.get("/dicom-web/studies", params={"PatientID": "P-77"}).json()
    assert [s["0020000D"]["Value"][0] for s in found] == [study]
    assert found[0]["00201208"]["Value"] == [3]
    assert found[0]["00080061"]["Value"] == ["CT"]

    answer = client.get(f"/dicom-web/studies/{study}")
    parts = split_multipart(answer.headers["content-type"], answer.content)
    originals = {ds.SOPInstanceUID: to_bytes(ds) for ds in instances}
    assert {pydicom.dcmread(__import__("io").BytesIO(p)).SOPInstanceUID: p for _, p in parts} == originals


def test_frames_are_the_stored_pixels(client: TestClient) -> None:
    ds = make_series(1)[0]
    body, content_type = stow_body([ds])
    assert client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type}).status_code == 200
    url = f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/frames/1"
    answer = client.get(url, headers={"Accept": FRAME_ACCEPT})
    assert answer.status_code == 200
    [(headers, frame)] = split_multipart(answer.headers["content-type"], answer.content)
    assert frame == ds.PixelData
    assert "1.2.840.10008.1.2.1" in headers["content-type"]


def test_delete_study_removes_it(client: TestClient) -> None:
    ds = make_series(1)[0]
    body, content_type = stow_body([ds])
    client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert client.delete(f"/dicom-web/studies/{ds.StudyInstanceUID}").status_code == 204
    assert client.get(f"/dicom-web/studies/{ds.StudyInstanceUID}/metadata").status_code == 404
    assert client.get("/dicom-web/studies").json() == []


def test_series_retrieve_streams_every_instance_in_order(client: TestClient) -> None:
    """More instances than the object-store read-ahead: all arrive, in instance order, intact."""
    instances = make_series(7)
    body, content_type = stow_body(list(reversed(instances)))
    assert client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type}).status_code == 200
    first = instances[0]
    answer = client.get(f"/dicom-web/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}")
    parts = split_multipart(answer.headers["content-type"], answer.content)
    assert [p for _, p in parts] == [to_bytes(ds) for ds in instances]
    assert [int(h["content-length"]) for h, _ in parts] == [len(p) for _, p in parts]
