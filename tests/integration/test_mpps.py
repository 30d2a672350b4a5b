"""Modality Performed Procedure Step (N-CREATE / N-SET) from a pynetdicom SCU, on both
backends: the order follows the step (IN PROGRESS, COMPLETED, DISCONTINUED) with its history,
the performed series are recorded, steps naming no order are kept and listed, and every refusal
of PS3.4 F.7.2 has its status."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage, ModalityPerformedProcedureStep
from starlette.testclient import TestClient

from pacs.app import build_app
from pacs.dimse.server import DicomServer
from pacs.index.audit import AuditFilter
from pacs.index.orders import Order
from pacs.index.remote_aes import RemoteAE
from pacs.services import Services
from tests.conftest import BACKENDS, bearer_headers, make_settings
from tests.support.dimse import CALLING_AE, association, echo_status, running_listener

SUCCESS, NOT_AUTHORIZED = 0x0000, 0x0124
PROCESSING_FAILURE, DUPLICATE, NO_SUCH_INSTANCE = 0x0110, 0x0111, 0x0112
INVALID_VALUE, MISSING, MISSING_VALUE = 0x0106, 0x0120, 0x0121
ZONE = "Europe/Paris"


@pytest.fixture(params=BACKENDS)
def services(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Services]:
    for settings in make_settings(request.param, tmp_path, request, dicom_timezone=ZONE):
        built = Services.build(settings)
        try:
            yield built
        finally:
            built.close()


@pytest.fixture
def mpps(listener: DicomServer) -> Iterator[Association]:
    with association(listener.port, [ModalityPerformedProcedureStep]) as assoc:
        yield assoc


@pytest.fixture
def api(services: Services) -> Iterator[tuple[TestClient, dict[str, str]]]:
    with TestClient(build_app(services.settings, services)) as client:
        yield client, bearer_headers(services, "technologist")


def new_order(services: Services, **fields: Any) -> Order:
    body = {"patient_id": "P1", "patient_name": "DOE^JANE", "modality": "CT", "station_ae_title": "CT1", **fields}
    return services.orders.create(body, created_by="test")


def creation(order: Order | None = None, **changes: Any) -> Dataset:
    """An N-CREATE attribute list as a modality sends it (PS3.4 Table F.7.2-1)."""
    item = Dataset()
    item.StudyInstanceUID = order.study_instance_uid if order else generate_uid()
    item.AccessionNumber = order.accession_number if order else ""
    item.RequestedProcedureID = order.order_number if order else ""
    item.ScheduledProcedureStepID = order.order_number if order else ""
    item.ScheduledProcedureStepDescription = ""
    item.ReferencedStudySequence = []
    ds = Dataset()
    ds.ScheduledStepAttributesSequence = [item]
    ds.PatientName = order.patient_name if order else "WALK^IN"
    ds.PatientID = order.patient_id if order else "P-WALK"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.ReferencedPatientSequence = []
    ds.PerformedProcedureStepID = "PPS-1"
    ds.PerformedStationAETitle = "CT1"
    ds.PerformedStationName = ""
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate = "20300506"
    ds.PerformedProcedureStepStartTime = "091000"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepDescription = "CT chest"
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = []
    ds.PerformedProcedureStepEndDate = None
    ds.PerformedProcedureStepEndTime = None
    ds.Modality = "CT"
    ds.StudyID = "1"
    ds.PerformedProtocolCodeSequence = []
    ds.PerformedSeriesSequence = []
    for keyword, value in changes.items():
        if value is ...:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def completion(status: str = "COMPLETED", series: int = 2) -> tuple[Dataset, list[tuple[str, list[str]]]]:
    """An N-SET modification list ending the step, with `series` performed series of 3 images."""
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20300506"
    ds.PerformedProcedureStepEndTime = "093000"
    performed = []
    ds.PerformedSeriesSequence = []
    for number in range(series):
        item = Dataset()
        item.SeriesInstanceUID = generate_uid()
        item.SeriesDescription = f"series {number + 1}"
        item.PerformingPhysicianName = "TECH^ANNA"
        item.OperatorsName = "OP^ONE"
        item.ProtocolName = "CHEST"
        item.RetrieveAETitle = ""
        item.ReferencedImageSequence = []
        for _ in range(3):
            image = Dataset()
            image.ReferencedSOPClassUID = CTImageStorage
            image.ReferencedSOPInstanceUID = generate_uid()
            item.ReferencedImageSequence.append(image)
        item.ReferencedNonImageCompositeSOPInstanceSequence = []
        ds.PerformedSeriesSequence.append(item)
        performed.append((str(item.SeriesInstanceUID), [str(i.ReferencedSOPInstanceUID) for i in item.ReferencedImageSequence]))
    return ds, performed


def create(assoc: Association, ds: Dataset, uid: str | None = None) -> tuple[int, str]:
    uid = uid or generate_uid()
    status, _ = assoc.send_n_create(ds, ModalityPerformedProcedureStep, uid)
    return int(status.Status), uid


def set_step(assoc: Association, ds: Dataset, uid: str) -> Dataset:
    status, _ = assoc.send_n_set(ds, ModalityPerformedProcedureStep, uid)
    return status


def moves(services: Services, order: Order) -> list[tuple[str | None, str, str]]:
    return [(c.from_status, c.to_status, c.changed_by) for c in services.orders.history(order.pk)]


def test_in_progress_then_completed_moves_the_order(
    services: Services, mpps: Association, api: tuple[TestClient, dict[str, str]]
) -> None:
    order = new_order(services)
    status, uid = create(mpps, creation(order))
    assert status == SUCCESS
    assert services.orders.get(order.pk).status == "IN_PROGRESS"
    by = f"AE:{CALLING_AE}"
    assert moves(services, order) == [(None, "ORDERED", "test"), ("ORDERED", "SCHEDULED", by),
                                      ("SCHEDULED", "IN_PROGRESS", by)]
    # An intermediate N-SET (still IN PROGRESS) changes nothing of the order.
    still = Dataset()
    still.PerformedProcedureStepDescription = "CT chest and abdomen"
    assert int(set_step(mpps, still, uid).Status) == SUCCESS
    assert services.orders.get(order.pk).status == "IN_PROGRESS"
    done, performed = completion()
    assert int(set_step(mpps, done, uid).Status) == SUCCESS
    assert services.orders.get(order.pk).status == "COMPLETED"
    assert moves(services, order)[-1] == ("IN_PROGRESS", "COMPLETED", by)

    client, headers = api
    steps = client.get(f"/api/orders/{order.pk}/performed-steps", headers=headers).json()
    assert len(steps) == 1
    step = steps[0]
    assert (step["sop_instance_uid"], step["status"], step["order_number"]) == (uid, "COMPLETED", order.order_number)
    assert (step["study_instance_uid"], step["accession_number"]) == (order.study_instance_uid, order.accession_number)
    assert [(s["series_instance_uid"], s["instances"]) for s in step["performed_series"]] == performed
    assert step["performed_series"][0]["protocol_name"] == "CHEST"
    # Start and end are Paris wall-clock times: 09:10 and 09:30 CEST are 07:10 and 07:30 UTC.
    assert step["started_at"] == datetime(2030, 5, 6, 7, 10, tzinfo=UTC).isoformat()
    assert step["ended_at"] == datetime(2030, 5, 6, 7, 30, tzinfo=UTC).isoformat()
    full = client.get(f"/api/performed-steps/{uid}", headers=headers).json()
    assert full["attributes"]["00400254"]["Value"] == ["CT chest and abdomen"]  # the N-SET's change kept
    assert full["attributes"]["00400252"]["Value"] == ["COMPLETED"]

    # PS3.4 F.7.2.2.2: a completed step may no longer be updated.
    again = set_step(mpps, still, uid)
    assert (int(again.Status), int(again.ErrorID)) == (PROCESSING_FAILURE, 0xA710)
    assert "may no longer be updated" in again.ErrorComment
    assert services.performed_steps.get(uid).status == "COMPLETED"


def test_discontinued_step_discontinues_the_order(services: Services, mpps: Association) -> None:
    order = new_order(services)
    services.orders.change_status(order.pk, "SCHEDULED", changed_by="desk")
    status, uid = create(mpps, creation(order))
    assert status == SUCCESS
    assert [m[1] for m in moves(services, order)] == ["ORDERED", "SCHEDULED", "IN_PROGRESS"]
    stopped, _ = completion("DISCONTINUED", series=0)
    assert int(set_step(mpps, stopped, uid).Status) == SUCCESS
    assert services.orders.get(order.pk).status == "DISCONTINUED"
    assert int(set_step(mpps, completion()[0], uid).Status) == PROCESSING_FAILURE


def test_steps_are_linked_by_accession_or_kept_unlinked(
    services: Services, mpps: Association, api: tuple[TestClient, dict[str, str]]
) -> None:
    order = new_order(services)
    by_accession = creation(order)
    by_accession.ScheduledStepAttributesSequence[0].StudyInstanceUID = generate_uid()  # the modality's own
    by_accession.ScheduledStepAttributesSequence[0].RequestedProcedureID = ""
    status, linked = create(mpps, by_accession)
    assert status == SUCCESS and services.orders.get(order.pk).status == "IN_PROGRESS"
    status, walk_in = create(mpps, creation(None))
    assert status == SUCCESS  # an unscheduled exam: kept, answered with success
    assert int(set_step(mpps, completion()[0], walk_in).Status) == SUCCESS
    # A closed order does not move, and the step is recorded all the same.
    cancelled = new_order(services, patient_id="P2")
    services.orders.cancel(cancelled.pk, changed_by="desk")
    status, late = create(mpps, creation(cancelled))
    assert status == SUCCESS and services.orders.get(cancelled.pk).status == "CANCELLED"

    client, headers = api
    unlinked = client.get("/api/performed-steps?unlinked=true", headers=headers).json()
    assert [(s["sop_instance_uid"], s["order_id"], s["status"]) for s in unlinked] == [(walk_in, None, "COMPLETED")]
    everything = {s["sop_instance_uid"]: s["order_id"] for s in client.get("/api/performed-steps", headers=headers).json()}
    assert everything == {linked: order.pk, walk_in: None, late: cancelled.pk}
    assert client.get("/api/performed-steps?unlinked=maybe", headers=headers).status_code == 400
    assert client.get(f"/api/performed-steps/{generate_uid()}", headers=headers).status_code == 404
    provider = bearer_headers(services, "provider", provider_name="DOC^X")
    assert client.get("/api/performed-steps", headers=provider).status_code == 403


REFUSALS: list[tuple[str, dict[str, Any], int]] = [
    ("no station AE title", {"PerformedStationAETitle": ...}, MISSING),
    ("no scheduled step attributes", {"ScheduledStepAttributesSequence": ...}, MISSING),
    ("empty modality", {"Modality": ""}, MISSING_VALUE),
    ("empty step sequence", {"ScheduledStepAttributesSequence": []}, MISSING_VALUE),
    ("created COMPLETED", {"PerformedProcedureStepStatus": "COMPLETED"}, INVALID_VALUE),
    ("unknown status", {"PerformedProcedureStepStatus": "STARTED"}, INVALID_VALUE),
]


def test_refusals_have_their_status(services: Services, listener: DicomServer, mpps: Association) -> None:
    order = new_order(services)
    for label, changes, expected in REFUSALS:
        assert create(mpps, creation(order, **changes))[0] == expected, label
    # Type 1 inside the Scheduled Step Attributes item as at the top level: empty 0x0121, absent 0x0120.
    empty_study = creation(order)
    empty_study.ScheduledStepAttributesSequence[0].StudyInstanceUID = ""
    assert create(mpps, empty_study)[0] == MISSING_VALUE
    no_study = creation(order)
    del no_study.ScheduledStepAttributesSequence[0].StudyInstanceUID
    assert create(mpps, no_study)[0] == MISSING
    second_without = creation(order)
    second_without.ScheduledStepAttributesSequence.append(Dataset())  # every item needs one
    second_without.ScheduledStepAttributesSequence[1].AccessionNumber = order.accession_number
    assert create(mpps, second_without)[0] == MISSING
    assert services.orders.get(order.pk).status == "ORDERED"  # nothing refused moved it
    status, uid = create(mpps, creation(order))
    assert status == SUCCESS
    assert create(mpps, creation(order), uid)[0] == DUPLICATE
    assert int(set_step(mpps, completion()[0], generate_uid()).Status) == NO_SUCH_INSTANCE
    odd, _ = completion("FINISHED")
    assert int(set_step(mpps, odd, uid).Status) == INVALID_VALUE
    assert services.performed_steps.get(uid).status == "IN PROGRESS"
    assert echo_status(listener.port) == SUCCESS
    services.audit.flush()
    failures = services.audit.search(AuditFilter(action="order", outcome="failure", limit=50))
    assert {e["status"] for e in failures} == {MISSING, MISSING_VALUE, INVALID_VALUE, DUPLICATE, NO_SUCH_INSTANCE}


def test_mpps_needs_store_access(services: Services) -> None:
    """Reporting a performed step is a write: AEs with store (or all) access may, query-only may not."""
    services.remote_aes.add(RemoteAE("CT_SCANNER", "127.0.0.1", 104, access="store"))
    services.remote_aes.add(RemoteAE("VIEWER", "127.0.0.1", 104, access="query"))
    order = new_order(services)
    with running_listener(services, dicom_allowlist=True) as server:
        with association(server.port, [ModalityPerformedProcedureStep], ae_title="VIEWER") as assoc:
            assert create(assoc, creation(order))[0] == NOT_AUTHORIZED
        assert services.orders.get(order.pk).status == "ORDERED"
        with association(server.port, [ModalityPerformedProcedureStep], ae_title="CT_SCANNER") as assoc:
            status, uid = create(assoc, creation(order))
            assert status == SUCCESS
            assert int(set_step(assoc, completion()[0], uid).Status) == SUCCESS
    assert services.orders.get(order.pk).status == "COMPLETED"
    services.audit.flush()
    events = services.audit.search(AuditFilter(action="order", actor="AE:CT_SCANNER"))
    assert sorted(e["outcome"] for e in events) == ["success", "success"]
    assert all(e["patient_id"] == "P1" and e["study_uid"] == order.study_instance_uid for e in events)
