"""Orders seen as Unified Procedure Steps (PS3.4 Annex CC): each order is one workitem.

An order becomes a UPS data set (PS3.4 Table CC.2.5-3) for UPS-RS Retrieve and Search, and a
UPS data set sent by a client (Create, Update) becomes order fields. Only attributes with a
home in the order are kept; the others are named back to the caller.

Order status <-> Procedure Step State (0074,1000):

    ORDERED, SCHEDULED        SCHEDULED
    IN_PROGRESS               IN PROGRESS
    COMPLETED, REPORTED       COMPLETED
    CANCELLED, DISCONTINUED   CANCELED

Priorities: STAT -> HIGH, URGENT -> HIGH, ROUTINE -> MEDIUM; back: HIGH -> STAT, MEDIUM and
LOW -> ROUTINE (an unchanged UPS priority never changes the order's).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from pydicom.dataset import Dataset

from pacs.errors import InvalidInput
from pacs.index.orders import Order

UPS_PUSH_SOP_CLASS = "1.2.840.10008.5.1.4.34.6.1"  # PS3.4 CC.3.1: the class every UPS instance has
LOCAL_SCHEME = "99MINIPACS"  # private coding scheme (PS3.16 8.1: "99" prefix) for station codes
SCHEDULED, IN_PROGRESS, COMPLETED, CANCELED = "SCHEDULED", "IN PROGRESS", "COMPLETED", "CANCELED"
UPS_STATES = (SCHEDULED, IN_PROGRESS, COMPLETED, CANCELED)

UPS_STATE_OF: dict[str, str] = {
    "ORDERED": SCHEDULED, "SCHEDULED": SCHEDULED, "IN_PROGRESS": IN_PROGRESS, "COMPLETED": COMPLETED,
    "REPORTED": COMPLETED, "CANCELLED": CANCELED, "DISCONTINUED": CANCELED,
}
ORDER_STATUSES_OF: dict[str, tuple[str, ...]] = {
    state: tuple(status for status, ups in UPS_STATE_OF.items() if ups == state) for state in UPS_STATES
}
UPS_PRIORITY_OF = {"STAT": "HIGH", "URGENT": "HIGH", "ROUTINE": "MEDIUM"}
ORDER_PRIORITY_OF = {"HIGH": "STAT", "MEDIUM": "ROUTINE", "LOW": "ROUTINE"}

# UPS attributes (keyword, or (sequence, item keyword)) and the order field each one sets.
_TOP_LEVEL = {
    "PatientName": "patient_name", "PatientID": "patient_id", "IssuerOfPatientID": "issuer_of_patient_id",
    "PatientBirthDate": "patient_birth_date", "PatientSex": "patient_sex",
    "ScheduledProcedureStepStartDateTime": "scheduled_at", "ScheduledProcedureStepPriority": "priority",
    "ProcedureStepLabel": "procedure_description", "CommentsOnTheScheduledProcedureStep": "special_instructions",
    "Modality": "modality",
}
_IN_ITEMS = {
    ("ScheduledStationNameCodeSequence", "CodeValue"): "station_ae_title",
    ("ScheduledStationClassCodeSequence", "CodeValue"): "modality",
    ("ScheduledStationGeographicLocationCodeSequence", "CodeValue"): "location",
    ("ScheduledHumanPerformersSequence", "HumanPerformerName"): "performing_physician",
    ("ScheduledWorkitemCodeSequence", "CodeValue"): "procedure_code",
    ("ReferencedRequestSequence", "AccessionNumber"): "accession_number",
    ("ReferencedRequestSequence", "StudyInstanceUID"): "study_instance_uid",
    ("ReferencedRequestSequence", "RequestedProcedureDescription"): "procedure_description",
    ("ReferencedRequestSequence", "ReasonForTheRequestedProcedure"): "clinical_indication",
    ("ReferencedRequestSequence", "RequestingPhysician"): "ordering_provider",
    ("ReferencedRequestSequence", "PlacerOrderNumberImagingServiceRequest"): "placer_order_number",
    ("ReferencedRequestSequence", "FillerOrderNumberImagingServiceRequest"): "filler_order_number",
    ("ReferencedRequestSequence", "RequestedProcedureID"): "order_number",
}
_SEQUENCES = frozenset(sequence for sequence, _ in _IN_ITEMS)
_REQUESTED_CODE = ("ReferencedRequestSequence", "RequestedProcedureCodeSequence")
# Bookkeeping attributes a client may send that need no order field.
# (ExpectedCompletionDateTime and WorklistLabel are derived from the order when it is read.)
_ACCEPTED = frozenset({"SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "ProcedureStepState",
                       "TransactionUID", "InputReadinessState", "ExpectedCompletionDateTime", "WorklistLabel"})
# Fields fixed when the order was created: an Update may repeat them but not change them.
READ_ONLY = frozenset({"patient_id", "issuer_of_patient_id", "accession_number", "study_instance_uid",
                       "placer_order_number", "order_number"})


def ups_state(order: Order) -> str:
    return UPS_STATE_OF[order.status]


def read_dataset(body: Any) -> Dataset:
    """One DICOM JSON data set (PS3.18 F.2), sent alone or as a one-element array."""
    if isinstance(body, list):
        if len(body) != 1:
            raise InvalidInput("send one workitem data set (a JSON object, or an array of exactly one)")
        body = body[0]
    if not isinstance(body, dict):
        raise InvalidInput("the body is not a DICOM JSON data set (a JSON object keyed by tags)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a wrong VR or malformed value is the caller's mistake
            dataset = Dataset.from_json(body)
            for element in dataset.iterall():
                _ = element.value
    except Exception as exc:  # noqa: BLE001  # pydicom raises many kinds for malformed JSON models
        raise InvalidInput(f"the body is not valid DICOM JSON: {str(exc)[:200]}") from None
    return dataset


def order_fields(dataset: Dataset) -> tuple[dict[str, Any], list[str]]:
    """Order fields set by a UPS data set, and the attributes it sent that have no order field."""
    fields: dict[str, Any] = {}
    ignored: list[str] = []
    for element in dataset:
        keyword = element.keyword or f"{element.tag:08X}"
        if keyword in _TOP_LEVEL:
            _put(fields, _TOP_LEVEL[keyword], _text(element, keyword))
        elif element.VR == "SQ" and keyword in _SEQUENCES:
            ignored.extend(_item_fields(fields, keyword, element.value))
        elif keyword not in _ACCEPTED and _has_value(element):
            ignored.append(keyword)
    if fields.get("scheduled_at"):
        fields["scheduled_at"] = parse_dicom_datetime(fields["scheduled_at"], "ScheduledProcedureStepStartDateTime").isoformat()
    if fields.get("priority"):
        fields["priority"] = _order_priority(fields["priority"])
    return fields, ignored


def _item_fields(fields: dict[str, Any], sequence: str, items: Any) -> list[str]:
    if len(items) > 1:
        raise InvalidInput(f"{sequence}: one item expected (a workitem here is one requested procedure)")
    ignored = []
    for item in items:
        for element in item:
            keyword = element.keyword or f"{element.tag:08X}"
            field = _IN_ITEMS.get((sequence, keyword))
            if field:
                _put(fields, field, _text(element, f"{sequence}.{keyword}"))
            elif (sequence, keyword) == _REQUESTED_CODE:
                if element.value:
                    _put(fields, "procedure_code", str(element.value[0].get("CodeValue", "")))
            elif _has_value(element) and keyword not in ("CodingSchemeDesignator", "CodeMeaning"):
                ignored.append(f"{sequence}.{keyword}")
    return ignored


def _has_value(element: Any) -> bool:
    """Empty attributes are "no value" (PS3.4 CC.2.5.1.2): nothing is lost by not keeping them."""
    return bool(element.VM) and element.value not in (None, "", [])


def _put(fields: dict[str, Any], name: str, value: str) -> None:
    # The first attribute naming a field wins (ProcedureStepLabel before the requested procedure's).
    if name not in fields or not fields[name]:
        fields[name] = value


def _text(element: Any, keyword: str) -> str:
    if element.VM > 1:
        raise InvalidInput(f"{keyword}: one value expected")
    return "" if element.value is None or element.VM == 0 else str(element.value)


def _order_priority(value: str) -> str:
    try:
        return ORDER_PRIORITY_OF[value.strip().upper()]
    except KeyError:
        raise InvalidInput(f"ScheduledProcedureStepPriority {value!r} is not HIGH, MEDIUM or LOW") from None


def parse_dicom_datetime(text: str, keyword: str) -> datetime:
    """A DT value (PS3.5 6.2: YYYYMMDDHHMMSS.FFFFFF&ZZXX, trailing parts optional); no offset: UTC."""
    value = text.strip()
    body, offset = value, None
    for sign in "+-":
        if sign in value[4:]:
            cut = value.rindex(sign)
            body, offset = value[:cut], value[cut:]
    try:
        whole, _, fraction = body.partition(".")
        if len(whole) not in (4, 6, 8, 10, 12, 14) or not whole.isascii() or not whole.isdigit():
            raise ValueError
        padded = whole + "0101000000"[len(whole) - 4 :] if len(whole) < 14 else whole
        parsed = datetime.strptime(padded, "%Y%m%d%H%M%S")
        if fraction:
            parsed = parsed.replace(microsecond=int(fraction.ljust(6, "0")[:6]))
        zone = UTC if offset is None else _zone(offset)
    except ValueError:
        raise InvalidInput(f"{keyword}: {text!r} is not a DICOM date-time (YYYYMMDDHHMMSS&ZZXX)") from None
    return parsed.replace(tzinfo=zone).astimezone(UTC)


def _zone(offset: str) -> timezone:
    if len(offset) != 5 or not offset[1:].isdigit():
        raise ValueError(offset)
    minutes = int(offset[1:3]) * 60 + int(offset[3:])
    return timezone(timedelta(minutes=-minutes if offset[0] == "-" else minutes))


def dicom_datetime(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S") + "+0000"


def workitem_dataset(order: Order, modality_meaning: Callable[[str], str | None] = lambda code: None) -> Dataset:
    """The UPS of an order (PS3.4 Table CC.2.5-3). The Transaction UID is never included: it is
    the performer's secret (PS3.4 CC.2.5.1.3.1)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = UPS_PUSH_SOP_CLASS
    ds.SOPInstanceUID = order.workitem_uid
    ds.PatientName = order.patient_name
    ds.PatientID = order.patient_id
    ds.IssuerOfPatientID = order.issuer_of_patient_id or ""
    ds.PatientBirthDate = order.patient_birth_date or ""
    ds.PatientSex = order.patient_sex or ""
    ds.ProcedureStepState = ups_state(order)
    ds.InputReadinessState = "READY"
    ds.ScheduledProcedureStepPriority = UPS_PRIORITY_OF.get(order.priority, "MEDIUM")
    ds.ProcedureStepLabel = order.procedure_description or order.procedure_code or order.modality
    ds.WorklistLabel = ""
    # Type 1: an order with no time yet may be performed from when it was placed.
    ds.ScheduledProcedureStepStartDateTime = dicom_datetime(order.scheduled_at or order.created_at)
    if order.scheduled_at and order.duration_minutes:
        ds.ExpectedCompletionDateTime = dicom_datetime(order.scheduled_at + timedelta(minutes=order.duration_minutes))
    ds.CommentsOnTheScheduledProcedureStep = order.special_instructions or ""
    ds.ScheduledStationNameCodeSequence = _codes(order.station_ae_title, LOCAL_SCHEME, order.station_ae_title)
    ds.ScheduledStationClassCodeSequence = _codes(order.modality, "DCM", modality_meaning(order.modality) or order.modality)
    ds.ScheduledStationGeographicLocationCodeSequence = _codes(order.location, LOCAL_SCHEME, order.location)
    ds.ScheduledWorkitemCodeSequence = _codes(order.procedure_code, LOCAL_SCHEME, order.procedure_description)
    performers = Dataset()
    performers.HumanPerformerName = order.performing_physician or ""
    ds.ScheduledHumanPerformersSequence = [performers] if order.performing_physician else []
    ds.ReferencedRequestSequence = [_request(order)]
    return ds


