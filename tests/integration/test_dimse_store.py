"""C-ECHO and C-STORE against the archive's listener, on both backends: dcmtk and pynetdicom
peers, every compressed syntax sent unchanged, failures answered with the right status and
leaving nothing behind."""

from __future__ import annotations

import io
import time
import warnings
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pynetdicom.sop_class import (
    BreastProjectionXRayImageStorageForPresentation,
    ParametricMapStorage,
    PhotoacousticImageStorage,
    Verification,
)
from starlette.testclient import TestClient

from pacs.config import Settings
from pacs.dimse.server import DicomServer
from pacs.errors import StorageUnavailable
from pacs.services import Services
from tests.support.dimse import (
    StoreSCP,
    association,
    dcmtk,
    dcmtk_ok,
    echo_status,
    running_listener,
    send_raw_c_store,
    temp_files,
    write_files,
)
from tests.support.factories import make_ct, make_series, split_multipart, stow_body
from tests.support.storage_listing import blob_keys

FRAME_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"

# (pydicom test file, storescu option proposing its syntax). JPEGLSNearLossless_16.dcm has no
# Study/Series UIDs; they are added before sending (its pixel data stays as shipped).
COMPRESSED = [
    ("SC_rgb_jpeg_dcmtk.dcm", "-xy"),  # JPEG baseline
    ("JPEG-LL.dcm", "-xs"),  # JPEG lossless SV1
    ("MR_small_jpeg_ls_lossless.dcm", "-xt"),  # JPEG-LS lossless
    ("JPEGLSNearLossless_16.dcm", "-xu"),  # JPEG-LS near-lossless
    ("emri_small_jpeg_2k_lossless.dcm", "-xv"),  # JPEG 2000 lossless, 10 frames
    ("JPEG2000.dcm", "-xw"),  # JPEG 2000 lossy
    ("MR_small_RLE.dcm", "-xr"),  # RLE
    ("image_dfl.dcm", "-xd"),  # deflated explicit VR little endian
]


def pydicom_file(name: str, folder: Path) -> Path:
    """A pydicom test file, completed with the UIDs the archive requires when it lacks them."""
    path = get_testdata_file(name, download=False)
    assert path is not None and Path(path).is_file(), f"{name} is not installed (pydicom-data)"
    ds = pydicom.dcmread(path)
    if "StudyInstanceUID" in ds and "SeriesInstanceUID" in ds:
        return Path(path)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    ds.save_as(target)
    return target


def expected_frames(ds: Dataset) -> list[bytes]:
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        return list(generate_frames(ds.PixelData, number_of_frames=count))
    size = len(ds.PixelData) // count
    return [ds.PixelData[i * size : (i + 1) * size] for i in range(count)]


def wado_frames(client: TestClient, ds: Dataset) -> list[tuple[str, bytes]]:
    count = int(ds.get("NumberOfFrames", 1) or 1)
    numbers = ",".join(str(n) for n in range(1, count + 1))
    url = (
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames/{numbers}"
    )
    answer = client.get(url, headers={"Accept": FRAME_ACCEPT})
    assert answer.status_code == 200, answer.text
    return [(h["content-type"], body) for h, body in split_multipart(answer.headers["content-type"], answer.content)]


def qido_instances(client: TestClient, **params: str) -> list[dict[str, Any]]:
    answer = client.get("/dicom-web/instances", params=params)
    assert answer.status_code in (200, 204), answer.text
    return answer.json() if answer.status_code == 200 else []


def store_invalid_uid(assoc: Any) -> int:
    """C-STORE an instance whose SOP Instance UID is not a UID ("1.2.abc")."""
    with warnings.catch_warnings():
        # pydicom warns on the invalid UI value, here and in the listener's thread: it is the
        # point of the test.
        warnings.filterwarnings("ignore", message="Invalid value for VR UI", category=UserWarning)
        return int(assoc.send_c_store(make_ct(SOPInstanceUID="1.2.abc")).Status)


# ---- C-ECHO ---------------------------------------------------------------------------------


def test_echo_from_dcmtk_and_pynetdicom(listener: DicomServer) -> None:
    result = dcmtk_ok("echoscu", "-v", "-aec", "MINIPACS", "127.0.0.1", listener.port)
    assert "Received Echo Response (Success)" in result.stderr + result.stdout
    with association(listener.port, [Verification]) as assoc:
        assert int(assoc.send_c_echo().Status) == 0x0000
        assert assoc.acceptor.ae_title == "MINIPACS"


# ---- C-STORE: dcmtk -------------------------------------------------------------------------


