"""Writes and lookups of the index (searches live in search.py)."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, Table, bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from pacs.dicom.attributes import Level
from pacs.dicom.frames import Layout
from pacs.dicom.instance import ParsedInstance
from pacs.dicom.query import Query
from pacs.errors import DuplicateInstance, NotFound, StudyMismatch
from pacs.index.database import make_durable, read_transaction, syncing_later, write_transaction
from pacs.index.fast_commit import FastCommit
from pacs.index.schema import instances, patients, series, studies
from pacs.index.search import compile_query, run_query, visible_studies
from pacs.index.writer_lock import PendingSync


class Outcome(enum.Enum):
    STORED = "stored"
    ALREADY_STORED = "already stored"
    REPLACED = "replaced"


@dataclass(frozen=True)
class NewInstance:
    parsed: ParsedInstance
    blob_key: str
    blob_size: int


@dataclass(frozen=True)
class CommitResult:
    outcome: Outcome
    obsolete_blob_key: str | None = None  # the blob to delete after commit (duplicate or replaced)


@dataclass(frozen=True)
class StoredInstance:
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    blob_key: str
    blob_size: int
    frame_layout: Layout | None = None
    pixel_offset: int | None = None
    pixel_length: int | None = None
    number_of_frames: int | None = None


class IndexRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._fast = FastCommit(engine)  # new instances of known series, in plain SQL

    # ---- writes -------------------------------------------------------------------------
    def syncing_later(self) -> AbstractContextManager[PendingSync | None]:
        """Commits this thread makes within the block are made durable by the caller, with
        ``wait()`` on what it yields (None: nothing to wait for); see database.syncing_later."""
        return syncing_later(self.engine)

    def find_existing(self, sop_instance_uids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """The given SOP Instance UIDs already indexed, each with its (study, series) UIDs."""
        uids = list(sop_instance_uids)
        with read_transaction(self.engine) as conn:
            rows = conn.execute(
                _existing_stmt().with_only_columns(
                    instances.c.sop_instance_uid, studies.c.study_instance_uid, series.c.series_instance_uid
                ).where(instances.c.sop_instance_uid.in_(uids))
            )
            found = {r[0]: (r[1], r[2]) for r in rows}
        if found:
            make_durable(self.engine)  # reported as stored: what another writer just committed must be on disk
        return found

    def commit_instances(self, items: list[NewInstance], policy: str) -> list[CommitResult | Exception]:
        """Index a batch in one transaction. Returns, per item, its result or the error that
        refused it. In a batch each instance gets a savepoint, so one refusal does not undo the
        others; a lone instance goes without (cheaper) and, if it lost a race with another writer
        of the same SOP Instance UID, the transaction is simply run again."""
        rows = [
            (item.parsed.series_instance_uid, item.parsed.study_instance_uid, fit_columns(instances, _instance_values(item)))
            for item in items
        ]
        if self._fast.commit(rows):
            return [CommitResult(Outcome.STORED) for _ in items]
        # Patients and studies are created in one order in every transaction: two batches
        # creating the same new patients in different orders would otherwise wait on
        # each other's unique-index entries (a deadlock on PostgreSQL). Copies of one instance
        # within a batch keep their arrival order: the first is the one stored.
        order = list(range(len(items)))
        if len({item.parsed.sop_instance_uid for item in items}) == len(items):
            order.sort(key=lambda i: _creation_order(items[i].parsed))
        ordered = [items[i] for i in order]
        try:
            done = self._commit_batch(ordered, policy, savepoints=len(items) > 1)
        except IntegrityError:
            done = self._commit_batch(ordered, policy, savepoints=True)
        results: list[CommitResult | Exception] = [None] * len(items)  # type: ignore[list-item]
        for position, result in zip(order, done, strict=True):
            results[position] = result
        return results

    def _commit_batch(self, items: list[NewInstance], policy: str, *, savepoints: bool) -> list[CommitResult | Exception]:
        results: list[CommitResult | Exception] = []
        with write_transaction(self.engine) as conn:
            for item in items:
                try:
                    if not savepoints:
                        results.append(self._commit_one(conn, item, policy))
                        continue
                    try:
                        with conn.begin_nested():
                            results.append(self._commit_one(conn, item, policy))
                    except IntegrityError:
                        # Another writer indexed the same SOP Instance UID a moment ago.
                        with conn.begin_nested():
                            results.append(self._duplicate(conn, item, policy))
                except (DuplicateInstance, StudyMismatch) as exc:
                    results.append(exc)
        return results

    def _commit_one(self, conn: Connection, item: NewInstance, policy: str) -> CommitResult:
        series_pk = self._series_pk(conn, item.parsed)
        # One statement settles the common case: a new instance is inserted, a copy we hold
        # inserts nothing and goes on to the duplicate policy.
        stmt = _INSERT_NEW_INSTANCE[conn.dialect.name]
        inserted = conn.execute(stmt, fit_columns(instances, {"series_pk": series_pk, **_instance_values(item)})).first()
        if inserted is None:
            try:
                return self._duplicate(conn, item, policy)
            except (DuplicateInstance, StudyMismatch):
                # A refused copy may have named a new series: leave no empty rows behind.
                _delete_empty_ancestors(conn, series_pk)
                raise
        return CommitResult(Outcome.STORED)

    def _duplicate(self, conn: Connection, item: NewInstance, policy: str, existing: Any = None) -> CommitResult:
        uid = item.parsed.sop_instance_uid
        if existing is None:
            existing = conn.execute(_EXISTING_BY_UID, {"sop_uid": uid}).first()
        if policy == "reject":
            raise DuplicateInstance(f"SOP Instance {uid} is already stored")
        if policy == "keep" or existing is None:
            if existing is not None:
                check_same_place(item.parsed, existing.study_instance_uid, existing.series_instance_uid)
            return CommitResult(Outcome.ALREADY_STORED, obsolete_blob_key=item.blob_key)
        series_pk = self._series_pk(conn, item.parsed)
        conn.execute(
            update(instances)
            .where(instances.c.pk == existing.pk)
            .values(fit_columns(instances, {"series_pk": series_pk, **_instance_values(item)}))
        )
        if existing.series_pk != series_pk:
            # The new copy names another series: the old one may be left empty.
            _delete_empty_ancestors(conn, existing.series_pk)
        self._refresh_parents(conn, item.parsed, series_pk)
        return CommitResult(Outcome.REPLACED, obsolete_blob_key=existing.blob_key)

    def _series_pk(self, conn: Connection, parsed: ParsedInstance) -> int:
        # Common case: the series exists (every instance after the first), one SELECT.
        found = _find_series(conn, parsed.series_instance_uid)
        if found is None:
            self._create_series(conn, parsed)
            found = _find_series(conn, parsed.series_instance_uid)
            assert found is not None
        if found.study_instance_uid != parsed.study_instance_uid:
            # A series belongs to one study; filed under another, the instance could not be
            # reached by the URL its own StudyInstanceUID gives.
            raise StudyMismatch(
                f"series {parsed.series_instance_uid} belongs to study {found.study_instance_uid}, "
                f"not to study {parsed.study_instance_uid}"
            )
        return int(found.pk)

    def _create_series(self, conn: Connection, parsed: ParsedInstance) -> None:
        patient, study, serie = _level_values(parsed)
        patient_pk = _get_or_create(conn, patients, _PATIENT_KEYS, patient)
        study_pk = _get_or_create(conn, studies, ("study_instance_uid",), {**study, "patient_pk": patient_pk})
        _get_or_create(conn, series, ("series_instance_uid",), {**serie, "study_pk": study_pk})

    def _refresh_parents(self, conn: Connection, parsed: ParsedInstance, series_pk: int) -> None:
        """Under "overwrite" a corrected copy also corrects its patient, study and series
        (a new PatientID moves the study to that patient)."""
        patient, study, serie = _level_values(parsed)
        patient_pk = _get_or_create(conn, patients, _PATIENT_KEYS, patient)
        conn.execute(update(patients).where(patients.c.pk == patient_pk).values(fit_columns(patients, patient)))
        old_patient = conn.execute(
            select(studies.c.patient_pk).where(studies.c.study_instance_uid == parsed.study_instance_uid)
        ).scalar_one()
        conn.execute(
            update(studies)
            .where(studies.c.study_instance_uid == parsed.study_instance_uid)
            .values(fit_columns(studies, {**study, "patient_pk": patient_pk}))
        )
        conn.execute(update(series).where(series.c.pk == series_pk).values(fit_columns(series, serie)))
        if old_patient != patient_pk:
            _delete_empty(conn, patients, "pk", {old_patient}, studies.c.patient_pk)

    def delete(self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None) -> list[str]:
        """Remove the matching instances (and parents left empty); return their blob keys."""
        with write_transaction(self.engine) as conn:
            stmt = _locate_stmt(study_uid, series_uid, sop_uid).with_only_columns(
                instances.c.pk, instances.c.blob_key, series.c.pk, studies.c.pk, studies.c.patient_pk
            )
            rows = conn.execute(stmt).all()
            if not rows:
                raise NotFound(_describe(study_uid, series_uid, sop_uid) + " not found")
            conn.execute(delete(instances).where(instances.c.pk.in_([r[0] for r in rows])))
            _prune_empty(conn, {r[2] for r in rows}, {r[3] for r in rows}, {r[4] for r in rows})
            return [r[1] for r in rows]

    # ---- lookups ------------------------------------------------------------------------
    def locate(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None, *, referred_by: str | None = None
    ) -> list[StoredInstance]:
        with read_transaction(self.engine) as conn:
            rows = conn.execute(_locate_stmt(study_uid, series_uid, sop_uid, referred_by)).all()
        if not rows:
            raise NotFound(_describe(study_uid, series_uid, sop_uid) + " not found")
        return [
            StoredInstance(
                r.study_instance_uid, r.series_instance_uid, r.sop_instance_uid, r.sop_class_uid,
                r.transfer_syntax_uid, r.blob_key, r.blob_size,
                json.loads(r.frame_layout) if r.frame_layout else None,
                r.pixel_offset, r.pixel_length, r.number_of_frames,
            )
            for r in rows
        ]

    def metadata(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None, *, referred_by: str | None = None
    ) -> list[str]:
        stmt = _locate_stmt(study_uid, series_uid, sop_uid, referred_by).with_only_columns(instances.c.metadata_json)
        with read_transaction(self.engine) as conn:
            documents = list(conn.execute(stmt).scalars())
        if not documents:
            raise NotFound(_describe(study_uid, series_uid, sop_uid) + " not found")
        return documents

    def search(self, query: Query) -> list[dict[str, Any]]:
        with read_transaction(self.engine) as conn:
            return run_query(conn, query)

    def locate_scope(self, study_uid: str, series_uid: str | None = None, *, referred_by: str | None = None) -> None:
        """Raise NotFound unless the study (and series, when given) exists (and is visible)."""
        stmt = select(studies.c.pk).where(studies.c.study_instance_uid == study_uid)
        if series_uid is not None:
            stmt = (
                select(series.c.pk)
                .join(studies, series.c.study_pk == studies.c.pk)
                .where(studies.c.study_instance_uid == study_uid, series.c.series_instance_uid == series_uid)
            )
        if referred_by is not None:
            stmt = stmt.where(visible_studies(Level.STUDY, referred_by))
        with read_transaction(self.engine) as conn:
            if conn.execute(stmt).first() is None:
                raise NotFound(_describe(study_uid, series_uid, None) + " not found")

    def locate_matching(self, query: Query) -> list[StoredInstance]:
        """Instances selected by an instance-level query (C-MOVE/C-GET), without counting."""
        with read_transaction(self.engine) as conn:
            rows = conn.execute(compile_query(query)).mappings().all()
        return [
            StoredInstance(
                r["study_instance_uid"], r["series_instance_uid"], r["sop_instance_uid"], r["sop_class_uid"],
                r["transfer_syntax_uid"], r["blob_key"], r["blob_size"],
                None, r["pixel_offset"], r["pixel_length"], r["number_of_frames"],
            )
            for r in rows
        ]

    def patient_of_study(self, study_uid: str) -> str | None:
        stmt = (
            select(patients.c.patient_id)
            .join(studies, studies.c.patient_pk == patients.c.pk)
            .where(studies.c.study_instance_uid == study_uid)
        )
        with read_transaction(self.engine) as conn:
            return conn.execute(stmt).scalar()

    def counts(self) -> dict[str, int]:
        with read_transaction(self.engine) as conn:
            return {
                name: conn.execute(select(func.count()).select_from(table)).scalar_one()
                for name, table in (("patients", patients), ("studies", studies), ("series", series), ("instances", instances))
            }


_PATIENT_KEYS = ("patient_id", "issuer_of_patient_id")


def _creation_order(parsed: ParsedInstance) -> tuple[str, str, str]:
    # Within a study, arrival order stays: its first instance gives the study its attributes.
    patient = parsed.attributes[Level.PATIENT]
    return (str(patient.get("patient_id") or ""), str(patient.get("issuer_of_patient_id") or ""),
            parsed.study_instance_uid)


def _level_values(parsed: ParsedInstance) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Patient, study and series column values of an instance (keys included, no foreign keys)."""
    attrs = parsed.attributes
    patient = {**attrs[Level.PATIENT]}
    patient["patient_id"] = patient.get("patient_id") or ""
    patient["issuer_of_patient_id"] = patient.get("issuer_of_patient_id") or ""
    patient["patient_name_norm"] = _upper(patient.get("patient_name"))
    study = {**attrs[Level.STUDY], "study_instance_uid": parsed.study_instance_uid}
    study["referring_physician_name_norm"] = _upper(study.get("referring_physician_name"))
    serie = {**attrs[Level.SERIES], "series_instance_uid": parsed.series_instance_uid}
    return patient, study, serie


