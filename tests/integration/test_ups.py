"""UPS-RS (PS3.18 11) on both backends: the worklist that orders form, searched, retrieved,
created, updated, claimed, completed and canceled over DICOMweb, with the PS3.4 CC.1.1 state
machine's refusals, who may do what, and bad input. dicomweb-client has no workitem calls, so
the requests are made with httpx (Starlette's test client, and a real server on a socket)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from starlette.testclient import TestClient

from pacs.app import build_app
from pacs.errors import Conflict
from pacs.services import Services
from tests.conftest import bearer_headers
from tests.support.server import create_user, running_server
from worklist.ups_service import WorkitemService

DICOM_JSON = "application/dicom+json"
STATE, TRANSACTION = "00741000", "00081195"


@dataclass
class Ups:
    services: Services
    client: TestClient
    headers: dict[str, dict[str, str]]

    def order(self, who: str = "technologist", **fields: Any) -> dict[str, Any]:
        body = {"patient_id": "PID-1", "patient_name": "Doe^Jane", "modality": "CT", **fields}
        response = self.client.post("/api/orders", json=body, headers=self.headers[who])
        assert response.status_code == 201, response.text
        return response.json()

    def get(self, uid: str, who: str = "radiologist") -> httpx.Response:
        return self.client.get(f"/dicom-web/workitems/{uid}", headers={**self.headers[who], "Accept": DICOM_JSON})

    def search(self, query: str, who: str = "radiologist") -> list[dict[str, Any]]:
        response = self.client.get(f"/dicom-web/workitems?{query}", headers=self.headers[who])
        assert response.status_code == 200, (query, response.text)
        return response.json()

    def state(self, uid: str, state: str, transaction: str | None, who: str = "technologist") -> httpx.Response:
        body = {STATE: {"vr": "CS", "Value": [state]}}
        if transaction:
            body[TRANSACTION] = {"vr": "UI", "Value": [transaction]}
        return self.client.put(f"/dicom-web/workitems/{uid}/state", json=body,
                               headers={**self.headers[who], "Content-Type": DICOM_JSON})

    def order_of(self, uid: str) -> dict[str, Any]:
        found = self.client.get("/api/orders?limit=1000", headers=self.headers["admin"]).json()
        pk = next(o["id"] for o in found if o["workitem_uid"] == uid)
        return self.client.get(f"/api/orders/{pk}", headers=self.headers["admin"]).json()


@pytest.fixture
def ups(services: Services) -> Iterator[Ups]:
    headers = {role: bearer_headers(services, role, username=role)
               for role in ("admin", "technologist", "radiologist")}
    headers["provider"] = bearer_headers(services, "provider", username="provider", provider_name="Doc^Own")
    with TestClient(build_app(services.settings, services)) as client:
        yield Ups(services, client, headers)


def new_workitem(uid: str | None = None, **overrides: Any) -> dict[str, Any]:
    """A UPS as a RIS would create it (PS3.4 Table CC.2.5-3), in DICOM JSON."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.34.6.1"
    if uid:
        ds.SOPInstanceUID = uid
    ds.PatientName = "Roe^Richard"
    ds.PatientID = "UPS-P1"
    ds.PatientBirthDate = "19800203"
    ds.PatientSex = "M"
    ds.ProcedureStepState = "SCHEDULED"
    ds.ScheduledProcedureStepPriority = "HIGH"
    ds.ProcedureStepLabel = "MR knee"
    ds.ScheduledProcedureStepStartDateTime = "20300405103000+0200"
    station, station_class, request = Dataset(), Dataset(), Dataset()
    station.CodeValue, station.CodingSchemeDesignator, station.CodeMeaning = "MR1", "99LOCAL", "MR room 1"
    station_class.CodeValue, station_class.CodingSchemeDesignator, station_class.CodeMeaning = "MR", "DCM", "MR"
    ds.ScheduledStationNameCodeSequence = [station]
    ds.ScheduledStationClassCodeSequence = [station_class]
    request.AccessionNumber = "RIS-0001"
    request.RequestingPhysician = "Doc^Own"
    request.ReasonForTheRequestedProcedure = "pain"
    ds.ReferencedRequestSequence = [request]
    ds.AdmissionID = "ADM-7"  # a UPS attribute no order field holds
    body = ds.to_json_dict()
    body.update(overrides)
    return body


