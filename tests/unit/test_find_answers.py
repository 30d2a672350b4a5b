"""C-FIND answers encoded straight from index rows are the bytes pydicom writes for the answer
identifiers.identifier_from_row builds (pacs.dimse.find_answers)."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode

from pacs.dicom.attributes import Level
from pacs.dimse.find_answers import encoded_answer, plan_of
from pacs.dimse.identifiers import identifier_from_row

ROWS = [
    {"patient_name": "Müller^Jörg", "patient_id": "PID-7", "patient_birth_date": "19700101", "patient_sex": "O",
     "study_instance_uid": "1.2.3.4.5", "study_date": "20240115", "study_time": "101500", "accession_number": "A1",
     "study_id": "1", "study_description": "CT HEAD", "referring_physician_name": "Doe^John",
     "modalities_in_study": ["CT", "SR"], "number_of_study_related_series": 2, "number_of_study_related_instances": 301},
    {"patient_name": None, "patient_id": "", "study_instance_uid": "1.2.3", "study_date": None,
     "modalities_in_study": ["MR"], "number_of_study_related_series": 1, "number_of_study_related_instances": 1},
    {"series_instance_uid": "1.2.3.4", "modality": "CT", "series_number": 3, "series_description": "AXIAL 1.0",
     "number_of_series_related_instances": 12},
    {"sop_instance_uid": "1.2.3.4.5.6", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2", "instance_number": 7,
     "rows": 512, "columns": 512, "bits_allocated": 16, "number_of_frames": None},
]


def requested(level: str, *keywords: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for keyword in keywords:
            setattr(ds, keyword, "")
    return ds


STUDY_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
              "StudyTime", "AccessionNumber", "StudyID", "StudyDescription", "ReferringPhysicianName",
              "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
              "RetrieveAETitle", "InstanceAvailability", "SpecificCharacterSet")
CASES = [
    (requested("STUDY", *STUDY_KEYS), Level.STUDY, ROWS[0]),
    (requested("STUDY", *STUDY_KEYS), Level.STUDY, ROWS[1]),
    (requested("SERIES", "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription",
               "NumberOfSeriesRelatedInstances"), Level.SERIES, ROWS[2]),
    (requested("IMAGE", "SOPInstanceUID", "SOPClassUID", "InstanceNumber", "Rows", "Columns", "BitsAllocated",
               "NumberOfFrames"), Level.INSTANCE, ROWS[3]),
]


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize("case", CASES, ids=["study", "study-empty", "series", "image"])
def test_answers_are_what_pydicom_writes(case: tuple[Dataset, Level, dict[str, Any]], implicit: bool) -> None:
    identifier, level, row = case
    plan = plan_of(identifier)
    assert plan is not None
    fast = encoded_answer(plan, row, level, "MINIPACS", implicit=implicit)
    assert fast is not None
    slow = identifier_from_row(row, identifier, level, "MINIPACS")
    assert fast.encoded == encode(slow, implicit, True)


def test_other_keys_are_left_to_the_dataset_path() -> None:
    identifier = requested("STUDY", "StudyInstanceUID", "PatientComments")  # not in the index: from metadata
    assert plan_of(identifier) is None
    plan = plan_of(requested("STUDY", "StudyInstanceUID", "ModalitiesInStudy"))
    assert plan is not None
    # Values a string column never holds go to the dataset path too.
    assert encoded_answer(plan, {"modalities_in_study": ["CT", 5]}, Level.STUDY, "X", implicit=True) is None
    assert encoded_answer(plan, {"modalities_in_study": ["CT", "A\\B"]}, Level.STUDY, "X", implicit=True) is None
