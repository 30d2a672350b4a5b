"""Rendered resources, thumbnails and WADO-URI over HTTP, on both backends: pixel values of
known windows, media types, HTTP caching, provider scoping, and bad input."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from starlette.testclient import TestClient

from pacs.app import build_app
from pacs.services import Services
from tests.conftest import bearer_headers
from tests.support.factories import make_ct, make_series, split_multipart, stow_body


@dataclass
class Stored:
    client: TestClient
    ct: Dataset  # 64x64 signed CT with rescale
    multiframe: Dataset

    def instance_path(self, ds: Dataset) -> str:
        return (f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                f"/instances/{ds.SOPInstanceUID}")


def signed_ct() -> Dataset:
    ds = make_ct(64, PixelRepresentation=1, BitsStored=16, HighBit=15, RescaleSlope="1", RescaleIntercept="-1024",
                 WindowCenter="40", WindowWidth="400", ReferringPhysicianName="DOC^OWN")
    rng = np.random.default_rng(7)
    pixels = rng.integers(-2000, 3000, size=(64, 64), dtype=np.int16)
    ds.PixelData = pixels.tobytes()
    return ds


def multiframe() -> Dataset:
    ds = make_ct(32, BitsStored=16, HighBit=15, RescaleIntercept=0)
    frames = np.stack([np.full((32, 32), 100 * (i + 1), dtype=np.uint16) for i in range(5)])
    ds.NumberOfFrames = 5
    ds.PixelData = frames.tobytes()
    ds.WindowCenter, ds.WindowWidth = "300", "600"
    return ds


@pytest.fixture
def stored(services: Services) -> Iterator[Stored]:
    ct, mf = signed_ct(), multiframe()
    with TestClient(build_app(services.settings, services), headers=bearer_headers(services)) as client:
        body, content_type = stow_body([ct, mf])
        assert client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type}).status_code == 200
        yield Stored(client, ct, mf)


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, to 8 bits."""
    x = values.astype(np.float64)
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    out = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255
    return np.where(x <= low, 0, np.where(x > high, 255, out))


def decoded(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)))


