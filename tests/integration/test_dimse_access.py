"""Who may do what over DIMSE, on both backends: each calling AE's role and access against
C-ECHO, C-STORE, C-FIND, C-GET and C-MOVE (one table), the calling-AE allowlist, the audit
rows every operation and refusal leaves, and dcmtk peers meeting a refusal."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import build_role, evt
from pynetdicom.sop_class import CTImageStorage, Verification
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as StudyRootFind
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as StudyRootGet
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as StudyRootMove

from pacs.audit import trail
from pacs.dimse.server import DicomServer
from pacs.errors import NotFound
from pacs.index.audit import AuditFilter
from pacs.index.remote_aes import RemoteAE
from pacs.services import Services
from tests.support.dimse import (
    StoreSCP,
    association,
    dcmtk,
    echo_status,
    identifier,
    running_listener,
    scu,
    write_files,
)
from tests.support.factories import make_ct, make_series
from tests.support.storage_listing import blob_keys

OK, PENDING, REFUSED = 0x0000, 0xFF00, 0x0124  # 0x0124: Refused: Not Authorized (PS3.7 C.5)

# What each calling AE may do. Role and access None: an AE the archive does not know, let in with
# the allowlist off. The host and port of the known ones do not matter (they only call).
ACCESS_TABLE: list[tuple[str, str | None, str | None, int, int, int, int, int]] = [
    # calling AE     role            access   C-ECHO C-STORE  C-FIND   C-GET    C-MOVE
    ("TECH_ALL",     "technologist", "all",   OK,    OK,      OK,      OK,      OK),
    ("TECH_STORE",   "technologist", "store", OK,    OK,      REFUSED, REFUSED, REFUSED),
    ("TECH_QUERY",   "technologist", "query", OK,    REFUSED, OK,      OK,      OK),
    ("RADIOLOGIST",  "radiologist",  "all",   OK,    REFUSED, OK,      OK,      OK),  # the role reads only
    ("RADIO_STORE",  "radiologist",  "store", OK,    REFUSED, REFUSED, REFUSED, REFUSED),  # nothing left
    ("ADMIN_QUERY",  "admin",        "query", OK,    REFUSED, OK,      OK,      OK),
    ("STRANGER",     None,           None,    OK,    OK,      OK,      OK,      OK),
]


@dataclass
class Study:
    instances: list[Dataset]

    @property
    def uid(self) -> str:
        return str(self.instances[0].StudyInstanceUID)

    @property
    def sop_uids(self) -> set[str]:
        return {str(ds.SOPInstanceUID) for ds in self.instances}


@pytest.fixture
def study(services: Services, tmp_path: Path) -> Study:
    """Two instances of one study for patient PX, stored before any peer calls."""
    instances = make_series(2, size=16, PatientID="PX", PatientName="Access^Test")
    assert all(r.ok for r in services.ingest.store_files(write_files(instances, tmp_path / "seed")))
    return Study(instances)


def is_indexed(services: Services, ds: Dataset) -> bool:
    try:
        services.index.locate(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    except NotFound:
        return False
    return True


def register(services: Services, title: str, role: str, access: str) -> None:
    services.remote_aes.add(RemoteAE(title, "127.0.0.1", 104, role, access))


# ---- the five services, as one calling AE -------------------------------------------------


def c_store(port: int, title: str, ds: Dataset) -> int:
    with association(port, [CTImageStorage], ae_title=title) as assoc:
        return int(assoc.send_c_store(ds).Status)


def c_find(port: int, title: str, study_uid: str) -> tuple[int, list[str]]:
    """Final status and the StudyInstanceUIDs of the pending answers."""
    query = identifier("STUDY", StudyInstanceUID=study_uid, PatientID="")
    with association(port, [StudyRootFind], ae_title=title) as assoc:
        responses = list(assoc.send_c_find(query, StudyRootFind))
    *pending, (final, _) = responses
    answers = [answer for status, answer in pending if int(status.Status) == PENDING and answer is not None]
    assert len(answers) == len(pending)
    return int(final.Status), [str(answer.StudyInstanceUID) for answer in answers]


def c_get(port: int, title: str, study_uid: str) -> tuple[int, set[str]]:
    """Final status and the SOP Instance UIDs received on the C-GET association."""
    received: set[str] = set()

    def keep(event: Any) -> int:
        received.add(str(event.dataset.SOPInstanceUID))
        return OK

    query = identifier("STUDY", StudyInstanceUID=study_uid)
    with association(port, [CTImageStorage, StudyRootGet], ae_title=title,
                     ext_neg=[build_role(CTImageStorage, scp_role=True)],
                     evt_handlers=[(evt.EVT_C_STORE, keep)]) as assoc:
        *_, (final, _) = list(assoc.send_c_get(query, StudyRootGet))
    return int(final.Status), received


def c_move(port: int, title: str, study_uid: str, destination: str) -> int:
    query = identifier("STUDY", StudyInstanceUID=study_uid)
    with association(port, [StudyRootMove], ae_title=title) as assoc:
        *_, (final, _) = list(assoc.send_c_move(query, destination, StudyRootMove))
    return int(final.Status)


def take_received(receiver: StoreSCP) -> set[str]:
    """SOP Instance UIDs the receiver got since the last call (its files are removed)."""
    found = set(receiver.datasets())
    for path in receiver.files():
        path.unlink()
    return found


# ---- the table ------------------------------------------------------------------------------


def test_access_table(services: Services, receiver: StoreSCP, study: Study) -> None:
    for title, role, access, *_ in ACCESS_TABLE:
        if role is not None and access is not None:
            register(services, title, role, access)
    observed = []
    problems = []
    with running_listener(services) as server:  # allowlist off: the unknown caller is let in
        port = server.port
        for title, *_ in ACCESS_TABLE:
            echo = echo_status(port, ae_title=title)
            ct = make_ct(16, PatientID=f"NEW-{title}")
            keys_before = blob_keys(services)
            stored = c_store(port, title, ct)
            indexed = is_indexed(services, ct)
            if stored == OK and not indexed:
                problems.append(f"{title}: C-STORE succeeded but the instance is not indexed")
            if stored != OK and (indexed or blob_keys(services) != keys_before):
                problems.append(f"{title}: a refused C-STORE left an index row or a blob behind")
            found, matches = c_find(port, title, study.uid)
            if matches != ([study.uid] if found == OK else []):
                problems.append(f"{title}: C-FIND 0x{found:04X} answered {matches}")
            got, received = c_get(port, title, study.uid)
            if received != (study.sop_uids if got == OK else set()):
                problems.append(f"{title}: C-GET 0x{got:04X} delivered {sorted(received)}")
            moved = c_move(port, title, study.uid, receiver.ae_title)
            sent = take_received(receiver)
            if sent != (study.sop_uids if moved == OK else set()):
                problems.append(f"{title}: C-MOVE 0x{moved:04X} sent {sorted(sent)} to {receiver.ae_title}")
            observed.append((title, echo, stored, found, got, moved))
    assert observed == [(title, *outcomes) for title, _, _, *outcomes in ACCESS_TABLE]
    assert problems == []
    # Only the callers allowed to store added anything: the seeded study and one CT each.
    storers = sum(1 for row in ACCESS_TABLE if row[4] == OK)
    assert services.index.counts() == {"patients": 1 + storers, "studies": 1 + storers,
                                       "series": 1 + storers, "instances": 2 + storers}


# ---- the calling-AE allowlist (on by default) -----------------------------------------------


def association_outcome(port: int, title: str) -> str:
    assoc = scu([Verification], ae_title=title).associate("127.0.0.1", port, ae_title="MINIPACS")
    if assoc.is_established:
        assoc.release()
        return "accepted"
    return "rejected" if assoc.is_rejected else "failed"


def test_allowlist_is_on_by_default_and_refuses_unknown_callers(services: Services) -> None:
    assert services.settings.dicom_allowlist is True  # nothing in the fixture's settings turns it on
    register(services, "KNOWN", "technologist", "all")
    register(services, "LOOKER", "technologist", "query")
    with running_listener(services, dicom_allowlist=True) as server:
        assert association_outcome(server.port, "STRANGER") == "rejected"
        assert association_outcome(server.port, "KNOWN") == "accepted"
        result = dcmtk("echoscu", "-v", "-aet", "STRANGER", "-aec", "MINIPACS", "127.0.0.1", server.port)
        assert result.returncode != 0
        assert "Association Rejected" in result.stdout + result.stderr
        result = dcmtk("echoscu", "-v", "-aet", "KNOWN", "-aec", "MINIPACS", "127.0.0.1", server.port)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Received Echo Response (Success)" in result.stdout + result.stderr

        # Admitted is not authorized: a known caller keeps its configured access.
        ct = make_ct(16)
        assert c_store(server.port, "LOOKER", ct) == REFUSED
        assert c_store(server.port, "KNOWN", make_ct(16)) == OK
        assert not is_indexed(services, ct)
    assert services.index.counts()["instances"] == 1


# ---- the audit trail ------------------------------------------------------------------------


@pytest.fixture
def audited(services: Services, receiver: StoreSCP) -> Iterator[DicomServer]:
    register(services, "AUDITED", "technologist", "all")
    register(services, "STOREONLY", "technologist", "store")
    register(services, "READONLY", "radiologist", "query")
    with running_listener(services, dicom_allowlist=True) as server:
        yield server


def audit_rows(services: Services, actor: str) -> list[dict[str, Any]]:
    assert services.audit.flush(), "the audit trail was not written in time"
    rows = services.audit.search(AuditFilter(actor=actor))
    return [{**row, "detail": json.loads(row["detail"])} for row in rows]


def test_audit_of_allowed_operations(
    services: Services, audited: DicomServer, receiver: StoreSCP, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Identical events fold within one write batch; a long batch window keeps the three C-STOREs
    # in one however slow the backend (flush() still writes at once).
    monkeypatch.setattr(trail, "_BATCH_SECONDS", 5.0)
    port = audited.port
    instances = make_series(3, size=16, PatientID="AUD-1", PatientName="Audit^Me")
    uid = str(instances[0].StudyInstanceUID)
    with association(port, [CTImageStorage], ae_title="AUDITED") as assoc:
        assert [int(assoc.send_c_store(ds).Status) for ds in instances] == [OK] * 3
    [store] = audit_rows(services, "AE:AUDITED")
    assert {k: store[k] for k in ("channel", "actor", "actor_role", "source", "action", "outcome", "status",
                                  "patient_id", "study_uid", "series_uid", "count")} == {
        "channel": "dimse", "actor": "AE:AUDITED", "actor_role": "technologist", "source": "127.0.0.1",
        "action": "store", "outcome": "success", "status": 0, "patient_id": "AUD-1", "study_uid": uid,
        "series_uid": str(instances[0].SeriesInstanceUID), "count": 3,  # three C-STOREs folded into one row
    }

    found, matches = c_find(port, "AUDITED", uid)
    assert (found, matches) == (OK, [uid])
    search = audit_rows(services, "AE:AUDITED")[0]
    assert (search["action"], search["outcome"], search["status"], search["count"]) == ("search", "success", 0, 1)
    assert search["detail"]["query"]["StudyInstanceUID"] == uid
    assert search["detail"]["query"]["QueryRetrieveLevel"] == "STUDY"
    assert search["detail"]["results"] == 1

    got, received = c_get(port, "AUDITED", uid)
    assert (got, len(received)) == (OK, 3)
    read = audit_rows(services, "AE:AUDITED")[0]
    assert (read["action"], read["outcome"], read["study_uid"], read["patient_id"]) == ("read", "success", uid, "AUD-1")
    assert read["detail"] == {"instances": 3}

    assert c_move(port, "AUDITED", uid, receiver.ae_title) == OK
    assert len(take_received(receiver)) == 3
    export = audit_rows(services, "AE:AUDITED")[0]
    assert (export["action"], export["outcome"], export["study_uid"], export["patient_id"]) == (
        "export", "success", uid, "AUD-1")
    assert export["detail"] == {"instances": 3, "destination": receiver.ae_title}

    # Newest first, one row per operation; the study and patient filters find them all.
    assert [r["action"] for r in audit_rows(services, "AE:AUDITED")] == ["export", "read", "search", "store"]
    by_study = services.audit.search(AuditFilter(study_uid=uid))
    assert [r["action"] for r in by_study] == ["export", "read", "store"]  # a search names no study
    assert [r["action"] for r in services.audit.search(AuditFilter(patient_id="AUD-1"))] == ["export", "read", "store"]


def test_audit_of_refusals(
    services: Services, audited: DicomServer, receiver: StoreSCP, study: Study
) -> None:
    port = audited.port
    assert c_find(port, "STOREONLY", study.uid) == (REFUSED, [])
    assert c_get(port, "STOREONLY", study.uid) == (REFUSED, set())
    assert c_move(port, "STOREONLY", study.uid, receiver.ae_title) == REFUSED
    assert c_store(port, "READONLY", make_ct(16)) == REFUSED
    assert take_received(receiver) == set()

    denied = audit_rows(services, "AE:STOREONLY")
    assert sorted((r["action"], r["outcome"], r["status"], r["actor_role"], r["channel"]) for r in denied) == [
        ("export", "denied", 292, "technologist", "dimse"),
        ("read", "denied", 292, "technologist", "dimse"),
        ("search", "denied", 292, "technologist", "dimse"),
    ]
    [store] = audit_rows(services, "AE:READONLY")
    assert (store["action"], store["outcome"], store["status"], store["actor_role"]) == (
        "store", "denied", 292, "radiologist")
    # The denial filter finds all four, and nothing was recorded as done.
    assert len(services.audit.search(AuditFilter(outcome="denied"))) == 4
    assert services.audit.search(AuditFilter(actor="AE:STOREONLY", outcome="success")) == []


# ---- dcmtk peers ----------------------------------------------------------------------------


def dimse_status(output: str, kind: str) -> int:
    """The DIMSE status of the last `kind` response (e.g. "C-STORE") in a dcmtk -d log."""
    tail = output.rsplit(f"Message Type                  : {kind} RSP", 1)[1]
    match = re.search(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})", tail)
    assert match, output
    return int(match.group(1), 16)


def test_dcmtk_peers_allowed_and_refused(services: Services, study: Study, tmp_path: Path) -> None:
    register(services, "LOOKER", "technologist", "query")
    register(services, "SENDER", "technologist", "store")
    [path] = write_files([make_ct(16, PatientID="DCMTK")], tmp_path / "out")
    counts = services.index.counts()
    with running_listener(services, dicom_allowlist=True) as server:
        # A query-only peer: storescu is told it is not authorized, and nothing is stored.
        result = dcmtk("storescu", "-d", "-aet", "LOOKER", "-aec", "MINIPACS", "127.0.0.1", server.port, path)
        output = result.stdout + result.stderr
        assert result.returncode != 0, output
        assert dimse_status(output, "C-STORE") == REFUSED, output
        assert "Refused: Not authorized" in output, output
        assert services.index.counts() == counts

        # ... while findscu from the same peer gets its answer.
        result = dcmtk("findscu", "-S", "-v", "-aet", "LOOKER", "-aec", "MINIPACS",
                       "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study.uid}", "-k", "PatientID",
                       "127.0.0.1", server.port)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert re.search(r"\(0010,0020\) LO \[PX\]", output), output

        # A store-only peer stores with storescu, but findscu is refused.
        result = dcmtk("storescu", "-v", "-aet", "SENDER", "-aec", "MINIPACS", "127.0.0.1", server.port, path)
        assert result.returncode == 0 and "Received Store Response (Success)" in result.stdout + result.stderr
        result = dcmtk("findscu", "-S", "-d", "-aet", "SENDER", "-aec", "MINIPACS",
                       "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study.uid}",
                       "127.0.0.1", server.port)
        output = result.stdout + result.stderr
        assert dimse_status(output, "C-FIND") == REFUSED, output
        assert "(0010,0020)" not in output.split("C-FIND RSP", 1)[-1]
    assert services.index.counts()["instances"] == counts["instances"] + 1
