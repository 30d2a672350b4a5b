"""WADO-RS transcoding on both backends: compressed corpus files decoded on request (frames and
whole instances), native instances compressed on request, refusals that name what can be made,
damaged data, and a multi-frame study streamed one converted instance at a time."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.pixels import as_pixel_options, get_decoder, pixel_array
from pydicom.uid import (
    JPEG2000,
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.testclient import TestClient

import dicomweb.wado
from pacs.pixels import transcode
from pacs.pixels.transcode import producible_syntaxes
from pacs.services import Services
from tests.support.factories import make_ct, make_series, split_multipart, stow_body, to_bytes

# Odd corpus files carry invalid values (UIDs, dates) that pydicom warns about while the server,
# running in this process, reads them; pytest's "error" filter would make each an exception.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")

ELE = str(ExplicitVRLittleEndian)
DICOM_PARTS = 'multipart/related; type="application/dicom"'
OCTETS = 'multipart/related; type="application/octet-stream"'
LOSSLESS = [str(uid) for uid in (RLELossless, JPEG2000Lossless, JPEGLSLossless) if uid in producible_syntaxes()]
MPEG2 = "1.2.840.10008.1.2.4.100"  # video: nothing here will ever encode it


UNREADABLE = (InvalidDicomError, AttributeError, KeyError, ValueError, EOFError, OSError)
UNDECODABLE = (RuntimeError, ValueError, AttributeError, NotImplementedError)


def compressed_corpus() -> list[Path]:
    """pydicom's (and pydicom-data's) test files with compressed pixel data; never downloads."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # deliberately odd files make pydicom warn
        return [Path(p) for p in sorted({p for p in get_testdata_files() if os.path.isfile(p)}) if _is_compressed(p)]


