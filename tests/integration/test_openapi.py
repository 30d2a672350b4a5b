"""GET /api/openapi.json: a valid OpenAPI 3.1 document naming every /api route of the app, with
the permission each needs, and schemas that the API's real order and export payloads satisfy
(checked with jsonschema), on both backends."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from starlette.routing import Route
from starlette.testclient import TestClient

from pacs.app import build_app
from pacs.services import Services
from tests.conftest import bearer_headers


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    with TestClient(build_app(services.settings, services)) as test_client:
        yield test_client


def schema_validator(document: dict[str, Any], name: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": document["components"]})


def test_every_api_route_is_described(client: TestClient) -> None:
    response = client.get("/api/openapi.json")  # no credential: it holds no patient data
    assert response.status_code == 200
    document = response.json()
    validate(document)  # the OpenAPI 3.1 meta-schema
    assert document["openapi"] == "3.1.0"
    routes = {(method.lower(), route.path) for route in client.app.routes  # type: ignore[attr-defined]
              if isinstance(route, Route) and route.path.startswith("/api/")
              for method in (route.methods or set()) - {"HEAD"}}
    described = {(method, path) for path, operations in document["paths"].items() for method in operations}
    assert routes and routes == described
    orders = document["paths"]["/api/orders"]
    assert orders["post"]["x-minipacs-permission"] == "write-orders"
    assert orders["get"]["x-minipacs-permission"] == "read-orders"
    assert document["paths"]["/api/exports"]["post"]["x-minipacs-operation"] == "export-orders"
    assert document["paths"]["/api/login"]["post"]["security"] == []
    assert {p["name"] for p in orders["get"]["parameters"]} >= {"status", "exported", "scheduled_from", "limit"}
    path_parameters = document["paths"]["/api/orders/{order_id}"]["get"]["parameters"]
    assert path_parameters == [{"name": "order_id", "in": "path", "required": True, "schema": {"type": "string"}}]


def test_order_and_export_payloads_match_their_schemas(client: TestClient, services: Services) -> None:
    document = client.get("/api/openapi.json").json()
    headers = bearer_headers(services, "technologist")
    body = {"patient_id": "P-1", "patient_name": "Doe^Jane", "modality": "CT", "priority": "STAT",
            "scheduled_at": "2030-01-01T08:00:00Z", "contrast_required": True, "duration_minutes": 15}
    schema_validator(document, "OrderCreate").validate(body)
    created = client.post("/api/orders", json=body, headers=headers)
    assert created.status_code == 201
    schema_validator(document, "OrderWithHistory").validate(created.json())
    order_id = created.json()["id"]
    schema_validator(document, "OrderList").validate(client.get("/api/orders", headers=headers).json())
    changed = client.post(f"/api/orders/{order_id}/status", json={"status": "SCHEDULED"}, headers=headers)
    schema_validator(document, "OrderWithHistory").validate(changed.json())
    export = {"format": "csv", "order_ids": [order_id], "destination": "RIS"}
    schema_validator(document, "ExportRequest").validate(export)
    batch = client.post("/api/exports", json=export, headers=headers)
    assert batch.status_code == 201
    schema_validator(document, "ExportBatch").validate(batch.json())
    history = client.get(f"/api/orders/{order_id}/exports", headers=headers).json()
    schema_validator(document, "ExportBatchList").validate(history)
    schema_validator(document, "ExportBatchList").validate(client.get("/api/exports", headers=headers).json())

    refused = client.post("/api/orders", json={**body, "colour": "red"}, headers=headers)
    assert refused.status_code == 400
    assert not schema_validator(document, "OrderCreate").is_valid({**body, "colour": "red"})
    assert not schema_validator(document, "OrderCreate").is_valid({"patient_id": "P"})
    assert not schema_validator(document, "Order").is_valid({**created.json(), "status": "LOST"})
    schema_validator(document, "Error").validate(refused.json())
