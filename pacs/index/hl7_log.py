"""The HL7 v2 message log (every message received, raw, with its answer and outcome) and the
claims that make a message apply once (hl7_applied, keyed by sending application, sending
facility and message control ID).

A message is applied, then logged and claimed with its answer, in one transaction (a unit of
work, see pacs.index.database), so a claim always holds the answer that was sent. The primary key
lets one transaction win when two connections send the same control ID at once: PostgreSQL makes
the second INSERT wait until the first transaction ends, SQLite takes one write lock at a time;
the loser rolls back what it applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Select, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from pacs.errors import NotFound
from pacs.index.accounts import as_utc
from pacs.index.database import read_transaction, write_transaction
from pacs.index.schema import hl7_applied, hl7_messages

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

    def claim(self, received: Received, key: Key, *, ack_code: str, outcome: str, order_pk: int | None = None
              ) -> tuple[int, Claim | None]:
        """Log the message with its answer and claim its key: (its log pk, None) when it is the
        first with that key; else (its log pk, the first one's claim), and it is logged as a
        repeat given the first one's answer. Inside a unit of work that applied the message, the
        caller rolls back on a repeat (and logs it again with `record`)."""
        with write_transaction(self.engine) as conn:
            pk = _insert(conn, received, ack_code, outcome, False, order_pk)
            claim = {"sending_application": key[0], "sending_facility": key[1], "control_id": key[2],
                     "message_pk": pk, "ack_code": ack_code, "outcome": storable(outcome)}
            if conn.execute(_CLAIM[conn.dialect.name == "postgresql"], claim).first() is not None:
                return pk, None
            first = _claim(conn, key)
            assert first is not None  # the conflict was with it
            conn.execute(_ANSWER_REPEAT, {"message": pk, "answer": first.ack_code,
                                          "what": storable(repeat_outcome(first))})
            return pk, first

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
_ANSWER_REPEAT = (
    update(hl7_messages).where(hl7_messages.c.pk == bindparam("message"))
    .values(duplicate=True, ack_code=bindparam("answer"), outcome=bindparam("what"))
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


def repeat_outcome(first: Claim) -> str:
    """What the log says of a message whose control ID was claimed before."""
    return f"repeat of message #{first.message_pk}, not applied again: {first.outcome}"


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