def _is_compressed(path: str) -> bool:
    try:
        syntax = UID(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        return syntax.is_transfer_syntax and syntax.is_compressed
    except UNREADABLE:  # not DICOM, no file meta, an unknown UID: not a case for this test
        return False


def little_endian(pixels: np.ndarray) -> bytes:
    return pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()


def frame_count(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def urls(ds: Dataset) -> tuple[str, str]:
    study = f"/dicom-web/studies/{ds.StudyInstanceUID}"
    return study, f"{study}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def parts_of(response: Any) -> list[tuple[dict[str, str], bytes]]:
    assert response.status_code == 200, response.text
    return split_multipart(response.headers["content-type"], response.content)


def post(client: TestClient, *instances: Dataset | bytes) -> None:
    body, content_type = stow_body(list(instances))
    answer = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert answer.status_code == 200, answer.text


def instance_in(client: TestClient, ds: Dataset, syntax: str) -> Dataset:
    """The instance retrieved in ``syntax``: checks the part's label and the kept identity."""
    [(headers, body)] = parts_of(client.get(urls(ds)[1], headers={"Accept": f"{DICOM_PARTS}; transfer-syntax={syntax}"}))
    assert headers["content-type"] == f"application/dicom; transfer-syntax={syntax}"
    got = pydicom.dcmread(io.BytesIO(body))
    assert got.file_meta.TransferSyntaxUID == syntax
    assert got.SOPInstanceUID == ds.SOPInstanceUID == got.file_meta.MediaStorageSOPInstanceUID
    return got


def frames_in(client: TestClient, ds: Dataset, syntax: str, count: int) -> list[bytes]:
    numbers = ",".join(str(n) for n in range(1, count + 1))
    response = client.get(f"{urls(ds)[1]}/frames/{numbers}", headers={"Accept": f"{OCTETS}; transfer-syntax={syntax}"})
    parts = parts_of(response)
    assert all(h["content-type"] == f"application/octet-stream; transfer-syntax={syntax}" for h, _ in parts)
    return [body for _, body in parts]


# --- compressed corpus, decoded on request ----------------------------------------------------


def with_study_and_series(path: Path, folder: Path) -> Path:
    """The JPEG-LS near-lossless samples lack Study/Series Instance UIDs, which the archive
    requires: a copy with both added (everything else, pixel data included, as it was)."""
    ds = pydicom.dcmread(path)
    if "StudyInstanceUID" in ds and "SeriesInstanceUID" in ds:
        return path
    ds.StudyInstanceUID = ds.get("StudyInstanceUID") or generate_uid()
    ds.SeriesInstanceUID = ds.get("SeriesInstanceUID") or generate_uid()
    copy = folder / path.name
    ds.save_as(copy)
    return copy


def check_decoded(client: TestClient, services: Services, original: Path, folder: Path) -> str | None:
    """Store one corpus file, fetch its frames and the instance as Explicit VR Little Endian and
    compare with pydicom's decoding. Returns why it was left out, or None once checked."""
    path = with_study_and_series(original, folder)
    try:
        expected = pixel_array(path)
    except UNDECODABLE as exc:  # pydicom itself cannot decode it here (JPEG-lossy.dcm, ...)
        return f"pydicom cannot decode it: {type(exc).__name__}"
    report = services.ingest.store_file(path)
    if not report.ok:
        return f"not archived: {report.error}"
    ds = pydicom.dcmread(path)
    count = frame_count(ds)
    frames = frames_in(client, ds, ELE, count)
    assert len(frames) == count, path.name
    for index, body in enumerate(frames):
        assert body == little_endian(pixel_array(path, index=index)), f"{path.name} frame {index + 1}"
    got = instance_in(client, ds, ELE)
    assert np.array_equal(got.pixel_array, expected), path.name
    assert "ExtendedOffsetTable" not in got
    services.ingest.delete(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)  # UIDs recur in the corpus
    return None


# Deliberately odd corpus files make pydicom warn (implicit VR in an explicit file, bad lengths),
# on this side and in the server, which runs in this process.
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_every_decodable_compressed_corpus_file_comes_back_decoded(
    client: TestClient, services: Services, tmp_path: Path
) -> None:
    corpus = compressed_corpus()
    left_out = {p.name: why for p in corpus if (why := check_decoded(client, services, p, tmp_path)) is not None}
    # pydicom 3 + pydicom-data hold 60 compressed files; left out: 4 pydicom cannot decode, and
    # 2 the archive refuses (an invalid SOP Instance UID, a truncated one).
    assert len(left_out) <= 6 and len(corpus) - len(left_out) >= 20, left_out
    assert all(why.startswith(("pydicom cannot decode", "not archived")) for why in left_out.values())


def test_decoded_frames_of_a_color_jpeg_are_rgb_as_pydicom_gives_them(client: TestClient) -> None:
    path = get_testdata_file("SC_rgb_jpeg_dcmtk.dcm", download=False)
    assert path is not None
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation.startswith("YBR")
    post(client, ds)
    [frame] = frames_in(client, ds, ELE, 1)
    assert frame == ds.pixel_array.tobytes()  # (rows, columns, 3) interleaved RGB
    # OHIF's transfer-syntax=* still gets the stored JPEG bytes, untouched.
    response = client.get(f"{urls(ds)[1]}/frames/1", headers={"Accept": f"{OCTETS}; transfer-syntax=*"})
    [(_, stored)] = parts_of(response)
    assert stored == next(generate_frames(ds.PixelData, number_of_frames=1))


# --- native instances, compressed on request --------------------------------------------------


def native_sources() -> list[tuple[str, Dataset]]:
    def corpus(name: str) -> Dataset:
        path = get_testdata_file(name, download=False)
        assert path is not None
        return pydicom.dcmread(path)

    frames = np.stack([np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * (k + 1) % 4096 for k in range(3)])
    multiframe = make_ct(64, NumberOfFrames=3, PixelData=frames.tobytes())
    return [
        ("ct-multiframe", multiframe),
        ("MR_small.dcm", corpus("MR_small.dcm")),  # signed 16-bit
        ("SC_rgb.dcm", corpus("SC_rgb.dcm")),  # RGB 8-bit
        ("MR_small_bigendian.dcm", corpus("MR_small_bigendian.dcm")),  # retired big endian
    ]


@pytest.mark.parametrize("syntax", LOSSLESS)
def test_native_instances_come_back_losslessly_compressed(client: TestClient, syntax: str) -> None:
    assert LOSSLESS, "no lossless encoder is available here"
    sources = native_sources()
    for name, ds in sources:
        post(client, ds)
    for name, ds in sources:
        got = instance_in(client, ds, syntax)
        assert np.array_equal(got.pixel_array, ds.pixel_array), name
        assert "LossyImageCompression" not in got or got.LossyImageCompression == "00", name
        # Frames as codestreams: each decodes back to the stored frame.
        count = frame_count(ds)
        options = as_pixel_options(ds, number_of_frames=1, transfer_syntax_uid=UID(syntax))
        for index, body in enumerate(frames_in(client, ds, syntax, count)):
            decoded, _ = get_decoder(syntax).as_array(encapsulate([body]), index=0, **options)
            stored = ds.pixel_array if count == 1 else ds.pixel_array[index]
            assert np.array_equal(decoded, stored), f"{name} frame {index + 1}"


def test_native_instance_in_implicit_vr(client: TestClient) -> None:
    ds = make_ct(32, seed=3)
    post(client, ds)
    got = instance_in(client, ds, str(ImplicitVRLittleEndian))
    assert got.PixelData == ds.PixelData and got.PatientName == ds.PatientName


@pytest.mark.skipif(JPEG2000 not in producible_syntaxes(), reason="no JPEG 2000 encoder here")
def test_lossy_target_is_marked_lossy(client: TestClient) -> None:
    y, x = np.mgrid[0:64, 0:64]
    ds = make_ct(64, PixelData=((x * 40 + y * 20) % 4096).astype(np.uint16).tobytes())  # smooth: compresses well
    post(client, ds)
    got = instance_in(client, ds, str(JPEG2000))
    assert got.LossyImageCompression == "01"
    assert got.LossyImageCompressionMethod == "ISO_15444_1"
    assert float(got.LossyImageCompressionRatio) > 1
    difference = np.abs(got.pixel_array.astype(np.int32) - ds.pixel_array.astype(np.int32))
    assert difference.max() < 4096 and difference.mean() < 200  # lossy, yet the same image


def test_a_series_in_two_syntaxes_comes_back_in_one(client: TestClient) -> None:
    """One part per instance, each labelled with what it actually is: the stored one as stored."""
    path = get_testdata_file("emri_small_jpeg_2k_lossless.dcm", download=False)
    assert path is not None
    compressed = pydicom.dcmread(path)
    native = make_ct(64, seed=5, StudyInstanceUID=compressed.StudyInstanceUID, PatientID=compressed.PatientID,
                     PatientName=compressed.PatientName)
    post(client, compressed, native)
    response = client.get(urls(native)[0], headers={"Accept": f"{DICOM_PARTS}; transfer-syntax={ELE}"})
    assert f"transfer-syntax={ELE}" in response.headers["content-type"]
    parts = {str(pydicom.dcmread(io.BytesIO(body)).SOPInstanceUID): (h, body) for h, body in parts_of(response)}
    assert parts[native.SOPInstanceUID][1] == to_bytes(native)
    decoded = pydicom.dcmread(io.BytesIO(parts[compressed.SOPInstanceUID][1]))
    assert np.array_equal(decoded.pixel_array, compressed.pixel_array)
    assert all(h["content-type"] == f"application/dicom; transfer-syntax={ELE}" for h, _ in parts.values())


# --- refusals and damaged data ----------------------------------------------------------------


def test_refusal_names_what_can_be_produced(client: TestClient) -> None:
    ds = make_ct(16, seed=6)
    post(client, ds)
    response = client.get(urls(ds)[1], headers={"Accept": f"{DICOM_PARTS}; transfer-syntax={MPEG2}"})
    assert response.status_code == 406
    message = response.json()["error"]
    assert MPEG2 in message
    assert all(syntax in message for syntax in producible_syntaxes()), message
    frames = client.get(f"{urls(ds)[1]}/frames/1", headers={"Accept": f"{OCTETS}; transfer-syntax={MPEG2}"})
    assert frames.status_code == 406
    assert all(syntax in frames.json()["error"] for syntax in LOSSLESS)


def damaged_jpeg2000() -> Dataset:
    """A JPEG 2000 instance whose codestream keeps its start marker but loses its header: it
    is archived (the frame layout is sound), yet no decoder can read it."""
    path = get_testdata_file("JPEG2000.dcm", download=False)
    assert path is not None
    ds = pydicom.dcmread(path)
    [frame] = generate_frames(ds.PixelData, number_of_frames=1)
    ds.PixelData = encapsulate([frame[:2] + bytes(len(frame) - 2)])
    return ds


def test_damaged_compressed_instance_is_refused_clearly(client: TestClient, services: Services) -> None:
    damaged, healthy = damaged_jpeg2000(), make_ct(16, seed=7)
    post(client, damaged, healthy)
    accept = {"Accept": f"{DICOM_PARTS}; transfer-syntax={ELE}"}
    response = client.get(urls(damaged)[1], headers=accept)
    assert response.status_code == 406
    message = response.json()["error"]
    assert str(damaged.SOPInstanceUID) in message and "JPEG 2000" in message
    frame = client.get(f"{urls(damaged)[1]}/frames/1", headers={"Accept": f"{OCTETS}; transfer-syntax={ELE}"})
    assert frame.status_code == 406 and "JPEG 2000" in frame.json()["error"]
    # Still serving: the stored bytes of the damaged instance, and other instances converted.
    [(_, stored)] = parts_of(client.get(urls(damaged)[1], headers={"Accept": f"{DICOM_PARTS}; transfer-syntax=*"}))
    assert pydicom.dcmread(io.BytesIO(stored)).PixelData == damaged.PixelData
    assert instance_in(client, healthy, LOSSLESS[0] if LOSSLESS else ELE).pixel_array.tobytes() == healthy.PixelData
    assert not [p for p in (services.settings.data_dir / "tmp").rglob("*") if p.is_file()]


# --- streaming --------------------------------------------------------------------------------


def wado_request(accept: str) -> Request:
    return Request({"type": "http", "method": "GET", "path": "/", "headers": [(b"accept", accept.encode())]})


def test_study_is_converted_one_instance_at_a_time(
    services: Services, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A multi-frame study asked for in another syntax: each instance is converted only when its
    part is due, through one temp file at a time that is gone once the part is sent."""
    target = LOSSLESS[0] if LOSSLESS else ELE
    series = make_series(5, size=128, NumberOfFrames=8)
    rng = np.random.default_rng(8)
    for ds in series:
        ds.PixelData = rng.integers(0, 4096, size=(8, 128, 128), dtype=np.uint16).tobytes()
    post(client, *series)
    converted: list[int] = []
    real = transcode.transcode_file
    temp = services.settings.data_dir / "tmp"

    def counting(source: Any, syntax: str, destination: Path) -> None:
        assert not [p for p in temp.rglob("*") if p.is_file() and p != destination]  # nothing else held
        converted.append(1)
        real(source, syntax, destination)

    monkeypatch.setattr(transcode, "transcode_file", counting)
    response = dicomweb.wado.retrieve_instances(
        wado_request(f"{DICOM_PARTS}; transfer-syntax={target}"), services, series[0].StudyInstanceUID, None, None, None
    )
    assert isinstance(response, StreamingResponse)
    assert len(converted) == 1  # the first instance, so that its failure could still be a 406

    async def read_all() -> list[tuple[int, int]]:
        seen = []  # (bytes so far, instances converted so far) after each chunk
        total = 0
        async for chunk in response.body_iterator:
            total += len(chunk)
            seen.append((total, len(converted)))
        return seen

    progress = anyio.run(read_all)
    assert progress[0][1] == 1  # the first bytes left before the second instance was converted
    assert [count for _, count in progress] == sorted(count for _, count in progress)
    assert len(converted) == 5
    assert not [p for p in temp.rglob("*") if p.is_file()]


def test_streamed_study_content(client: TestClient) -> None:
    target = LOSSLESS[0] if LOSSLESS else ELE
    series = make_series(3, size=64, NumberOfFrames=4)
    rng = np.random.default_rng(9)
    for ds in series:
        ds.PixelData = rng.integers(0, 4096, size=(4, 64, 64), dtype=np.uint16).tobytes()
    post(client, *series)
    response = client.get(urls(series[0])[0], headers={"Accept": f"{DICOM_PARTS}; transfer-syntax={target}"})
    received = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(io.BytesIO(b)) for _, b in parts_of(response))}
    assert set(received) == {str(ds.SOPInstanceUID) for ds in series}
    for ds in series:
        assert received[str(ds.SOPInstanceUID)].file_meta.TransferSyntaxUID == target
        assert np.array_equal(received[str(ds.SOPInstanceUID)].pixel_array, ds.pixel_array)