def _instance_values(item: NewInstance) -> dict[str, Any]:
    parsed = item.parsed
    return {
        **parsed.attributes[Level.INSTANCE],
        "sop_instance_uid": parsed.sop_instance_uid,
        "sop_class_uid": parsed.sop_class_uid,
        "transfer_syntax_uid": parsed.transfer_syntax_uid,
        "blob_key": item.blob_key,
        "blob_size": item.blob_size,
        "metadata_json": parsed.metadata_json(),
        "frame_layout": _layout_json(parsed.layout) if parsed.layout else None,
        "pixel_offset": parsed.pixel_offset,
        "pixel_length": parsed.pixel_length,
    }


def _layout_json(layout: Layout) -> str:
    """Compact JSON, as json.dumps(separators=(",", ":")) writes it, several times faster."""
    return orjson.dumps(layout).decode("utf-8")


def _get_or_create(conn: Connection, table: Table, keys: tuple[str, ...], values: dict[str, Any]) -> int:
    values = fit_columns(table, values)
    where = [table.c[k] == values[k] for k in keys]
    pk = conn.execute(select(table.c.pk).where(*where)).scalar()
    if pk is not None:
        return int(pk)
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(dialect.insert(table).values(**values).on_conflict_do_nothing(index_elements=list(keys)))
    return int(conn.execute(select(table.c.pk).where(*where)).scalar_one())


