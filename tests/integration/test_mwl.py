"""Modality Worklist C-FIND on both backends: dcmtk's findscu -W and pynetdicom query the
archive, and dcmtk's wlmscpfs answers the same queries from worklist files written here from
the same orders; the answers are compared attribute by attribute. Also: which orders are listed,
time zones, cancel, access, audit and bad identifiers."""

from __future__ import annotations

import json
import os
import subprocess
import time
import warnings
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.association import Association
from pynetdicom.sop_class import ModalityWorklistInformationFind as WorklistFind

from pacs.dimse.server import DicomServer
from pacs.index.audit import AuditFilter
from pacs.index.orders import Order
from pacs.index.remote_aes import RemoteAE
from pacs.services import Services
from tests.conftest import BACKENDS, make_settings
from tests.support.dimse import DCMTK, association, dcmtk_ok, echo_status, wait_for_port
from tests.support.processes import stop_process
from tests.support.s3server import free_port

ZONE = "Europe/Paris"
PENDING, SUCCESS, CANCEL, IDENTIFIER_MISMATCH, NOT_AUTHORIZED = 0xFF00, 0x0000, 0xFE00, 0xA900, 0x0124
WL_AE = "WLFILES"

# Orders in the worklist (names in upper case: wlmscpfs matches case-sensitively).
ORDERS: dict[str, dict[str, Any]] = {
    "jane": {"patient_id": "P1", "patient_name": "DOE^JANE", "modality": "CT", "station_ae_title": "CT1",
             "scheduled_at": "2030-05-06T07:08:00Z", "performing_physician": "TECH^ANNA", "ordering_provider": "DOC^OWN",
             "procedure_code": "CTCHEST", "procedure_description": "CT chest", "location": "ROOM 1",
             "contrast_agent": "IODINE", "patient_birth_date": "19700203", "patient_sex": "F", "priority": "STAT",
             "body_part": "CHEST", "duration_minutes": 30},
    "john": {"patient_id": "P2", "patient_name": "DOE^JOHN", "modality": "CT", "station_ae_title": "CT1",
             "scheduled_at": "2030-05-06T13:30:00Z", "patient_sex": "M", "ordering_provider": "DOC^OTHER"},
    "richard": {"patient_id": "P3", "patient_name": "ROE^RICHARD", "modality": "MR", "station_ae_title": "MR1",
                "scheduled_at": "2030-05-07T08:00:00Z", "priority": "URGENT", "procedure_description": "MR knee"},
    "night": {"patient_id": "P4", "patient_name": "LATE^NIGHT", "modality": "CT", "station_ae_title": "CT1",
              "scheduled_at": "2030-05-06T22:30:00Z"},  # 00:30 on the 7th in Paris
    "anna": {"patient_id": "P5", "patient_name": "SMITH^ANNA", "modality": "US", "station_ae_title": "US1",
             "scheduled_at": "2030-05-08T09:15:00Z", "patient_sex": "F"},
}

STEP_KEYS = ("ScheduledStationAETitle", "Modality", "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime",
             "ScheduledPerformingPhysicianName", "ScheduledProcedureStepDescription", "ScheduledProcedureStepID",
             "ScheduledProcedureStepLocation", "RequestedContrastAgent", "ScheduledProcedureStepStatus")
TOP_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "ReferringPhysicianName",
            "RequestingPhysician", "StudyInstanceUID", "RequestedProcedureDescription", "RequestedProcedureID",
            "RequestedProcedurePriority", "PatientWeight", "MedicalAlerts")
CODE_KEYS = ("CodeValue", "CodingSchemeDesignator", "CodeMeaning")


@pytest.fixture(params=BACKENDS)
def services(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Services]:
    """The archive with worklist times in Paris time (the conftest `services`, one setting more)."""
    for settings in make_settings(request.param, tmp_path, request, dicom_timezone=ZONE):
        built = Services.build(settings)
        try:
            yield built
        finally:
            built.close()