def create(ups: Ups, body: dict[str, Any], query: str = "", who: str = "technologist") -> httpx.Response:
    return ups.client.post(f"/dicom-web/workitems{query}", json=body,
                           headers={**ups.headers[who], "Content-Type": DICOM_JSON})


def value(item: dict[str, Any], *path: str) -> Any:
    """The first value at a tag path (sequences take their first item)."""
    for tag in path[:-1]:
        item = item[tag]["Value"][0]
    values = item[path[-1]].get("Value")
    return values[0] if values else None


def test_create_retrieve_and_the_order_behind_it(ups: Ups) -> None:
    uid = generate_uid()
    created = create(ups, new_workitem(), f"?{uid}")
    assert created.status_code == 201, created.text
    assert created.headers["Location"].endswith(f"/dicom-web/workitems/{uid}")
    assert "not kept" in created.headers["Warning"] and "AdmissionID" in created.headers["Warning"]

    retrieved = ups.get(uid)
    assert retrieved.status_code == 200
    assert retrieved.headers["content-type"].startswith(DICOM_JSON)
    [item] = retrieved.json()
    assert item["00080016"] == {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.34.6.1"]}
    assert item["00080018"] == {"vr": "UI", "Value": [uid]}
    assert item["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Roe^Richard"}]}
    assert item[STATE] == {"vr": "CS", "Value": ["SCHEDULED"]}
    assert item["00741200"] == {"vr": "CS", "Value": ["HIGH"]}
    assert value(item, "00404005") == "20300405083000+0000"
    assert value(item, "00404025", "00080100") == "MR1"
    assert value(item, "0040A370", "00080050") == "RIS-0001"
    assert value(item, "0040A370", "00321032") == {"Alphabetic": "Doc^Own"}
    assert item["00100021"] == {"vr": "LO"}  # empty: no "Value" (PS3.18 F.2.5)
    assert TRANSACTION not in item
    assert list(item) == sorted(item)

    order = ups.order_of(uid)
    assert (order["status"], order["priority"], order["modality"]) == ("SCHEDULED", "STAT", "MR")
    assert (order["accession_number"], order["station_ae_title"]) == ("RIS-0001", "MR1")
    assert order["scheduled_at"] == "2030-04-05T08:30:00+00:00"
    assert [h["to_status"] for h in order["history"]] == ["ORDERED", "SCHEDULED"]
    assert value(item, "0040A370", "00401001") == order["order_number"]


def test_orders_are_workitems_and_search_matches_them(ups: Ups) -> None:
    a = ups.order(patient_id="P-A", patient_name="Smith^Anna", modality="CT", station_ae_title="CT1",
                  scheduled_at="2030-01-01T10:00:00Z", priority="ROUTINE")
    b = ups.order(patient_id="P-B", patient_name="Jones^Bob", modality="MR", station_ae_title="MR1",
                  scheduled_at="2030-01-02T10:00:00Z", priority="URGENT", ordering_provider="Doc^Own")
    c = ups.order(patient_id="P-C", patient_name="smithers^carl", modality="CT", station_ae_title="CT1",
                  scheduled_at="2030-01-03T10:00:00Z")
    started = ups.state(c["workitem_uid"], "IN PROGRESS", generate_uid())
    assert started.status_code == 200, started.text

    def uids(query: str, who: str = "radiologist") -> list[str]:
        return [value(item, "00080018") for item in ups.search(query, who)]

    a_uid, b_uid, c_uid = a["workitem_uid"], b["workitem_uid"], c["workitem_uid"]
    assert uids("") == [a_uid, b_uid, c_uid]  # soonest first
    assert uids("ProcedureStepState=SCHEDULED") == [a_uid, b_uid]
    assert uids("00741000=IN%20PROGRESS") == [c_uid]
    assert uids("PatientID=P-B") == [b_uid]
    assert uids("PatientName=SMITH*") == [a_uid, c_uid]  # case-insensitive, wildcard
    assert uids("ReferencedRequestSequence.AccessionNumber=" + b["accession_number"]) == [b_uid]
    assert uids("0040A370.00080050=" + a["accession_number"]) == [a_uid]
    assert uids("ScheduledStationNameCodeSequence.CodeValue=CT1") == [a_uid, c_uid]
    assert uids("ScheduledStationClassCodeSequence.CodeValue=MR") == [b_uid]
    assert uids("ScheduledProcedureStepStartDateTime=20300102") == [b_uid]
    assert uids("ScheduledProcedureStepStartDateTime=20300101-20300102") == [a_uid, b_uid]
    assert uids("ScheduledProcedureStepStartDateTime=20300102120000-") == [c_uid]
    assert uids("ScheduledProcedureStepPriority=HIGH") == [b_uid]
    assert uids("limit=2") == [a_uid, b_uid]
    assert uids("limit=2&offset=2&includefield=all") == [c_uid]
    assert uids("", who="provider") == [b_uid]  # providers see the orders they placed
    assert ups.get(a_uid, who="provider").status_code == 404

    ignored = ups.client.get("/dicom-web/workitems?ScheduledProcessingParametersSequence=x",
                             headers=ups.headers["radiologist"])
    assert ignored.status_code == 200 and "not supported for matching" in ignored.headers["Warning"]