def _codes(value: str | None, scheme: str, meaning: str | None) -> list[Dataset]:
    if not value:
        return []
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = (meaning or value)[:64]
    return [item]


def _request(order: Order) -> Dataset:
    """The Referenced Request Sequence item (PS3.4 Table CC.2.5-3, PS3.3 Table 10-9)."""
    request = Dataset()
    request.StudyInstanceUID = order.study_instance_uid
    request.AccessionNumber = order.accession_number
    request.IssuerOfAccessionNumberSequence = []
    request.RequestedProcedureID = order.order_number
    request.RequestedProcedureDescription = order.procedure_description or ""
    request.RequestedProcedureCodeSequence = _codes(order.procedure_code, LOCAL_SCHEME, order.procedure_description)
    request.ReasonForTheRequestedProcedure = (order.clinical_indication or "")[:64]
    request.RequestingPhysician = order.ordering_provider or ""
    request.PlacerOrderNumberImagingServiceRequest = order.placer_order_number or ""
    request.FillerOrderNumberImagingServiceRequest = order.filler_order_number or ""
    return request


def workitem_json(order: Order, modality_meaning: Callable[[str], str | None] = lambda code: None) -> dict[str, Any]:
    """The workitem as a DICOM JSON object (PS3.18 Annex F)."""
    return _annex_f(workitem_dataset(order, modality_meaning).to_json_dict())


def _annex_f(node: dict[str, Any]) -> dict[str, Any]:
    """Attributes in tag order; an empty one (a sequence of no items too) has no "Value" (PS3.18 F.2.5)."""
    out: dict[str, Any] = {}
    for tag in sorted(node):
        element = dict(node[tag])
        if element.get("Value") == []:
            del element["Value"]
        elif element.get("vr") == "SQ":
            element["Value"] = [_annex_f(item) for item in element["Value"]]
        out[tag] = element
    return out


def changed_fields(fields: Mapping[str, Any], order: Order, modality_meaning: Callable[[str], str | None]) -> dict[str, Any]:
    """The fields an Update really changes. A value equal to what the order shows as a UPS is no
    change (so a client may send back a retrieved workitem); fixed fields may not change."""
    shown, _ = order_fields(workitem_dataset(order, modality_meaning))
    changed = {name: value for name, value in fields.items() if (value or "") != (shown.get(name) or "")}
    fixed = sorted(set(changed) & READ_ONLY)
    if fixed:
        raise InvalidInput(f"{', '.join(fixed)} cannot be changed on a workitem")
    return changed
