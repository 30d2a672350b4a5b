"""C-FIND/C-MOVE/C-GET identifiers <-> the shared Query model (pure: no network, no index)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom.dsutils import encode

from pacs.dicom.attributes import Level
from pacs.dicom.query import Condition, MatchKind, Query
from pacs.dimse.identifiers import (
    PATIENT_ROOT,
    STUDY_ROOT,
    identifier_from_row,
    query_from_identifier,
    query_level,
    retrieve_query,
)
from pacs.errors import InvalidQuery
from tests.support.dimse import identifier

UID_A = "1.2.826.0.1.3680043.8.498.1"
UID_B = "1.2.826.0.1.3680043.8.498.2"




def conditions(query: Query) -> dict[str, tuple[MatchKind, tuple[str, ...]]]:
    return {c.attribute.keyword: (c.kind, c.values) for c in query.conditions}


# ---- query_level ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "model", "level"),
    [
        ("PATIENT", PATIENT_ROOT, Level.PATIENT),
        ("STUDY", PATIENT_ROOT, Level.STUDY),
        ("STUDY", STUDY_ROOT, Level.STUDY),
        ("SERIES", STUDY_ROOT, Level.SERIES),
        ("IMAGE", STUDY_ROOT, Level.INSTANCE),
        ("IMAGE", PATIENT_ROOT, Level.INSTANCE),
        (" series ", STUDY_ROOT, Level.SERIES),  # padding and case are not significant for CS
    ],
)
def test_query_level(name: str, model: str, level: Level) -> None:
    assert query_level(identifier(name), model) == level


@pytest.mark.parametrize(
    ("name", "model", "says"),
    [
        (None, STUDY_ROOT, "QueryRetrieveLevel"),
        ("", PATIENT_ROOT, "QueryRetrieveLevel"),
        ("INSTANCE", STUDY_ROOT, "QueryRetrieveLevel"),  # the DIMSE name is IMAGE
        ("FRAME", STUDY_ROOT, "QueryRetrieveLevel"),
        ("PATIENT", STUDY_ROOT, "no PATIENT level"),
    ],
)
def test_query_level_refusals(name: str | None, model: str, says: str) -> None:
    with pytest.raises(InvalidQuery, match=says):
        query_level(identifier(name), model)


# ---- query_from_identifier ------------------------------------------------------------------


def test_matching_keys_become_conditions() -> None:
    query = query_from_identifier(
        identifier(
            "STUDY",
            StudyInstanceUID=[UID_A, UID_B],
            PatientName="doe*",
            PatientID="PID-1",
            StudyDate="20240101-20240131",
            AccessionNumber="",
            ModalitiesInStudy=["CT", "MR"],
        ),
        STUDY_ROOT,
    )
    assert query.level == Level.STUDY
    assert query.limit is None
    assert conditions(query) == {
        "StudyInstanceUID": (MatchKind.LIST, (UID_A, UID_B)),
        "PatientName": (MatchKind.WILDCARD, ("doe*",)),
        "PatientID": (MatchKind.SINGLE, ("PID-1",)),
        "StudyDate": (MatchKind.RANGE, ("20240101", "20240131")),
        "ModalitiesInStudy": (MatchKind.LIST, ("CT", "MR")),
    }  # AccessionNumber is empty: universal matching, a return key only


def test_answered_keys_lower_levels_and_universal_values_match_nothing() -> None:
    query = query_from_identifier(
        identifier(
            "SERIES",
            SpecificCharacterSet="ISO_IR 192",
            RetrieveAETitle="",
            InstanceAvailability="",
            StudyInstanceUID=UID_A,
            Modality="*",
            SOPInstanceUID=UID_B,  # an IMAGE key in a SERIES query
            InstanceNumber="3",
        ),
        STUDY_ROOT,
    )
    assert conditions(query) == {"StudyInstanceUID": (MatchKind.SINGLE, (UID_A,))}
    assert query.include_tags == frozenset()


def test_keys_outside_the_catalogue_are_return_keys() -> None:
    ds = identifier("STUDY", StudyInstanceUID="", PatientAge="", ScheduledProcedureStepID="")
    ds.add(DataElement(0x00091001, "LO", "private"))
    query = query_from_identifier(ds, STUDY_ROOT)
    assert query.conditions == ()
    # PatientAge is not indexed and ScheduledProcedureStepID only lives inside a sequence; the
    # private element is neither matched nor looked up.
    assert query.include_tags == frozenset({0x00101010, 0x00400009})


def test_request_attributes_sequence_matches_at_series_level() -> None:
    item = Dataset()
    item.ScheduledProcedureStepID = "SPS-1"
    item.RequestedProcedureID = ""
    query = query_from_identifier(identifier("SERIES", RequestAttributesSequence=Sequence([item])), STUDY_ROOT)
    assert conditions(query) == {"ScheduledProcedureStepID": (MatchKind.SINGLE, ("SPS-1",))}
    # At study level the sequence is a series-level key: ignored for matching.
    query = query_from_identifier(identifier("STUDY", RequestAttributesSequence=Sequence([item])), STUDY_ROOT)
    assert query.conditions == ()
    # An empty sequence asks for the attributes only.
    query = query_from_identifier(identifier("SERIES", RequestAttributesSequence=Sequence([])), STUDY_ROOT)
    assert query.conditions == ()


def test_image_level_integer_and_uid_keys() -> None:
    query = query_from_identifier(
        identifier("IMAGE", SeriesInstanceUID=UID_A, InstanceNumber="7", SOPClassUID=UID_B), PATIENT_ROOT
    )
    assert query.level == Level.INSTANCE
    assert conditions(query) == {
        "SeriesInstanceUID": (MatchKind.SINGLE, (UID_A,)),
        "InstanceNumber": (MatchKind.SINGLE, ("7",)),
        "SOPClassUID": (MatchKind.SINGLE, (UID_B,)),
    }


@pytest.mark.parametrize(
    ("keys", "says"),
    [
        ({"StudyDate": "2024"}, "StudyDate"),
        ({"StudyDate": "20240230"}, "StudyDate"),
        ({"StudyDate": "20240301-20240201"}, "StudyDate"),
        ({"StudyTime": "2500"}, "StudyTime"),
        ({"StudyInstanceUID": "1.2.*"}, "StudyInstanceUID"),
        ({"AccessionNumber": "A\x00B"}, "AccessionNumber"),
    ],
)
def test_malformed_matching_values_are_refused(keys: dict[str, str], says: str) -> None:
    with pytest.raises(InvalidQuery, match=says):
        query_from_identifier(identifier("STUDY", **keys), STUDY_ROOT)


def test_level_errors_come_first() -> None:
    with pytest.raises(InvalidQuery, match="no PATIENT level"):
        query_from_identifier(identifier("PATIENT", PatientID=""), STUDY_ROOT)
    with pytest.raises(InvalidQuery, match="QueryRetrieveLevel"):
        query_from_identifier(identifier(None, PatientID=""), PATIENT_ROOT)


# ---- identifier_from_row --------------------------------------------------------------------

STUDY_ROW: dict[str, Any] = {
    "patient_name": "Müller^Jürgen",
    "patient_id": "PB",
    "patient_birth_date": None,
    "study_instance_uid": UID_A,
    "study_date": "20240115",
    "study_time": "101500",
    "accession_number": "",
    "modalities_in_study": ["CT", "MR"],
    "number_of_study_related_series": 2,
    "number_of_study_related_instances": 4,
    "_metadata": {
        "00101010": {"vr": "AS", "Value": ["042Y"]},
        "00080080": {"vr": "LO", "Value": ["from the instance"]},
        "7FE00010": {"vr": "OW", "BulkDataURI": "https://pacs/bulk"},
    },
}


def test_answer_holds_exactly_the_requested_keys() -> None:
    requested = identifier(
        "STUDY", SpecificCharacterSet="ISO_IR 100", StudyInstanceUID="", PatientName="", PatientBirthDate="",
        AccessionNumber="", ModalitiesInStudy="", NumberOfStudyRelatedSeries="", NumberOfStudyRelatedInstances="",
        RetrieveAETitle="", InstanceAvailability="",
    )
    answer = identifier_from_row(STUDY_ROW, requested, Level.STUDY, "MINIPACS")
    assert {e.keyword for e in answer} == {
        "SpecificCharacterSet", "InstanceAvailability", "QueryRetrieveLevel", "RetrieveAETitle",
        "AccessionNumber", "ModalitiesInStudy", "PatientName", "PatientBirthDate", "StudyInstanceUID",
        "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
    }
    # Index values are Unicode: the answer is UTF-8 whatever the request used.
    assert answer.SpecificCharacterSet == "ISO_IR 192"
    assert (answer.QueryRetrieveLevel, answer.RetrieveAETitle, answer.InstanceAvailability) == ("STUDY", "MINIPACS", "ONLINE")
    assert str(answer.PatientName) == "Müller^Jürgen"
    assert answer.StudyInstanceUID == UID_A
    assert list(answer.ModalitiesInStudy) == ["CT", "MR"]
    assert (answer.NumberOfStudyRelatedSeries, answer.NumberOfStudyRelatedInstances) == (2, 4)
    # Unknown values are present and empty (PS3.4 C.4.1.1.3.2).
    assert answer["PatientBirthDate"].value in (None, "")
    assert answer["AccessionNumber"].value in (None, "")
    # It encodes as pynetdicom will send it: the values fit their VRs.
    assert encode(answer, True, True) is not None


def test_level_name_is_the_dimse_one() -> None:
    answer = identifier_from_row({"sop_instance_uid": UID_B}, identifier("IMAGE", SOPInstanceUID=""), Level.INSTANCE, "AE")
    assert answer.QueryRetrieveLevel == "IMAGE"


def test_other_keys_come_from_the_stored_metadata() -> None:
    requested = identifier("STUDY", PatientAge="", InstitutionName="", PatientWeight="")
    requested.add(DataElement(0x7FE00010, "OW", None))
    answer = identifier_from_row(STUDY_ROW, requested, Level.STUDY, "AE")
    assert answer.PatientAge == "042Y"
    assert answer.InstitutionName == "from the instance"
    assert answer["PatientWeight"].value in (None, "")  # not in the metadata
    assert answer[0x7FE00010].value in (None, b"")  # bulk data is never put in an identifier


def test_lower_level_keys_answer_empty() -> None:
    answer = identifier_from_row(STUDY_ROW, identifier("STUDY", SeriesInstanceUID="", Modality=""), Level.STUDY, "AE")
    assert answer["SeriesInstanceUID"].value in (None, "")
    assert answer["Modality"].value in (None, "")


def test_request_attributes_sequence_is_filled_from_the_row() -> None:
    item = Dataset()
    item.ScheduledProcedureStepID = ""
    item.RequestedProcedureID = ""
    row = {"series_instance_uid": UID_B, "scheduled_procedure_step_id": "SPS-1", "requested_procedure_id": None}
    answer = identifier_from_row(row, identifier("SERIES", RequestAttributesSequence=Sequence([item])), Level.SERIES, "AE")
    [got] = answer.RequestAttributesSequence
    assert got.ScheduledProcedureStepID == "SPS-1"
    assert got["RequestedProcedureID"].value in (None, "")
    # Asked with an empty sequence: answered with an empty one.
    empty = identifier_from_row(row, identifier("SERIES", RequestAttributesSequence=Sequence([])), Level.SERIES, "AE")
    assert len(empty.RequestAttributesSequence) == 0


def test_integer_and_multi_valued_columns() -> None:
    row = {"instance_number": 3, "rows": 512, "number_of_frames": None, "sop_class_uid": UID_A}
    requested = identifier("IMAGE", InstanceNumber="", Rows=None, NumberOfFrames="", SOPClassUID="")
    answer = identifier_from_row(row, requested, Level.INSTANCE, "AE")
    assert (answer.InstanceNumber, answer.Rows) == (3, 512)
    assert answer["NumberOfFrames"].value in (None, "")
    # A person name keeps its "\\"-free groups; a stored multi-value string is split.
    row = {"patient_name": "Yamada^Tarou=山田^太郎", "study_description": "A\\B"}
    answer = identifier_from_row(row, identifier("STUDY", PatientName="", StudyDescription=""), Level.STUDY, "AE")
    assert str(answer.PatientName) == "Yamada^Tarou=山田^太郎"
    assert list(answer.StudyDescription) == ["A", "B"]


def test_metadata_json_round_trip_of_a_sequence() -> None:
    code = {"00080100": {"vr": "SH", "Value": ["CT123"]}, "00080102": {"vr": "SH", "Value": ["LOCAL"]}}
    row = {"_metadata": json.loads(json.dumps({"00081032": {"vr": "SQ", "Value": [code]}}))}
    requested = identifier("STUDY")
    requested.ProcedureCodeSequence = Sequence([])
    answer = identifier_from_row(row, requested, Level.STUDY, "AE")
    assert answer.ProcedureCodeSequence[0].CodeValue == "CT123"


# ---- retrieve_query -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "level", "keys", "expected"),
    [
        (PATIENT_ROOT, "PATIENT", {"PatientID": "PB"}, {"PatientID": (MatchKind.SINGLE, ("PB",))}),
        (PATIENT_ROOT, "STUDY", {"PatientID": "PB", "StudyInstanceUID": UID_A},
         {"PatientID": (MatchKind.SINGLE, ("PB",)), "StudyInstanceUID": (MatchKind.SINGLE, (UID_A,))}),
        (STUDY_ROOT, "STUDY", {"StudyInstanceUID": [UID_A, UID_B]},
         {"StudyInstanceUID": (MatchKind.LIST, (UID_A, UID_B))}),
        (STUDY_ROOT, "SERIES", {"StudyInstanceUID": UID_A, "SeriesInstanceUID": UID_B},
         {"StudyInstanceUID": (MatchKind.SINGLE, (UID_A,)), "SeriesInstanceUID": (MatchKind.SINGLE, (UID_B,))}),
        (STUDY_ROOT, "IMAGE", {"SOPInstanceUID": [UID_A, UID_B], "PatientName": "X*", "Modality": "CT"},
         {"SOPInstanceUID": (MatchKind.LIST, (UID_A, UID_B))}),  # only the unique keys select
    ],
)
def test_retrieve_query_selects_instances_by_unique_keys(
    model: str, level: str, keys: dict[str, Any], expected: dict[str, Any]
) -> None:
    query = retrieve_query(identifier(level, **keys), model)
    assert query.level == Level.INSTANCE
    assert query.limit is None
    assert conditions(query) == expected


@pytest.mark.parametrize(
    ("model", "level", "keys", "says"),
    [
        (STUDY_ROOT, "STUDY", {}, "StudyInstanceUID"),
        (STUDY_ROOT, "STUDY", {"PatientID": "PB"}, "StudyInstanceUID"),
        (STUDY_ROOT, "SERIES", {"StudyInstanceUID": UID_A}, "SeriesInstanceUID"),
        (STUDY_ROOT, "IMAGE", {"StudyInstanceUID": UID_A, "SeriesInstanceUID": UID_B}, "SOPInstanceUID"),
        (PATIENT_ROOT, "PATIENT", {"PatientID": ""}, "PatientID"),
        (STUDY_ROOT, "PATIENT", {"PatientID": "PB"}, "no PATIENT level"),
        (STUDY_ROOT, None, {"StudyInstanceUID": UID_A}, "QueryRetrieveLevel"),
        (STUDY_ROOT, "STUDY", {"StudyInstanceUID": "1.2.x"}, "StudyInstanceUID"),
    ],
)
def test_retrieve_query_refusals(model: str, level: str | None, keys: dict[str, Any], says: str) -> None:
    ds = identifier(level, **keys)
    with pytest.raises(InvalidQuery, match=says):
        retrieve_query(ds, model)


def test_condition_type_is_the_shared_one() -> None:
    query = retrieve_query(identifier("STUDY", StudyInstanceUID=UID_A), STUDY_ROOT)
    assert all(isinstance(c, Condition) for c in query.conditions)