@pytest.fixture
def orders(services: Services) -> dict[str, Order]:
    made = {name: services.orders.create(body, created_by="test") for name, body in ORDERS.items()}
    service = services.orders
    service.change_status(made["john"].pk, "SCHEDULED", changed_by="test")
    for status in ("SCHEDULED", "IN_PROGRESS"):
        service.change_status(made["richard"].pk, status, changed_by="test")
    made = {name: service.get(order.pk) for name, order in made.items()}
    # Not in the worklist: closed orders.
    for status in ("CANCELLED", "DISCONTINUED"):
        closed = service.create({**ORDERS["jane"], "patient_id": f"X-{status}"}, created_by="test")
        service.change_status(closed.pk, status, changed_by="test")
    return made


@pytest.fixture
def finder(listener: DicomServer) -> Iterator[Association]:
    with association(listener.port, [WorklistFind]) as assoc:
        yield assoc


# ---- the reference: wlmscpfs over worklist files written from the same orders --------------------


def worklist_file(order: Order) -> Dataset:
    """The worklist item an order should be, written independently of the archive's code."""
    assert order.scheduled_at is not None
    start = order.scheduled_at.astimezone(ZoneInfo(ZONE))
    ds = Dataset()
    for keyword, value in {
        "PatientName": order.patient_name, "PatientID": order.patient_id, "PatientBirthDate": order.patient_birth_date,
        "PatientSex": order.patient_sex, "AccessionNumber": order.accession_number,
        "ReferringPhysicianName": order.ordering_provider, "RequestingPhysician": order.ordering_provider,
        "StudyInstanceUID": order.study_instance_uid, "RequestedProcedureDescription": order.procedure_description,
        "RequestedProcedureID": order.order_number,
        "RequestedProcedurePriority": {"URGENT": "HIGH"}.get(order.priority, order.priority),
    }.items():
        if value:
            setattr(ds, keyword, value)
    step = Dataset()
    for keyword, value in {
        "ScheduledStationAETitle": order.station_ae_title, "Modality": order.modality,
        "ScheduledProcedureStepStartDate": start.strftime("%Y%m%d"),
        "ScheduledProcedureStepStartTime": start.strftime("%H%M%S"),
        "ScheduledPerformingPhysicianName": order.performing_physician,
        "ScheduledProcedureStepDescription": order.procedure_description,
        "ScheduledProcedureStepID": order.order_number, "ScheduledProcedureStepLocation": order.location,
        "RequestedContrastAgent": order.contrast_agent,
        "ScheduledProcedureStepStatus": "STARTED" if order.status == "IN_PROGRESS" else "SCHEDULED",
    }.items():
        if value:
            setattr(step, keyword, value)
    if order.duration_minutes:
        end = start + timedelta(minutes=order.duration_minutes)
        step.ScheduledProcedureStepEndDate, step.ScheduledProcedureStepEndTime = end.strftime("%Y%m%d"), end.strftime("%H%M%S")
    if order.procedure_code:
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator = order.procedure_code, "99MINIPACS"
        code.CodeMeaning = order.procedure_description
        ds.RequestedProcedureCodeSequence = [code]
        step.ScheduledProtocolCodeSequence = [code]
    ds.ScheduledProcedureStepSequence = [step]
    return ds


