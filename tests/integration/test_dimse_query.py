"""C-FIND against the archive's listener, on both backends: every level, both information
models, the PS3.4 C.2.2.2 matching types, exact return keys, counts, cancel and refusals."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom.association import Association
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import PatientRootQueryRetrieveInformationModelFind as PatientRootFind
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as StudyRootFind

from pacs.dicom.attributes import Level
from pacs.dimse import find_answers, handlers
from pacs.dimse.identifiers import STUDY_ROOT, identifier_from_row, query_from_identifier
from pacs.dimse.server import DicomServer
from pacs.errors import DatabaseUnavailable
from pacs.services import Services
from tests.support.dimse import association, dcmtk_ok, echo_status, identifier, write_files
from tests.support.factories import make_series

PENDING, SUCCESS, CANCEL, IDENTIFIER_MISMATCH, OUT_OF_RESOURCES = 0xFF00, 0x0000, 0xFE00, 0xA900, 0xA700
ANSWERED = {"SpecificCharacterSet", "QueryRetrieveLevel"}


@dataclass
class Archive:
    """What `seed` stored: patient A (two studies, the first with a CT and an MR series) and
    patient B (a UTF-8 name, one study)."""

    a1_ct: list[Dataset]
    a1_mr: list[Dataset]
    a2: list[Dataset]
    b1: list[Dataset]

    @property
    def a1(self) -> str:
        return str(self.a1_ct[0].StudyInstanceUID)


def seed(services: Services, folder: Path) -> Archive:
    a = {"PatientName": "Doe^Jane", "PatientID": "PA", "PatientSex": "F"}
    a1_ct = make_series(3, size=8, **a, StudyDate="20240115", AccessionNumber="ACC-A1", StudyDescription="CT HEAD")
    study = a1_ct[0].StudyInstanceUID
    a1_mr = make_series(1, size=8, **a, StudyInstanceUID=study, StudyDate="20240115", AccessionNumber="ACC-A1",
                        StudyDescription="CT HEAD", Modality="MR", SeriesNumber=2)
    a2 = make_series(1, size=8, **a, StudyDate="20230601", AccessionNumber="ACC-A2", Modality="MR")
    b1 = make_series(2, size=8, PatientName="Müller^Jürgen", PatientID="PB", StudyDate="20220310",
                     AccessionNumber="ACC-B1", PatientBirthDate="19551231")
    paths = write_files([*a1_ct, *a1_mr, *a2, *b1], folder)
    assert all(report.ok for report in services.ingest.store_files(paths))
    return Archive(a1_ct, a1_mr, a2, b1)


@pytest.fixture
def archive(services: Services, tmp_path: Path) -> Archive:
    return seed(services, tmp_path / "seed")


@pytest.fixture
def finder(listener: DicomServer) -> Iterator[Association]:
    with association(listener.port, [StudyRootFind, PatientRootFind]) as assoc:
        yield assoc



def find(assoc: Association, query: Dataset, model: str = StudyRootFind) -> tuple[list[Dataset], int]:
    """(matches, final status); every response before the last must be pending."""
    responses = list(assoc.send_c_find(query, model))
    statuses = [int(status.Status) for status, _ in responses]
    assert statuses[:-1] == [PENDING] * (len(statuses) - 1), [hex(s) for s in statuses]
    found = [ds for _, ds in responses[:-1]]
    assert all(ds is not None for ds in found)
    return found, statuses[-1]  # type: ignore[return-value]


def matches(assoc: Association, query: Dataset, model: str = StudyRootFind) -> list[Dataset]:
    found, final = find(assoc, query, model)
    assert final == SUCCESS, hex(final)
    return found


def values(found: list[Dataset], keyword: str) -> list[Any]:
    return sorted(str(ds[keyword].value) for ds in found)


def keywords(ds: Dataset) -> set[str]:
    return {element.keyword for element in ds}


# ---- levels, return keys, counts ------------------------------------------------------------


def test_patient_level_in_patient_root(finder: Association, archive: Archive) -> None:
    found = matches(finder, identifier("PATIENT", PatientID="", PatientName="", PatientSex=""), PatientRootFind)
    assert values(found, "PatientID") == ["PA", "PB"]
    assert {str(ds.PatientName) for ds in found} == {"Doe^Jane", "Müller^Jürgen"}
    assert all(keywords(ds) == ANSWERED | {"PatientID", "PatientName", "PatientSex"} for ds in found)
    assert all(ds.QueryRetrieveLevel == "PATIENT" for ds in found)

    # Person names match case-insensitively, with wildcards.
    [jane] = matches(finder, identifier("PATIENT", PatientName="doe*", PatientID=""), PatientRootFind)
    assert jane.PatientID == "PA"
    [jane] = matches(finder, identifier("PATIENT", PatientName="DOE^JANE", PatientID=""), PatientRootFind)
    assert jane.PatientID == "PA"


def test_study_level_keys_and_counts(finder: Association, archive: Archive) -> None:
    query = identifier(
        "STUDY", StudyInstanceUID=archive.a1, PatientID="", StudyDate="", AccessionNumber="",
        ModalitiesInStudy="", NumberOfStudyRelatedSeries="", NumberOfStudyRelatedInstances="",
    )
    [study] = matches(finder, query)
    assert keywords(study) == ANSWERED | {
        "StudyInstanceUID", "PatientID", "StudyDate", "AccessionNumber", "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
    }
    assert study.QueryRetrieveLevel == "STUDY"
    assert (study.PatientID, study.StudyDate, study.AccessionNumber) == ("PA", "20240115", "ACC-A1")
    assert sorted(study.ModalitiesInStudy) == ["CT", "MR"]
    assert (study.NumberOfStudyRelatedSeries, study.NumberOfStudyRelatedInstances) == (2, 4)


def test_index_rows_are_answered_without_building_datasets(services: Services, archive: Archive) -> None:
    """The answers for catalogue keys come straight from the index rows (find_answers), the
    same bytes pydicom writes, multi-valued ModalitiesInStudy included."""
    query = identifier(
        "STUDY", PatientID="PA", PatientName="", StudyInstanceUID="", StudyDate="", AccessionNumber="",
        ModalitiesInStudy="", NumberOfStudyRelatedSeries="", NumberOfStudyRelatedInstances="",
    )
    plan = find_answers.plan_of(query)
    assert plan is not None
    rows = services.index.search(query_from_identifier(query, STUDY_ROOT))
    assert sorted(len(row["modalities_in_study"]) for row in rows) == [1, 2]
    for row in rows:
        fast = find_answers.encoded_answer(plan, row, Level.STUDY, "MINIPACS", implicit=False)
        assert fast is not None
        assert fast.encoded == encode(identifier_from_row(row, query, Level.STUDY, "MINIPACS"), False, True)


def test_study_level_matching_types(finder: Association, archive: Archive) -> None:
    def studies(**keys: Any) -> list[str]:
        return values(matches(finder, identifier("STUDY", **{"StudyInstanceUID": "", **keys})), "StudyInstanceUID")

    a1, a2, b1 = archive.a1, archive.a2[0].StudyInstanceUID, archive.b1[0].StudyInstanceUID
    assert studies() == sorted([a1, a2, b1])  # universal
    assert studies(AccessionNumber="ACC-A2") == [a2]  # single value
    assert studies(StudyInstanceUID=[a1, b1]) == sorted([a1, b1])  # UID list
    assert studies(AccessionNumber="ACC-A*") == sorted([a1, a2])  # wildcard
    assert studies(AccessionNumber="ACC-?1") == sorted([a1, b1])
    assert studies(SpecificCharacterSet="ISO_IR 192", PatientName="müller*") == [b1]  # case-insensitive
    assert studies(StudyDate="20230101-20241231") == sorted([a1, a2])  # date range
    assert studies(StudyDate="-20221231") == [b1]
    assert studies(StudyDate="20240115-") == [a1]
    assert studies(ModalitiesInStudy="MR") == sorted([a1, a2])
    assert studies(ModalitiesInStudy="CT") == sorted([a1, b1])
    assert studies(ModalitiesInStudy=["US", "CT"]) == sorted([a1, b1])
    assert studies(AccessionNumber="NOPE") == []


def test_series_level(finder: Association, archive: Archive) -> None:
    query = identifier("SERIES", StudyInstanceUID=archive.a1, SeriesInstanceUID="", Modality="",
                       NumberOfSeriesRelatedInstances="")
    found = matches(finder, query)
    assert sorted((ds.Modality, ds.NumberOfSeriesRelatedInstances) for ds in found) == [("CT", 3), ("MR", 1)]
    assert all(keywords(ds) == ANSWERED | {"StudyInstanceUID", "SeriesInstanceUID", "Modality",
                                           "NumberOfSeriesRelatedInstances"} for ds in found)
    assert all(ds.QueryRetrieveLevel == "SERIES" for ds in found)
    [mr] = matches(finder, identifier("SERIES", StudyInstanceUID=archive.a1, SeriesInstanceUID="", Modality="MR"))
    assert mr.SeriesInstanceUID == archive.a1_mr[0].SeriesInstanceUID
    with warnings.catch_warnings():
        # "M?" is a wildcard, not a CS value: pydicom warns, here and in the listener.
        warnings.filterwarnings("ignore", message="Invalid value for VR CS", category=UserWarning)
        found = matches(finder, identifier("SERIES", SeriesInstanceUID="", Modality="M?"))
    assert values(found, "SeriesInstanceUID") == sorted(
        [archive.a1_mr[0].SeriesInstanceUID, archive.a2[0].SeriesInstanceUID]
    )
    # A series-level query across studies, by patient.
    assert len(matches(finder, identifier("SERIES", PatientID="PA", SeriesInstanceUID=""))) == 3


def test_image_level(finder: Association, archive: Archive) -> None:
    series = archive.a1_ct[0].SeriesInstanceUID
    query = identifier("IMAGE", StudyInstanceUID=archive.a1, SeriesInstanceUID=series, SOPInstanceUID="",
                       InstanceNumber="", SOPClassUID="")
    found = matches(finder, query)
    assert values(found, "SOPInstanceUID") == sorted(ds.SOPInstanceUID for ds in archive.a1_ct)
    assert sorted(int(ds.InstanceNumber) for ds in found) == [1, 2, 3]
    assert all(ds.SOPClassUID == archive.a1_ct[0].SOPClassUID for ds in found)
    assert all(keywords(ds) == ANSWERED | {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                                           "InstanceNumber", "SOPClassUID"} for ds in found)
    [second] = matches(finder, identifier("IMAGE", SeriesInstanceUID=series, SOPInstanceUID="", InstanceNumber="2"))
    assert second.SOPInstanceUID == archive.a1_ct[1].SOPInstanceUID
    # Patient root reaches the image level too.
    found = matches(finder, identifier("IMAGE", PatientID="PB", SOPInstanceUID=""), PatientRootFind)
    assert values(found, "SOPInstanceUID") == sorted(ds.SOPInstanceUID for ds in archive.b1)


# ---- dcmtk findscu --------------------------------------------------------------------------


def findscu(port: int, folder: Path, model: str, *keys: str) -> list[Dataset]:
    """findscu with every response extracted to a file (-X); the responses in order."""
    folder.mkdir(parents=True)
    args: list[str | Path] = [model, "-X", "-od", folder, "-aec", "MINIPACS"]
    for key in keys:
        args += ["-k", key]
    result = dcmtk_ok("findscu", "-v", *args, "127.0.0.1", port)
    assert "Received Final Find Response (Success)" in result.stderr + result.stdout
    return [pydicom.dcmread(path) for path in sorted(folder.glob("rsp*.dcm"))]


def test_findscu_patient_and_study_root(listener: DicomServer, archive: Archive, tmp_path: Path) -> None:
    port = listener.port
    patients = findscu(port, tmp_path / "p", "-P", "QueryRetrieveLevel=PATIENT", "PatientID", "PatientName=DOE*")
    assert [(p.PatientID, str(p.PatientName)) for p in patients] == [("PA", "Doe^Jane")]

    studies = findscu(port, tmp_path / "s", "-S", "QueryRetrieveLevel=STUDY", "StudyInstanceUID",
                      "StudyDate=20230101-20241231", "NumberOfStudyRelatedInstances")
    assert sorted((s.StudyDate, s.NumberOfStudyRelatedInstances) for s in studies) == [("20230601", 1), ("20240115", 4)]
    assert all(keywords(s) == ANSWERED | {"StudyInstanceUID", "StudyDate", "NumberOfStudyRelatedInstances"}
               for s in studies)

    series = findscu(port, tmp_path / "se", "-S", "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={archive.a1}",
                     "SeriesInstanceUID", "Modality=CT", "NumberOfSeriesRelatedInstances")
    assert [(s.SeriesInstanceUID, s.NumberOfSeriesRelatedInstances) for s in series] == [
        (archive.a1_ct[0].SeriesInstanceUID, 3)
    ]

    uids = "\\".join(ds.SOPInstanceUID for ds in archive.a1_ct[:2])
    images = findscu(port, tmp_path / "i", "-P", "QueryRetrieveLevel=IMAGE", "PatientID=PA",
                     f"StudyInstanceUID={archive.a1}", f"SeriesInstanceUID={archive.a1_ct[0].SeriesInstanceUID}",
                     f"SOPInstanceUID={uids}", "InstanceNumber")
    assert sorted(int(i.InstanceNumber) for i in images) == [1, 2]


def test_utf8_patient_name(listener: DicomServer, finder: Association, archive: Archive, tmp_path: Path) -> None:
    [found] = findscu(listener.port, tmp_path / "u", "-S", "SpecificCharacterSet=ISO_IR 192",
                      "QueryRetrieveLevel=STUDY", "PatientName=Müller*", "StudyInstanceUID", "PatientBirthDate")
    assert found.SpecificCharacterSet == "ISO_IR 192"
    assert str(found.PatientName) == "Müller^Jürgen"
    assert found.PatientBirthDate == "19551231"

    # The same name asked in Latin-1 (ISO_IR 100) is found and answered in UTF-8.
    query = identifier("PATIENT", SpecificCharacterSet="ISO_IR 100", PatientName="MÜLLER^*", PatientID="")
    [patient] = matches(finder, query, PatientRootFind)
    assert (patient.PatientID, str(patient.PatientName)) == ("PB", "Müller^Jürgen")


# ---- cancel and refusals --------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_c_cancel_stops_the_responses(
    listener: DicomServer, finder: Association, services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    instances = make_series(12, size=8, PatientID="MANY")
    assert all(r.ok for r in services.ingest.store_files(write_files(instances, tmp_path / "many")))
    # The second answer waits until the listener has received the C-CANCEL, so the test does
    # not depend on how fast the answers go out.
    made: list[int] = []

    def gate(real: Any) -> Any:
        def gated(*args: Any, **kwargs: Any) -> Any:
            made.append(1)
            if len(made) == 2:
                wait_until(lambda: any(a.dimse.cancel_req for a in listener.ae.active_associations))
            return real(*args, **kwargs)

        return gated

    # Answers are encoded straight from the rows, or built as data sets when that cannot be.
    monkeypatch.setattr(handlers, "identifier_from_row", gate(handlers.identifier_from_row))
    monkeypatch.setattr(handlers.find_answers, "encoded_answer", gate(handlers.find_answers.encoded_answer))
    context = next(c for c in finder.accepted_contexts if c.abstract_syntax == StudyRootFind)
    responses = finder.send_c_find(identifier("IMAGE", PatientID="MANY", SOPInstanceUID=""), StudyRootFind, msg_id=5)
    status, first = next(responses)
    assert int(status.Status) == PENDING and first is not None
    finder.send_c_cancel(5, context.context_id)
    rest = [(int(status.Status), ds) for status, ds in responses]
    assert rest[-1] == (CANCEL, None)
    pending = 1 + sum(1 for s, _ in rest if s == PENDING)
    assert 1 <= pending < len(instances)
    # The association is still usable afterwards. (Without the gate: when the C-CANCEL arrived
    # before the second answer was made, the gate would hold this query's second answer.)
    monkeypatch.undo()
    assert len(matches(finder, identifier("IMAGE", PatientID="MANY", SOPInstanceUID=""))) == len(instances)


BAD_IDENTIFIERS = [
    ("malformed date", StudyRootFind, "STUDY", {"StudyDate": "2024-01-15x"}),
    ("impossible date", StudyRootFind, "STUDY", {"StudyDate": "20241315"}),
    ("reversed range", StudyRootFind, "STUDY", {"StudyDate": "20240201-20240101"}),
    ("PATIENT level in Study Root", StudyRootFind, "PATIENT", {"PatientID": ""}),
    ("no QueryRetrieveLevel", StudyRootFind, None, {"PatientID": ""}),
    ("unknown level", PatientRootFind, "WARD", {"PatientID": ""}),
    ("not a UID", StudyRootFind, "STUDY", {"StudyInstanceUID": "1.2.abc"}),
]


def test_bad_identifiers_are_refused_with_a900(
    listener: DicomServer, finder: Association, archive: Archive, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, model, level, keys in BAD_IDENTIFIERS:
        with warnings.catch_warnings():
            # pydicom warns about the invalid values (here and in the listener): they are the point.
            warnings.filterwarnings("ignore", message="Invalid value for VR", category=UserWarning)
            found, final = find(finder, identifier(level, **keys), model)
        assert (found, hex(final)) == ([], hex(IDENTIFIER_MISMATCH)), name
    assert len(matches(finder, identifier("STUDY", StudyInstanceUID=""))) == 3  # association still fine
    assert echo_status(listener.port) == SUCCESS

    # The index being down is no fault of the identifier: out of resources.
    def down(query: Any) -> Any:
        raise DatabaseUnavailable("database unavailable: connection refused")

    monkeypatch.setattr(services.index, "search", down)
    assert find(finder, identifier("STUDY", StudyInstanceUID=""))[1] == OUT_OF_RESOURCES


def test_findscu_malformed_values_are_refused(listener: DicomServer) -> None:
    for key in ("InstanceNumber=two", "StudyDate=2024", "StudyTime=2561", "SeriesNumber=1\\x"):
        result = dcmtk_ok("findscu", "-v", "-S", "-aec", "MINIPACS", "-k", "QueryRetrieveLevel=IMAGE", "-k", key,
                          "127.0.0.1", listener.port)
        output = result.stderr + result.stdout
        assert "Received Final Find Response (Error: DataSetDoesNotMatchSOPClass)" in output, key
        assert "Pending" not in output, key
    assert echo_status(listener.port) == SUCCESS