def fit_columns(table: Table, values: dict[str, Any]) -> dict[str, Any]:
    """Drop unknown keys and clip over-long strings: files in the wild break VR length limits,
    and PostgreSQL refuses a value longer than its column. NUL characters are dropped too:
    DICOM text never means them (PS3.5 6.1.2.3), and PostgreSQL refuses them in text."""
    fitted = {}
    for key, value in values.items():
        if key not in table.c:
            continue
        if isinstance(value, str):
            value = value.replace("\x00", "")
            length = getattr(table.c[key].type, "length", None)
            value = value[:length] if length else value
        fitted[key] = value
    return fitted


def _upper(value: str | None) -> str | None:
    return value.upper() if value else None


def _locate_stmt(study_uid: str, series_uid: str | None, sop_uid: str | None, referrer: str | None = None) -> Any:
    stmt = (
        select(
            studies.c.study_instance_uid, series.c.series_instance_uid, instances.c.sop_instance_uid,
            instances.c.sop_class_uid, instances.c.transfer_syntax_uid, instances.c.blob_key, instances.c.blob_size,
            instances.c.frame_layout, instances.c.pixel_offset, instances.c.pixel_length, instances.c.number_of_frames,
        )
        .select_from(studies.join(series, series.c.study_pk == studies.c.pk).join(instances, instances.c.series_pk == series.c.pk))
        .where(studies.c.study_instance_uid == study_uid)
        .order_by(series.c.series_number, series.c.pk, instances.c.instance_number, instances.c.pk)
    )
    if series_uid is not None:
        stmt = stmt.where(series.c.series_instance_uid == series_uid)
    if sop_uid is not None:
        stmt = stmt.where(instances.c.sop_instance_uid == sop_uid)
    if referrer is not None:
        stmt = stmt.where(visible_studies(Level.STUDY, referrer))
    return stmt


