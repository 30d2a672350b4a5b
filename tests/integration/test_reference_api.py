"""Reference data over HTTP on both backends: anyone who reads orders lists the modalities and
body parts; admins add and change them, and orders are checked against the change at once."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from pacs.app import build_app
from pacs.index.audit import AuditFilter
from pacs.services import Services
from tests.conftest import bearer_headers


@pytest.fixture
def http(services: Services) -> Iterator[TestClient]:
    with TestClient(build_app(services.settings, services)) as client:
        yield client


def test_lists_hold_the_seeded_codes(services: Services, http: TestClient) -> None:
    headers = bearer_headers(services, "radiologist")
    modalities = {m["code"]: m for m in http.get("/api/reference/modalities", headers=headers).json()}
    assert modalities["CT"] == {"code": "CT", "display_name": "Computed Tomography", "active": True}
    assert {"CR", "DX", "MR", "US", "MG", "NM", "PT", "XA", "RF"} <= set(modalities)
    parts = {p["code"]: p for p in http.get("/api/reference/body-parts", headers=headers).json()}
    assert "MG" in parts["BREAST"]["modalities"] and "CT" not in parts["BREAST"]["modalities"]


def test_admin_adds_a_modality_and_orders_may_name_it(services: Services, http: TestClient) -> None:
    admin = bearer_headers(services, "admin")
    answer = http.put("/api/reference/modalities/ot", json={"display_name": "Other"}, headers=admin)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"code": "OT", "display_name": "Other", "active": True}
    part = http.put("/api/reference/body-parts/CHEST", json={"display_name": "Chest", "modalities": ["CT", "OT"]},
                    headers=admin)
    assert part.status_code == 200 and part.json()["modalities"] == ["CT", "OT"]
    order = {"patient_id": "P1", "patient_name": "Doe^Jo", "modality": "OT", "body_part": "CHEST"}
    created = http.post("/api/orders", json=order, headers=bearer_headers(services, "technologist"))
    assert created.status_code == 201, created.text
    # Switched off: new orders may no longer name it.
    http.put("/api/reference/modalities/OT", json={"display_name": "Other", "active": False}, headers=admin)
    refused = http.post("/api/orders", json=order, headers=bearer_headers(services, "technologist"))
    assert refused.status_code == 400
    services.audit.flush()
    changes = [json.loads(e["detail"]) for e in services.audit.search(AuditFilter(action="admin"))]
    assert any(c.get("operation") == "put modality" and c.get("code") == "OT" for c in changes)


@pytest.mark.parametrize(
    "body",
    [{}, {"display_name": ""}, {"display_name": "x" * 65}, {"display_name": "Ok", "active": "yes"}],
)
def test_bad_entries_are_refused(services: Services, http: TestClient, body: dict) -> None:
    answer = http.put("/api/reference/modalities/XX", json=body, headers=bearer_headers(services, "admin"))
    assert answer.status_code == 400


def test_bad_code_and_non_admins_are_refused(services: Services, http: TestClient) -> None:
    admin = bearer_headers(services, "admin")
    assert http.put("/api/reference/modalities/not-a-code!", json={"display_name": "X"}, headers=admin).status_code == 400
    technologist = bearer_headers(services, "technologist")
    assert http.put("/api/reference/modalities/OT", json={"display_name": "X"}, headers=technologist).status_code == 403
    assert http.get("/api/reference/modalities").status_code == 401
