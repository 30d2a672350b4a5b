"""Reconciliation on both backends: studies stored (C-STORE with dcmtk's storescu, STOW-RS,
import) link to their order by AccessionNumber or StudyInstanceUID; the others are listed as
unmatched for staff to link, unlink or dismiss; patient attributes are corrected from the order
when configured; providers see exactly the studies of their own orders; and the ingest path pays
one look-up per study, and never fails for reconciliation's sake."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import event, text
from starlette.testclient import TestClient

from pacs.app import build_app
from pacs.index.audit import AuditFilter
from pacs.index.orders import Order
from pacs.services import Services
from tests.conftest import BACKENDS, bearer_headers, make_settings
from tests.support.dimse import dcmtk_ok, running_listener, write_files
from tests.support.factories import make_series, stow_body


@dataclass
class Desk:
    services: Services
    client: TestClient
    headers: dict[str, dict[str, str]]  # role -> credentials

    def get(self, path: str, who: str = "technologist", **params: Any) -> Any:
        return self.client.get(path, params=params, headers=self.headers[who])

    def post(self, path: str, body: dict[str, Any] | None = None, who: str = "technologist") -> Any:
        return self.client.post(path, json=body, headers=self.headers[who])

    def state(self, study: str) -> str:
        return str(self.get(f"/api/reconciliation/studies/{study}").json()["state"])


def desk_for(services: Services) -> Iterator[Desk]:
    headers = {role: bearer_headers(services, role, username=role) for role in ("technologist", "radiologist")}
    headers["provider"] = bearer_headers(services, "provider", username="drown", provider_name="Doc^Own")
    with TestClient(build_app(services.settings, services)) as client:
        yield Desk(services, client, headers)


@pytest.fixture
def desk(services: Services) -> Iterator[Desk]:
    yield from desk_for(services)


@pytest.fixture(params=BACKENDS)
def correcting(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Desk]:
    """An archive with MINIPACS_RECONCILE_PATIENT=on."""
    for settings in make_settings(request.param, tmp_path, request, reconcile_patient=True):
        services = Services.build(settings)
        try:
            yield from desk_for(services)
        finally:
            services.close()


def new_order(services: Services, **fields: Any) -> Order:
    body = {"patient_id": "P-RIGHT", "patient_name": "Right^Name", "modality": "CT", "patient_sex": "F",
            "patient_birth_date": "19800102", **fields}
    return services.orders.create(body, created_by="test")


def store(services: Services, datasets: list[Dataset], folder: Path) -> None:
    reports = services.ingest.store_files(write_files(datasets, folder))
    assert all(r.ok for r in reports), [r.error for r in reports]


def study_uids(response: Any) -> set[str]:
    return {item["0020000D"]["Value"][0] for item in response.json()}


def test_stored_studies_link_to_their_orders(desk: Desk, tmp_path: Path) -> None:
    services = desk.services
    by_accession, by_uid = new_order(services), new_order(services, patient_id="P2")
    # C-STORE from dcmtk, with the order's accession number.
    sent = make_series(2, size=8, AccessionNumber=by_accession.accession_number, PatientID="P-RIGHT")
    with running_listener(services) as listener:
        dcmtk_ok("storescu", "-aec", "MINIPACS", "127.0.0.1", listener.port, *write_files(sent, tmp_path / "cstore"))
    # STOW-RS with the StudyInstanceUID the worklist gave, and no accession number.
    stowed = make_series(2, size=8, StudyInstanceUID=by_uid.study_instance_uid, AccessionNumber="")
    body, content_type = stow_body(stowed)
    response = desk.client.post("/dicom-web/studies", content=body,
                                headers={**desk.headers["technologist"], "Content-Type": content_type})
    assert response.status_code == 200
    # An import naming no order.
    stray = make_series(1, size=8, AccessionNumber="NO-SUCH-ORDER", PatientID="P-STRAY", PatientName="Stray^Study")
    store(services, stray, tmp_path / "import")

    assert desk.state(sent[0].StudyInstanceUID) == "LINKED"
    assert desk.state(by_uid.study_instance_uid) == "LINKED"
    link = desk.get(f"/api/reconciliation/studies/{sent[0].StudyInstanceUID}").json()
    assert (link["order_number"], link["linked_by"], link["accession_number"]) == (
        by_accession.order_number, "auto", by_accession.accession_number)
    for order, study in ((by_accession, sent[0].StudyInstanceUID), (by_uid, by_uid.study_instance_uid)):
        linked = desk.get(f"/api/orders/{order.pk}/studies").json()
        assert [s["study_instance_uid"] for s in linked] == [study]
        assert desk.get(f"/api/orders/{order.pk}").json()["studies"] == [study]  # the order view lists them
        assert services.orders.get(order.pk).status == "ORDERED"  # images alone do not complete an order
    unmatched = desk.get("/api/reconciliation/studies").json()
    assert [(s["study_instance_uid"], s["accession_number"], s["patient_name"], s["state"]) for s in unmatched] == [
        (stray[0].StudyInstanceUID, "NO-SUCH-ORDER", "Stray^Study", "UNMATCHED")]


def test_staff_link_unlink_and_dismiss(desk: Desk, tmp_path: Path) -> None:
    services = desk.services
    order = new_order(services)
    first, second = make_series(1, size=8), make_series(1, size=8)
    store(services, first + second, tmp_path / "in")
    study, other = first[0].StudyInstanceUID, second[0].StudyInstanceUID
    base = "/api/reconciliation/studies"
    assert {s["study_instance_uid"] for s in desk.get(base).json()} == {study, other}

    linked = desk.post(f"{base}/{study}/link", {"order_number": order.order_number})
    assert linked.status_code == 200, linked.text
    assert (linked.json()["state"], linked.json()["order_id"], linked.json()["linked_by"]) == ("LINKED", order.pk,
                                                                                               "technologist")
    assert [s["study_instance_uid"] for s in desk.get(f"/api/orders/{order.pk}/studies").json()] == [study]
    assert desk.post(f"{base}/{study}/dismiss").status_code == 409  # unlink first
    assert desk.post(f"{base}/{study}/unlink").json()["state"] == "UNMATCHED"
    assert desk.get(f"/api/orders/{order.pk}/studies").json() == []
    assert desk.post(f"{base}/{study}/link", {"accession_number": order.accession_number}).json()["state"] == "LINKED"
    assert desk.post(f"{base}/{other}/dismiss").json()["state"] == "DISMISSED"
    assert desk.get(base).json() == []
    assert [s["study_instance_uid"] for s in desk.get(base, state="dismissed").json()] == [other]
    assert [s["study_instance_uid"] for s in desk.get(base, state="LINKED").json()] == [study]
    # More images of a dismissed or linked study leave the decision alone.
    store(services, make_series(1, size=8, StudyInstanceUID=other, AccessionNumber=order.accession_number),
          tmp_path / "more")
    assert desk.state(other) == "DISMISSED"

    bad = [
        (f"{base}/{generate_uid()}/link", {"order_id": order.pk}, 404),
        (f"{base}/{study}/link", {"order_id": 999999}, 404),
        (f"{base}/{study}/link", {"order_number": "ORD-1999-00001"}, 404),
        (f"{base}/{study}/link", {"order_id": "1"}, 400),
        (f"{base}/{study}/link", {"order_id": 1, "order_number": "x"}, 400),
        (f"{base}/{study}/link", {}, 400),
        (f"{base}/{generate_uid()}/dismiss", None, 404),
    ]
    for path, body, status in bad:
        response = desk.post(path, body)
        assert response.status_code == status, (path, body, response.text)
        assert response.json()["error"]
    assert desk.get(base, state="SOMETIMES").status_code == 400
    assert desk.get(base, limit="-1").status_code == 400
    assert desk.post(f"{base}/{study}/unlink", who="radiologist").status_code == 403
    assert desk.get(base, who="provider").status_code == 403
    services.audit.flush()
    changes = services.audit.search(AuditFilter(action="order", actor="technologist", study_uid=study))
    assert {json.loads(e["detail"]).get("operation") for e in changes} >= {"link", "unlink"}
    assert all(e["patient_id"] == "P-RIGHT" for e in changes if json.loads(e["detail"]).get("operation") == "link")


def test_patient_attributes_corrected_from_the_order(correcting: Desk, tmp_path: Path) -> None:
    services = correcting.services
    order = new_order(services)
    wrong = {"PatientID": "P-WRONG", "PatientName": "Wrong^Name", "PatientBirthDate": "19990909", "PatientSex": "M"}
    batch = make_series(3, size=8, AccessionNumber=order.accession_number, **wrong)
    store(services, batch[:1], tmp_path / "first")  # the first instance links the study
    store(services, batch[1:], tmp_path / "rest")  # later ones are corrected as they come
    later_series = make_series(1, size=8, StudyInstanceUID=batch[0].StudyInstanceUID, **wrong)
    store(services, later_series, tmp_path / "later")
    study = batch[0].StudyInstanceUID

    headers = correcting.headers["technologist"]
    found = correcting.client.get("/dicom-web/studies", params={"StudyInstanceUID": study}, headers=headers).json()
    assert [(f["00100020"]["Value"][0], f["00100010"]["Value"][0]["Alphabetic"]) for f in found] == [
        ("P-RIGHT", "Right^Name")]
    assert correcting.client.get("/dicom-web/studies", params={"PatientID": "P-WRONG"}, headers=headers).json() == []
    metadata = correcting.client.get(f"/dicom-web/studies/{study}/metadata", headers=headers).json()
    assert len(metadata) == 4
    for instance in metadata:
        assert instance["00100020"]["Value"] == ["P-RIGHT"]
        assert instance["00100010"]["Value"] == [{"Alphabetic": "Right^Name"}]
        assert (instance["00100030"]["Value"], instance["00100040"]["Value"]) == (["19800102"], ["F"])

    # A study staff link by hand is corrected too.
    stray = make_series(2, size=8, PatientID="P-STRAY", PatientName="Stray^Patient")
    store(services, stray, tmp_path / "stray")
    assert correcting.post(f"/api/reconciliation/studies/{stray[0].StudyInstanceUID}/link",
                           {"order_id": order.pk}).status_code == 200
    again = correcting.client.get(f"/dicom-web/studies/{stray[0].StudyInstanceUID}/metadata", headers=headers).json()
    assert {i["00100020"]["Value"][0] for i in again} == {"P-RIGHT"}
    patients = correcting.client.get("/dicom-web/studies", params={"PatientID": "P-STRAY"}, headers=headers).json()
    assert patients == []
    with services.engine.connect() as conn:
        left = conn.execute(text("SELECT patient_id FROM patients ORDER BY patient_id")).scalars().all()
    assert left == ["P-RIGHT"]  # no patient row left behind without studies
    services.audit.flush()
    # Each correction is audited: instances rewritten per batch (identical events folded, with a count).
    corrections: dict[tuple[str, str, str, int], int] = {}
    for e in services.audit.search(AuditFilter(action="store", patient_id="P-RIGHT")):
        if json.loads(e["detail"]).get("operation") == "patient corrected from order":
            key = (e["channel"], e["actor"], e["study_uid"], json.loads(e["detail"])["instances"])
            corrections[key] = corrections.get(key, 0) + e["count"]
    assert corrections == {("ingest", "reconciliation", study, 1): 2, ("ingest", "reconciliation", study, 2): 1,
                           ("http", "technologist", stray[0].StudyInstanceUID, 2): 1}


def test_without_correction_the_images_keep_their_patient(desk: Desk, tmp_path: Path) -> None:
    order = new_order(desk.services)
    sent = make_series(1, size=8, AccessionNumber=order.accession_number, PatientID="P-AS-SENT")
    store(desk.services, sent, tmp_path / "in")
    assert desk.state(sent[0].StudyInstanceUID) == "LINKED"
    metadata = desk.get(f"/dicom-web/studies/{sent[0].StudyInstanceUID}/metadata").json()
    assert metadata[0]["00100020"]["Value"] == ["P-AS-SENT"]


def test_providers_see_exactly_the_studies_of_their_orders(desk: Desk, tmp_path: Path) -> None:
    services = desk.services
    own = new_order(services, ordering_provider="DOC^OWN")
    theirs = new_order(services, ordering_provider="Other^Doc", patient_id="P-OTHER")
    mine = make_series(2, size=8, AccessionNumber=own.accession_number)
    others = make_series(1, size=8, AccessionNumber=theirs.accession_number, ReferringPhysicianName="Doc^Own")
    referred_only = make_series(1, size=8, ReferringPhysicianName="Doc^Own")  # names them, linked to no order
    store(services, mine + others + referred_only, tmp_path / "in")

    def visible() -> set[str]:
        return study_uids(desk.get("/dicom-web/studies", who="provider"))

    assert visible() == {mine[0].StudyInstanceUID}
    assert study_uids(desk.get("/dicom-web/series", who="provider")) == {mine[0].StudyInstanceUID}
    assert study_uids(desk.get("/dicom-web/instances", who="provider")) == {mine[0].StudyInstanceUID}
    for hidden in (others[0], referred_only[0]):
        assert desk.get(f"/dicom-web/studies/{hidden.StudyInstanceUID}/metadata", who="provider").status_code == 404
    assert len(desk.get(f"/dicom-web/studies/{mine[0].StudyInstanceUID}/metadata", who="provider").json()) == 2
    assert [s["study_instance_uid"] for s in desk.get(f"/api/orders/{own.pk}/studies", who="provider").json()] == [
        mine[0].StudyInstanceUID]
    assert desk.get(f"/api/orders/{theirs.pk}/studies", who="provider").status_code == 404
    # Staff decisions change what the provider sees, at once.
    assert desk.post(f"/api/reconciliation/studies/{referred_only[0].StudyInstanceUID}/link",
                     {"order_id": own.pk}).status_code == 200
    assert visible() == {mine[0].StudyInstanceUID, referred_only[0].StudyInstanceUID}
    desk.post(f"/api/reconciliation/studies/{mine[0].StudyInstanceUID}/unlink")
    assert visible() == {referred_only[0].StudyInstanceUID}


def test_ingest_pays_one_lookup_per_study_and_never_fails_for_it(desk: Desk, tmp_path: Path) -> None:
    services = desk.services
    order = new_order(services)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "study_order_links" in statement:
            statements.append(statement)

    event.listen(services.engine, "before_cursor_execute", count)
    try:
        series = make_series(5, size=8, AccessionNumber=order.accession_number)
        for number, ds in enumerate(series):
            store(services, [ds], tmp_path / f"one-{number}")
            if number == 0:
                first = len(statements)
        assert first > 0 and len(statements) == first  # later instances of the study: no look-up
    finally:
        event.remove(services.engine, "before_cursor_execute", count)
    assert desk.state(series[0].StudyInstanceUID) == "LINKED"

    # Reconciliation failing (its table gone) never fails a store.
    with services.engine.begin() as conn:
        conn.execute(text("DROP TABLE study_order_links"))
    late = make_series(2, size=8, AccessionNumber=order.accession_number)
    store(services, late, tmp_path / "late")
    found = desk.get("/dicom-web/studies", StudyInstanceUID=late[0].StudyInstanceUID).json()
    assert len(found) == 1
