"""An order as a Modality Worklist item (PS3.4 K.6, the MWL attributes of PS3.3 C.4.10, C.30.3,
C.4.11, C.4.12) and the C-FIND response identifier holding exactly the requested keys.

One order is one Requested Procedure with one Scheduled Procedure Step: the order number is both
the Requested Procedure ID and the Scheduled Procedure Step ID; the accession number and the
StudyInstanceUID the modality puts in its images are the order's, which is what links the images
back to it.
"""

from __future__ import annotations

from datetime import timedelta, tzinfo
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


def worklist_answer(requested: Dataset, values: Values) -> Dataset:
    """The response identifier: each requested key with the order's value, or zero length
    (PS3.4 C.2.2.1.2: a key we hold no value for still comes back, empty)."""
    answer = Dataset()
    answer.SpecificCharacterSet = "ISO_IR 192"  # order values are Unicode; UTF-8 carries them all
    _fill(answer, requested, values)
    return answer


def _fill(target: Dataset, requested: Dataset, values: Values) -> None:
    for element in requested:
        if element.tag.group == 0x0002 or element.keyword == "SpecificCharacterSet" or element.tag.is_private:
            continue
        if element.VR == "SQ":
            target.add(_sequence(element, values.get(element.keyword) or []))
        else:
            target.add(_element(element, values.get(element.keyword)))


def _sequence(requested: DataElement, items: list[Values]) -> DataElement:
    """Each of our items with the requested item keys; a sequence asked for with no item, or an
    empty one, is expanded to every attribute we hold (as wlmscpfs and most SCPs do)."""
    template = requested.value[0] if requested.value else None
    answered = []
    for item in items:
        out = Dataset()
        if template is None or len(template) == 0:
            _expand(out, item)
        else:
            _fill(out, template, item)
        answered.append(out)
    return DataElement(requested.tag, "SQ", Sequence(answered))


def _expand(target: Dataset, item: Values) -> None:
    for keyword, value in item.items():
        if isinstance(value, list):
            target.add(DataElement(_tag(keyword), "SQ", Sequence([_expanded(v) for v in value])))
        else:
            target.add(_value_element(_tag(keyword), dictionary_VR(keyword), value))


def _expanded(item: Values) -> Dataset:
    out = Dataset()
    _expand(out, item)
    return out


def _element(requested: DataElement, value: Any) -> DataElement:
    try:
        vr = dictionary_VR(requested.tag)
    except KeyError:
        vr = requested.VR
    if "or" in vr:  # ambiguous VRs (US or SS): we hold no such values; answer what was asked
        vr = requested.VR
    return _value_element(requested.tag, vr, value)


def _value_element(tag: Any, vr: str, value: Any) -> DataElement:
    if value is None or value == "" or isinstance(value, list):
        return DataElement(tag, vr, None)
    text = str(value)[: _MAX_LENGTH.get(vr, 10240)]
    if vr not in _TEXT_VRS:
        text = text.replace("\\", "/")  # a backslash would split the value in two (PS3.5 6.4)
    return DataElement(tag, vr, text)


def _tag(keyword: str) -> Any:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return tag