def test_claim_complete_and_the_state_machine(ups: Ups) -> None:
    uid = ups.order(patient_id="P-W")["workitem_uid"]  # ORDERED: shown as SCHEDULED
    transaction = generate_uid()
    assert ups.state(uid, "COMPLETED", transaction).status_code == 409  # C310: not yet IN PROGRESS
    missing = ups.state(uid, "IN PROGRESS", None)
    assert missing.status_code == 400 and "C301" in missing.json()["error"]
    assert "Transaction UID is missing" in missing.headers["Warning"]
    claimed = ups.state(uid, "IN PROGRESS", transaction, who="radiologist")
    assert claimed.status_code == 200, claimed.text
    assert value(ups.get(uid).json()[0], STATE) == "IN PROGRESS"
    assert TRANSACTION not in ups.get(uid).json()[0]

    again = ups.state(uid, "IN PROGRESS", generate_uid())
    assert again.status_code == 409 and "C302" in again.headers["Warning"]
    assert ups.state(uid, "SCHEDULED", transaction).status_code == 409  # C303
    wrong = ups.state(uid, "COMPLETED", generate_uid())
    assert wrong.status_code == 400 and "incorrect" in wrong.json()["error"]
    assert ups.state(uid, "FINISHED", transaction).status_code == 400

    done = ups.state(uid, "COMPLETED", transaction, who="radiologist")
    assert done.status_code == 200 and "Warning" not in done.headers
    twice = ups.state(uid, "COMPLETED", transaction)
    assert twice.status_code == 200 and "already in the requested state of COMPLETED" in twice.headers["Warning"]
    assert ups.state(uid, "CANCELED", transaction).status_code == 409  # C300: may no longer be updated
    order = ups.order_of(uid)
    assert order["status"] == "COMPLETED"
    steps = [(h["from_status"], h["to_status"], h["changed_by"], h["reason"]) for h in order["history"]]
    assert steps[1:] == [
        ("ORDERED", "SCHEDULED", "radiologist", "UPS-RS: claimed"),
        ("SCHEDULED", "IN_PROGRESS", "radiologist", "UPS-RS: claimed"),
        ("IN_PROGRESS", "COMPLETED", "radiologist", "UPS-RS: completed"),
    ]
    assert ups.state(generate_uid(), "IN PROGRESS", transaction).status_code == 404  # C307


def test_one_of_many_simultaneous_claims_wins(ups: Ups) -> None:
    uid = ups.order()["workitem_uid"]
    service = WorkitemService(ups.services.orders)
    transactions = [generate_uid() for _ in range(6)]

    def claim(transaction: str) -> str:
        try:
            service.change_state(uid, "IN PROGRESS", transaction, changed_by="t")
        except Conflict as exc:
            return str(exc)
        return "claimed"

    with ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = list(pool.map(claim, transactions))
    assert outcomes.count("claimed") == 1, outcomes
    assert all("C302" in outcome for outcome in outcomes if outcome != "claimed")
    winner = transactions[outcomes.index("claimed")]
    assert ups.services.orders.repository.by_workitem(uid).ups_transaction_uid == winner
    assert ups.state(uid, "COMPLETED", winner).status_code == 200


