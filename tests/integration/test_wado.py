"""WADO-RS (PS3.18 10.4) on both backends: instances byte for byte, metadata as pydicom renders
the stored file, bulk data, frames (native, big endian, encapsulated), negotiation and errors."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import (
    EncapsulatedPDFStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)
from starlette.testclient import TestClient

from pacs.app import build_app
from pacs.services import Services
from tests.conftest import BACKENDS, bearer_headers, make_settings
from tests.support.factories import make_ct, make_series, split_multipart, stow_body, to_bytes

OHIF_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"
DICOM_PARTS = 'multipart/related; type="application/dicom"'
PIXEL_TAGS = {"7FE00010", "7FE00008", "7FE00009"}
INLINE_LIMIT = 1400  # base64 characters; larger binary values are served as BulkDataURIs
# Compressed files of pydicom's test data whose frames are served as stored.
COMPRESSED = ["JPEG2000.dcm", "SC_rgb_rle_2frame.dcm", "emri_small_jpeg_2k_lossless.dcm", "SC_rgb_jpeg_dcmtk.dcm"]
UNKNOWN = "1.2.826.0.1.3680043.8.498.1"


def pydicom_file(name: str) -> bytes:
    path = get_testdata_file(name, download=False)
    assert path is not None, name
    with open(path, "rb") as fh:
        return fh.read()


def read(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def with_new_instance_uid(data: bytes) -> bytes:
    """The same file under another SOP Instance UID (same length, so nothing else moves):
    emri_small_big_endian.dcm shares its UID with emri_small_jpeg_2k_lossless.dcm."""
    uid = str(read(data).SOPInstanceUID).encode()
    other = uid[:-1] + (b"1" if uid[-1:] != b"1" else b"2")
    assert data.count(uid) == 2  # file meta and data set
    return data.replace(uid, other)


def pdf_document() -> Dataset:
    no_image: dict[str, Any] = dict.fromkeys(
        ["Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored",
         "HighBit", "PixelRepresentation", "RescaleIntercept", "RescaleSlope", "PixelData"]
    )
    ds = make_ct(8, Modality="DOC", **no_image)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EncapsulatedPDFStorage
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = b"%PDF-1.4\n" + np.random.default_rng(3).bytes(5001)
    return ds


def ct_with_large_binaries() -> list[Dataset]:
    """Two CT instances of one series; the first carries a 4 KiB private OB value and a 2 KiB
    overlay, small ones (an 8-byte private OB) stay inline."""
    instances = make_series(2, size=32, PatientName="Wado^Test", PatientID="P-WADO")
    first = instances[0]
    block = first.private_block(0x0009, "MINIPACS TEST", create=True)
    block.add_new(0x01, "OB", np.random.default_rng(1).bytes(4096))
    block.add_new(0x02, "OB", b"\x01\x02\x03\x04\x05\x06\x07\x08")
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "CTHEAD", "99LOCAL", "CT head"
    first.ProcedureCodeSequence = [code]
    for element, vr, value in [
        (0x0010, "US", 128),  # OverlayRows
        (0x0011, "US", 128),  # OverlayColumns
        (0x0040, "CS", "G"),  # OverlayType
        (0x0050, "SS", [1, 1]),  # OverlayOrigin
        (0x0100, "US", 1),  # OverlayBitsAllocated
        (0x0102, "US", 0),  # OverlayBitPosition
        (0x3000, "OW", np.random.default_rng(2).bytes(128 * 128 // 8)),  # OverlayData
    ]:
        first.add_new((0x6000, element), vr, value)
    return instances


def big_endian_with_binaries() -> bytes:
    """An Explicit VR Big Endian file with large OW, OF and OD values besides its pixels."""
    ds = make_ct(16, seed=4)
    rng = np.random.default_rng(5)
    ds.add_new((0x6000, 0x0010), "US", 128)
    ds.add_new((0x6000, 0x0011), "US", 128)
    ds.add_new((0x6000, 0x3000), "OW", rng.bytes(2048))  # OverlayData
    ds.add_new((0x0066, 0x0016), "OF", rng.bytes(4096))  # PointCoordinatesData
    ds.add_new((0x0066, 0x0022), "OD", rng.bytes(4096))  # DoublePointCoordinatesData
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    return to_bytes(ds)


def implicit_with_binaries() -> bytes:
    """Implicit VR: the overlay's VR comes from the dictionary, the private value's is UN."""
    ds = make_ct(32, seed=6)
    rng = np.random.default_rng(7)
    ds.add_new((0x6000, 0x0010), "US", 128)
    ds.add_new((0x6000, 0x0011), "US", 128)
    ds.add_new((0x6000, 0x3000), "OW", rng.bytes(2048))
    ds.private_block(0x0009, "MINIPACS TEST", create=True).add_new(0x01, "OB", rng.bytes(3000))
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return to_bytes(ds)


def multiframe(frames: int = 5, size: int = 16) -> Dataset:
    pixels = np.stack([np.full((size, size), 1000 * (k + 1), dtype=np.uint16) + np.arange(size, dtype=np.uint16)
                       for k in range(frames)])
    ds = make_ct(size, seed=9, NumberOfFrames=frames)
    ds.PixelData = pixels.tobytes()
    return ds


@dataclass
class Archive:
    client: TestClient
    stored: dict[str, bytes]  # name -> the bytes sent

    def dataset(self, name: str) -> Dataset:
        return read(self.stored[name])

    def url(self, name: str, level: str = "instance") -> str:
        ds = self.dataset(name)
        url = f"/dicom-web/studies/{ds.StudyInstanceUID}"
        if level in ("series", "instance"):
            url += f"/series/{ds.SeriesInstanceUID}"
        if level == "instance":
            url += f"/instances/{ds.SOPInstanceUID}"
        return url

    def frames(self, name: str, frame_list: str, accept: str = OHIF_FRAMES) -> list[tuple[dict[str, str], bytes]]:
        response = self.client.get(f"{self.url(name)}/frames/{frame_list}", headers={"Accept": accept})
        assert response.status_code == 200, response.text
        return split_multipart(response.headers["content-type"], response.content)


@pytest.fixture(scope="module", params=BACKENDS)
def archive(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    ct = ct_with_large_binaries()
    stored = {
        "ct1": to_bytes(ct[0]),
        "ct2": to_bytes(ct[1]),
        "multiframe": to_bytes(multiframe()),
        "pdf": to_bytes(pdf_document()),
        "big_endian_binaries": big_endian_with_binaries(),
        "implicit_binaries": implicit_with_binaries(),
        "MR_small_bigendian.dcm": pydicom_file("MR_small_bigendian.dcm"),
        "emri_small_big_endian.dcm": with_new_instance_uid(pydicom_file("emri_small_big_endian.dcm")),
        **{name: pydicom_file(name) for name in COMPRESSED},
    }
    for settings in make_settings(request.param, tmp_path_factory.mktemp("wado"), request):
        services = Services.build(settings)
        try:
            with TestClient(build_app(settings, services), headers=bearer_headers(services)) as client:
                body, content_type = stow_body(list(stored.values()))
                answer = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
                assert answer.status_code == 200, answer.text
                yield Archive(client, stored)
        finally:
            services.close()


def parts_of(response: Any) -> list[tuple[dict[str, str], bytes]]:
    assert response.status_code == 200, response.text
    return split_multipart(response.headers["content-type"], response.content)


# --- retrieve instances ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "accept",
    [None, "*/*", DICOM_PARTS, DICOM_PARTS + "; transfer-syntax=*", "multipart/related; type=application/dicom"],
)
@pytest.mark.parametrize("level", ["study", "series", "instance"])
def test_retrieve_returns_the_stored_bytes(archive: Archive, level: str, accept: str | None) -> None:
    headers = {"Accept": accept} if accept else {}
    response = archive.client.get(archive.url("ct1", level), headers=headers)
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/related")
    assert re.search(r'type="?application/dicom"?', content_type)
    parts = parts_of(response)
    expected = {"ct1", "ct2"} if level != "instance" else {"ct1"}
    assert sorted(body for _, body in parts) == sorted(archive.stored[name] for name in expected)
    for headers_of_part, body in parts:
        assert headers_of_part["content-type"].startswith("application/dicom")
        assert ExplicitVRLittleEndian in headers_of_part["content-type"]
        assert int(headers_of_part.get("content-length", len(body))) == len(body)


@pytest.mark.parametrize("name", [*COMPRESSED, "MR_small_bigendian.dcm", "pdf"])
def test_retrieve_any_syntax_unchanged(archive: Archive, name: str) -> None:
    [(headers, body)] = parts_of(archive.client.get(archive.url(name)))
    assert body == archive.stored[name]
    assert archive.dataset(name).file_meta.TransferSyntaxUID in headers["content-type"]


def test_series_stored_in_two_syntaxes(archive: Archive) -> None:
    """SC_rgb_rle_2frame.dcm (RLE) and SC_rgb_jpeg_dcmtk.dcm (JPEG) share a series in pydicom's data."""
    url = archive.url("SC_rgb_jpeg_dcmtk.dcm", "series")
    assert archive.url("SC_rgb_rle_2frame.dcm", "series") == url
    expected = sorted([archive.stored["SC_rgb_jpeg_dcmtk.dcm"], archive.stored["SC_rgb_rle_2frame.dcm"]])
    for accept in (None, DICOM_PARTS + "; transfer-syntax=*"):
        response = archive.client.get(url, headers={"Accept": accept} if accept else {})
        assert "transfer-syntax" not in response.headers["content-type"]  # no single syntax to announce
        assert sorted(body for _, body in parts_of(response)) == expected
    # Asked for RLE only: the RLE instance goes as stored, the JPEG one is transcoded.
    only_rle = archive.client.get(url, headers={"Accept": f"{DICOM_PARTS}; transfer-syntax={RLELossless}"})
    assert f"transfer-syntax={RLELossless}" in only_rle.headers["content-type"]
    parts = parts_of(only_rle)
    assert all(f"transfer-syntax={RLELossless}" in headers["content-type"] for headers, _ in parts)
    bodies = {str(read(body).SOPInstanceUID): body for _, body in parts}
    rle, jpeg = archive.dataset("SC_rgb_rle_2frame.dcm"), archive.dataset("SC_rgb_jpeg_dcmtk.dcm")
    assert bodies[rle.SOPInstanceUID] == archive.stored["SC_rgb_rle_2frame.dcm"]
    converted = read(bodies[jpeg.SOPInstanceUID])
    assert converted.file_meta.TransferSyntaxUID == RLELossless
    assert np.array_equal(converted.pixel_array, jpeg.pixel_array)


