"""The HL7 v2 message log (every message received, raw, with its answer and outcome) and the
claims that make a message apply once (hl7_applied, keyed by sending application, sending
facility and message control ID).

A message is claimed, applied and answered in one transaction (a unit of work, see
pacs.index.database), so a claim always holds the answer that was sent. The primary key lets one
transaction win when two connections send the same control ID at once: PostgreSQL makes the
second INSERT wait until the first transaction ends, SQLite takes one write lock at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Integer, Select, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from pacs.errors import NotFound
from pacs.index.accounts import as_utc
from pacs.index.database import read_transaction, write_transaction
from pacs.index.schema import hl7_applied, hl7_messages

PENDING = ""  # the answer of a claim inside the transaction that applies its message
_LIMITS = {"peer": 64, "control_id": 64, "sending_application": 227, "sending_facility": 227, "message_type": 16}


@dataclass(frozen=True)
class Received:
    """What arrived, as the log keeps it."""

    received_at: datetime
    peer: str
    raw: str
    control_id: str | None = None
    sending_application: str | None = None
    sending_facility: str | None = None
    message_type: str | None = None


@dataclass(frozen=True)
class Claim:
    """The applied-once state of a (sending application, facility, control ID)."""

    message_pk: int  # the message that claimed it first
    ack_code: str
    outcome: str
    received_at: datetime


@dataclass(frozen=True)
class LoggedMessage:
    pk: int
    received_at: datetime
    peer: str
    control_id: str | None
    sending_application: str | None
    sending_facility: str | None
    message_type: str | None
    ack_code: str
    outcome: str
    duplicate: bool
    order_pk: int | None
    size: int  # of the raw message: bytes (UTF-8) on PostgreSQL, characters on SQLite
    raw: str | None = None  # only when one message is read


@dataclass(frozen=True)
class MessageFilter:
    message_type: str | None = None
    ack_code: str | None = None
    control_id: str | None = None
    received_from: datetime | None = None
    received_to: datetime | None = None
    limit: int = 100
    offset: int = 0


Key = tuple[str, str, str]  # sending application, sending facility, control ID


class Hl7Log:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(self, received: Received, *, ack_code: str, outcome: str, duplicate: bool = False,
               order_pk: int | None = None) -> int:
        """Log a message that is not applied (unreadable, refused, a repeat)."""
        with write_transaction(self.engine) as conn:
            return _insert(conn, received, ack_code, outcome, duplicate, order_pk)

    def claim(self, received: Received, key: Key, *, ack_code: str = PENDING, outcome: str = ""
              ) -> tuple[int, Claim | None]:
        """Log the message and claim its key: (its log pk, None) when it is the first with that
        key, else (its log pk, the first one's claim); the latter is logged as a duplicate."""
        with write_transaction(self.engine) as conn:
            pk = _insert(conn, received, ack_code, outcome, False, None)
            claim = {"sending_application": key[0], "sending_facility": key[1], "control_id": key[2],
                     "message_pk": pk, "ack_code": ack_code, "outcome": storable(outcome)}
            if conn.execute(_CLAIM[conn.dialect.name == "postgresql"], claim).first() is not None:
                return pk, None
            conn.execute(_MARK_DUPLICATE, {"message": pk})
            first = _claim(conn, key)
            assert first is not None  # the conflict was with it
            return pk, first

    def finish(self, pk: int, *, ack_code: str, outcome: str, order_pk: int | None = None,
               key: Key | None = None) -> None:
        """Record a message's answer, and on its claim (`key`), as the answer to repeats."""
        answer = {"message": pk, "answer": ack_code, "what": storable(outcome), "order": order_pk}
        with write_transaction(self.engine) as conn:
            conn.execute(_ANSWER_MESSAGE, answer)
            if key is not None:
                conn.execute(_ANSWER_CLAIM, {**answer, "application": key[0], "facility": key[1], "control": key[2]})

    def search(self, where: MessageFilter) -> list[LoggedMessage]:
        stmt = _filtered(select(*_LISTED, self._size()), where)
        stmt = stmt.order_by(hl7_messages.c.pk.desc()).limit(where.limit).offset(where.offset)
        with read_transaction(self.engine) as conn:
            return [_logged(row) for row in conn.execute(stmt)]

    def _size(self) -> Any:
        # PostgreSQL reads octet_length from a large value's header; length() would fetch and
        # decompress every listed message (some are megabytes).
        if self.engine.dialect.name == "postgresql":
            return func.octet_length(hl7_messages.c.raw).label("size")
        return func.length(hl7_messages.c.raw).label("size")

    def get(self, pk: int) -> LoggedMessage:
        stmt = select(*_LISTED, self._size(), hl7_messages.c.raw)
        with read_transaction(self.engine) as conn:
            row = conn.execute(stmt.where(hl7_messages.c.pk == pk)).first()
        if row is None:
            raise NotFound(f"no HL7 message {pk} in the log")
        return _logged(row, with_raw=True)


_LISTED = [c for c in hl7_messages.c if c.name != "raw"]
# Built once: executed with plain parameters, they skip statement construction and hit the
# compiled cache (intake runs them for every message).
_INSERT_MESSAGE = hl7_messages.insert().returning(hl7_messages.c.pk)
_CLAIM = {
    postgres: dialect.insert(hl7_applied).on_conflict_do_nothing().returning(hl7_applied.c.message_pk)
    for postgres, dialect in ((True, postgresql), (False, sqlite))
}
_MARK_DUPLICATE = update(hl7_messages).where(hl7_messages.c.pk == bindparam("message")).values(duplicate=True)
_ANSWER_MESSAGE = (
    update(hl7_messages).where(hl7_messages.c.pk == bindparam("message"))
    .values(ack_code=bindparam("answer"), outcome=bindparam("what"),
            order_pk=func.coalesce(bindparam("order", type_=Integer), hl7_messages.c.order_pk))
)
_ANSWER_CLAIM = (
    update(hl7_applied)
    .where(hl7_applied.c.sending_application == bindparam("application"),
           hl7_applied.c.sending_facility == bindparam("facility"),
           hl7_applied.c.control_id == bindparam("control"), hl7_applied.c.message_pk == bindparam("message"))
    .values(ack_code=bindparam("answer"), outcome=bindparam("what"))
)


def _insert(conn: Connection, received: Received, ack_code: str, outcome: str, duplicate: bool,
            order_pk: int | None) -> int:
    values: dict[str, Any] = {
        "received_at": received.received_at, "raw": storable(received.raw), "ack_code": ack_code,
        "outcome": storable(outcome), "duplicate": duplicate, "order_pk": order_pk,
    }
    for name, limit in _LIMITS.items():
        text = getattr(received, name)
        values[name] = storable(text)[:limit] if text is not None else None
    return int(conn.execute(_INSERT_MESSAGE, values).scalar_one())


def storable(text: str) -> str:
    # PostgreSQL text cannot hold NUL; the log shows it as the escape a reader would expect.
    return text.replace("\x00", "\\x00")


def _key_is(key: Key) -> Any:
    return (
        (hl7_applied.c.sending_application == key[0])
        & (hl7_applied.c.sending_facility == key[1])
        & (hl7_applied.c.control_id == key[2])
    )


def _claim(conn: Connection, key: Key) -> Claim | None:
    stmt = (
        select(hl7_applied.c.message_pk, hl7_applied.c.ack_code, hl7_applied.c.outcome, hl7_messages.c.received_at)
        .join(hl7_messages, hl7_messages.c.pk == hl7_applied.c.message_pk)
        .where(_key_is(key))
    )
    row = conn.execute(stmt).first()
    if row is None:
        return None
    return Claim(row.message_pk, row.ack_code, row.outcome, as_utc(row.received_at))


def _filtered(stmt: Select[Any], where: MessageFilter) -> Select[Any]:
    exact = {
        hl7_messages.c.message_type: where.message_type,
        hl7_messages.c.ack_code: where.ack_code,
        hl7_messages.c.control_id: where.control_id,
    }
    for column, value in exact.items():
        if value is not None:
            stmt = stmt.where(column == value)
    if where.received_from is not None:
        stmt = stmt.where(hl7_messages.c.received_at >= where.received_from)
    if where.received_to is not None:
        stmt = stmt.where(hl7_messages.c.received_at < where.received_to)
    return stmt


def _logged(row: Any, with_raw: bool = False) -> LoggedMessage:
    return LoggedMessage(
        pk=row.pk, received_at=as_utc(row.received_at), peer=row.peer, control_id=row.control_id,
        sending_application=row.sending_application, sending_facility=row.sending_facility,
        message_type=row.message_type, ack_code=row.ack_code, outcome=row.outcome, duplicate=bool(row.duplicate),
        order_pk=row.order_pk, size=int(row.size or 0), raw=row.raw if with_raw else None,
    )