def test_cancel_by_the_performer_and_on_request(ups: Ups) -> None:
    performed, scheduled = ups.order()["workitem_uid"], ups.order()["workitem_uid"]
    transaction = generate_uid()
    assert ups.state(performed, "IN PROGRESS", transaction).status_code == 200
    refused = ups.client.post(f"/dicom-web/workitems/{performed}/cancelrequest", headers=ups.headers["technologist"])
    assert refused.status_code == 409 and "C312" in refused.json()["error"]
    assert ups.state(performed, "CANCELED", transaction).status_code == 200
    assert ups.order_of(performed)["status"] == "DISCONTINUED"  # stopped during performance

    reason = {"00741238": {"vr": "LT", "Value": ["patient declined"]}}
    accepted = ups.client.post(f"/dicom-web/workitems/{scheduled}/cancelrequest", json=reason,
                               headers={**ups.headers["radiologist"], "Content-Type": DICOM_JSON})
    assert accepted.status_code == 202, accepted.text
    order = ups.order_of(scheduled)
    assert order["status"] == "CANCELLED"
    assert order["history"][-1]["reason"] == "UPS-RS: cancellation requested: patient declined"
    repeated = ups.client.post(f"/dicom-web/workitems/{scheduled}/cancelrequest", headers=ups.headers["admin"])
    assert repeated.status_code == 202 and "already in the requested state of CANCELED" in repeated.headers["Warning"]
    assert value(ups.get(scheduled).json()[0], STATE) == "CANCELED"


def test_update_needs_the_transaction_while_in_progress(ups: Ups) -> None:
    uid = ups.order(patient_name="Doe^Jane", procedure_description="CT head")["workitem_uid"]
    echo = ups.get(uid).json()[0]
    path = f"/dicom-web/workitems/{uid}"
    headers = {**ups.headers["technologist"], "Content-Type": DICOM_JSON}
    same = ups.client.post(path, json=echo, headers=headers)  # the workitem sent back unchanged
    assert same.status_code == 200 and "Warning" not in same.headers, same.text
    label = {"00741204": {"vr": "LO", "Value": ["CT head without contrast"]}}
    assert ups.client.post(path, json=label, headers=headers).status_code == 200
    assert ups.order_of(uid)["procedure_description"] == "CT head without contrast"
    changed_id = ups.client.post(path, json={"00100020": {"vr": "LO", "Value": ["OTHER"]}}, headers=headers)
    assert changed_id.status_code == 400 and "patient_id" in changed_id.json()["error"]

    transaction = generate_uid()
    assert ups.state(uid, "IN PROGRESS", transaction).status_code == 200
    comment = {"00400400": {"vr": "LT", "Value": ["contrast ready"]}}
    without = ups.client.post(path, json=comment, headers=headers)
    assert without.status_code == 400 and "C301" in without.headers["Warning"]
    with_it = ups.client.put(f"{path}?{transaction}", json=comment, headers=headers)
    assert with_it.status_code == 200, with_it.text
    assert ups.order_of(uid)["special_instructions"] == "contrast ready"
    assert ups.state(uid, "COMPLETED", transaction).status_code == 200
    closed = ups.client.post(f"{path}?transaction={transaction}", json=comment, headers=headers)
    assert closed.status_code == 409 and "C300" in closed.json()["error"]


def test_who_may_do_what(ups: Ups) -> None:
    uid = ups.order(ordering_provider="Doc^Own")["workitem_uid"]
    assert create(ups, new_workitem(), who="radiologist").status_code == 403
    assert create(ups, new_workitem(), who="provider").status_code == 403
    assert ups.state(uid, "IN PROGRESS", generate_uid(), who="provider").status_code == 403
    assert ups.get(uid, who="provider").status_code == 200
    assert ups.client.get("/dicom-web/workitems").status_code == 401
    assert ups.client.put(f"/dicom-web/workitems/{uid}/state", json={}).status_code == 401
    subscribe = ups.client.post(f"/dicom-web/workitems/{uid}/subscribers/VIEWER", headers=ups.headers["radiologist"])
    assert subscribe.status_code == 403 and "C315" in subscribe.json()["error"]
    ups.services.audit.flush()
    claims = [e for e in ups.services.audit.search(_audit(actor="provider")) if e["outcome"] == "denied"]
    assert claims and claims[0]["action"] == "order"
    reads = ups.services.audit.search(_audit(actor="provider", action="read", outcome="success"))
    assert [(e["patient_id"], e["study_uid"]) for e in reads] == [("PID-1", ups.order_of(uid)["study_instance_uid"])]


def _audit(**where: Any) -> Any:
    from pacs.index.audit import AuditFilter

    return AuditFilter(**where)


