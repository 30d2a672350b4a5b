"""C-MOVE and C-GET from the archive's listener, on both backends: dcmtk movescu/getscu and
pynetdicom peers at every level, sub-operation counts, and the instances themselves."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom import build_role, evt
from pynetdicom.sop_class import CTImageStorage, EnhancedMRImageStorage
from pynetdicom.sop_class import PatientRootQueryRetrieveInformationModelMove as PatientRootMove
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as StudyRootGet
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as StudyRootMove

from pacs.config import Settings
from pacs.dimse.server import DicomServer
from pacs.index.remote_aes import RemoteAE
from pacs.services import Services
from tests.support.dimse import (
    StoreSCP,
    association,
    dcmtk,
    dcmtk_ok,
    echo_status,
    running_listener,
    running_storescp,
    write_files,
)
from tests.support.factories import make_series
from tests.support.s3server import free_port

SUCCESS, PENDING, WARNING = 0x0000, 0xFF00, 0xB000
MOVE_DESTINATION_UNKNOWN, IDENTIFIER_MISMATCH = 0xA801, 0xA900


@dataclass
class Archive:
    """One study of two series (3 + 2 instances) for patient PR, and another patient's study."""

    first: list[Dataset]
    second: list[Dataset]
    other: list[Dataset]

    @property
    def study(self) -> str:
        return str(self.first[0].StudyInstanceUID)

    def by_uid(self) -> dict[str, Dataset]:
        return {ds.SOPInstanceUID: ds for ds in [*self.first, *self.second, *self.other]}


@pytest.fixture
def archive(services: Services, tmp_path: Path) -> Archive:
    first = make_series(3, size=16, PatientID="PR")
    second = make_series(2, size=16, PatientID="PR", StudyInstanceUID=first[0].StudyInstanceUID, SeriesNumber=2)
    other = make_series(1, size=16, PatientID="OTHER")
    reports = services.ingest.store_files(write_files([*first, *second, *other], tmp_path / "seed"))
    assert all(r.ok for r in reports)
    return Archive(first, second, other)


def final_counts(output: str, kind: str) -> dict[str, int]:
    """Sub-operation counts and status of the last C-MOVE/C-GET response, from a dcmtk tool's
    -d output (`kind` is "MOVE" or "GET")."""
    tail = output.rsplit(f"Message Type                  : C-{kind} RSP", 1)[1]
    counts = {
        name: int(value)
        for name, value in re.findall(r"(Remaining|Completed|Failed|Warning) Suboperations\s*:\s*(\d+)", tail)[:4]
    }
    counts["status"] = int(re.search(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})", tail).group(1), 16)  # type: ignore[union-attr]
    return counts


def take_received(receiver: StoreSCP) -> dict[str, Dataset]:
    """What the receiver got since the last call (files are removed once read)."""
    found = receiver.datasets()
    for path in receiver.files():
        path.unlink()
    return found


def level_keys(archive: Archive) -> list[tuple[str, list[str], list[Dataset]]]:
    """(level, keys, instances expected) for a study-, series- and image-level retrieve, and an
    image-level one by a list of UIDs."""
    series = archive.first[0].SeriesInstanceUID
    image = archive.first[1]
    return [
        ("STUDY", [f"StudyInstanceUID={archive.study}"], [*archive.first, *archive.second]),
        ("SERIES", [f"StudyInstanceUID={archive.study}", f"SeriesInstanceUID={series}"], archive.first),
        ("IMAGE", [f"StudyInstanceUID={archive.study}", f"SeriesInstanceUID={series}",
                   f"SOPInstanceUID={image.SOPInstanceUID}"], [image]),
        # A list of UIDs in the unique key (PS3.4 C.4.2.2.1), across series.
        ("IMAGE", [f"StudyInstanceUID={archive.study}",
                   "SOPInstanceUID=" + "\\".join(ds.SOPInstanceUID for ds in (image, archive.second[0]))],
         [image, archive.second[0]]),
    ]


def dcmtk_keys(level: str, keys: list[str]) -> list[str]:
    args = ["-k", f"QueryRetrieveLevel={level}"]
    for key in keys:
        args += ["-k", key]
    return args


# ---- C-MOVE ---------------------------------------------------------------------------------


def test_movescu_at_study_series_and_image_level(
    listener: DicomServer, receiver: StoreSCP, archive: Archive
) -> None:
    for level, keys, expected in level_keys(archive):
        result = dcmtk_ok("movescu", "-d", "-S", "-aec", "MINIPACS", "-aem", receiver.ae_title,
                          *dcmtk_keys(level, keys), "127.0.0.1", listener.port)
        counts = final_counts(result.stdout + result.stderr, "MOVE")
        assert counts["status"] == SUCCESS, level
        assert (counts["Completed"], counts["Failed"], counts["Warning"]) == (len(expected), 0, 0), level
        received = take_received(receiver)
        assert set(received) == {ds.SOPInstanceUID for ds in expected}, level
        for uid, ds in received.items():
            assert ds.PixelData == archive.by_uid()[uid].PixelData
            assert ds.PatientID == "PR"


