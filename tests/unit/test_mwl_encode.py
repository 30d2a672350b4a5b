"""Worklist answers: the pre-encoded ones (worklist.mwl_encode) are byte for byte what pydicom
writes for the same answer built as elements (worklist.mwl_answer), in both little endian
syntaxes, whether pynetdicom takes the bytes as they are or walks the raw elements."""

from __future__ import annotations

from datetime import UTC, datetime
from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dsutils import decode, encode

from pacs.index.orders import Order
from worklist.dicom_time import dicom_zone
from worklist.mwl_answer import answer_plan, order_values, worklist_answer
from worklist.mwl_encode import encoded_answer

NOW = datetime(2030, 5, 6, 7, 8, tzinfo=UTC)


def order(**changes: object) -> Order:
    values: dict[str, object] = dict(  # noqa: C408  # keyword arguments read as the Order fields
        pk=1, order_number="ORD-2030-00001", accession_number="ACC-2030-00001", patient_id="P1",
        issuer_of_patient_id="", patient_name="Müller^Jürgen", patient_birth_date="19700203", patient_sex="M",
        ordering_provider="Doc^Own", modality="CT", body_part="CHEST", laterality=None, procedure_code="CTCHEST",
        procedure_description="CT chest \\ abdomen", priority="URGENT", clinical_indication="x" * 100,
        scheduled_at=NOW, station_ae_title="CT1", study_instance_uid="1.2.3.4.5", status="SCHEDULED",
        created_at=NOW, updated_at=NOW, created_by="test", duration_minutes=45, location="Room 1",
        performing_physician="Tech^Anna", contrast_agent="Iodine", special_instructions="fast\\ing",
    )
    values.update(changes)
    return Order(**values)  # type: ignore[arg-type]


def identifiers() -> list[Dataset]:
    explicit = Dataset()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
                    "StudyInstanceUID", "RequestedProcedureDescription", "ReasonForTheRequestedProcedure",
                    "RequestedProcedurePriority", "PatientWeight", "MedicalAlerts", "RequestedProcedureComments"):
        setattr(explicit, keyword, "")
    step = Dataset()
    for keyword in ("ScheduledStationAETitle", "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime",
                    "Modality", "ScheduledPerformingPhysicianName", "ScheduledProcedureStepLocation",
                    "CommentsOnTheScheduledProcedureStep"):
        setattr(step, keyword, "")
    code = Dataset()
    code.CodeValue = ""
    step.ScheduledProtocolCodeSequence = [code]
    explicit.ScheduledProcedureStepSequence = [step]
    explicit.RequestedProcedureCodeSequence = [Dataset()]  # an empty item: expanded
    bare = Dataset()
    bare.ScheduledProcedureStepSequence = []  # no item: expanded, nested sequences too
    bare.ReferencedStudySequence = []
    return [explicit, bare]


@pytest.mark.parametrize("implicit", [True, False])
@pytest.mark.parametrize("which", [0, 1])
@pytest.mark.parametrize("changes", [{}, {"procedure_code": None, "scheduled_at": None, "patient_sex": None}])
def test_pre_encoded_answers_equal_pydicom_encoded_ones(implicit: bool, which: int, changes: dict[str, object]) -> None:
    plan = answer_plan(identifiers()[which])
    values = order_values(order(**changes), dicom_zone("Europe/Paris"))
    expected = encode(worklist_answer(plan, values), implicit, True)
    fast = encoded_answer(plan, values, implicit=implicit)
    assert fast.encoded == expected
    assert encode(fast, implicit, True) == expected  # the raw elements, written by pydicom
    decoded = decode(BytesIO(fast.encoded), implicit, True)  # and it reads back
    step = decoded.ScheduledProcedureStepSequence[0]
    assert (step.Modality, step.get("ScheduledProcedureStepStartDate", "")) == ("CT", "" if changes else "20300506")
    if which == 0:
        assert str(decoded.PatientName) == "Müller^Jürgen"


def test_values_are_fitted_to_their_vr() -> None:
    plan = answer_plan(identifiers()[0])
    answer = decode(BytesIO(encoded_answer(plan, order_values(order(), None), implicit=False).encoded), False, True)
    assert answer.RequestedProcedureDescription == "CT chest / abdomen"  # LO: no backslash splits it
    assert answer.RequestedProcedureComments == "fast\\ing"  # LT keeps it
    assert answer.ReasonForTheRequestedProcedure == "x" * 64  # LO: 64 characters at most
    assert answer.RequestedProcedurePriority == "HIGH"
    assert answer["PatientWeight"].is_empty and answer["MedicalAlerts"].is_empty
    step = answer.ScheduledProcedureStepSequence[0]
    assert step.ScheduledProcedureStepLocation == "Room 1" and step.ScheduledProtocolCodeSequence[0].CodeValue == "CTCHEST"
    assert {e.keyword for e in answer.RequestedProcedureCodeSequence[0]} == {
        "CodeValue", "CodingSchemeDesignator", "CodeMeaning"}