@pytest.fixture
def wlmscpfs(orders: dict[str, Order], tmp_path: Path) -> Iterator[int]:
    """dcmtk's worklist SCP serving one .wl file per open order; yields its port."""
    folder = tmp_path / "worklists" / WL_AE
    folder.mkdir(parents=True)
    (folder / "lockfile").touch()
    for name, order in orders.items():
        ds = worklist_file(order)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(folder / f"{name}.wl", enforce_file_format=False)
    port = free_port()
    with open(tmp_path / "wlmscpfs.log", "wb") as log:
        process = subprocess.Popen(
            [str(DCMTK / "wlmscpfs"), "-dfr", "-dfp", str(folder.parent), str(port)],
            env={**os.environ, "TCP_NODELAY": "1"}, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(port, process)
            yield port
        finally:
            stop_process(process, timeout=10)


# ---- queries, as findscu -k arguments -------------------------------------------------------------


def query_keys(top: dict[str, str] | None = None, step: dict[str, str] | None = None) -> list[str]:
    """findscu -k arguments: the matching keys given, and every other return key empty."""
    top, step = top or {}, step or {}
    keys = [f"{k}={top.get(k, '')}" for k in TOP_KEYS]
    keys += [f"ScheduledProcedureStepSequence[0].{k}={step.get(k, '')}" for k in STEP_KEYS]
    keys += [f"RequestedProcedureCodeSequence[0].{k}=" for k in CODE_KEYS]
    return [arg for key in keys for arg in ("-k", key)]


QUERIES: list[tuple[str, dict[str, Any], dict[str, str], set[str]]] = [
    ("station and day", {}, {"ScheduledStationAETitle": "CT1", "ScheduledProcedureStepStartDate": "20300506"},
     {"jane", "john"}),
    ("name wildcard", {"PatientName": "DOE*"}, {}, {"jane", "john"}),
    ("name with ?", {"PatientName": "ROE^RICH?RD"}, {}, {"richard"}),
    ("day range and modality", {}, {"ScheduledProcedureStepStartDate": "20300506-20300507", "Modality": "CT"},
     {"jane", "john", "night"}),
    ("open-ended day range", {}, {"ScheduledProcedureStepStartDate": "20300507-"}, {"richard", "night", "anna"}),
    # One day: separate (PS3.4 C.2.2.2.5) and combined date-time matching (which wlmscpfs does) agree.
    ("time of day range", {}, {"ScheduledProcedureStepStartDate": "20300506",
                               "ScheduledProcedureStepStartTime": "0800-1000"}, {"jane"}),
    ("day and time open range", {}, {"ScheduledProcedureStepStartDate": "20300507",
                                     "ScheduledProcedureStepStartTime": "0900-"}, {"richard"}),
    ("performing physician", {}, {"ScheduledPerformingPhysicianName": "TECH^ANNA"}, {"jane"}),
    ("patient ID", {"PatientID": "P5"}, {}, {"anna"}),
    ("sex", {"PatientSex": "F"}, {}, {"jane", "anna"}),
    ("priority", {"RequestedProcedurePriority": "HIGH"}, {}, {"richard"}),
    ("referring physician", {"ReferringPhysicianName": "DOC^OWN"}, {}, {"jane"}),
    ("universal", {}, {}, {"jane", "john", "richard", "night", "anna"}),
]


def findscu(port: int, called: str, args: list[str], folder: Path) -> list[Dataset]:
    folder.mkdir(parents=True)
    dcmtk_ok("findscu", "-W", "-aec", called, *args, "-X", "-od", folder, "127.0.0.1", port)
    return [pydicom.dcmread(p, force=True) for p in sorted(folder.glob("rsp*.dcm"))]


def comparable(ds: Dataset) -> dict[str, Any]:
    """An answer as keyword -> text (sequences: lists of such dicts), without the character set
    and without empty values: for a requested key with no value we send it empty (PS3.4
    C.2.2.1.2, checked in test_requested_keys_come_back_even_empty), while wlmscpfs leaves it
    out inside sequence items and leaves out sequences without items."""
    out: dict[str, Any] = {}
    for element in ds:
        if element.tag.group == 0x0002 or element.keyword == "SpecificCharacterSet":
            continue
        if element.VR == "SQ":
            if element.value:
                out[element.keyword] = [comparable(item) for item in element.value]
        elif element.value not in (None, ""):
            out[element.keyword] = str(element.value)
    return out


def by_accession(answers: list[Dataset]) -> dict[str, dict[str, Any]]:
    return {str(a.AccessionNumber): comparable(a) for a in answers}


def pynetdicom_find(assoc: Association, ds: Dataset) -> tuple[list[Dataset], int]:
    answers, final = [], -1
    for status, identifier in assoc.send_c_find(ds, WorklistFind):
        if int(status.Status) == PENDING:
            answers.append(identifier)
        else:
            final = int(status.Status)
    return answers, final


def identifier_of(args: list[str]) -> Dataset:
    """The pynetdicom identifier for the same findscu -k arguments."""
    ds, step, code = Dataset(), Dataset(), Dataset()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Invalid value for VR", category=UserWarning)
        for key in args[1::2]:
            path, _, value = key.partition("=")
            target = step if path.startswith("ScheduledProcedureStepSequence") else code if "Code" in path else ds
            setattr(target, path.rpartition(".")[2], value)
    ds.ScheduledProcedureStepSequence = [step]
    ds.RequestedProcedureCodeSequence = [code]
    return ds


def test_findscu_pynetdicom_and_wlmscpfs_give_the_same_answers(
    listener: DicomServer, finder: Association, wlmscpfs: int, orders: dict[str, Order], tmp_path: Path
) -> None:
    names = {order.accession_number: name for name, order in orders.items()}
    for index, (label, top, step, expected) in enumerate(QUERIES):
        args = query_keys(top, step)
        ours = findscu(listener.port, "MINIPACS", args, tmp_path / f"ours-{index}")
        reference = findscu(wlmscpfs, WL_AE, args, tmp_path / f"wlm-{index}")
        assert {names[str(a.AccessionNumber)] for a in ours} == expected, label
        assert by_accession(ours) == by_accession(reference), label
        answers, final = pynetdicom_find(finder, identifier_of(args))
        assert final == SUCCESS, label
        assert by_accession(answers) == by_accession(ours), label
        assert all(a.SpecificCharacterSet == "ISO_IR 192" for a in answers)


def test_empty_sequences_are_expanded_like_wlmscpfs(
    listener: DicomServer, wlmscpfs: int, orders: dict[str, Order], tmp_path: Path
) -> None:
    args = ["-k", f"AccessionNumber={orders['jane'].accession_number}", "-k", "ScheduledProcedureStepSequence",
            "-k", "RequestedProcedureCodeSequence"]
    ours = findscu(listener.port, "MINIPACS", args, tmp_path / "ours")
    reference = findscu(wlmscpfs, WL_AE, args, tmp_path / "wlm")

    assert len(ours) == len(reference) == 1
    assert comparable(ours[0]) == comparable(reference[0])
    step = ours[0].ScheduledProcedureStepSequence[0]
    assert (step.ScheduledProcedureStepStartDate, step.ScheduledProcedureStepStartTime) == ("20300506", "090800")
    assert (step.ScheduledProcedureStepEndDate, step.ScheduledProcedureStepEndTime) == ("20300506", "093800")


def test_requested_keys_come_back_even_empty(orders: dict[str, Order], finder: Association) -> None:
    """Exactly the requested keys (PS3.4 C.2.2.1.2), empty when the order has no value."""
    (answer,), final = pynetdicom_find(finder, identifier_of(query_keys({"PatientID": "P2"})))
    assert final == SUCCESS
    top = {e.keyword for e in answer} - {"SpecificCharacterSet"}
    assert top == {*TOP_KEYS, "ScheduledProcedureStepSequence", "RequestedProcedureCodeSequence"}
    assert {e.keyword for e in answer.ScheduledProcedureStepSequence[0]} == set(STEP_KEYS)
    assert all(answer[k].is_empty for k in ("PatientWeight", "MedicalAlerts", "PatientBirthDate"))
    assert len(answer.RequestedProcedureCodeSequence) == 0  # no procedure code: a sequence without items
    assert answer.ScheduledProcedureStepSequence[0].ScheduledProcedureStepLocation == ""


def test_every_transfer_syntax_gets_the_same_answers(listener: DicomServer, orders: dict[str, Order]) -> None:
    """Little endian answers go out pre-encoded, the others through pydicom: the same either way."""
    query = identifier_of(query_keys(step={"ScheduledProcedureStepStartDate": "20300506-20300508"}))
    found = {}
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian):
        with association(listener.port, [(WorklistFind, [syntax])]) as assoc:
            assert assoc.accepted_contexts[0].transfer_syntax[0] == syntax
            answers, final = pynetdicom_find(assoc, query)
        assert final == SUCCESS
        found[syntax] = by_accession(answers)
    assert len(found[ExplicitVRLittleEndian]) == 5
    assert all(answers == found[ExplicitVRLittleEndian] for answers in found.values())


