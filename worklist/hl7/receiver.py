"""From an MLLP block to its acknowledgement: read the header, log the message, apply it once
(idempotent on sending application, facility and control ID), answer, audit.

Every block that arrives is kept in the message log with its answer, even one that cannot be
read; when the database itself is down nothing can be kept, and the answer is AR so the sender
keeps the message and sends it again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from pacs.audit.trail import Action, AuditEvent, AuditTrail, Outcome
from pacs.errors import InvalidMessage, PacsError, Unavailable
from pacs.index.accounts import utcnow
from pacs.index.hl7_log import PENDING, Claim, Hl7Log, Key, Received
from worklist.hl7.ack import ACCEPT, ERROR, REJECT, Answer, answer_for, build_ack, internal_error
from worklist.hl7.intake import Applied, Hl7Intake
from worklist.hl7.messages import CHARACTER_SETS, Header, Hl7Message, parse_message, read_header

log = logging.getLogger("minipacs.hl7")


class Hl7Receiver:
    """The FrameHandler of the MLLP server (see worklist.hl7.mllp)."""

    def __init__(
        self, intake: Hl7Intake, messages: Hl7Log, audit: AuditTrail | None = None, *,
        clock: Callable[[], datetime] = utcnow, max_message_bytes: int = 16 * 1024 * 1024,
        repeat_wait_seconds: float = 10.0, stale_after: timedelta = timedelta(minutes=2),
    ) -> None:
        self.intake = intake
        self.messages = messages
        self.audit = audit
        self.clock = clock
        self.max_message_bytes = max_message_bytes
        # A repeat of a message still being applied waits this long for the first one's answer.
        self.repeat_wait_seconds = repeat_wait_seconds
        # A claim still unanswered after this long belongs to a process that stopped mid-way.
        self.stale_after = stale_after

    def message(self, payload: bytes, peer: str) -> bytes:
        received_at = self.clock()
        try:
            header = read_header(payload)
        except InvalidMessage as exc:
            return self._refuse(Received(received_at, peer, raw_text(payload, None)), Header(), answer_for(exc))
        received = _received(received_at, peer, payload, header)
        try:
            message = parse_message(payload, header)
            self.intake.check_supported(header)
        except PacsError as exc:
            return self._refuse(received, header, answer_for(exc))
        return self._apply_once(received, message)

    def oversized(self, head: bytes, size: int, peer: str) -> bytes:
        limit = f"{self.max_message_bytes:,} bytes (MINIPACS_HL7_MAX_MESSAGE_BYTES)"
        refusal = InvalidMessage(f"the message is {size:,} bytes, more than the maximum of {limit}")
        try:
            header = read_header(head)
        except InvalidMessage:
            header = Header()
        raw = raw_text(head, header) + f"\n[{size - len(head):,} more bytes not kept]"
        return self._refuse(_received(self.clock(), peer, b"", header, raw), header, answer_for(refusal))

    def broken(self, data: bytes, reason: str, peer: str) -> None:
        try:
            header = read_header(data)
        except InvalidMessage:
            header = Header(field_separator="")
        received = _received(self.clock(), peer, data, header)
        log.warning("HL7 from %s: %s (%d bytes), not answered", peer, reason, len(data))
        self._log(received, "", f"not answered: {reason}")

    def _refuse(self, received: Received, header: Header, answer: Answer) -> bytes:
        pk = self._log(received, answer.code, answer.text)
        log.info("HL7 %s %s from %s: %s (log #%s)", header.message_type or "message", header.control_id or "-",
                 received.peer, answer.code, pk)
        return build_ack(header, answer)

    def _log(self, received: Received, code: str, outcome: str) -> int | None:
        try:
            return self.messages.record(received, ack_code=code, outcome=outcome)
        except Unavailable:
            log.error("HL7 from %s could not be logged: the database is unavailable", received.peer)
            return None

    def _apply_once(self, received: Received, message: Hl7Message) -> bytes:
        header = message.header
        key: Key = (header.sending_application, header.sending_facility, header.control_id)
        try:
            pk, first = self.messages.claim(received, key)
        except Unavailable as exc:
            log.error("HL7 %s from %s: AR, the database is unavailable", header.control_id, received.peer)
            return build_ack(header, answer_for(exc))
        if first is not None:
            return self._repeat(pk, key, first, header)
        answer, applied = self._apply(message, received)
        order_pk = applied.orders[0].pk if applied is not None and applied.orders else None
        try:
            self.messages.finish(pk, ack_code=answer.code, outcome=answer.text, order_pk=order_pk, key=key,
                                 release=answer.code == REJECT)
        except Unavailable:
            log.error("HL7 %s: applied (%s) but its answer could not be logged", header.control_id, answer.code)
        log.info("HL7 %s %s from %s: %s (log #%d)", header.message_type, header.control_id, received.peer,
                 answer.code, pk)
        return build_ack(header, answer)

    def _apply(self, message: Hl7Message, received: Received) -> tuple[Answer, Applied | None]:
        actor = "hl7:" + (message.header.sending_application.split(message.header.component_separator)[0] or "?")
        try:
            applied = self.intake.apply(message, actor)
        except PacsError as exc:
            answer = answer_for(exc)
            if answer.code != REJECT:
                self._audit(message, received, actor, Outcome.FAILURE, None, answer.text)
            return answer, None
        except Exception:
            log.exception("HL7 %s from %s could not be applied", message.header.control_id, received.peer)
            return internal_error(), None
        self._audit(message, received, actor, Outcome.SUCCESS, applied, "")
        return Answer(ACCEPT, applied.outcome), applied

    def _repeat(self, pk: int, key: Key, first: Claim, header: Header) -> bytes:
        """A control ID seen before: the first answer again, nothing applied."""
        deadline = time.monotonic() + self.repeat_wait_seconds
        current: Claim | None = first
        while current is not None and current.ack_code == PENDING and time.monotonic() < deadline:
            time.sleep(0.02)
            current = self._claim(key)
        answer = self._repeat_answer(current, first)
        outcome = f"repeat of message #{first.message_pk}, not applied again: {answer.text}"
        try:
            self.messages.finish(pk, ack_code=answer.code, outcome=outcome)
        except Unavailable:
            log.error("HL7 %s: the answer to a repeat could not be logged", header.control_id)
        log.info("HL7 %s %s: repeat of log #%d, %s", header.message_type, header.control_id, first.message_pk,
                 answer.code)
        return build_ack(header, answer)

    def _claim(self, key: Key) -> Claim | None:
        try:
            return self.messages.claim_of(key)
        except Unavailable:
            return None

    def _repeat_answer(self, current: Claim | None, first: Claim) -> Answer:
        if current is None:  # the first copy was answered AR (its claim released): send again
            return Answer(REJECT, "an earlier copy of this message could not be applied now; send it again later")
        if current.ack_code != PENDING:
            return Answer(current.ack_code, current.outcome)
        if self.clock() - current.received_at > self.stale_after:
            return Answer(ERROR, (
                f"an earlier copy (log #{current.message_pk}, {current.received_at.isoformat()}) was being applied "
                "when the server stopped; its outcome is unknown: check the order, and send changes with a new "
                "control ID"
            ), "207")
        return Answer(REJECT, "an earlier copy of this message is still being applied; send it again later")

    def _audit(self, message: Hl7Message, received: Received, actor: str, outcome: str, applied: Applied | None,
               reason: str) -> None:
        if self.audit is None:
            return
        header = message.header
        detail: dict[str, object] = {"message": header.message_type, "control_id": header.control_id}
        if applied is not None:
            detail["orders"] = [o.order_number for o in applied.orders]
        if reason:
            detail["reason"] = reason[:200]
        self.audit.record(AuditEvent.of(
            None, "hl7", Action.ORDER, outcome, actor=actor, source=received.peer.rsplit(":", 1)[0],
            patient_id=applied.patient_id if applied is not None else None, detail=detail,
        ))


def _received(received_at: datetime, peer: str, payload: bytes, header: Header, raw: str | None = None) -> Received:
    return Received(
        received_at, peer, raw if raw is not None else raw_text(payload, header),
        control_id=header.control_id or None, sending_application=header.sending_application or None,
        sending_facility=header.sending_facility or None, message_type=header.message_type or None,
    )


def raw_text(payload: bytes, header: Header | None) -> str:
    """The message as the log keeps it: in its character set; bytes that set cannot read are
    kept as \\x.. escapes, so nothing is lost."""
    codec = CHARACTER_SETS.get(header.character_set, "utf-8") if header is not None else "utf-8"
    return payload.decode(codec, errors="backslashreplace")