def test_retrieve_in_the_stored_transfer_syntax_by_name(archive: Archive) -> None:
    accept = f"{DICOM_PARTS}; transfer-syntax={ExplicitVRLittleEndian}"
    [(_, body)] = parts_of(archive.client.get(archive.url("ct1"), headers={"Accept": accept}))
    assert body == archive.stored["ct1"]


@pytest.mark.parametrize(
    "accept",
    [
        f"{DICOM_PARTS}; transfer-syntax={JPEGBaseline8Bit}",  # would need transcoding
        "application/dicom+json",
        "image/jpeg",
        "multipart/related; type=application/octet-stream",
    ],
)
def test_retrieve_refuses_what_it_cannot_send(archive: Archive, accept: str) -> None:
    response = archive.client.get(archive.url("ct1", "series"), headers={"Accept": accept})
    assert response.status_code == 406
    assert response.json()["error"]


# --- metadata --------------------------------------------------------------------------------


def expected_json(data: bytes) -> dict[str, Any]:
    return read(data).to_json_dict(bulk_data_threshold=1 << 62)


def assert_metadata_matches(document: dict[str, Any], data: bytes, base: str) -> None:
    """Ordinary attributes exactly as pydicom renders the stored file; large binary values and
    pixel data as BulkDataURIs under the instance's absolute URL."""
    ds = read(data)
    expected = expected_json(data)
    instance_url = (
        f"{base}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    )
    assert document["00083002"] == {"vr": "UI", "Value": [ds.file_meta.TransferSyntaxUID]}
    assert set(document) == set(expected) | {"00083002"}
    for tag, element in expected.items():
        got = document[tag]
        if tag in PIXEL_TAGS or len(element.get("InlineBinary", "")) > INLINE_LIMIT:
            assert set(got) == {"vr", "BulkDataURI"}, tag
            assert got["BulkDataURI"] == f"{instance_url}/bulk/{tag}"
            if tag not in PIXEL_TAGS or ds.file_meta.TransferSyntaxUID.is_encapsulated is False:
                assert got["vr"] == element["vr"], tag
        else:
            assert got == element, tag


@pytest.mark.parametrize("level", ["study", "series", "instance"])
def test_metadata_is_the_stored_files_json(archive: Archive, level: str) -> None:
    response = archive.client.get(archive.url("ct1", level) + "/metadata", headers={"Accept": "application/dicom+json"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom+json")
    documents = {d["00080018"]["Value"][0]: d for d in response.json()}
    names = ["ct1", "ct2"] if level != "instance" else ["ct1"]
    assert set(documents) == {str(archive.dataset(n).SOPInstanceUID) for n in names}
    for name in names:
        assert_metadata_matches(documents[str(archive.dataset(name).SOPInstanceUID)], archive.stored[name],
                                "http://testserver/dicom-web")


@pytest.mark.parametrize(
    "name", [*COMPRESSED, "MR_small_bigendian.dcm", "multiframe", "pdf", "implicit_binaries", "big_endian_binaries"]
)
def test_metadata_of_other_kinds_of_object(archive: Archive, name: str) -> None:
    [document] = archive.client.get(archive.url(name) + "/metadata").json()
    assert_metadata_matches(document, archive.stored[name], "http://testserver/dicom-web")


def test_bulk_data_uris_follow_the_host_the_client_used(archive: Archive) -> None:
    response = archive.client.get(archive.url("ct1") + "/metadata", headers={"Host": "pacs.example:8443"})
    [document] = response.json()
    assert document["7FE00010"]["BulkDataURI"].startswith("http://pacs.example:8443/dicom-web/studies/")


def get_bulk(archive: Archive, document: dict[str, Any], tag: str) -> list[bytes]:
    uri = document[tag]["BulkDataURI"]
    assert uri.startswith("http://testserver/dicom-web/")
    return [body for _, body in parts_of(archive.client.get(uri))]


def test_pixel_data_uri_resolves_to_the_pixels(archive: Archive) -> None:
    [document] = archive.client.get(archive.url("ct1") + "/metadata").json()
    assert get_bulk(archive, document, "7FE00010") == [archive.dataset("ct1").PixelData]


def test_big_endian_pixel_data_uri_resolves_to_little_endian_pixels(archive: Archive) -> None:
    [document] = archive.client.get(archive.url("MR_small_bigendian.dcm") + "/metadata").json()
    little = read(pydicom_file("MR_small.dcm"))
    assert np.array_equal(little.pixel_array, archive.dataset("MR_small_bigendian.dcm").pixel_array)
    assert get_bulk(archive, document, "7FE00010") == [little.PixelData]


def test_encapsulated_pixel_data_uri_resolves_to_the_frames(archive: Archive) -> None:
    name = "SC_rgb_rle_2frame.dcm"
    [document] = archive.client.get(archive.url(name) + "/metadata").json()
    assert get_bulk(archive, document, "7FE00010") == list(generate_frames(archive.dataset(name).PixelData, number_of_frames=2))


@pytest.mark.parametrize(
    ("name", "tag", "attribute"),
    [
        ("ct1", "00091001", (0x0009, 0x1001)),  # private OB, 4 KiB
        ("ct1", "60003000", (0x6000, 0x3000)),  # OverlayData, OW, 2 KiB
        ("pdf", "00420011", "EncapsulatedDocument"),  # OB, ~5 KiB
        ("implicit_binaries", "60003000", (0x6000, 0x3000)),
        ("implicit_binaries", "00091001", (0x0009, 0x1001)),  # UN in an implicit VR file
        ("implicit_binaries", "7FE00010", "PixelData"),
    ],
)
def test_large_binary_values_become_resolvable_uris(archive: Archive, name: str, tag: str, attribute: Any) -> None:
    [document] = archive.client.get(archive.url(name) + "/metadata").json()
    assert "InlineBinary" not in document[tag]
    stored = archive.dataset(name)
    value = stored[attribute].value if isinstance(attribute, tuple) else getattr(stored, attribute)
    assert len(value) > 1024
    assert b"".join(get_bulk(archive, document, tag)) == value


@pytest.mark.parametrize(("tag", "word"), [("60003000", 2), ("00660016", 4), ("00660022", 8), ("7FE00010", 2)])
def test_big_endian_bulk_data_comes_back_little_endian(archive: Archive, tag: str, word: int) -> None:
    [document] = archive.client.get(archive.url("big_endian_binaries") + "/metadata").json()
    raw = archive.dataset("big_endian_binaries")[int(tag, 16)].value  # as in the file: big endian
    assert b"".join(get_bulk(archive, document, tag)) == np.frombuffer(raw, f">u{word}").astype(f"<u{word}").tobytes()


@pytest.mark.parametrize(("tag", "status"), [("00100010", 404), ("00081032", 404), ("00280010", 404),
                                             ("zz", 400), ("FFFFFFFFF", 400), ("0x7FE0010", 400), ("7FE0_010", 400)])
def test_bulk_references_that_name_no_binary_value(archive: Archive, tag: str, status: int) -> None:
    response = archive.client.get(f"{archive.url('ct1')}/bulk/{tag}")
    assert response.status_code == status, response.text
    assert response.json()["error"]


def test_small_binary_values_stay_inline(archive: Archive) -> None:
    [document] = archive.client.get(archive.url("ct1") + "/metadata").json()
    assert document["00091002"] == {"vr": "OB", "InlineBinary": "AQIDBAUGBwg="}


def test_metadata_is_gzipped_only_when_accepted(archive: Archive) -> None:
    url = archive.url("ct1", "study") + "/metadata"
    zipped = archive.client.get(url, headers={"Accept-Encoding": "gzip"})
    plain = archive.client.get(url, headers={"Accept-Encoding": "identity"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert "content-encoding" not in plain.headers
    assert len(plain.content) > 1024
    assert int(zipped.headers["content-length"]) < len(plain.content)
    assert zipped.json() == plain.json()


@pytest.mark.parametrize("accept", ["application/dicom", 'multipart/related; type="application/dicom"', "image/png"])
def test_metadata_refuses_other_media_types(archive: Archive, accept: str) -> None:
    assert archive.client.get(archive.url("ct1") + "/metadata", headers={"Accept": accept}).status_code == 406


# --- frames ----------------------------------------------------------------------------------


def test_single_frame_of_a_native_instance(archive: Archive) -> None:
    response = archive.client.get(archive.url("ct2") + "/frames/1", headers={"Accept": OHIF_FRAMES})
    assert re.search(r'type="?application/octet-stream"?', response.headers["content-type"])
    [(headers, body)] = parts_of(response)
    assert body == archive.dataset("ct2").PixelData
    assert headers["content-type"].startswith("application/octet-stream")
    assert f"transfer-syntax={ExplicitVRLittleEndian}" in headers["content-type"]


@pytest.mark.parametrize(
    "accept",
    [None, "*/*", "multipart/related; type=application/octet-stream", OHIF_FRAMES,
     f"multipart/related; type=application/octet-stream; transfer-syntax={ExplicitVRLittleEndian}"],
)
def test_native_frames_answer_common_accept_headers(archive: Archive, accept: str | None) -> None:
    headers = {"Accept": accept} if accept else {}
    response = archive.client.get(archive.url("ct1") + "/frames/1", headers=headers)
    [(_, body)] = parts_of(response)
    assert body == archive.dataset("ct1").PixelData


def native_frames(ds: Dataset) -> list[bytes]:
    size = int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * int(ds.BitsAllocated) // 8
    return [ds.PixelData[i * size : (i + 1) * size] for i in range(int(ds.get("NumberOfFrames", 1)))]


def test_multiframe_frames_and_frame_lists(archive: Archive) -> None:
    expected = native_frames(archive.dataset("multiframe"))
    assert len(expected) == 5 and len(set(expected)) == 5
    for number in range(1, 6):
        [(_, body)] = archive.frames("multiframe", str(number))
        assert body == expected[number - 1]
    assert [body for _, body in archive.frames("multiframe", "1,3")] == [expected[0], expected[2]]
    assert [body for _, body in archive.frames("multiframe", "5,1,5")] == [expected[4], expected[0], expected[4]]
    assert [body for _, body in archive.frames("multiframe", "1%2C2")] == expected[:2]


@pytest.mark.parametrize("name", COMPRESSED)
def test_compressed_frames_are_the_stored_fragments(archive: Archive, name: str) -> None:
    ds = archive.dataset(name)
    count = int(ds.get("NumberOfFrames", 1) or 1)
    expected = list(generate_frames(ds.PixelData, number_of_frames=count))
    everything = ",".join(str(n) for n in range(1, count + 1))
    parts = archive.frames(name, everything)
    assert [body for _, body in parts] == expected
    for headers, _ in parts:
        assert f"transfer-syntax={ds.file_meta.TransferSyntaxUID}" in headers["content-type"]
    [(_, last)] = archive.frames(name, str(count))
    assert last == expected[-1]


@pytest.mark.parametrize(
    ("name", "media_type", "magic"),
    [
        ("SC_rgb_jpeg_dcmtk.dcm", "image/jpeg", b"\xff\xd8"),
        ("JPEG2000.dcm", "image/jp2", b"\xff\x4f"),
        ("emri_small_jpeg_2k_lossless.dcm", "image/jp2", b"\xff\x4f"),
        ("SC_rgb_rle_2frame.dcm", "image/dicom-rle", b""),
        ("SC_rgb_rle_2frame.dcm", "image/x-dicom-rle", b""),  # the older name some clients send
    ],
)
def test_compressed_frames_by_their_own_media_type(archive: Archive, name: str, media_type: str, magic: bytes) -> None:
    ds = archive.dataset(name)
    [(headers, body)] = archive.frames(name, "1", f'multipart/related; type="{media_type}"')
    assert headers["content-type"].startswith(media_type)
    assert f"transfer-syntax={ds.file_meta.TransferSyntaxUID}" in headers["content-type"]
    count = int(ds.get("NumberOfFrames", 1) or 1)
    assert body == next(generate_frames(ds.PixelData, number_of_frames=count))
    assert body.startswith(magic)


@pytest.mark.parametrize("name", ["MR_small_bigendian.dcm", "emri_small_big_endian.dcm"])
def test_big_endian_frames_come_back_little_endian(archive: Archive, name: str) -> None:
    ds = archive.dataset(name)
    count = int(ds.get("NumberOfFrames", 1) or 1)
    swapped = np.frombuffer(ds.PixelData, dtype=">u2").astype("<u2").tobytes()
    size = len(swapped) // count
    parts = archive.frames(name, ",".join(str(n) for n in range(1, count + 1)))
    assert [body for _, body in parts] == [swapped[i * size : (i + 1) * size] for i in range(count)]
    if name == "MR_small_bigendian.dcm":
        assert parts[0][1] == read(pydicom_file("MR_small.dcm")).PixelData
    else:
        little = read(pydicom_file("emri_small.dcm"))
        assert b"".join(body for _, body in parts) == little.PixelData
    for headers, _ in parts:
        assert f"transfer-syntax={ExplicitVRLittleEndian}" in headers["content-type"]


@pytest.mark.parametrize(
    ("name", "frames", "status"),
    [
        ("multiframe", "0", 400),
        ("multiframe", "6", 404),
        ("multiframe", "1,6", 404),
        ("multiframe", "abc", 400),
        ("multiframe", "1,abc", 400),
        ("multiframe", "-1", 400),
        ("multiframe", "1.5", 400),
        ("multiframe", "²", 400),
        ("multiframe", ",", 400),
        ("ct1", "2", 404),
        ("JPEG2000.dcm", "2", 404),
        ("SC_rgb_rle_2frame.dcm", "3", 404),
        ("pdf", "1", 404),  # no pixel data at all
    ],
)
def test_bad_frame_numbers(archive: Archive, name: str, frames: str, status: int) -> None:
    response = archive.client.get(f"{archive.url(name)}/frames/{frames}", headers={"Accept": OHIF_FRAMES})
    assert response.status_code == status, response.text
    assert response.json()["error"]


@pytest.mark.parametrize(
    "accept",
    [
        "multipart/related; type=application/octet-stream",  # means decompressed pixels (PS3.18 8.7.3.3)
        "multipart/related; type=application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1",
    ],
)
def test_compressed_frames_are_decoded_on_request(archive: Archive, accept: str) -> None:
    [(headers, body)] = archive.frames("JPEG2000.dcm", "1", accept)
    assert f"transfer-syntax={ExplicitVRLittleEndian}" in headers["content-type"]
    pixels = archive.dataset("JPEG2000.dcm").pixel_array
    assert body == pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()


@pytest.mark.parametrize(
    "accept",
    [
        'multipart/related; type="image/jpeg"',  # stored as JPEG 2000; no JPEG encoder here
        "application/dicom+json",
    ],
)
def test_compressed_frames_refuse_what_cannot_be_produced(archive: Archive, accept: str) -> None:
    response = archive.client.get(f"{archive.url('JPEG2000.dcm')}/frames/1", headers={"Accept": accept})
    assert response.status_code == 406
    assert response.json()["error"]


# --- errors ----------------------------------------------------------------------------------


def unknown_urls(archive: Archive) -> list[str]:
    ds = archive.dataset("ct1")
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    other_series = archive.dataset("multiframe").SeriesInstanceUID
    return [
        f"/dicom-web/studies/{UNKNOWN}",
        f"/dicom-web/studies/{study}/series/{UNKNOWN}",
        f"/dicom-web/studies/{study}/series/{other_series}",  # exists, but in another study
        f"/dicom-web/studies/{study}/series/{series}/instances/{UNKNOWN}",
        f"/dicom-web/studies/{study}/series/{series}/instances/{archive.dataset('multiframe').SOPInstanceUID}",
        f"/dicom-web/studies/{UNKNOWN}/series/{series}/instances/{sop}",
    ]


@pytest.mark.parametrize("suffix", ["", "/metadata"])
def test_unknown_objects_are_404(archive: Archive, suffix: str) -> None:
    for url in unknown_urls(archive):
        response = archive.client.get(url + suffix)
        assert response.status_code == 404, url
        assert response.json()["error"]


def test_frames_and_bulk_of_unknown_instances_are_404(archive: Archive) -> None:
    for url in unknown_urls(archive)[3:]:
        for suffix in ("/frames/1", "/bulk/7FE00010"):
            response = archive.client.get(url + suffix, headers={"Accept": OHIF_FRAMES})
            assert response.status_code == 404, url + suffix
    missing = archive.client.get(archive.url("ct2") + "/bulk/00091001")
    assert missing.status_code == 404


@pytest.mark.parametrize("suffix", ["/rendered", "/thumbnail"])
@pytest.mark.parametrize("level", ["study", "series", "instance", "frames"])
def test_rendered_and_thumbnail_at_every_level(archive: Archive, level: str, suffix: str) -> None:
    url = archive.url("ct1", "instance") + "/frames/1" if level == "frames" else archive.url("ct1", level)
    response = archive.client.get(url + suffix, headers={"Accept": "image/jpeg"})
    assert response.status_code == 200
    assert b"\xff\xd8\xff" in response.content[:400]  # a JPEG image, alone or in a multipart part


def test_the_archive_still_answers_after_errors(archive: Archive) -> None:
    for url in unknown_urls(archive):
        archive.client.get(url)
    archive.client.get(f"{archive.url('multiframe')}/frames/0")
    [(_, body)] = parts_of(archive.client.get(archive.url("multiframe")))
    assert body == archive.stored["multiframe"]


def test_retrieve_after_more_instances_arrive(client: TestClient) -> None:
    first = make_series(1)
    body, content_type = stow_body(first)
    assert client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type}).status_code == 200
    study = first[0].StudyInstanceUID
    later = make_ct(16, seed=5, StudyInstanceUID=study, SeriesInstanceUID=generate_uid(), SeriesNumber=2)
    body, content_type = stow_body([later])
    assert client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type}).status_code == 200
    parts = parts_of(client.get(f"/dicom-web/studies/{study}"))
    assert sorted(p for _, p in parts) == sorted([to_bytes(first[0]), to_bytes(later)])
    metadata = client.get(f"/dicom-web/studies/{study}/metadata").json()
    assert {d["00080018"]["Value"][0] for d in metadata} == {first[0].SOPInstanceUID, later.SOPInstanceUID}