def test_which_orders_are_listed(services: Services, orders: dict[str, Order], finder: Association) -> None:
    """Every open order; one with no time yet only when the date is left empty; closed ones never."""
    unscheduled = services.orders.create({"patient_id": "P9", "patient_name": "NOT^YET", "modality": "CR"},
                                         created_by="test")
    universal = Dataset()
    universal.AccessionNumber = ""
    universal.ScheduledProcedureStepSequence = [Dataset()]
    universal.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate = ""
    universal.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus = ""
    answers, _ = pynetdicom_find(finder, universal)
    listed = {str(a.AccessionNumber): a for a in answers}
    assert set(listed) == {o.accession_number for o in orders.values()} | {unscheduled.accession_number}
    statuses = {a: listed[a].ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus for a in listed}
    assert statuses[orders["richard"].accession_number] == "STARTED"
    assert statuses[unscheduled.accession_number] == "SCHEDULED"
    assert listed[unscheduled.accession_number].ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate == ""
    universal.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate = "20000101-20991231"
    dated, _ = pynetdicom_find(finder, universal)
    assert {str(a.AccessionNumber) for a in dated} == {o.accession_number for o in orders.values()}
    # Completing an order takes it off the worklist.
    services.orders.change_status(orders["richard"].pk, "COMPLETED", changed_by="test")
    after, _ = pynetdicom_find(finder, universal)
    assert orders["richard"].accession_number not in {str(a.AccessionNumber) for a in after}


