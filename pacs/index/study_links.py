"""Which order each stored study belongs to (study_order_links), and the patient correction a
link may bring. The reconciliation rules live in worklist.reconcile; this module only reads and
writes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from pacs.dicom.patient_json import patched_patient
from pacs.errors import NotFound
from pacs.index.accounts import as_utc
from pacs.index.database import read_transaction, write_transaction
from pacs.index.repository import fit_columns
from pacs.index.schema import instances, orders, patients, series, studies, study_order_links

links = study_order_links
LINKED, UNMATCHED, DISMISSED = "LINKED", "UNMATCHED", "DISMISSED"
PATIENT_COLUMNS = ("patient_id", "issuer_of_patient_id", "patient_name", "patient_birth_date", "patient_sex")
Patient = dict[str, str | None]


@dataclass(frozen=True)
class StudyLink:
    study_instance_uid: str
    state: str
    order_pk: int | None = None
    order_number: str | None = None
    accession_number: str | None = None  # as the images carry it
    linked_by: str | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class Settled:
    """A study's link after reconciliation, with the linked order's patient (None: no order)."""

    link: StudyLink
    patient: Patient | None = None


class StudyLinkRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def settle(self, study_uid: str, accession: str | None, now: datetime) -> Settled:
        """Link a study to the order with its StudyInstanceUID, else its accession number; record
        it as unmatched if none. A study linked or dismissed before stays as it is."""
        with read_transaction(self.engine) as conn:
            known = _link_row(conn, study_uid)
            if known is not None and known.state != UNMATCHED:
                return Settled(_link(known), _order_patient(conn, known.order_pk))
            order = _order_for(conn, study_uid, accession)
            if known is not None and order is None:
                return Settled(_link(known))
        state = LINKED if order is not None else UNMATCHED
        with write_transaction(self.engine) as conn:
            values = {"state": state, "order_pk": order.pk if order else None, "linked_by": "auto" if order else None,
                      "accession_number": (accession or None) and accession[:16], "updated_at": now}
            _upsert(conn, study_uid, values, only_if_unmatched=True)
            row = _link_row(conn, study_uid)
            assert row is not None
            return Settled(_link(row), _order_patient(conn, row.order_pk))

    def get(self, study_uid: str) -> StudyLink:
        with read_transaction(self.engine) as conn:
            row = _link_row(conn, study_uid)
            if row is None:
                if _study_pk(conn, study_uid) is None:
                    raise NotFound(f"study {study_uid} not found")
                return StudyLink(study_uid, UNMATCHED)  # stored before any reconciliation ran
            return _link(row)

    def set_state(self, study_uid: str, state: str, *, order_pk: int | None, by: str, now: datetime) -> Settled:
        """Staff decisions: link to an order, leave unmatched, dismiss. NotFound for an unknown study."""
        with write_transaction(self.engine) as conn:
            if _study_pk(conn, study_uid) is None:
                raise NotFound(f"study {study_uid} not found")
            accession = conn.execute(select(studies.c.accession_number).where(studies.c.study_instance_uid == study_uid))
            values = {"state": state, "order_pk": order_pk, "linked_by": by, "updated_at": now,
                      "accession_number": accession.scalar()}
            _upsert(conn, study_uid, values, only_if_unmatched=False)
            row = _link_row(conn, study_uid)
            assert row is not None
            return Settled(_link(row), _order_patient(conn, row.order_pk))

    def studies(
        self, *, state: str | None = None, order_pk: int | None = None, limit: int = 100, offset: int = 0
    ) -> list[dict[str, Any]]:
        """Studies with their link and patient, newest link first."""
        stmt = (
            select(
                studies.c.study_instance_uid, studies.c.accession_number, studies.c.study_date,
                studies.c.study_description, patients.c.patient_id, patients.c.patient_name,
                patients.c.patient_birth_date, links.c.state, links.c.order_pk, orders.c.order_number,
                links.c.linked_by, links.c.updated_at,
            )
            .select_from(
                links.join(studies, studies.c.study_instance_uid == links.c.study_instance_uid)
                .join(patients, patients.c.pk == studies.c.patient_pk)
                .outerjoin(orders, orders.c.pk == links.c.order_pk)
            )
            .order_by(links.c.updated_at.desc(), studies.c.pk.desc())
            .limit(limit)
            .offset(offset)
        )
        if state is not None:
            stmt = stmt.where(links.c.state == state)
        if order_pk is not None:
            stmt = stmt.where(links.c.order_pk == order_pk, links.c.state == LINKED)
        with read_transaction(self.engine) as conn:
            rows = [dict(r._mapping) for r in conn.execute(stmt)]
        for row in rows:
            row["updated_at"] = as_utc(row["updated_at"])
        return rows

    def correct_patient(
        self, study_uid: str, patient: Patient, sop_uids: Iterable[str] | None = None,
        previous: Iterable[tuple[str, str]] = (),
    ) -> int:
        """File the study under the order's patient and rewrite the patient attributes in its
        instances' stored metadata (all of them, or `sop_uids`). Patients left without studies,
        the study's old one and `previous` (patient_id, issuer) pairs, are removed. Returns the
        number of instances rewritten."""
        with write_transaction(self.engine) as conn:
            study = conn.execute(
                select(studies.c.pk, studies.c.patient_pk).where(studies.c.study_instance_uid == study_uid)
            ).first()
            if study is None:
                return 0
            target = _patient_pk(conn, patient)
            if study.patient_pk != target:
                conn.execute(update(studies).where(studies.c.pk == study.pk).values(patient_pk=target))
            changed = _rewrite_metadata(conn, study.pk, patient, sop_uids)
            _prune_patients(conn, {study.patient_pk}, previous, keep=target)
            return changed


def _link_row(conn: Connection, study_uid: str) -> Any:
    stmt = (
        select(links, orders.c.order_number)
        .select_from(links.outerjoin(orders, orders.c.pk == links.c.order_pk))
        .where(links.c.study_instance_uid == study_uid)
    )
    return conn.execute(stmt).first()


def _link(row: Any) -> StudyLink:
    return StudyLink(
        row.study_instance_uid, row.state, row.order_pk, row.order_number, row.accession_number, row.linked_by,
        as_utc(row.updated_at),
    )


def _study_pk(conn: Connection, study_uid: str) -> int | None:
    return conn.execute(select(studies.c.pk).where(studies.c.study_instance_uid == study_uid)).scalar()


def _order_for(conn: Connection, study_uid: str, accession: str | None) -> Any:
    """The order of a study: the one with its StudyInstanceUID, else with its accession number
    (both unique and indexed)."""
    found = conn.execute(select(orders.c.pk).where(orders.c.study_instance_uid == study_uid)).first()
    if found is None and accession:
        found = conn.execute(select(orders.c.pk).where(orders.c.accession_number == accession)).first()
    return found


def _order_patient(conn: Connection, order_pk: int | None) -> Patient | None:
    if order_pk is None:
        return None
    row = conn.execute(select(*(orders.c[name] for name in PATIENT_COLUMNS)).where(orders.c.pk == order_pk)).first()
    return dict(row._mapping) if row is not None else None


def _upsert(conn: Connection, study_uid: str, values: dict[str, Any], *, only_if_unmatched: bool) -> None:
    """Insert the link or change it; with `only_if_unmatched`, a link a concurrent writer (or
    staff) settled otherwise meanwhile is left alone."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(links).values(study_instance_uid=study_uid, **values)
    where = links.c.state == UNMATCHED if only_if_unmatched else None
    conn.execute(stmt.on_conflict_do_update(index_elements=[links.c.study_instance_uid], set_=values, where=where))