def check_same_place(parsed: ParsedInstance, study_uid: str, series_uid: str) -> None:
    """A copy of a held instance that names another study or series is not the same object:
    acknowledging it would promise it can be retrieved where it says, which it cannot."""
    if (parsed.study_instance_uid, parsed.series_instance_uid) != (study_uid, series_uid):
        raise StudyMismatch(
            f"SOP Instance {parsed.sop_instance_uid} is already stored in study {study_uid}, series {series_uid}"
        )


def _existing_stmt() -> Any:
    """The stored instance by SOP Instance UID (add the condition), with its place."""
    return select(
        instances.c.pk, instances.c.blob_key, instances.c.series_pk,
        studies.c.study_instance_uid, series.c.series_instance_uid,
    ).select_from(instances.join(series, instances.c.series_pk == series.c.pk).join(studies, series.c.study_pk == studies.c.pk))


_EXISTING_BY_UID = _existing_stmt().where(instances.c.sop_instance_uid == bindparam("sop_uid"))
# Built once: ingest runs these for every instance, and building a statement costs more than
# running it from SQLAlchemy's compiled cache.
_FIND_SERIES = (
    select(series.c.pk, studies.c.study_instance_uid)
    .join(studies, series.c.study_pk == studies.c.pk)
    .where(series.c.series_instance_uid == bindparam("series_uid"))
)