def test_non_ascii_names_match_case_insensitively(services: Services, finder: Association) -> None:
    made = services.orders.create({"patient_id": "P7", "patient_name": "Müller^Jürgen", "modality": "MR"},
                                  created_by="test")
    for pattern in ("müller*", "MÜLLER^JÜRGEN", "*jürgen"):
        query = Dataset()
        query.PatientName = pattern
        query.AccessionNumber = ""
        answers, final = pynetdicom_find(finder, query)
        assert final == SUCCESS
        assert [(str(a.PatientName), a.AccessionNumber) for a in answers] == [("Müller^Jürgen", made.accession_number)]


BAD_IDENTIFIERS = [
    ("reversed date range", {}, {"ScheduledProcedureStepStartDate": "20300507-20300506"}),
    ("impossible date", {}, {"ScheduledProcedureStepStartDate": "20301345"}),
    ("malformed time", {}, {"ScheduledProcedureStepStartTime": "2561"}),
    ("not a UID", {"StudyInstanceUID": "1.2.abc"}, {}),
    ("control character", {"PatientID": "P\x01"}, {}),
]


def test_bad_identifiers_are_refused_with_a900(listener: DicomServer, finder: Association,
                                               orders: dict[str, Order]) -> None:
    for label, top, step in BAD_IDENTIFIERS:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Invalid value for VR", category=UserWarning)
            ds = identifier_of(query_keys(top, step))
        answers, final = pynetdicom_find(finder, ds)
        assert (answers, hex(final)) == ([], hex(IDENTIFIER_MISMATCH)), label
    two_items = Dataset()
    two_items.ScheduledProcedureStepSequence = [Dataset(), Dataset()]
    assert pynetdicom_find(finder, two_items) == ([], IDENTIFIER_MISMATCH)
    result = dcmtk_ok("findscu", "-v", "-W", "-aec", "MINIPACS", "-k",
                      "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=2030", "127.0.0.1",
                      listener.port)
    assert "Error: DataSetDoesNotMatchSOPClass" in result.stderr + result.stdout
    assert len(pynetdicom_find(finder, identifier_of(query_keys()))[0]) == len(orders)  # still serving
    assert echo_status(listener.port) == SUCCESS