def _patient_pk(conn: Connection, patient: Patient) -> int:
    """The patient row with the order's identity, created if need be, holding the order's attributes."""
    values = fit_columns(patients, {**patient, "issuer_of_patient_id": patient.get("issuer_of_patient_id") or "",
                                    "patient_name_norm": (patient.get("patient_name") or "").upper() or None})
    where = (patients.c.patient_id == values["patient_id"], patients.c.issuer_of_patient_id == values["issuer_of_patient_id"])
    pk = conn.execute(select(patients.c.pk).where(*where)).scalar()
    if pk is None:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        conn.execute(dialect.insert(patients).values(**values).on_conflict_do_nothing(
            index_elements=[patients.c.patient_id, patients.c.issuer_of_patient_id]))
        pk = conn.execute(select(patients.c.pk).where(*where)).scalar_one()
    conn.execute(update(patients).where(patients.c.pk == pk).values(**values))
    return int(pk)


def _rewrite_metadata(conn: Connection, study_pk: int, patient: Patient, sop_uids: Iterable[str] | None) -> int:
    stmt = (
        select(instances.c.pk, instances.c.metadata_json)
        .join(series, series.c.pk == instances.c.series_pk)
        .where(series.c.study_pk == study_pk)
    )
    if sop_uids is not None:
        stmt = stmt.where(instances.c.sop_instance_uid.in_(list(sop_uids)))
    changed = []
    for pk, document in conn.execute(stmt).all():
        patched = patched_patient(document, patient)
        if patched != document:
            changed.append({"pk": pk, "metadata_json": patched})
    for item in changed:
        conn.execute(update(instances).where(instances.c.pk == item["pk"]).values(metadata_json=item["metadata_json"]))
    return len(changed)


def _prune_patients(conn: Connection, pks: set[int], previous: Iterable[tuple[str, str]], *, keep: int) -> None:
    for patient_id, issuer in previous:
        found = conn.execute(select(patients.c.pk).where(
            patients.c.patient_id == patient_id, patients.c.issuer_of_patient_id == issuer)).scalar()
        if found is not None:
            pks.add(int(found))
    pks.discard(keep)
    if pks:
        still_used = select(studies.c.patient_pk).where(studies.c.patient_pk.in_(pks))
        conn.execute(delete(patients).where(patients.c.pk.in_(pks), patients.c.pk.not_in(still_used)))