def test_storescu_series_is_indexed_and_served_unchanged(
    listener: DicomServer, services: Services, client: TestClient, tmp_path: Path
) -> None:
    instances = make_series(3, PatientName="Doe^Jane", PatientID="P-DIMSE")
    files = write_files(instances, tmp_path / "out")
    dcmtk_ok("storescu", "-aec", "MINIPACS", "127.0.0.1", listener.port, *files)

    found = qido_instances(client, PatientID="P-DIMSE")
    assert sorted(i["00080018"]["Value"][0] for i in found) == sorted(ds.SOPInstanceUID for ds in instances)
    for ds in instances:
        [(content_type, frame)] = wado_frames(client, ds)
        assert frame == ds.PixelData
        assert ExplicitVRLittleEndian in content_type
        [stored] = services.index.locate(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        assert stored.transfer_syntax_uid == ExplicitVRLittleEndian
        answer = client.get(f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                            f"/instances/{ds.SOPInstanceUID}", headers={"Accept": "multipart/related; type=application/dicom"})
        [(_, body)] = split_multipart(answer.headers["content-type"], answer.content)
        served = pydicom.dcmread(io.BytesIO(body))
        assert served == ds  # every data element as sent
    assert services.index.counts() == {"patients": 1, "studies": 1, "series": 1, "instances": 3}
    assert temp_files(services) == []


@pytest.mark.parametrize(("name", "option"), COMPRESSED, ids=[c[1] for c in COMPRESSED])
def test_storescu_compressed_file_is_kept_in_its_syntax(
    name: str, option: str, listener: DicomServer, services: Services, client: TestClient, tmp_path: Path
) -> None:
    path = pydicom_file(name, tmp_path / "in")
    sent = pydicom.dcmread(path)
    syntax = sent.file_meta.TransferSyntaxUID
    result = dcmtk_ok("storescu", "-v", option, "-aec", "MINIPACS", "127.0.0.1", listener.port, path)
    assert "Received Store Response (Success)" in result.stderr + result.stdout

    [found] = qido_instances(client, SOPInstanceUID=sent.SOPInstanceUID)
    assert found["0020000D"]["Value"] == [sent.StudyInstanceUID]
    [stored] = services.index.locate(sent.StudyInstanceUID, sent.SeriesInstanceUID, sent.SOPInstanceUID)
    assert stored.transfer_syntax_uid == syntax
    frames = wado_frames(client, sent)
    assert [body for _, body in frames] == expected_frames(sent)
    # Compressed frames are served in their own syntax; deflate only wraps the data set.
    served_syntax = ExplicitVRLittleEndian if syntax == "1.2.840.10008.1.2.1.99" else syntax
    assert all(f"transfer-syntax={served_syntax}" in content_type for content_type, _ in frames)


def test_stow_in_then_c_move_out_in_every_syntax(
    listener: DicomServer, receiver: StoreSCP, client: TestClient, tmp_path: Path
) -> None:
    sent: dict[str, Dataset] = {}
    for name, _ in COMPRESSED:
        ds: Dataset = pydicom.dcmread(pydicom_file(name, tmp_path / "in"))
        # Two of the files share a SOP Instance UID; each gets its own here (pixels unchanged).
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        sent[ds.SOPInstanceUID] = ds
    ct = make_ct()
    sent[ct.SOPInstanceUID] = ct
    body, content_type = stow_body(list(sent.values()))
    answer = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert answer.status_code == 200, answer.text

    for ds in sent.values():
        dcmtk_ok(
            "movescu", "-S", "-aec", "MINIPACS", "-aem", receiver.ae_title,
            "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={ds.StudyInstanceUID}",
            "-k", f"SeriesInstanceUID={ds.SeriesInstanceUID}", "-k", f"SOPInstanceUID={ds.SOPInstanceUID}",
            "127.0.0.1", listener.port,
        )
    received = receiver.datasets()
    assert set(received) == set(sent)
    for uid, ds in sent.items():
        assert received[uid].file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID, ds.file_meta.TransferSyntaxUID.name
        assert received[uid].PixelData == ds.PixelData


# ---- C-STORE: failures ----------------------------------------------------------------------


def test_dataset_without_sop_instance_uid_is_refused(listener: DicomServer, services: Services) -> None:
    ds = make_ct()
    del ds.SOPInstanceUID
    with association(listener.port, [CTImageStorage]) as assoc:
        # The command names an instance; the data set itself has no SOP Instance UID.
        status = send_raw_c_store(assoc, CTImageStorage, generate_uid(), ds)
        assert 0xC000 <= status <= 0xCFFF
        assert 0xC000 <= store_invalid_uid(assoc) <= 0xCFFF
        # The association is still usable for a good instance.
        good = make_ct()
        assert int(assoc.send_c_store(good).Status) == 0x0000
    assert services.index.counts()["instances"] == 1
    assert len(blob_keys(services)) == 1
    assert temp_files(services) == []
    assert echo_status(listener.port) == 0x0000


def test_data_set_not_the_one_announced_is_refused(listener: DicomServer, services: Services) -> None:
    """The command names one instance and carries another (or another SOP class): storing it
    would answer success for an instance the archive does not hold."""
    with association(listener.port, [CTImageStorage, MRImageStorage]) as assoc:
        ds = make_ct()
        assert send_raw_c_store(assoc, CTImageStorage, generate_uid(), ds) == 0xA900
        assert send_raw_c_store(assoc, MRImageStorage, ds.SOPInstanceUID, ds) == 0xA900
        assert send_raw_c_store(assoc, CTImageStorage, ds.SOPInstanceUID, ds) == 0x0000
    assert services.index.counts()["instances"] == 1
    assert len(blob_keys(services)) == 1
    assert temp_files(services) == []


def test_storage_unavailable_answers_a700_and_writes_no_row(
    sqlite_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = Services.build(sqlite_settings)
    try:

        def broken_put(key: str, path: Path, *, move: bool = False, synced: bool = False) -> int:
            raise StorageUnavailable("cannot store in the archive: No space left on device")

        monkeypatch.setattr(services.blobs, "put_file", broken_put)
        with running_listener(services) as server, association(server.port, [CTImageStorage]) as assoc:
            assert int(assoc.send_c_store(make_ct()).Status) == 0xA700
            assert services.index.counts()["instances"] == 0
            assert blob_keys(services) == set()
            assert temp_files(services) == []
            monkeypatch.undo()
            assert int(assoc.send_c_store(make_ct()).Status) == 0x0000  # back once storage is
        assert services.index.counts()["instances"] == 1
    finally:
        services.close()


def test_duplicate_with_reject_policy_answers_0111(sqlite_settings: Settings) -> None:
    services = Services.build(sqlite_settings.replace(duplicate_policy="reject"))
    try:
        ds = make_ct()
        with running_listener(services) as server, association(server.port, [CTImageStorage]) as assoc:
            assert int(assoc.send_c_store(ds).Status) == 0x0000
            assert int(assoc.send_c_store(ds).Status) == 0x0111
        assert services.index.counts()["instances"] == 1
    finally:
        services.close()


def test_every_storage_sop_class_is_accepted(listener: DicomServer, services: Services) -> None:
    """Not only the 120 classes pynetdicom proposes as a storage SCU by default: newer ones such as
    breast projection X-ray (mammography, tomosynthesis) and parametric maps, and retired ones
    older modalities still send, are stored too."""
    classes = [
        BreastProjectionXRayImageStorageForPresentation,
        ParametricMapStorage,
        PhotoacousticImageStorage,
        "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound Image Storage (Retired), still sent by old scanners
    ]
    instances = [make_ct(SOPClassUID=uid) for uid in classes]
    for ds in instances:
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    with association(listener.port, classes) as assoc:
        assert {str(c.abstract_syntax) for c in assoc.accepted_contexts} == set(classes)
        assert [int(assoc.send_c_store(ds).Status) for ds in instances] == [0x0000] * len(classes)
    for ds in instances:
        [stored] = services.index.locate(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        assert stored.sop_class_uid == ds.SOPClassUID


def test_unknown_sop_class_is_not_negotiated(listener: DicomServer, tmp_path: Path) -> None:
    ds = make_ct(SOPClassUID="1.2.826.0.1.3680043.9999.1")
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    [path] = write_files([ds], tmp_path / "odd")
    result = dcmtk("storescu", "-aec", "MINIPACS", "127.0.0.1", listener.port, path)
    assert result.returncode != 0
    assert "No presentation context" in result.stderr
    assert echo_status(listener.port) == 0x0000


def test_an_association_logs_how_many_instances_it_stored(
    listener: DicomServer, services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="pacs.dimse")
    with association(listener.port, [CTImageStorage]) as assoc:
        for ds in make_series(3, size=8):
            assert int(assoc.send_c_store(ds).Status) == 0x0000
    deadline = time.monotonic() + 10
    while "3 instance(s) stored" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)  # the release is logged by the listener's own thread
    released = [r.getMessage() for r in caplog.records if "association released" in r.getMessage()]
    assert any("3 instance(s) stored" in line for line in released), released
