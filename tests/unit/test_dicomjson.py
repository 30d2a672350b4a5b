"""Index rows rendered as DICOM JSON (PS3.18 Annex F)."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.dataset import Dataset

from pacs.dicom.attributes import BY_KEYWORD, Level
from pacs.dicom.dicomjson import element, render_row, returned_attributes
from pacs.dicom.query import Query

BASE = "http://pacs.example/dicom-web"


@pytest.mark.parametrize("empty", [None, "", []])
@pytest.mark.parametrize("vr", ["PN", "IS", "UI", "DA", "CS", "SQ"])
def test_empty_values_have_no_value_member(vr: str, empty: Any) -> None:
    assert element(vr, empty) == {"vr": vr}


@pytest.mark.parametrize(
    ("vr", "value", "expected"),
    [
        ("LO", "CT HEAD", ["CT HEAD"]),
        ("CS", "ORIGINAL\\PRIMARY", ["ORIGINAL", "PRIMARY"]),
        ("CS", ["CT", "SR"], ["CT", "SR"]),
        ("LT", "line\\with backslash", ["line\\with backslash"]),  # LT/ST/UT are never split
        ("IS", 7, [7]),
        ("IS", "007", [7]),
        ("IS", 0, [0]),
        ("US", "512", [512]),
        ("IS", "1\\2", [1, 2]),
        ("DA", "20240115", ["20240115"]),
    ],
)
def test_values(vr: str, value: Any, expected: list[Any]) -> None:
    assert element(vr, value) == {"vr": vr, "Value": expected}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("DOE^JOHN", [{"Alphabetic": "DOE^JOHN"}]),
        ("Müller^Jürgen", [{"Alphabetic": "Müller^Jürgen"}]),
        (
            "Yamada^Tarou=山田^太郎=やまだ^たろう",
            [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}],
        ),
        ("=山田^太郎", [{"Ideographic": "山田^太郎"}]),
        ("A^B\\C^D", [{"Alphabetic": "A^B"}, {"Alphabetic": "C^D"}]),
    ],
)
def test_person_names_are_objects_per_component_group(value: str, expected: list[dict[str, str]]) -> None:
    assert element("PN", value) == {"vr": "PN", "Value": expected}


def keywords(query: Query) -> set[str]:
    return {a.keyword for a in returned_attributes(query)}


def test_study_search_returns_patient_study_and_computed_attributes() -> None:
    chosen = keywords(Query(Level.STUDY))
    assert {"PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "AccessionNumber", "ModalitiesInStudy",
            "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"} <= chosen
    assert not chosen & {"SeriesInstanceUID", "Modality", "SOPInstanceUID"}


def test_scoped_series_search_returns_the_study_uid_but_not_other_parent_attributes() -> None:
    chosen = keywords(Query(Level.SERIES, include_parents=False))
    assert {"StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber", "NumberOfSeriesRelatedInstances"} <= chosen
    assert not chosen & {"PatientName", "StudyDate", "SOPInstanceUID"}
    asked = Query(Level.SERIES, include_parents=False, include_tags=frozenset({BY_KEYWORD["PatientName"].tag}))
    assert "PatientName" in keywords(asked)
    assert "PatientName" in keywords(Query(Level.SERIES, include_parents=False, include_all=True))


def test_instance_search_always_names_its_study_and_series() -> None:
    chosen = keywords(Query(Level.INSTANCE, include_parents=False))
    assert {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "InstanceNumber"} <= chosen


def study_row(**values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "patient_name": "DOE^JOHN",
        "patient_id": "P1",
        "study_instance_uid": "1.2.3",
        "study_date": "20240115",
        "study_time": "101500",
        "referring_physician_name": None,
        "modalities_in_study": ["CT", "SR"],
        "number_of_study_related_series": 2,
        "number_of_study_related_instances": 4,
        "_pk": 1,
    }
    row.update(values)
    return row


def render(row: dict[str, Any], query: Query) -> dict[str, Any]:
    return render_row(row, query, returned_attributes(query), BASE)


def test_study_row() -> None:
    out = render(study_row(), Query(Level.STUDY))
    assert list(out) == sorted(out)
    assert all("vr" in item for item in out.values())
    assert out["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "DOE^JOHN"}]}
    assert out["00080090"] == {"vr": "PN"}  # ReferringPhysicianName empty: no Value
    assert out["00080061"] == {"vr": "CS", "Value": ["CT", "SR"]}
    assert out["00201206"] == {"vr": "IS", "Value": [2]}
    assert out["00201208"] == {"vr": "IS", "Value": [4]}
    assert out["00081190"] == {"vr": "UR", "Value": [f"{BASE}/studies/1.2.3"]}
    assert out["00080056"] == {"vr": "CS", "Value": ["ONLINE"]}


def test_series_and_instance_retrieve_urls() -> None:
    row = study_row(series_instance_uid="1.2.3.4", sop_instance_uid="1.2.3.4.5")
    series_out = render(row, Query(Level.SERIES, include_parents=False))
    assert series_out["00081190"]["Value"] == [f"{BASE}/studies/1.2.3/series/1.2.3.4"]
    instance_out = render(row, Query(Level.INSTANCE, include_parents=False))
    assert instance_out["00081190"]["Value"] == [f"{BASE}/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5"]


def test_rendered_row_reads_back_with_pydicom() -> None:
    out = render(study_row(patient_name="Yamada^Tarou=山田^太郎"), Query(Level.STUDY))
    ds = Dataset.from_json(out)
    assert ds.PatientName.alphabetic == "Yamada^Tarou"
    assert ds.PatientName.ideographic == "山田^太郎"
    assert ds.NumberOfStudyRelatedInstances == 4
    assert list(ds.ModalitiesInStudy) == ["CT", "SR"]
    assert "ReferringPhysicianName" in ds and not ds.ReferringPhysicianName


def test_included_fields_come_from_the_stored_instance() -> None:
    slice_thickness = 0x00180050
    body_part = BY_KEYWORD["BodyPartExamined"].tag  # a series attribute asked for on a study search
    query = Query(Level.STUDY, include_tags=frozenset({slice_thickness, body_part, 0x00081030}))
    stored = {
        "00180050": {"vr": "DS", "Value": [1.25]},
        "00180015": {"vr": "CS", "Value": ["HEAD"]},
        "00081030": {"vr": "LO", "Value": ["from the file"]},
    }
    out = render(study_row(study_description="from the index", _metadata=stored), query)
    assert out["00180050"] == {"vr": "DS", "Value": [1.25]}
    assert out["00180015"] == {"vr": "CS", "Value": ["HEAD"]}
    assert out["00081030"] == {"vr": "LO", "Value": ["from the index"]}  # catalogue columns win


def test_asked_attribute_missing_from_the_instance_is_left_out() -> None:
    query = Query(Level.STUDY, include_tags=frozenset({0x00180050}))
    assert "00180050" not in render(study_row(_metadata={}), query)


def test_request_attributes_sequence() -> None:
    row = study_row(series_instance_uid="1.2.3.4", requested_procedure_id="RP1", scheduled_procedure_step_id=None)
    out = render(row, Query(Level.SERIES, include_parents=False))
    assert out["00400275"] == {"vr": "SQ", "Value": [{"00401001": {"vr": "SH", "Value": ["RP1"]}}]}
    empty = render(study_row(series_instance_uid="1.2.3.4"), Query(Level.SERIES, include_parents=False))
    assert empty["00400275"] == {"vr": "SQ"}