def test_movescu_patient_level_to_itself(
    listener: DicomServer, services: Services, archive: Archive, tmp_path: Path
) -> None:
    """Patient Root, PATIENT level, and the common case of a workstation moving to itself:
    movescu receives the sub-operations on its own port while its C-MOVE association is open."""
    port = free_port()
    services.remote_aes.add(RemoteAE("WORKSTATION", "127.0.0.1", port))
    folder = tmp_path / "self"
    folder.mkdir()
    result = dcmtk_ok("movescu", "-d", "-P", "-aet", "WORKSTATION", "-aec", "MINIPACS", "-aem", "WORKSTATION",
                      "+P", str(port), "-od", folder, "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=PR",
                      "127.0.0.1", listener.port)
    counts = final_counts(result.stdout + result.stderr, "MOVE")
    assert (counts["status"], counts["Completed"], counts["Failed"]) == (SUCCESS, 5, 0)
    received = {pydicom.dcmread(path).SOPInstanceUID for path in folder.iterdir()}
    assert received == {ds.SOPInstanceUID for ds in [*archive.first, *archive.second]}


def test_move_refusals(listener: DicomServer, receiver: StoreSCP, archive: Archive) -> None:
    result = dcmtk("movescu", "-d", "-S", "-aec", "MINIPACS", "-aem", "NOWHERE",
                   "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={archive.study}",
                   "127.0.0.1", listener.port)
    assert result.returncode != 0
    assert final_counts(result.stdout + result.stderr, "MOVE")["status"] == MOVE_DESTINATION_UNKNOWN

    with association(listener.port, [StudyRootMove, PatientRootMove]) as assoc:

        def move(destination: str, model: str = StudyRootMove, **keys: str) -> list[Dataset]:
            query = Dataset()
            for keyword, value in keys.items():
                setattr(query, keyword, value)
            return [status for status, _ in assoc.send_c_move(query, destination, model)]

        [final] = move("NOWHERE", QueryRetrieveLevel="STUDY", StudyInstanceUID=archive.study)
        assert final.Status == MOVE_DESTINATION_UNKNOWN
        # A study-level move needs the study's UID; a missing level is no better.
        assert move(receiver.ae_title, QueryRetrieveLevel="STUDY")[-1].Status == IDENTIFIER_MISMATCH
        assert move(receiver.ae_title, PatientID="PR")[-1].Status == IDENTIFIER_MISMATCH
        assert move(receiver.ae_title, QueryRetrieveLevel="PATIENT", PatientID="PR")[-1].Status == IDENTIFIER_MISMATCH
        # Nothing matches: success, no sub-operations.
        [final] = move(receiver.ae_title, QueryRetrieveLevel="STUDY", StudyInstanceUID="1.2.3.4")
        assert (final.Status, final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (0, 0, 0)
    assert take_received(receiver) == {}
    assert echo_status(listener.port) == SUCCESS


def test_move_to_a_configured_destination(sqlite_settings: Settings, tmp_path: Path) -> None:
    """Destinations from the MINIPACS_REMOTE_AES setting work like stored ones (SQLite only)."""
    with running_storescp(tmp_path / "got", "CONFIGURED") as scp:
        services = Services.build(sqlite_settings.replace(remote_aes=f"CONFIGURED@127.0.0.1:{scp.port}"))
        try:
            [ds] = make_series(1, size=16)
            assert services.ingest.store_files(write_files([ds], tmp_path / "in"))[0].ok
            with running_listener(services) as server:
                dcmtk_ok("movescu", "-S", "-aec", "MINIPACS", "-aem", "CONFIGURED", "-k", "QueryRetrieveLevel=STUDY",
                         "-k", f"StudyInstanceUID={ds.StudyInstanceUID}", "127.0.0.1", server.port)
            assert list(scp.datasets()) == [ds.SOPInstanceUID]
        finally:
            services.close()


# ---- C-GET ----------------------------------------------------------------------------------


def test_getscu_at_study_series_and_image_level(listener: DicomServer, archive: Archive, tmp_path: Path) -> None:
    for n, (level, keys, expected) in enumerate(level_keys(archive)):
        folder = tmp_path / f"get-{n}-{level}"
        folder.mkdir()
        result = dcmtk_ok("getscu", "-d", "-S", "-aec", "MINIPACS", "-od", folder, *dcmtk_keys(level, keys),
                          "127.0.0.1", listener.port)
        counts = final_counts(result.stdout + result.stderr, "GET")
        assert counts["status"] == SUCCESS, level
        assert (counts["Completed"], counts["Failed"], counts["Warning"]) == (len(expected), 0, 0), level
        received = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, folder.iterdir())}
        assert set(received) == {ds.SOPInstanceUID for ds in expected}, level
        assert all(ds.PixelData == archive.by_uid()[uid].PixelData for uid, ds in received.items())


