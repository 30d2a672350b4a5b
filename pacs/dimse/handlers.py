"""Thin DIMSE handlers over the shared services. Each translates an event into a service call
and the outcome into a status; the handler-binding table is in server.py."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    Verification,
)

from pacs import errors
from pacs.audit.trail import Action, Outcome, store_events
from pacs.dimse import access, find_answers, status
from pacs.dimse.identifiers import PATIENT_ROOT, STUDY_ROOT, identifier_from_row, query_from_identifier, retrieve_query
from pacs.dimse.receiving import ReceivedFile
from pacs.dimse.transcoding import UNCOMPRESSED, StoreAssociation
from pacs.index.repository import StoredInstance
from pacs.ingest import Arrival
from pacs.security.policy import Operation
from pacs.services import Services

log = logging.getLogger("pacs.dimse")
_PATIENT_ROOT = {
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet,
}


def peer(event: Event) -> str:
    info = event.assoc.requestor
    return f"{info.ae_title}@{info.address}:{info.port}"


def set_nodelay(event: Event) -> None:
    """Without TCP_NODELAY every DIMSE exchange waits on a delayed ACK (~40 ms)."""
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def discard_partial_store(event: Event) -> None:
    """pynetdicom receives a C-STORE data set into a temp file and deletes it only after the
    handler ran: a peer that aborts or drops the connection mid-transfer would leave the partial
    file behind for good. The message still being decoded when the connection closes is that
    partial one (a complete message is detached from the DIMSE provider on arrival). P-DATA
    fragments are written by the DUL thread, which also fires this event, so no write races it."""
    message = getattr(event.assoc.dimse, "message", None)
    partial = getattr(message, "_data_set_file", None)
    path = getattr(message, "_data_set_path", None)
    if partial is None or path is None:
        return
    try:
        partial.close()
        Path(path).unlink(missing_ok=True)
    except OSError as exc:
        log.warning("cannot remove the partial C-STORE data set %s: %s", path, exc)
    else:
        log.warning("discarded a C-STORE data set cut short by %s", peer(event))


def end_silent_connection(event: Event) -> None:
    """A peer that connects and closes without an A-ASSOCIATE-RQ (a port probe, a health check)
    would otherwise keep pynetdicom's acceptor thread waiting for one until the ACSE timeout,
    holding one of the `dicom_max_associations` slots: a few probes lock real peers out. Wake
    the waiting acceptor with the "nothing came" value it gets on timeout, so it ends now."""
    assoc = event.assoc
    if assoc.is_acceptor and assoc.requestor.primitive is None and assoc.dul.to_user_queue.empty():
        assoc.dul.to_user_queue.put(None)  # type: ignore[arg-type]


def log_association(event: Event) -> None:
    outcome = {"EVT_ACCEPTED": "accepted", "EVT_REJECTED": "rejected", "EVT_RELEASED": "released",
               "EVT_ABORTED": "aborted"}.get(event.event.name, event.event.name)
    stored = getattr(event.assoc, _STORED_COUNT, 0)
    summary = f", {stored} instance(s) stored" if stored else ""
    log.info("association %s: %s (called %s)%s", outcome, peer(event), event.assoc.acceptor.ae_title, summary)


# Successful C-STOREs are counted on their association and logged once, when it ends: a line
# per instance would cost a modality's every image a log write and drown everything else.
_STORED_COUNT = "minipacs_stored_count"


def handle_echo(event: Event) -> int:
    log.info("C-ECHO from %s", peer(event))
    return status.SUCCESS


def handle_store(event: Event, services: Services) -> int:
    principal = access.permitted(event, services, Operation.STORE, Action.STORE)
    if principal is None:
        return access.NOT_AUTHORIZED  # pynetdicom removes the received temp file
    request = cast(C_STORE, event.request)
    announced = (str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID))
    received = getattr(request, "_dataset_file", None)
    if not isinstance(received, ReceivedFile):
        report = services.ingest.store_file(event.dataset_path, consume=True, announced=announced)
    else:
        try:
            arrival: Arrival | None = received.arrival()
        except OSError:  # the ingest syncs it itself, and words the failure
            arrival = None
        try:
            report = services.ingest.store_file(event.dataset_path, consume=True, announced=announced, arrival=arrival)
        finally:
            received.release()  # moved into storage or deleted: pynetdicom has nothing left to remove
    code = status.SUCCESS if report.error is None else status.status_for(report.error, service="store")
    for audit_event in store_events(principal, "dimse", [report], code):
        services.audit.record(audit_event)
    if report.error is not None:
        log.warning("C-STORE from %s refused (0x%04X): %s", peer(event), code, report.error)
        return code
    setattr(event.assoc, _STORED_COUNT, getattr(event.assoc, _STORED_COUNT, 0) + 1)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("C-STORE from %s: %s %s", peer(event), report.sop_instance_uid, report.outcome.value if report.outcome else "")
    return status.SUCCESS


# Transfer syntaxes whose answers are encoded straight from the rows (implicit VR or not).
_ANSWER_ENCODINGS: dict[str, bool] = {str(ImplicitVRLittleEndian): True, str(ExplicitVRLittleEndian): False}


def _model(event: Event) -> str:
    return PATIENT_ROOT if event.request.AffectedSOPClassUID in _PATIENT_ROOT else STUDY_ROOT


def handle_find(event: Event, services: Services) -> Iterator[tuple[int, Dataset | None]]:
    principal = access.permitted(event, services, Operation.SEARCH, Action.SEARCH)
    if principal is None:
        yield access.NOT_AUTHORIZED, None
        return
    try:
        identifier = event.identifier
        query = query_from_identifier(identifier, _model(event))
        rows = services.index.search(query)
    except errors.PacsError as exc:
        log.warning("C-FIND from %s refused: %s", peer(event), type(exc).__name__)  # the message may quote PHI
        code = status.status_for(exc, service="query")
        access.record(services, principal, Action.SEARCH, Outcome.FAILURE, code, detail={"reason": str(exc)[:200]})
        yield code, None
        return
    except Exception as exc:  # noqa: BLE001 - an identifier pydicom cannot decode, whatever it raises
        log.warning("C-FIND from %s: unreadable identifier (%s)", peer(event), type(exc).__name__)
        yield status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, None
        return
    log.info("C-FIND from %s at %s level: %d match(es)", peer(event), identifier.QueryRetrieveLevel, len(rows))
    access.record(
        services, principal, Action.SEARCH, Outcome.SUCCESS, status.SUCCESS,
        detail={"query": access.identifier_summary(identifier), "results": len(rows)},
    )
    ae_title = services.settings.ae_title
    syntax = str(event.context.transfer_syntax)
    plan = find_answers.plan_of(identifier) if syntax in _ANSWER_ENCODINGS else None
    for row in rows:
        if event.is_cancelled:
            yield status.CANCEL, None
            return
        answer = None
        if plan is not None:
            answer = find_answers.encoded_answer(plan, row, query.level, ae_title, implicit=_ANSWER_ENCODINGS[syntax])
        yield status.PENDING, answer if answer is not None else identifier_from_row(row, identifier, query.level, ae_title)


def _instances(event: Event, services: Services) -> list[StoredInstance]:
    return services.index.locate_matching(retrieve_query(event.identifier, _model(event)))


def handle_get(event: Event, services: Services) -> Iterator[Any]:
    principal = access.permitted(event, services, Operation.READ, Action.READ)
    if principal is None:
        yield 1  # pynetdicom reads a failure status only after a sub-operation count
        yield access.NOT_AUTHORIZED, None
        return
    try:
        stored = _instances(event, services)
    except errors.PacsError as exc:
        log.warning("C-GET from %s refused: %s", peer(event), type(exc).__name__)
        yield 1
        yield status.status_for(exc, service="query"), None
        return
    log.info("C-GET from %s: %d instance(s)", peer(event), len(stored))
    access.record_per_study(services, principal, Action.READ, stored)
    yield len(stored)
    yield from _send(event, services, stored)


def handle_move(event: Event, services: Services) -> Iterator[Any]:
    destination = services.remote_aes.find(str(event.move_destination).strip())
    if destination is None:
        log.warning("C-MOVE from %s to unknown destination %r", peer(event), event.move_destination)
        yield None, None  # pynetdicom answers 0xA801 Move Destination Unknown
        return
    principal = access.permitted(event, services, Operation.EXPORT, Action.EXPORT)
    try:
        if principal is None:
            raise errors.Forbidden("not authorized")
        stored = _instances(event, services)
    except errors.PacsError as exc:
        log.warning("C-MOVE from %s refused: %s", peer(event), type(exc).__name__)
        # pynetdicom reports a failure only after associating with the destination; keep that
        # association minimal (Verification only).
        yield destination.host, destination.port, {"contexts": [build_context(Verification)]}
        yield 1
        yield access.NOT_AUTHORIZED if principal is None else status.status_for(exc, service="query"), None
        return
    access.record_per_study(services, principal, Action.EXPORT, stored, destination=destination.ae_title)
    contexts = _contexts_for(stored)
    outbound = StoreAssociation()
    yield destination.host, destination.port, {
        "contexts": contexts,
        "ae_title": destination.ae_title,
        "evt_handlers": [(evt.EVT_CONN_OPEN, set_nodelay), (evt.EVT_ACCEPTED, outbound.capture)],
    }
    log.info("C-MOVE from %s to %s: %d instance(s)", peer(event), destination.ae_title, len(stored))
    yield len(stored)
    yield from _send(event, services, stored, outbound)


def _contexts_for(stored: list[StoredInstance]) -> list[Any]:
    """Per SOP class: a context for each other stored syntax (compressed syntaxes each alone,
    see NOTES), and one with Explicit/Implicit LE, which uncompressed data goes on and the others
    are converted for when the peer refuses their own (PS3.5 10.1: every SCP takes Implicit LE);
    at most 128 contexts (PS3.8 9.3.2.2)."""
    wanted: dict[tuple[str, str], list[str]] = {}
    for item in stored:
        if item.transfer_syntax_uid not in UNCOMPRESSED:
            wanted.setdefault((item.sop_class_uid, item.transfer_syntax_uid), [item.transfer_syntax_uid])
        wanted.setdefault((item.sop_class_uid, ExplicitVRLittleEndian), [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    return [build_context(sop_class, syntaxes) for (sop_class, _), syntaxes in list(wanted.items())[:128]]


def _send(
    event: Event, services: Services, stored: list[StoredInstance], outbound: StoreAssociation | None = None
) -> Iterator[tuple[int, Dataset | None]]:
    """Each instance for a C-STORE sub-operation on ``outbound`` (default: the C-GET's own
    association), as stored when the peer accepted its syntax, else converted."""
    store_on = outbound or StoreAssociation(event.assoc)
    for item in stored:
        if event.is_cancelled:
            yield status.CANCEL, None
            return
        dataset: Dataset
        try:
            with services.blobs.open(item.blob_key) as fh:
                dataset = store_on.read(item, fh)
        except errors.PacsError as exc:
            log.error("cannot send %s for retrieve (%s)", item.sop_instance_uid, type(exc).__name__)  # the message may quote PHI
            # A data set without file meta cannot be sent: pynetdicom counts a failed
            # sub-operation and lists the UID in FailedSOPInstanceUIDList.
            dataset = pydicom.FileDataset("", Dataset())
            dataset.SOPClassUID = item.sop_class_uid
            dataset.SOPInstanceUID = item.sop_instance_uid
        yield status.PENDING, dataset
