"""Domain exceptions -> DIMSE statuses: the one table (PS3.4 Annex B and C, PS3.7 Annex C)."""

from __future__ import annotations

from pacs import errors

SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
OUT_OF_RESOURCES = 0xA700  # storage or database unavailable
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # malformed or unsupported query identifier
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # C-STORE: the data set is not the one the command names
MOVE_DESTINATION_UNKNOWN = 0xA801
CANNOT_UNDERSTAND = 0xC000  # unreadable data set, missing UIDs
UNABLE_TO_PROCESS = 0xC001
DUPLICATE_SOP_INSTANCE = 0x0111  # PS3.7 C.4: the instance exists and the policy is "reject"
# N-CREATE / N-SET (PS3.7 C.4, PS3.4 F.7.2 for MPPS)
PROCESSING_FAILURE = 0x0110
NO_SUCH_SOP_INSTANCE = 0x0112
INVALID_ATTRIBUTE_VALUE = 0x0106
MISSING_ATTRIBUTE = 0x0120
MISSING_ATTRIBUTE_VALUE = 0x0121
# PS3.4 F.7.2.2.2: Error ID sent with 0x0110 when an MPPS is COMPLETED or DISCONTINUED already.
MPPS_MAY_NO_LONGER_BE_UPDATED = 0xA710

_STORE: list[tuple[type[errors.PacsError], int]] = [
    (errors.Unavailable, OUT_OF_RESOURCES),
    (errors.DuplicateInstance, DUPLICATE_SOP_INSTANCE),
    (errors.InstanceMismatch, DATA_SET_DOES_NOT_MATCH_SOP_CLASS),
    (errors.InvalidInput, CANNOT_UNDERSTAND),
]
_QUERY: list[tuple[type[errors.PacsError], int]] = [
    (errors.Unavailable, OUT_OF_RESOURCES),
    (errors.InvalidInput, IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS),
]

_PROCEDURE_STEP: list[tuple[type[errors.PacsError], int]] = [
    (errors.Unavailable, OUT_OF_RESOURCES),
    (errors.DuplicateInstance, DUPLICATE_SOP_INSTANCE),
    (errors.NotFound, NO_SUCH_SOP_INSTANCE),
    (errors.Conflict, PROCESSING_FAILURE),  # the step may no longer be updated
    (errors.MissingAttributeValue, MISSING_ATTRIBUTE_VALUE),
    (errors.MissingAttribute, MISSING_ATTRIBUTE),
    (errors.InvalidInput, INVALID_ATTRIBUTE_VALUE),
]
_TABLES = {"store": _STORE, "query": _QUERY, "procedure-step": _PROCEDURE_STEP}


def status_for(exc: errors.PacsError, *, service: str) -> int:
    """The status a failed operation answers with; `service` is "store", "query" or
    "procedure-step" (MPPS N-CREATE / N-SET)."""
    table = _TABLES.get(service, _QUERY)
    for kind, status in table:
        if isinstance(exc, kind):
            return status
    if service == "procedure-step":
        return PROCESSING_FAILURE
    return UNABLE_TO_PROCESS if service != "store" else CANNOT_UNDERSTAND
