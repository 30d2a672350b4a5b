"""C-MOVE and C-GET of compressed instances to peers that take only uncompressed syntaxes (a
dcmtk storescp without +xa, a pynetdicom C-GET SCU): the archive decodes them for the peer. A
peer that takes the stored syntax still gets the stored bytes unchanged."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import build_role, evt
from pynetdicom.sop_class import CTImageStorage, EnhancedMRImageStorage, MRImageStorage
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as StudyRootGet
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as StudyRootMove

from pacs.dimse.server import DicomServer
from pacs.index.remote_aes import RemoteAE
from pacs.pixels.transcode import producible_syntaxes
from pacs.services import Services
from tests.support.dimse import StoreSCP, association, echo_status, running_storescp, write_files
from tests.support.factories import make_ct

SUCCESS, WARNING, SUB_OPERATIONS_FAILED = 0x0000, 0xB000, 0xA702
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
J2K_FILE, JLS_FILE = "emri_small_jpeg_2k_lossless.dcm", "MR_small_jpeg_ls_lossless.dcm"


def corpus(name: str) -> tuple[Path, Dataset]:
    path = get_testdata_file(name, download=False)
    assert path is not None, name
    return Path(path), pydicom.dcmread(path)


@pytest.fixture
def plain_receiver(services: Services, tmp_path: Path) -> Iterator[StoreSCP]:
    """storescp with its default proposal handling: uncompressed syntaxes only."""
    with running_storescp(tmp_path / "plain", "PLAIN", accept_all=False) as scp:
        services.remote_aes.add(RemoteAE(scp.ae_title, "127.0.0.1", scp.port))
        yield scp


@pytest.fixture
def stored(services: Services, tmp_path: Path) -> dict[str, Dataset]:
    """A JPEG 2000 multi-frame MR, a JPEG-LS MR, and a native CT in the J2K one's study."""
    found = {}
    for name in (J2K_FILE, JLS_FILE):
        path, ds = corpus(name)
        assert services.ingest.store_file(path).ok
        found[name] = ds
    ct = make_ct(32, seed=1, StudyInstanceUID=found[J2K_FILE].StudyInstanceUID, PatientID=found[J2K_FILE].PatientID)
    assert services.ingest.store_files(write_files([ct], tmp_path / "seed"))[0].ok
    found["ct"] = ct
    return found


