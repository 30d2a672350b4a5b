"""Reconciliation: every arriving study is linked to its order, or listed as unmatched for staff.

A study is linked to the order with its StudyInstanceUID (the one the worklist gave the
modality), else the order with its AccessionNumber. A study matching no order is recorded as
UNMATCHED; staff link it to an order, or dismiss it (leave it unlinked, off the list). With
MINIPACS_RECONCILE_PATIENT=on a link also files the study under the order's patient and rewrites
the patient attributes of its instances' stored metadata; the stored files stay as received.

Images arriving do not move the order's status: the modality's MPPS (or staff) says when an exam
is complete, as a study may arrive in parts over hours.

This runs in the ingest path, after each commit, for the instances it newly indexed. Only the
first instance of a study reaches the database: the outcome is remembered in a small in-process
cache (unmatched studies for a minute, so an order entered after its images still catches them).
It never raises: a failure is logged and the images stay stored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime

from pacs.audit.trail import Action, AuditEvent, Outcome
from pacs.dicom.attributes import Level
from pacs.dicom.instance import ParsedInstance
from pacs.errors import Conflict, InvalidInput
from pacs.index.orders import Order
from pacs.index.study_links import (
    DISMISSED,
    LINKED,
    PATIENT_COLUMNS,
    UNMATCHED,
    Patient,
    Settled,
    StudyLink,
    StudyLinkRepository,
)
from worklist.orders import OrderService, utcnow

log = logging.getLogger(__name__)
CACHE_SIZE = 4096  # studies remembered per process: those arriving now (a miss costs one look-up)
UNMATCHED_SECONDS = 60.0  # an unmatched study is looked up again after this long


class Reconciler:
    def __init__(
        self, links: StudyLinkRepository, orders: OrderService, *, correct_patient: bool,
        audit: Callable[[AuditEvent], None] = lambda event: None,
        clock: Callable[[], datetime] = utcnow, monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.links = links
        self.orders = orders
        self.correct_patient = correct_patient
        self.audit = audit  # a patient correction rewrites PHI: each one is in the audit trail
        self.clock = clock
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._settled: OrderedDict[str, tuple[Settled, float]] = OrderedDict()

    # ---- the ingest listener ---------------------------------------------------------
    def on_stored(self, stored: list[ParsedInstance]) -> None:
        """IngestService.stored_listeners entry: must not raise, and costs a dict look-up per
        instance once its study is settled."""
        try:
            for study_uid, items in _by_study(stored).items():
                settled = self._cached(study_uid) or self._settle(study_uid, items[0])
                if self.correct_patient and settled.patient is not None:
                    self._correct(study_uid, settled.patient, items)
        except Exception:
            log.exception("reconciliation failed; the instances stay stored and are reconciled with the next ones")

    def _cached(self, study_uid: str) -> Settled | None:
        with self._lock:
            entry = self._settled.get(study_uid)
            if entry is None:
                return None
            settled, expires = entry
            if expires < self.monotonic():
                del self._settled[study_uid]
                return None
            self._settled.move_to_end(study_uid)
            return settled

    def _remember(self, study_uid: str, settled: Settled) -> None:
        lifetime = UNMATCHED_SECONDS if settled.link.state == UNMATCHED else float("inf")
        with self._lock:
            self._settled[study_uid] = (settled, self.monotonic() + lifetime)
            self._settled.move_to_end(study_uid)
            while len(self._settled) > CACHE_SIZE:
                self._settled.popitem(last=False)

    def _settle(self, study_uid: str, first: ParsedInstance) -> Settled:
        accession = first.attributes[Level.STUDY].get("accession_number")
        settled = self.links.settle(study_uid, str(accession).strip() if accession else None, self.clock())
        if settled.link.state == LINKED and settled.link.linked_by == "auto":
            log.info("study %s linked to order %s", study_uid, settled.link.order_number)
        self._remember(study_uid, settled)
        return settled

    def _correct(self, study_uid: str, patient: Patient, items: list[ParsedInstance]) -> None:
        """Only instances whose patient differs from the order's are rewritten: for a study the
        worklist drove (the usual case) this finds nothing and touches nothing."""
        stale = [p for p in items if _patient_of(p) != _normalised(patient)]
        if not stale:
            return
        previous = {(_patient_of(p)["patient_id"] or "", _patient_of(p)["issuer_of_patient_id"] or "") for p in stale}
        changed = self.links.correct_patient(study_uid, patient, [p.sop_instance_uid for p in stale], previous)
        self._record_correction("ingest", "reconciliation", study_uid, patient, changed)

    def _record_correction(self, channel: str, actor: str, study_uid: str, patient: Patient, changed: int) -> None:
        if changed:
            self.audit(AuditEvent.of(
                None, channel, Action.STORE, Outcome.SUCCESS, actor=actor, patient_id=patient.get("patient_id"),
                study_uid=study_uid, detail={"operation": "patient corrected from order", "instances": changed},
            ))

    # ---- staff decisions -------------------------------------------------------------
    def link(self, study_uid: str, order: Order, *, by: str) -> StudyLink:
        settled = self.links.set_state(study_uid, LINKED, order_pk=order.pk, by=by, now=self.clock())
        if self.correct_patient and settled.patient is not None:
            changed = self.links.correct_patient(study_uid, settled.patient)
            self._record_correction("http", by, study_uid, settled.patient, changed)
        self._remember(study_uid, settled)
        return settled.link

    def unlink(self, study_uid: str, *, by: str) -> StudyLink:
        """Back to the unmatched list (a wrong link undone). A corrected patient is not reverted."""
        settled = self.links.set_state(study_uid, UNMATCHED, order_pk=None, by=by, now=self.clock())
        self._remember(study_uid, Settled(settled.link))
        return settled.link

    def dismiss(self, study_uid: str, *, by: str) -> StudyLink:
        """Leave an unmatched study without an order, off the unmatched list."""
        current = self.links.get(study_uid)
        if current.state == LINKED:
            raise Conflict(f"study {study_uid} is linked to order {current.order_number}; unlink it first")
        settled = self.links.set_state(study_uid, DISMISSED, order_pk=None, by=by, now=self.clock())
        self._remember(study_uid, Settled(settled.link))
        return settled.link

    def link_of(self, study_uid: str) -> StudyLink:
        return self.links.get(study_uid)

    def studies(self, *, state: str | None = None, order_pk: int | None = None, limit: int = 100,
                offset: int = 0) -> list[dict[str, object]]:
        if state is not None and state not in (LINKED, UNMATCHED, DISMISSED):
            raise InvalidInput(f"state {state!r} is not one of {LINKED}, {UNMATCHED}, {DISMISSED}")
        return self.links.studies(state=state, order_pk=order_pk, limit=limit, offset=offset)


def _by_study(stored: list[ParsedInstance]) -> dict[str, list[ParsedInstance]]:
    grouped: dict[str, list[ParsedInstance]] = {}
    for parsed in stored:
        grouped.setdefault(parsed.study_instance_uid, []).append(parsed)
    return grouped


def _patient_of(parsed: ParsedInstance) -> Patient:
    values = parsed.attributes[Level.PATIENT]
    return _normalised({name: values.get(name) for name in PATIENT_COLUMNS})


def _normalised(patient: Patient) -> Patient:
    return {name: (str(patient.get(name) or "").strip() or None) for name in PATIENT_COLUMNS}
