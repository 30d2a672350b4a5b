"""JSON Schemas (2020-12, as OpenAPI 3.1 uses them) of the JSON API's bodies. The order schemas
are made from the Order record and the order field lists, so they follow the model."""

from __future__ import annotations

import dataclasses
from typing import Any

from pacs.index.orders import Order
from worklist.orders import CREATABLE, EDITABLE, PRIORITIES, OrderStatus

_NULLABLE_STRING = {"type": ["string", "null"]}
_TYPES: dict[str, dict[str, Any]] = {
    "str": {"type": "string"}, "str | None": _NULLABLE_STRING, "int": {"type": "integer"},
    "int | None": {"type": ["integer", "null"]}, "bool": {"type": "boolean"},
    "datetime": {"type": "string", "format": "date-time"},
    "datetime | None": {"type": ["string", "null"], "format": "date-time"},
}
_FLAGS = frozenset({"contrast_required", "contrast_allergy_checked", "contrast_renal_checked"})
_CHOICES: dict[str, dict[str, Any]] = {
    "status": {"enum": [s.value for s in OrderStatus]},
    "priority": {"enum": list(PRIORITIES)},
}


def _order() -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for item in dataclasses.fields(Order):
        name = "id" if item.name == "pk" else item.name
        properties[name] = {**_TYPES.get(str(item.type), {}), **_CHOICES.get(name, {})}
    return {"type": "object", "properties": properties, "required": sorted(properties), "additionalProperties": False}


def _order_input(fields: frozenset[str], required: tuple[str, ...]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for name in sorted(fields):
        if name in _FLAGS:
            properties[name] = {"type": ["boolean", "null"]}
        elif name == "duration_minutes":
            properties[name] = {"type": ["integer", "null"], "minimum": 1, "maximum": 1440}
        elif name in ("scheduled_at",):
            properties[name] = {"type": ["string", "null"], "description": "ISO 8601; without an offset: UTC"}
        elif name == "patient_birth_date":
            properties[name] = {"type": ["string", "null"], "description": "YYYY-MM-DD or YYYYMMDD"}
        else:
            properties[name] = dict(_NULLABLE_STRING)
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


STATUS_CHANGE = {
    "type": "object",
    "properties": {
        "from_status": {"type": ["string", "null"]}, "to_status": {"type": "string"},
        "changed_by": {"type": "string"}, "changed_at": {"type": "string", "format": "date-time"},
        "reason": {"type": "string"},
    },
    "required": ["from_status", "to_status", "changed_by", "changed_at", "reason"],
    "additionalProperties": False,
}

EXPORT_REQUEST = {
    "type": "object",
    "properties": {
        "format": {"enum": ["csv", "hl7", "pdf"]},
        "order_ids": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1},
        "all_not_exported": {"type": "boolean"},
        "destination": {"type": "string", "maxLength": 512, "description": "where the file goes (a label)"},
        "force": {"type": "boolean", "description": "export again orders already exported"},
    },
    "required": ["format"],
    "additionalProperties": False,
}

_ORDER_REF = {
    "type": "object",
    "properties": {"id": {"type": "integer"}, "order_number": {"type": "string"}},
    "required": ["id", "order_number"],
}
_BATCH_FIELDS: dict[str, Any] = {
    "id": {"type": "integer"}, "created_at": {"type": "string", "format": "date-time"},
    "created_by": {"type": "string"}, "format": {"enum": ["csv", "hl7", "pdf"]},
    "destination": {"type": "string"}, "order_count": {"type": "integer"},
    "file": {"type": ["string", "null"], "description": "where to download the file"},
}
# In lists (GET /api/exports, an order's exports): the count only, not the orders.
EXPORT_BATCH_SUMMARY = {
    "type": "object", "properties": _BATCH_FIELDS, "required": sorted(_BATCH_FIELDS), "additionalProperties": False,
}
EXPORT_BATCH = {
    "type": "object",
    "properties": {
        **_BATCH_FIELDS,
        "orders": {"type": "array", "items": _ORDER_REF},
        "skipped": {"type": "array", "items": _ORDER_REF, "description": "already exported, left out"},
        "remaining": {"type": "boolean", "description": "more orders wait for another batch"},
    },
    "required": [*sorted(_BATCH_FIELDS), "orders"],
}

HL7_MESSAGE = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"}, "received_at": {"type": "string", "format": "date-time"},
        "peer": {"type": "string"}, "control_id": _NULLABLE_STRING, "sending_application": _NULLABLE_STRING,
        "sending_facility": _NULLABLE_STRING, "message_type": _NULLABLE_STRING,
        # the same words the ack_code filter takes: "none" for a block that got no answer
        "ack_code": {"enum": ["AA", "AE", "AR", "none"]},
        "outcome": {"type": "string"}, "duplicate": {"type": "boolean"}, "order_id": {"type": ["integer", "null"]},
        "size": {"type": "integer"},
        "raw": {"type": ["string", "null"], "description": "the message as received; only for one message"},
    },
    "required": ["id", "received_at", "peer", "control_id", "message_type", "ack_code", "outcome", "duplicate"],
    "additionalProperties": False,
}

ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
    "required": ["error", "status"],
}

ORDER = _order()
ORDER_WITH_HISTORY = {
    **ORDER,
    "properties": {**ORDER["properties"], "history": {"type": "array", "items": {"$ref": "#/components/schemas/StatusChange"}},
                   # StudyInstanceUIDs of the studies reconciliation linked to the order
                   "studies": {"type": "array", "items": {"type": "string"}}},
    "required": [*ORDER["required"], "history", "studies"],
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Order": ORDER,
    "OrderWithHistory": ORDER_WITH_HISTORY,
    "OrderList": {"type": "array", "items": {"$ref": "#/components/schemas/Order"}},
    "OrderCreate": _order_input(CREATABLE, ("patient_id", "patient_name", "modality")),
    "OrderUpdate": _order_input(EDITABLE, ()),
    "OrderStatusChange": {
        "type": "object", "properties": {"status": {"enum": [s.value for s in OrderStatus]}, "reason": {"type": "string"}},
        "required": ["status"], "additionalProperties": False,
    },
    "OrderCancel": {"type": "object", "properties": {"reason": {"type": "string"}}, "additionalProperties": False},
    "StatusChange": STATUS_CHANGE,
    "ExportRequest": EXPORT_REQUEST,
    "ExportBatch": EXPORT_BATCH,
    "ExportBatchSummary": EXPORT_BATCH_SUMMARY,
    "ExportBatchList": {"type": "array", "items": {"$ref": "#/components/schemas/ExportBatchSummary"}},
    "Hl7Message": HL7_MESSAGE,
    "Hl7MessageList": {"type": "array", "items": {"$ref": "#/components/schemas/Hl7Message"}},
    "Login": {
        "type": "object", "properties": {"username": {"type": "string"}, "password": {"type": "string"}},
        "required": ["username", "password"],
    },
    "Error": ERROR,
    "Object": {"type": "object"},
    "ObjectList": {"type": "array", "items": {"type": "object"}},
}
