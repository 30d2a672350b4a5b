"""Worklist identifiers as queries (PS3.4 K.6, C.2.2.2): which keys go to SQL, which are matched
on the answer, how values match, and the local days of the schedule."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime

import pytest
from pydicom.dataset import Dataset

from pacs.dicom.query import MatchKind
from pacs.errors import InvalidQuery
from worklist.dicom_time import day_bounds, dicom_zone, parse_dicom_datetime
from worklist.mwl_query import matches, parse_identifier


def identifier(top: dict[str, str], step: dict[str, str] | None = None) -> Dataset:
    with warnings.catch_warnings():
        # Matching values need not be valid values of their VR ("doe*", or malformed on purpose).
        warnings.filterwarnings("ignore", message="Invalid value for VR", category=UserWarning)
        ds = Dataset()
        for keyword, value in top.items():
            setattr(ds, keyword, value)
        if step is not None:
            item = Dataset()
            for keyword, value in step.items():
                setattr(item, keyword, value)
            ds.ScheduledProcedureStepSequence = [item]
    return ds


def test_keys_are_split_between_sql_and_the_answer() -> None:
    query = parse_identifier(identifier(
        {"PatientName": "doe*", "PatientID": "", "RequestedProcedurePriority": "HIGH", "PatientWeight": ""},
        {"ScheduledStationAETitle": "CT1", "ScheduledProcedureStepStartDate": "20300506-20300507",
         "ScheduledProcedureStepStartTime": "0800-1000", "Modality": "CT\\MR"},
    ))
    assert {(c.attribute.keyword, c.attribute.column, c.kind) for c in query.indexed} == {
        ("PatientName", "patient_name_norm", MatchKind.WILDCARD),
        ("ScheduledStationAETitle", "station_ae_title", MatchKind.SINGLE),
        ("Modality", "modality", MatchKind.LIST),
    }
    assert query.start_date is not None and query.start_date.values == ("20300506", "20300507")
    assert {c.attribute.keyword for c in query.checked} == {"RequestedProcedurePriority", "ScheduledProcedureStepStartTime"}


@pytest.mark.parametrize(("top", "step"), [
    ({}, {"ScheduledProcedureStepStartDate": "20300507-20300506"}),
    ({}, {"ScheduledProcedureStepStartDate": "2030"}),
    ({}, {"ScheduledProcedureStepStartTime": "2500"}),
    ({"StudyInstanceUID": "1.2.x"}, None),
])
def test_malformed_keys_are_refused(top: dict[str, str], step: dict[str, str] | None) -> None:
    ds = identifier(top, step)
    with pytest.raises(InvalidQuery):
        parse_identifier(ds)


def test_a_matching_sequence_has_one_item() -> None:
    ds = identifier({})
    ds.ScheduledProcedureStepSequence = [Dataset(), Dataset()]
    with pytest.raises(InvalidQuery, match="one item"):
        parse_identifier(ds)


def test_values_match_as_the_standard_says() -> None:
    values = {"PatientName": "Müller^Jürgen", "RequestedProcedurePriority": "HIGH",
              "ScheduledProcedureStepSequence": [{"ScheduledProcedureStepStartTime": "100000", "Modality": "MR"}]}

    def match(top: dict[str, str], step: dict[str, str] | None = None) -> bool:
        query = parse_identifier(identifier(top, step))
        return all(matches(values, c) for c in query.checked + query.indexed)

    assert match({"PatientName": "MÜLLER*"}) and match({"PatientName": "*jürgen"}) and match({"PatientName": "m?ller*"})
    assert not match({"PatientName": "MUELLER*"})
    assert match({}, {"ScheduledProcedureStepStartTime": "0800-1000"})  # 10:00:00 is within "-1000"
    assert not match({}, {"ScheduledProcedureStepStartTime": "1001-"})
    assert match({"RequestedProcedurePriority": "HIGH"}) and not match({"RequestedProcedurePriority": "LOW"})
    assert match({}, {"Modality": "CT\\MR"}) and not match({}, {"Modality": "CT"})
    assert not match({"AccessionNumber": "A1"})  # no value matches no key


def test_local_days_are_instants_in_utc() -> None:
    paris = dicom_zone("Europe/Paris")
    # The day clocks go forward (2030-03-31 in Paris) lasts 23 hours.
    start, end = day_bounds("20300331", "20300331", paris)
    assert (start, end) == (datetime(2030, 3, 30, 23, tzinfo=UTC), datetime(2030, 3, 31, 22, tzinfo=UTC))
    assert day_bounds("", "20300101", paris) == (None, datetime(2030, 1, 1, 23, tzinfo=UTC))
    assert parse_dicom_datetime("20300506", "0910", paris) == datetime(2030, 5, 6, 7, 10, tzinfo=UTC)
    assert parse_dicom_datetime("2030-05-06", "0910", paris) is None
    assert parse_dicom_datetime("20300506", "99", paris) is None
