"""Imaging orders on both backends: the HTTP API, numbers (format, yearly sequences, no
duplicates under concurrency), external accession numbers, the status workflow with its
history, who may read and write which orders, and refusals of bad input."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from starlette.testclient import TestClient

from pacs.app import build_app
from pacs.index.audit import AuditFilter
from pacs.services import Services
from tests.conftest import bearer_headers
from worklist.orders import OrderService


@dataclass
class Api:
    services: Services
    client: TestClient
    headers: dict[str, dict[str, str]]

    def create(self, who: str = "technologist", **fields: Any) -> dict[str, Any]:
        body = {"patient_id": "PID-1", "patient_name": "Doe^Jane", "modality": "CT", **fields}
        response = self.client.post("/api/orders", json=body, headers=self.headers[who])
        assert response.status_code == 201, response.text
        return response.json()

    def status(self, order: dict[str, Any], status: str, who: str = "technologist") -> Any:
        return self.client.post(
            f"/api/orders/{order['id']}/status", json={"status": status, "reason": f"to {status}"},
            headers=self.headers[who],
        )


@pytest.fixture
def api(services: Services) -> Iterator[Api]:
    headers = {
        role: bearer_headers(services, role, username=role) for role in ("admin", "technologist", "radiologist")
    }
    headers["provider"] = bearer_headers(services, "provider", username="provider", provider_name="doc^own^^")
    headers["other provider"] = bearer_headers(services, "provider", username="other", provider_name="Other^Doc")
    services.accounts.add_user("hl7", "integration")
    for scopes in ("read-orders,write-orders", "store"):
        headers[f"integration:{scopes}"] = {
            "Authorization": f"Bearer {services.accounts.issue_token('hl7', scopes=scopes).secret}"
        }
    with TestClient(build_app(services.settings, services)) as client:
        yield Api(services, client, headers)


def test_create_then_find_by_id_number_and_accession(api: Api) -> None:
    created = api.create(
        patient_birth_date="1970-02-03", patient_sex="f", ordering_provider="Doc^Own", priority="stat",
        body_part="CHEST", laterality="B", procedure_code="CTCHEST", procedure_description="CT chest",
        clinical_indication="cough", scheduled_at="2030-05-06T07:08:00+02:00", station_ae_title="CT1",
    )
    year = datetime.now(UTC).year
    assert re.fullmatch(rf"ORD-{year}-\d{{5}}", created["order_number"])
    assert re.fullmatch(rf"ACC-{year}-\d{{5}}", created["accession_number"])
    assert created["status"] == "ORDERED"
    assert created["patient_birth_date"] == "19700203"
    assert (created["patient_sex"], created["priority"]) == ("F", "STAT")
    assert created["scheduled_at"] == "2030-05-06T05:08:00+00:00"
    assert created["created_by"] == "technologist"
    assert re.fullmatch(r"[0-9.]{1,64}", created["study_instance_uid"])
    assert [(h["from_status"], h["to_status"]) for h in created["history"]] == [(None, "ORDERED")]
    headers = api.headers["radiologist"]
    for path in (f"/api/orders/{created['id']}", f"/api/orders/by-number/{created['order_number']}",
                 f"/api/orders/by-accession/{created['accession_number']}"):
        found = api.client.get(path, headers=headers)
        assert found.status_code == 200, path
        assert found.json() == created
    listed = api.client.get("/api/orders", headers=headers).json()
    assert [o["order_number"] for o in listed] == [created["order_number"]]


def test_list_filters(api: Api) -> None:
    a = api.create(modality="MR", priority="URGENT", patient_id="P-A", scheduled_at="2030-01-01T10:00:00Z")
    b = api.create(modality="CT", ordering_provider="Doc^Own", patient_id="P-B", scheduled_at="2030-01-02T10:00:00Z")
    c = api.create(modality="CT", priority="STAT", patient_id="P-A")
    assert api.status(c, "SCHEDULED").status_code == 200

    def numbers(query: str) -> set[str]:
        response = api.client.get(f"/api/orders?{query}", headers=api.headers["admin"])
        assert response.status_code == 200, response.text
        return {o["order_number"] for o in response.json()}

    assert numbers("modality=ct") == {b["order_number"], c["order_number"]}
    assert numbers("priority=URGENT") == {a["order_number"]}
    assert numbers("status=scheduled") == {c["order_number"]}
    assert numbers("patient_id=P-A") == {a["order_number"], c["order_number"]}
    assert numbers("ordering_provider=DOC%5EOWN%5E") == {b["order_number"]}
    assert numbers("scheduled_from=2030-01-01&scheduled_to=2030-01-01") == {a["order_number"]}
    assert numbers("scheduled_from=20300102") == {b["order_number"]}
    assert len(numbers("limit=2")) == 2
    assert len(numbers("limit=2&offset=2")) == 1
    history = api.client.get("/api/patients/P-A/orders", headers=api.headers["radiologist"]).json()
    assert [o["order_number"] for o in history] == [c["order_number"], a["order_number"]]  # newest first


def test_numbers_count_per_year_and_reset(services: Services) -> None:
    def in_year(year: int) -> OrderService:
        return OrderService(services.orders.repository, clock=lambda: datetime(year, 6, 1, tzinfo=UTC))

    body = {"patient_id": "P", "patient_name": "X^Y", "modality": "US"}
    made = [in_year(y).create(body, created_by="t") for y in (2031, 2031, 2032, 2031)]
    assert [o.order_number for o in made] == ["ORD-2031-00001", "ORD-2031-00002", "ORD-2032-00001", "ORD-2031-00003"]
    assert [o.accession_number for o in made] == [
        "ACC-2031-00001", "ACC-2031-00002", "ACC-2032-00001", "ACC-2031-00003"
    ]


def test_external_accession_kept_and_duplicates_refused(api: Api) -> None:
    external = api.create(accession_number="HIS123")
    assert external["accession_number"] == "HIS123"
    assert re.fullmatch(r"ORD-\d{4}-\d{5}", external["order_number"])
    again = api.client.post(
        "/api/orders", json={"patient_id": "P", "patient_name": "A^B", "modality": "CT", "accession_number": "HIS123"},
        headers=api.headers["technologist"],
    )
    assert again.status_code == 409
    assert "HIS123" in again.json()["error"]
    # An external number shaped like ours is skipped by the generator.
    year = datetime.now(UTC).year
    api.create(accession_number=f"ACC-{year}-00001")
    assert api.create()["accession_number"] == f"ACC-{year}-00002"


def test_the_ordering_providers_account_is_linked_when_the_order_is_made_and_changed(api: Api) -> None:
    orders = api.services.orders
    made = api.create(ordering_provider="Doc^Own")  # the "provider" account's linked name
    assert orders.get(made["id"]).ordering_provider_user == "provider"
    assert orders.update(made["id"], {"ordering_provider": "OTHER^DOC"}).ordering_provider_user == "other"
    assert orders.update(made["id"], {"ordering_provider": "Nobody^Known"}).ordering_provider_user is None
    # Other changes keep the link; a disabled account is not linked.
    relinked = orders.update(made["id"], {"ordering_provider": "Other^Doc"})
    assert orders.update(relinked.pk, {"priority": "STAT"}).ordering_provider_user == "other"
    api.services.accounts.set_disabled("other", True)
    assert orders.get(api.create(ordering_provider="Other^Doc")["id"]).ordering_provider_user is None
    assert orders.get(api.create()["id"]).ordering_provider_user is None


LEGAL = [
    ["SCHEDULED", "IN_PROGRESS", "COMPLETED", "REPORTED"],
    ["CANCELLED"],
    ["DISCONTINUED"],
    ["SCHEDULED", "CANCELLED"],
    ["SCHEDULED", "DISCONTINUED"],
    ["SCHEDULED", "IN_PROGRESS", "CANCELLED"],
    ["SCHEDULED", "IN_PROGRESS", "DISCONTINUED"],
]
# (path to the starting state, refused target)
ILLEGAL = [
    ([], "IN_PROGRESS"),
    ([], "COMPLETED"),
    ([], "REPORTED"),
    ([], "ORDERED"),
    (["SCHEDULED"], "ORDERED"),
    (["SCHEDULED"], "COMPLETED"),
    (["SCHEDULED", "IN_PROGRESS"], "REPORTED"),
    (["SCHEDULED", "IN_PROGRESS", "COMPLETED"], "CANCELLED"),
    (["SCHEDULED", "IN_PROGRESS", "COMPLETED"], "DISCONTINUED"),
    (["SCHEDULED", "IN_PROGRESS", "COMPLETED", "REPORTED"], "COMPLETED"),
    (["CANCELLED"], "SCHEDULED"),
    (["DISCONTINUED"], "ORDERED"),
]


def test_status_workflow_and_history(api: Api) -> None:
    for path in LEGAL:
        order = api.create()
        for target in path:
            response = api.status(order, target)
            assert response.status_code == 200, (path, target, response.text)
        steps = response.json()["history"]
        expected = list(zip([None, "ORDERED", *path[:-1]], ["ORDERED", *path], strict=True))
        assert [(h["from_status"], h["to_status"]) for h in steps] == expected
        assert [h["reason"] for h in steps[1:]] == [f"to {t}" for t in path]
        assert {h["changed_by"] for h in steps} == {"technologist"}
    for path, target in ILLEGAL:
        order = api.create()
        for step in path:
            assert api.status(order, step).status_code == 200
        refused = api.status(order, target)
        assert refused.status_code == 409, (path, target)
        current = (path or ["ORDERED"])[-1]
        assert f"from {current} to {target}" in refused.json()["error"]
        after = api.client.get(f"/api/orders/{order['id']}", headers=api.headers["admin"]).json()
        assert after["status"] == current and len(after["history"]) == len(path) + 1


def test_cancel_and_update(api: Api) -> None:
    order = api.create(priority="ROUTINE")
    changed = api.client.patch(
        f"/api/orders/{order['id']}", json={"priority": "urgent", "ordering_provider": "Doc^Own", "scheduled_at": None},
        headers=api.headers["technologist"],
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["priority"], changed.json()["ordering_provider"]) == ("URGENT", "Doc^Own")
    mine = api.client.get("/api/orders", headers=api.headers["provider"]).json()
    assert [o["id"] for o in mine] == [order["id"]]  # the new provider link is what providers see
    cancelled = api.client.post(
        f"/api/orders/{order['id']}/cancel", json={"reason": "duplicate"}, headers=api.headers["technologist"]
    )
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "CANCELLED"
    assert cancelled.json()["history"][-1]["reason"] == "duplicate"
    assert api.client.post(f"/api/orders/{order['id']}/cancel", headers=api.headers["admin"]).status_code == 409
    closed = api.client.patch(f"/api/orders/{order['id']}", json={"priority": "STAT"}, headers=api.headers["admin"])
    assert closed.status_code == 409


def test_who_may_read_and_write(api: Api) -> None:
    own = api.create(ordering_provider="DOC^OWN", patient_id="P-1")
    other = api.create(ordering_provider="Other^Doc", patient_id="P-1")
    body = {"patient_id": "P", "patient_name": "A^B", "modality": "CT"}
    for who, expected in [("radiologist", 403), ("provider", 403), ("integration:store", 403),
                          ("integration:read-orders,write-orders", 201), ("admin", 201)]:
        assert api.client.post("/api/orders", json=body, headers=api.headers[who]).status_code == expected, who
    assert api.status(own, "SCHEDULED", who="radiologist").status_code == 403
    assert api.client.get("/api/orders", headers=api.headers["integration:store"]).status_code == 403
    assert api.client.get("/api/orders").status_code == 401

    provider = api.headers["provider"]
    assert [o["id"] for o in api.client.get("/api/orders", headers=provider).json()] == [own["id"]]
    assert [o["id"] for o in api.client.get("/api/patients/P-1/orders", headers=provider).json()] == [own["id"]]
    assert api.client.get(f"/api/orders/{own['id']}", headers=provider).status_code == 200
    for path in (f"/api/orders/{other['id']}", f"/api/orders/by-number/{other['order_number']}",
                 f"/api/orders/by-accession/{other['accession_number']}"):
        assert api.client.get(path, headers=provider).status_code == 404, path
    theirs = api.client.get("/api/orders", headers=api.headers["other provider"]).json()
    assert [o["id"] for o in theirs] == [other["id"]]
    me = api.client.get("/api/me", headers=provider).json()
    assert me["permissions"] == ["read", "read-orders"]
    denied = [e for e in api.services.audit.search(_filter(actor="radiologist")) if e["outcome"] == "denied"]
    assert denied and denied[0]["action"] == "order"


def _filter(**where: Any) -> AuditFilter:
    return AuditFilter(**where)


@pytest.mark.parametrize(
    "body",
    [
        {"patient_name": "A^B", "modality": "CT"},
        {"patient_id": "P", "modality": "CT"},
        {"patient_id": "P", "patient_name": "A^B"},
        {"patient_id": "P", "patient_name": "A^B", "modality": "XX"},
        {"patient_id": "P", "patient_name": "A^B", "modality": "CT", "priority": "SOON"},
        {"patient_id": "P", "patient_name": "A^B", "modality": "CT", "patient_birth_date": "1970-13-01"},
        {"patient_id": "P", "patient_name": "A^B", "modality": "CT", "scheduled_at": "tomorrow"},
        {"patient_id": "P", "patient_name": "A^B", "modality": "CT", "status": "COMPLETED"},
        {"patient_id": "P", "patient_name": "A^B", "modality": "CT", "accession_number": "X" * 17},
        {"patient_id": 5, "patient_name": "A^B", "modality": "CT"},
    ],
)
def test_bad_input_is_refused(api: Api, body: dict[str, Any]) -> None:
    response = api.client.post("/api/orders", json=body, headers=api.headers["technologist"])
    assert response.status_code == 400, response.text
    assert response.json()["error"]


def test_bad_requests_get_clear_answers(api: Api) -> None:
    headers = api.headers["admin"]
    order = api.create()
    cases: list[tuple[str, str, dict[str, Any], int]] = [
        ("POST", "/api/orders", {"content": b"not json"}, 400),
        ("POST", "/api/orders", {"json": [1]}, 400),
        ("GET", "/api/orders/abc", {}, 400),
        ("GET", "/api/orders/999999", {}, 404),
        ("GET", "/api/orders/by-number/ORD-1999-00001", {}, 404),
        ("GET", "/api/orders?status=LOST", {}, 400),
        ("GET", "/api/orders?modality=XX", {}, 400),
        ("GET", "/api/orders?scheduled_from=yesterday", {}, 400),
        ("GET", "/api/orders?limit=-1", {}, 400),
        ("POST", f"/api/orders/{order['id']}/status", {"json": {"status": "LOST"}}, 400),
        ("POST", f"/api/orders/{order['id']}/status", {"json": {}}, 400),
        ("POST", "/api/orders/999999/status", {"json": {"status": "SCHEDULED"}}, 404),
        ("PATCH", f"/api/orders/{order['id']}", {"json": {"accession_number": "NEW"}}, 400),
        ("PATCH", f"/api/orders/{order['id']}", {"json": {"patient_name": ""}}, 400),
    ]
    for method, path, kwargs, expected in cases:
        response = api.client.request(method, path, headers=headers, **kwargs)
        assert response.status_code == expected, (method, path, response.text)
        assert response.json()["error"]


def test_parallel_creates_get_distinct_numbers(services: Services) -> None:
    body = {"patient_id": "P", "patient_name": "A^B", "modality": "DX"}
    with ThreadPoolExecutor(max_workers=25) as pool:
        made = list(pool.map(lambda _: services.orders.create(body, created_by="t"), range(50)))
    year = datetime.now(UTC).year
    assert sorted(o.order_number for o in made) == [f"ORD-{year}-{n:05d}" for n in range(1, 51)]
    assert sorted(o.accession_number for o in made) == [f"ACC-{year}-{n:05d}" for n in range(1, 51)]
    assert len({o.study_instance_uid for o in made}) == 50
