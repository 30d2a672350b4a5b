"""An order as a Modality Worklist item (PS3.4 K.6, the MWL attributes of PS3.3 C.4.10, C.30.3,
C.4.11, C.4.12) and the C-FIND response identifier holding exactly the requested keys.

One order is one Requested Procedure with one Scheduled Procedure Step: the order number is both
the Requested Procedure ID and the Scheduled Procedure Step ID; the accession number and the
StudyInstanceUID the modality puts in its images are the order's, which is what links the images
back to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta, tzinfo
from functools import lru_cache
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacs.index.orders import Order
from worklist.dicom_time import dicom_date, dicom_time, to_local

Values = dict[str, Any]

# PS3.3 C.4.10: Requested Procedure Priority defined terms are STAT, HIGH, ROUTINE, MEDIUM, LOW.
PRIORITY = {"STAT": "STAT", "URGENT": "HIGH", "ROUTINE": "ROUTINE"}
# PS3.3 C.4.10 Scheduled Procedure Step Status: an order in progress is a started step.
STEP_STATUS = {"ORDERED": "SCHEDULED", "SCHEDULED": "SCHEDULED", "IN_PROGRESS": "STARTED"}
CHARACTER_SET = "ISO_IR 192"  # order values are Unicode; UTF-8 carries them all
# Procedure codes are the site's own: a private coding scheme (PS3.16 8.1: "99" prefix).
CODING_SCHEME = "99MINIPACS"
# Longest values per VR (PS3.5 Table 6.2-1), so no answer carries a value its VR cannot hold.
_TEXT_VRS = frozenset({"LT", "ST", "UT"})  # the VRs whose values may hold a backslash
_MAX_LENGTH = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "PN": 324, "LT": 10240, "ST": 1024, "UI": 64}


def order_values(order: Order, zone: tzinfo | None) -> Values:
    """Every MWL attribute the order has a value for, by keyword (sequences as lists of items)."""
    code = _code_item(order)
    values: Values = {
        "AccessionNumber": order.accession_number,
        "ReferringPhysicianName": order.ordering_provider,
        "RequestingPhysician": order.ordering_provider,
        "PatientName": order.patient_name,
        "PatientID": order.patient_id,
        "IssuerOfPatientID": order.issuer_of_patient_id,
        "PatientBirthDate": order.patient_birth_date,
        "PatientSex": order.patient_sex,
        "AdditionalPatientHistory": order.clinical_history,
        "StudyInstanceUID": order.study_instance_uid,
        "RequestedProcedureDescription": order.procedure_description,
        "RequestedProcedureCodeSequence": [code] if code else [],
        "RequestedProcedureID": order.order_number,
        "RequestedProcedurePriority": PRIORITY.get(order.priority, order.priority),
        "ReasonForTheRequestedProcedure": order.clinical_indication,
        "RequestedProcedureComments": order.special_instructions,
        "PlacerOrderNumberImagingServiceRequest": order.placer_order_number,
        "FillerOrderNumberImagingServiceRequest": order.filler_order_number,
        "ReferencedStudySequence": [],
        "ReferencedPatientSequence": [],
        "ScheduledProcedureStepSequence": [_step(order, zone, code)],
    }
    return {k: v for k, v in values.items() if v not in (None, "")}


def _step(order: Order, zone: tzinfo | None, code: Values | None) -> Values:
    step: Values = {
        "ScheduledStationAETitle": order.station_ae_title,
        "Modality": order.modality,
        "ScheduledPerformingPhysicianName": order.performing_physician,
        "ScheduledProcedureStepDescription": order.procedure_description,
        "ScheduledProtocolCodeSequence": [code] if code else [],
        "ScheduledProcedureStepID": order.order_number,
        "ScheduledProcedureStepLocation": order.location,
        "RequestedContrastAgent": order.contrast_agent,
        "ScheduledProcedureStepStatus": STEP_STATUS.get(order.status, order.status),
        "CommentsOnTheScheduledProcedureStep": order.special_instructions,
    }
    if order.scheduled_at is not None:
        start = to_local(order.scheduled_at, zone)
        step["ScheduledProcedureStepStartDate"] = dicom_date(start)
        step["ScheduledProcedureStepStartTime"] = dicom_time(start)
        if order.duration_minutes:
            end = start + timedelta(minutes=order.duration_minutes)
            step["ScheduledProcedureStepEndDate"] = dicom_date(end)
            step["ScheduledProcedureStepEndTime"] = dicom_time(end)
    return {k: v for k, v in step.items() if v not in (None, "")}


def _code_item(order: Order) -> Values | None:
    if not order.procedure_code:
        return None
    return {
        "CodeValue": order.procedure_code[:16],
        "CodingSchemeDesignator": CODING_SCHEME,
        "CodeMeaning": order.procedure_description or order.procedure_code,
    }


@dataclass(frozen=True)
class AnswerKey:
    """A requested key: its tag, keyword and VR; for a sequence, the requested item keys (None:
    none were named, so every attribute we hold is returned, as wlmscpfs and most SCPs do)."""

    tag: int
    keyword: str
    vr: str
    items: tuple[AnswerKey, ...] | None = None


def answer_plan(requested: Dataset) -> tuple[AnswerKey, ...]:
    """The keys an identifier asks for, worked out once per query (PS3.4 C.2.2.1.2: exactly these
    come back, each with the order's value or empty)."""
    plan = []
    for element in requested:
        tag = element.tag
        # File meta, group lengths (retired, PS3.5 7.2), the character set (ours), private tags.
        if tag.group == 0x0002 or tag.element == 0 or tag == 0x00080005 or tag.is_private:
            continue
        if element.VR == "SQ":
            template = element.value[0] if element.value else None
            items = answer_plan(template) if template is not None and len(template) else None
            plan.append(AnswerKey(int(element.tag), element.keyword, "SQ", items))
        else:
            plan.append(AnswerKey(int(element.tag), element.keyword, _vr(element)))
    return tuple(plan)


def expanded_keys(item: Values) -> tuple[AnswerKey, ...]:
    """Every attribute of one of our sequence items, for a sequence requested without item keys."""
    return tuple(sorted((_key_of(keyword, isinstance(value, list)) for keyword, value in item.items()),
                        key=lambda key: key.tag))


@lru_cache(maxsize=256)
def _key_of(keyword: str, is_sequence: bool) -> AnswerKey:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return AnswerKey(tag, keyword, "SQ" if is_sequence else dictionary_VR(keyword))


def _vr(element: DataElement) -> str:
    try:
        vr = dictionary_VR(element.tag)
    except KeyError:
        return element.VR
    return element.VR if "or" in vr else vr  # ambiguous (US or SS): we hold no such value; as asked


def dicom_text(vr: str, value: Any) -> str | None:
    """A value as its VR may hold it (None: empty): clipped to the VR's length, and without a
    backslash where one would split it in two (PS3.5 6.2, 6.4)."""
    if value is None or value == "" or isinstance(value, list):
        return None
    text = str(value)[: _MAX_LENGTH.get(vr, 10240)]
    return text if vr in _TEXT_VRS else text.replace("\\", "/")


def worklist_answer(plan: tuple[AnswerKey, ...], values: Values) -> Dataset:
    """The response identifier as a pydicom data set (the encoder in mwl_encode writes the same
    bytes faster for the little endian syntaxes)."""
    answer = Dataset()
    answer.SpecificCharacterSet = CHARACTER_SET
    _fill(answer, plan, values)
    return answer


def _fill(target: Dataset, plan: tuple[AnswerKey, ...], values: Values) -> None:
    for key in plan:
        value = values.get(key.keyword)
        if key.vr != "SQ":
            target.add(DataElement(key.tag, key.vr, dicom_text(key.vr, value)))
            continue
        items = []
        for item in value if isinstance(value, list) else []:
            out = Dataset()
            _fill(out, key.items if key.items is not None else expanded_keys(item), item)
            items.append(out)
        target.add(DataElement(key.tag, "SQ", Sequence(items)))