def test_rendered_png_has_the_windowed_values(stored: Stored) -> None:
    response = stored.client.get(stored.instance_path(stored.ct) + "/rendered", params={"window": "100,500,linear"},
                                 headers={"Accept": "image/png"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    hu = np.frombuffer(stored.ct.PixelData, dtype=np.int16).reshape(64, 64).astype(np.float64) - 1024
    assert np.abs(decoded(response.content).astype(np.float64) - linear_window(hu, 100, 500)).max() <= 1


def test_rendered_uses_the_files_window_by_default(stored: Stored) -> None:
    response = stored.client.get(stored.instance_path(stored.ct) + "/rendered", params={"accept": "image/png"})
    hu = np.frombuffer(stored.ct.PixelData, dtype=np.int16).reshape(64, 64).astype(np.float64) - 1024
    assert np.abs(decoded(response.content).astype(np.float64) - linear_window(hu, 40, 400)).max() <= 1


def test_rendered_jpeg_by_default_with_caching_headers(stored: Stored) -> None:
    path = stored.instance_path(stored.ct) + "/rendered"
    response = stored.client.get(path)
    assert response.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(response.content)).size == (64, 64)
    assert response.headers["cache-control"].startswith("private")
    again = stored.client.get(path, headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    other = stored.client.get(path, params={"quality": "20"})
    assert other.headers["etag"] != response.headers["etag"]
    assert len(other.content) < len(response.content)
    gif = stored.client.get(path, headers={"Accept": "image/gif"})
    assert Image.open(io.BytesIO(gif.content)).format == "GIF"


def test_rendered_frame_of_a_multiframe_instance(stored: Stored) -> None:
    path = stored.instance_path(stored.multiframe)
    for frame in (1, 3, 5):
        response = stored.client.get(f"{path}/frames/{frame}/rendered", headers={"Accept": "image/png"})
        expected = linear_window(np.full((32, 32), 100.0 * frame), 300, 600)
        assert np.abs(decoded(response.content).astype(np.float64) - expected).max() <= 1, frame
    # The instance's rendering is its first frame.
    first = stored.client.get(f"{path}/rendered", headers={"Accept": "image/png"})
    assert np.abs(decoded(first.content).astype(np.float64) - linear_window(np.full((32, 32), 100.0), 300, 600)).max() <= 1


def test_rendered_series_and_study_are_multipart(stored: Stored) -> None:
    series = make_series(3, size=16)
    body, content_type = stow_body(series)
    stored.client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    ds = series[0]
    response = stored.client.get(f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/rendered")
    assert response.status_code == 200
    parts = split_multipart(response.headers["content-type"], response.content)
    assert len(parts) == 3 and all(Image.open(io.BytesIO(p)).size == (16, 16) for _, p in parts)
    study = stored.client.get(f"/dicom-web/studies/{ds.StudyInstanceUID}/rendered")
    assert len(split_multipart(study.headers["content-type"], study.content)) == 3


def test_viewport_scales_and_is_capped(stored: Stored) -> None:
    path = stored.instance_path(stored.ct) + "/rendered"
    small = stored.client.get(path, params={"viewport": "32,16"})
    assert Image.open(io.BytesIO(small.content)).size == (16, 16)  # aspect kept
    huge = stored.client.get(path, params={"viewport": "100000,100000"})
    assert huge.status_code == 200 and "Warning" in huge.headers
    assert max(Image.open(io.BytesIO(huge.content)).size) <= 4096


def test_thumbnails(stored: Stored) -> None:
    ds = stored.ct
    for path in (f"/dicom-web/studies/{ds.StudyInstanceUID}/thumbnail",
                 f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/thumbnail",
                 stored.instance_path(ds) + "/thumbnail"):
        response = stored.client.get(path)
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg", path
        assert max(Image.open(io.BytesIO(response.content)).size) <= 128


BAD_RENDER_REQUESTS = [
    ("/rendered", {"window": "40,0,linear"}, {}, 400),
    ("/rendered", {"window": "40,-5,linear"}, {}, 400),
    ("/rendered", {"window": "40,400,cubic"}, {}, 400),
    ("/rendered", {"window": "40,400"}, {}, 400),
    ("/rendered", {"window": "a,b,linear"}, {}, 400),
    ("/rendered", {"quality": "101"}, {}, 400),
    ("/rendered", {"quality": "0"}, {}, 400),
    ("/rendered", {"viewport": "0,10"}, {}, 400),
    ("/rendered", {"viewport": "10"}, {}, 400),
    ("/rendered", {}, {"Accept": "application/dicom"}, 406),
    ("/rendered", {}, {"Accept": "image/tiff"}, 406),
    ("/frames/0/rendered", {}, {}, 400),
    ("/frames/2/rendered", {}, {}, 404),
    ("/frames/1,2/rendered", {}, {}, 400),
]


@pytest.mark.parametrize(("suffix", "params", "headers", "status"), BAD_RENDER_REQUESTS)
def test_bad_render_requests(stored: Stored, suffix: str, params: dict[str, str], headers: dict[str, str],
                             status: int) -> None:
    response = stored.client.get(stored.instance_path(stored.ct) + suffix, params=params, headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["error"]
    assert stored.client.get("/health").status_code == 200


def test_undecodable_pixel_data_is_a_clear_4xx(stored: Stored) -> None:
    ds = pydicom.dcmread(get_testdata_file("JPEG2000.dcm", download=False))
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    frames = pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)
    corrupt = next(iter(frames))[:40] + b"\x00" * 200
    ds.PixelData = pydicom.encaps.encapsulate([corrupt])
    body, content_type = stow_body([ds])
    assert stored.client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type}).status_code == 200
    response = stored.client.get(stored.instance_path(ds) + "/rendered")
    assert 400 <= response.status_code < 500 and response.json()["error"]
    assert stored.client.get(stored.instance_path(stored.ct) + "/rendered").status_code == 200


# ---- WADO-URI ------------------------------------------------------------------------------


def wado_params(ds: Dataset, **extra: str) -> dict[str, str]:
    return {"requestType": "WADO", "studyUID": ds.StudyInstanceUID, "seriesUID": ds.SeriesInstanceUID,
            "objectUID": ds.SOPInstanceUID, **extra}


def test_wado_uri_content_types(stored: Stored) -> None:
    get, ds = stored.client.get, stored.ct
    jpeg = get("/wado", params=wado_params(ds))
    assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"
    png = get("/wado", params=wado_params(ds, contentType="image/png", windowCenter="100", windowWidth="500"))
    hu = np.frombuffer(ds.PixelData, dtype=np.int16).reshape(64, 64).astype(np.float64) - 1024
    assert np.abs(decoded(png.content).astype(np.float64) - linear_window(hu, 100, 500)).max() <= 1
    gif = get("/wado", params=wado_params(ds, contentType="image/gif"))
    assert Image.open(io.BytesIO(gif.content)).format == "GIF"
    dicom = get("/wado", params=wado_params(ds, contentType="application/dicom"))
    assert dicom.headers["content-type"] == "application/dicom"
    assert pydicom.dcmread(io.BytesIO(dicom.content)).PixelData == ds.PixelData
    scaled = get("/wado", params=wado_params(ds, rows="32", columns="32"))
    assert Image.open(io.BytesIO(scaled.content)).size == (32, 32)
    frame = get("/wado", params=wado_params(stored.multiframe, contentType="image/png", frameNumber="4"))
    expected = linear_window(np.full((32, 32), 400.0), 300, 600)
    assert np.abs(decoded(frame.content).astype(np.float64) - expected).max() <= 1
    listed = get("/wado", params=wado_params(ds, contentType="image/x-unknown, image/png"))
    assert listed.headers["content-type"] == "image/png"


def test_wado_uri_dicom_in_another_transfer_syntax(stored: Stored) -> None:
    rle = stored.client.get("/wado", params=wado_params(stored.ct, contentType="application/dicom",
                                                        transferSyntax="1.2.840.10008.1.2.5"))
    assert rle.status_code == 200
    back = pydicom.dcmread(io.BytesIO(rle.content))
    assert back.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"
    assert np.array_equal(back.pixel_array, stored.ct.pixel_array)
    jpeg = stored.client.get("/wado", params=wado_params(stored.ct, contentType="application/dicom",
                                                         transferSyntax="1.2.840.10008.1.2.4.50"))
    assert jpeg.status_code == 406 and jpeg.json()["error"]


BAD_WADO_URI = [
    ({"requestType": "WADO-RS"}, 400),
    ({"anonymize": "yes"}, 400),
    ({"windowCenter": "40"}, 400),
    ({"windowCenter": "40", "windowWidth": "0"}, 400),
    ({"frameNumber": "0"}, 400),
    ({"frameNumber": "9"}, 404),
    ({"rows": "-1"}, 400),
    ({"imageQuality": "500"}, 400),
    ({"contentType": "video/mpeg"}, 406),
    ({"objectUID": "1.2.3.4"}, 404),
    ({"region": "0.1,0.1,0.5,0.5"}, 400),
]


@pytest.mark.parametrize(("changes", "status"), BAD_WADO_URI)
def test_bad_wado_uri_requests(stored: Stored, changes: dict[str, str], status: int) -> None:
    response = stored.client.get("/wado", params=wado_params(stored.ct, **changes))
    assert response.status_code == status, response.text
    missing = stored.client.get("/wado", params={"requestType": "WADO", "objectUID": stored.ct.SOPInstanceUID})
    assert missing.status_code == 400 and "studyUID" in missing.json()["error"]


def test_rendered_and_wado_uri_respect_provider_scoping(stored: Stored, services: Services) -> None:
    # Providers see the studies linked to their orders: staff link the CT's study to one of DOC^OWN's.
    order = services.orders.create({"patient_id": str(stored.ct.PatientID), "patient_name": "Ct^Patient",
                                    "modality": "CT", "ordering_provider": "DOC^OWN"}, created_by="desk")
    services.reconciler.link(stored.ct.StudyInstanceUID, order, by="desk")
    own = bearer_headers(services, "provider", provider_name="DOC^OWN")
    other = bearer_headers(services, "provider", provider_name="SOMEONE^ELSE")
    path = stored.instance_path(stored.ct) + "/rendered"
    assert stored.client.get(path, headers=own).status_code == 200
    assert stored.client.get(path, headers=other).status_code == 404
    assert stored.client.get("/wado", params=wado_params(stored.ct), headers=other).status_code == 404
    assert stored.client.get("/wado", params=wado_params(stored.ct), headers=own).status_code == 200
    anonymous = TestClient(stored.client.app)
    assert anonymous.get(path).status_code == 401
    assert anonymous.get("/wado", params=wado_params(stored.ct)).status_code == 401


def test_frames_carry_validators_for_viewer_caches(stored: Stored) -> None:
    path = stored.instance_path(stored.multiframe) + "/frames/2"
    accept = {"Accept": "multipart/related; type=application/octet-stream"}
    first = stored.client.get(path, headers=accept)
    assert first.status_code == 200 and first.headers["cache-control"].startswith("private")
    again = stored.client.get(path, headers={**accept, "If-None-Match": first.headers["etag"]})
    assert again.status_code == 304
    other = stored.client.get(stored.instance_path(stored.multiframe) + "/frames/3", headers=accept)
    assert other.headers["etag"] != first.headers["etag"]