def move(port: int, destination: str, study: str) -> Dataset:
    """C-MOVE a study with pynetdicom; the final response."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    with association(port, [StudyRootMove]) as assoc:
        responses = [status for status, _ in assoc.send_c_move(query, destination, StudyRootMove)]
    return responses[-1]


def get(port: int, study: str, contexts: Sequence[tuple[str, Sequence[str]]]) -> tuple[Dataset, list[Dataset]]:
    """C-GET a study proposing ``contexts`` for storage; the final response and what arrived."""
    received: list[Dataset] = []

    def keep(event: Any) -> int:
        received.append(event.dataset)  # read now: pynetdicom deletes its temp file after
        return SUCCESS

    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    roles = [build_role(sop_class, scp_role=True) for sop_class in {sop_class for sop_class, _ in contexts}]
    with association(port, [*contexts, StudyRootGet], ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, keep)]) as assoc:
        responses = [status for status, _ in assoc.send_c_get(query, StudyRootGet)]
    return responses[-1], received


def counts(final: Dataset) -> tuple[int, int, int]:
    return (int(final.Status), final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations)


# ---- C-MOVE ---------------------------------------------------------------------------------


def test_move_decodes_for_a_peer_without_compressed_syntaxes(
    listener: DicomServer, plain_receiver: StoreSCP, stored: dict[str, Dataset]
) -> None:
    for name in (J2K_FILE, JLS_FILE):
        original = stored[name]
        in_study = [ds for ds in stored.values() if ds.StudyInstanceUID == original.StudyInstanceUID]
        final = move(listener.port, plain_receiver.ae_title, original.StudyInstanceUID)
        assert counts(final) == (SUCCESS, len(in_study), 0), name
        received = plain_receiver.datasets()
        assert set(received) == {str(ds.SOPInstanceUID) for ds in in_study}
        got = received[str(original.SOPInstanceUID)]
        assert got.file_meta.TransferSyntaxUID in UNCOMPRESSED, name
        assert np.array_equal(got.pixel_array, original.pixel_array), name
        assert got.SOPInstanceUID == original.SOPInstanceUID and got.PatientID == original.PatientID
        for other in in_study:  # the native CT in the J2K study goes as it is
            if other is not original:
                assert received[str(other.SOPInstanceUID)].PixelData == other.PixelData
        for path in plain_receiver.files():
            path.unlink()
    assert echo_status(listener.port) == SUCCESS


def test_move_sends_stored_bytes_to_a_peer_taking_them(
    listener: DicomServer, receiver: StoreSCP, stored: dict[str, Dataset]
) -> None:
    original = stored[J2K_FILE]
    assert counts(move(listener.port, receiver.ae_title, original.StudyInstanceUID)) == (SUCCESS, 2, 0)
    received = receiver.datasets()
    got = received[str(original.SOPInstanceUID)]
    assert got.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert got.PixelData == original.PixelData
    ct = received[str(stored["ct"].SOPInstanceUID)]
    assert ct.PixelData == stored["ct"].PixelData


# ---- C-GET ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "sop_class"), [(J2K_FILE, EnhancedMRImageStorage), (JLS_FILE, MRImageStorage)])
def test_get_decodes_for_a_peer_offering_only_uncompressed(
    listener: DicomServer, stored: dict[str, Dataset], name: str, sop_class: str
) -> None:
    original = stored[name]
    contexts = [(sop_class, list(UNCOMPRESSED)), (CTImageStorage, list(UNCOMPRESSED))]
    final, received = get(listener.port, original.StudyInstanceUID, contexts)
    got = {str(ds.SOPInstanceUID): ds for ds in received}
    assert counts(final) == (SUCCESS, len(got), 0)
    assert got[str(original.SOPInstanceUID)].file_meta.TransferSyntaxUID in UNCOMPRESSED
    assert np.array_equal(got[str(original.SOPInstanceUID)].pixel_array, original.pixel_array)


def test_get_sends_stored_bytes_when_the_syntax_is_offered(listener: DicomServer, stored: dict[str, Dataset]) -> None:
    original = stored[JLS_FILE]
    contexts = [(MRImageStorage, [JPEGLSLossless]), (MRImageStorage, list(UNCOMPRESSED))]
    final, [got] = get(listener.port, original.StudyInstanceUID, contexts)
    assert counts(final) == (SUCCESS, 1, 0)
    assert got.file_meta.TransferSyntaxUID == JPEGLSLossless
    assert got.PixelData == original.PixelData


@pytest.mark.skipif(RLELossless not in producible_syntaxes(), reason="no RLE encoder here")
def test_get_compresses_losslessly_for_a_peer_offering_only_that(
    listener: DicomServer, stored: dict[str, Dataset]
) -> None:
    ct = stored["ct"]
    final, received = get(listener.port, ct.StudyInstanceUID, [(CTImageStorage, [RLELossless])])
    assert counts(final) == (WARNING, 1, 1)  # the CT arrives; the MR has no accepted context at all
    [got] = received
    assert got.file_meta.TransferSyntaxUID == RLELossless
    assert np.array_equal(got.pixel_array, ct.pixel_array)


def test_nothing_producible_is_a_failed_sub_operation(listener: DicomServer, stored: dict[str, Dataset]) -> None:
    """Lossy JPEG is never produced for a peer (and has no encoder here): the sub-operation fails."""
    ct = stored["ct"]
    final, received = get(listener.port, ct.StudyInstanceUID, [(CTImageStorage, [JPEGBaseline8Bit])])
    assert received == []
    assert counts(final) == (SUB_OPERATIONS_FAILED, 0, 2)
    assert echo_status(listener.port) == SUCCESS