_INSERT_NEW_INSTANCE = {
    dialect.dialect.name: dialect.insert(instances)
    .on_conflict_do_nothing(index_elements=["sop_instance_uid"])
    .returning(instances.c.pk)
    for dialect in (sqlite, postgresql)
}


def _find_series(conn: Connection, series_uid: str) -> Any:
    return conn.execute(_FIND_SERIES, {"series_uid": series_uid}).first()


def _delete_empty_ancestors(conn: Connection, series_pk: int) -> None:
    study_pk, patient_pk = conn.execute(
        select(series.c.study_pk, studies.c.patient_pk)
        .join(studies, series.c.study_pk == studies.c.pk)
        .where(series.c.pk == series_pk)
    ).one()
    _prune_empty(conn, {series_pk}, {study_pk}, {patient_pk})


def _prune_empty(conn: Connection, series_pks: set[int], study_pks: set[int], patient_pks: set[int]) -> None:
    """Remove the given series, studies and patients that no longer hold anything, bottom up."""
    _delete_empty(conn, series, "pk", series_pks, instances.c.series_pk)
    _delete_empty(conn, studies, "pk", study_pks, series.c.study_pk)
    _delete_empty(conn, patients, "pk", patient_pks, studies.c.patient_pk)


def _delete_empty(conn: Connection, table: Table, key: str, pks: set[int], child_fk: Any) -> None:
    still_used = select(child_fk).where(child_fk.in_(pks))
    conn.execute(delete(table).where(table.c[key].in_(pks), table.c[key].not_in(still_used)))


def _describe(study_uid: str, series_uid: str | None, sop_uid: str | None) -> str:
    if sop_uid:
        return f"instance {sop_uid} of series {series_uid} in study {study_uid}"
    if series_uid:
        return f"series {series_uid} in study {study_uid}"
    return f"study {study_uid}"