def test_c_cancel_stops_the_answers(services: Services, listener: DicomServer, finder: Association,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(12):
        services.orders.create({"patient_id": f"MANY{i}", "patient_name": "MANY^PATIENTS", "modality": "CT"},
                               created_by="test")
    real = services.worklist.answer
    made: list[int] = []

    def gated(*args: Any) -> Dataset:
        # The second answer waits for the C-CANCEL: the test does not race the listener.
        made.append(1)
        if len(made) == 2:
            deadline = time.monotonic() + 10
            while not any(a.dimse.cancel_req for a in listener.ae.active_associations):
                assert time.monotonic() < deadline
                time.sleep(0.005)
        return real(*args)

    monkeypatch.setattr(services.worklist, "answer", gated)
    context = next(c for c in finder.accepted_contexts if c.abstract_syntax == WorklistFind)
    query = Dataset()
    query.PatientName = "MANY*"
    responses = finder.send_c_find(query, WorklistFind, msg_id=9)
    status, first = next(responses)
    assert int(status.Status) == PENDING and first is not None
    finder.send_c_cancel(9, context.context_id)
    rest = [(int(s.Status), ds) for s, ds in responses]
    assert rest[-1] == (CANCEL, None)
    assert 1 <= 1 + sum(1 for s, _ in rest if s == PENDING) < 12


def test_access_and_audit(services: Services, orders: dict[str, Order], tmp_path: Path) -> None:
    """The worklist is patient data: AEs need query access; every query is in the audit trail."""
    from tests.support.dimse import running_listener

    services.remote_aes.add(RemoteAE("CT_SCANNER", "127.0.0.1", 104, access="all"))
    services.remote_aes.add(RemoteAE("STORE_ONLY", "127.0.0.1", 104, access="store"))
    with running_listener(services, dicom_allowlist=True) as server:
        query = identifier_of(query_keys(step={"ScheduledStationAETitle": "CT1",
                                               "ScheduledProcedureStepStartDate": "20300506"}))
        with association(server.port, [WorklistFind], ae_title="CT_SCANNER") as assoc:
            answers, final = pynetdicom_find(assoc, query)
        assert final == SUCCESS and len(answers) == 2
        with association(server.port, [WorklistFind], ae_title="STORE_ONLY") as assoc:
            assert pynetdicom_find(assoc, query) == ([], NOT_AUTHORIZED)
    services.audit.flush()
    events = services.audit.search(AuditFilter(action="search"))
    granted = [e for e in events if e["actor"] == "AE:CT_SCANNER"]
    assert len(granted) == 1 and granted[0]["outcome"] == "success"
    detail = json.loads(granted[0]["detail"])
    assert detail["results"] == 2
    assert detail["worklist"]["ScheduledStationAETitle"] == "CT1"
    assert detail["worklist"]["ScheduledProcedureStepStartDate"] == "20300506"
    assert any(e["actor"] == "AE:STORE_ONLY" and e["outcome"] == "denied" for e in events)


def test_schedule_shown_in_the_configured_zone(orders: dict[str, Order], finder: Association) -> None:
    query = Dataset()
    query.AccessionNumber = orders["night"].accession_number
    query.ScheduledProcedureStepSequence = [Dataset()]
    query.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate = ""
    query.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime = ""
    (answer,), _ = pynetdicom_find(finder, query)
    step = answer.ScheduledProcedureStepSequence[0]
    local = datetime(2030, 5, 6, 22, 30, tzinfo=ZoneInfo("UTC")).astimezone(ZoneInfo(ZONE))
    assert (step.ScheduledProcedureStepStartDate, step.ScheduledProcedureStepStartTime) == (
        local.strftime("%Y%m%d"), local.strftime("%H%M%S")) == ("20300507", "003000")