@pytest.mark.parametrize(
    ("body", "query", "content_type", "status", "message"),
    [
        (b"{not json", "", DICOM_JSON, 400, "not valid JSON"),
        (b"[1, 2]", "", DICOM_JSON, 400, "exactly one"),
        (b'{"00100010": {"vr": "PN", "Value": 5}}', "", DICOM_JSON, 400, "DICOM JSON"),
        (b"<NativeDicomModel/>", "", "application/dicom+xml", 415, "application/dicom+json"),
        (None, "", DICOM_JSON, 400, "must be SCHEDULED"),  # ProcedureStepState IN PROGRESS
        (None, "?not-a-uid", DICOM_JSON, 400, "not a UID"),
        ("no modality", "", DICOM_JSON, 400, "modality is required"),
        ("bad date", "", DICOM_JSON, 400, "00404005"),
    ],
)
def test_bad_creates_are_refused(ups: Ups, body: Any, query: str, content_type: str, status: int,
                                 message: str) -> None:
    if body is None:
        body = _json(new_workitem(**({STATE: {"vr": "CS", "Value": ["IN PROGRESS"]}} if not query else {})))
    elif body == "no modality":
        workitem = new_workitem()
        del workitem["00404026"]
        body = _json(workitem)
    elif body == "bad date":
        body = _json(new_workitem(**{"00404005": {"vr": "DT", "Value": ["20301305103000"]}}))
    response = ups.client.post(f"/dicom-web/workitems{query}", content=body,
                               headers={**ups.headers["technologist"], "Content-Type": content_type})
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert response.headers["Warning"].startswith("299 minipacs ")
    assert ups.search("PatientID=UPS-P1") == []


def test_duplicates_and_bad_searches(ups: Ups) -> None:
    uid = generate_uid()
    assert create(ups, new_workitem(uid)).status_code == 201
    duplicate = create(ups, new_workitem(uid))
    assert duplicate.status_code == 409 and "0111" in duplicate.json()["error"]
    differing = create(ups, new_workitem(generate_uid()), f"?{generate_uid()}")
    assert differing.status_code == 400
    for query in ("NoSuchKeyword=1", "ProcedureStepState=DONE", "ScheduledProcedureStepStartDateTime=tomorrow",
                  "limit=-1", "PatientName=%00", "ScheduledProcedureStepPriority=SOON"):
        response = ups.client.get(f"/dicom-web/workitems?{query}", headers=ups.headers["radiologist"])
        assert response.status_code == 400, (query, response.text)
    xml = ups.client.get(f"/dicom-web/workitems/{uid}", headers={**ups.headers["admin"], "Accept": "application/dicom+xml"})
    assert xml.status_code == 406


def _json(body: dict[str, Any]) -> bytes:
    import json

    return json.dumps(body).encode()


def test_a_worklist_client_over_a_real_socket(settings: Any) -> None:
    """Pull the worklist, claim a step and complete it against `minipacs serve` over TCP."""
    _, technologist = create_user(settings, "technologist")
    with running_server(settings, extra_env={"MINIPACS_DICOM_ENABLED": "off", "MINIPACS_HL7_PORT": "off"}) as url:
        headers = {"Authorization": f"Bearer {technologist}"}
        with httpx.Client(base_url=f"{url}/dicom-web", headers=headers, timeout=10) as http:
            assert http.post("/workitems", json=new_workitem(),
                             headers={"Content-Type": DICOM_JSON}).status_code == 201
            [item] = http.get("/workitems", params={"ProcedureStepState": "SCHEDULED", "PatientName": "roe*"}).json()
            uid, transaction = value(item, "00080018"), generate_uid()
            claim = {STATE: {"vr": "CS", "Value": ["IN PROGRESS"]}, TRANSACTION: {"vr": "UI", "Value": [transaction]}}
            assert http.put(f"/workitems/{uid}/state", json=claim).status_code == 200
            done = {**claim, STATE: {"vr": "CS", "Value": ["COMPLETED"]}}
            assert http.put(f"/workitems/{uid}/state", json=done).status_code == 200
            assert http.get("/workitems", params={"ProcedureStepState": "SCHEDULED"}).json() == []
            assert value(http.get(f"/workitems/{uid}").json()[0], STATE) == "COMPLETED"
    assert re.fullmatch(r"[0-9.]+", uid)