@dataclass
class Getter:
    """A pynetdicom C-GET SCU that keeps what it receives (as the SCP of the storage role)."""

    contexts: list[Any]
    received: list[Dataset]

    def get(self, port: int, level: str, keys: list[str]) -> list[Dataset]:
        """C-GET; returns every response status (pending ones, then the final one)."""
        query = Dataset()
        query.QueryRetrieveLevel = level
        for key in keys:
            keyword, _, value = key.partition("=")
            setattr(query, keyword, value)

        def keep(event: Any) -> int:
            self.received.append(event.dataset)  # read now: pynetdicom deletes its temp file after
            return SUCCESS

        storage = {c[0] if isinstance(c, tuple) else c for c in self.contexts} - {StudyRootGet}
        roles = [build_role(sop_class, scp_role=True) for sop_class in sorted(storage)]
        with association(port, self.contexts, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, keep)]) as assoc:
            return [status for status, _ in assoc.send_c_get(query, StudyRootGet)]


def test_c_get_with_pynetdicom_at_every_level(listener: DicomServer, archive: Archive) -> None:
    for level, keys, expected in level_keys(archive):
        getter = Getter([CTImageStorage, StudyRootGet], [])
        statuses = getter.get(listener.port, level, keys)
        assert [s.Status for s in statuses] == [PENDING] * len(expected) + [SUCCESS], level
        final = statuses[-1]
        assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (len(expected), 0)
        # Pending responses count down the remaining sub-operations.
        assert [s.NumberOfRemainingSuboperations for s in statuses[:-1]] == list(range(len(expected) - 1, -1, -1))
        assert sorted(ds.SOPInstanceUID for ds in getter.received) == sorted(ds.SOPInstanceUID for ds in expected)
        for ds in getter.received:
            original = archive.by_uid()[ds.SOPInstanceUID]
            assert ds.PixelData == original.PixelData and ds.PatientID == original.PatientID
    # A series-level C-GET without the series' UID is refused.
    refused = Getter([CTImageStorage, StudyRootGet], [])
    assert refused.get(listener.port, "SERIES", [f"StudyInstanceUID={archive.study}"])[-1].Status == IDENTIFIER_MISMATCH
    assert refused.received == []


def test_c_get_sends_the_stored_syntax(listener: DicomServer, services: Services, tmp_path: Path) -> None:
    path = get_testdata_file("emri_small_jpeg_2k_lossless.dcm", download=False)
    assert path is not None
    sent = pydicom.dcmread(path)
    assert services.ingest.store_file(Path(path)).ok
    keys = [f"StudyInstanceUID={sent.StudyInstanceUID}"]

    # Offered JPEG 2000 in a context of its own, the peer gets the instance as stored.
    getter = Getter([(EnhancedMRImageStorage, [JPEG2000Lossless]), StudyRootGet], [])
    assert getter.get(listener.port, "STUDY", keys)[-1].Status == SUCCESS
    [got] = getter.received
    assert got.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert got.PixelData == sent.PixelData

    # Offered only uncompressed syntaxes: the instance is decoded for the peer.
    getter = Getter([(EnhancedMRImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]), StudyRootGet], [])
    final = getter.get(listener.port, "STUDY", keys)[-1]
    assert final.Status == SUCCESS
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (1, 0)
    [got] = getter.received
    assert got.file_meta.TransferSyntaxUID in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    assert np.array_equal(got.pixel_array, sent.pixel_array)
    assert echo_status(listener.port) == SUCCESS


def test_unreadable_instance_is_a_failed_sub_operation(
    listener: DicomServer, services: Services, archive: Archive
) -> None:
    lost = archive.first[1]
    [stored] = services.index.locate(archive.study, lost.SeriesInstanceUID, lost.SOPInstanceUID)
    services.blobs.delete(stored.blob_key)  # behind the index's back
    series = archive.first[0].SeriesInstanceUID
    received: list[str] = []

    def keep(event: Any) -> int:
        received.append(event.dataset.SOPInstanceUID)
        return SUCCESS

    with association(listener.port, [CTImageStorage, StudyRootGet], ext_neg=[build_role(CTImageStorage, scp_role=True)],
                     evt_handlers=[(evt.EVT_C_STORE, keep)]) as assoc:
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = archive.study
        query.SeriesInstanceUID = series
        *_, (final, failed) = list(assoc.send_c_get(query, StudyRootGet))
    assert final.Status == WARNING
    assert failed is not None
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (2, 1)
    assert failed.FailedSOPInstanceUIDList == lost.SOPInstanceUID
    assert sorted(received) == sorted(
        ds.SOPInstanceUID for ds in archive.first if ds is not lost
    )
