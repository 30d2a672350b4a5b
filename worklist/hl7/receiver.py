"""From an MLLP block to its acknowledgement: read the header, then apply, log and claim
(sending application, facility, control ID) with the answer in one transaction, answer, audit.
A repeat gets the first answer again; a refused message is claimed with its AE.

Every block that arrives is kept in the message log with its answer, even one that cannot be
read; when the database itself is down nothing can be kept, and the answer is AR so the sender
keeps the message and sends it again.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from datetime import datetime

from pacs.audit.trail import Action, AuditEvent, AuditTrail, Outcome
from pacs.errors import InvalidMessage, PacsError, Unavailable
from pacs.index.accounts import utcnow
from pacs.index.database import unit_of_work
from pacs.index.hl7_log import Claim, Hl7Log, Key, Received, repeat_outcome
from worklist.hl7.ack import ACCEPT, Answer, answer_for, build_ack, internal_error
from worklist.hl7.intake import Applied, Hl7Intake
from worklist.hl7.messages import CHARACTER_SETS, Header, Hl7Message, parse_message, read_header

log = logging.getLogger("minipacs.hl7")


class Hl7Receiver:
    """The FrameHandler of the MLLP server (see worklist.hl7.mllp)."""

    def __init__(
        self, intake: Hl7Intake, messages: Hl7Log, audit: AuditTrail | None = None, *,
        clock: Callable[[], datetime] = utcnow, max_message_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.intake = intake
        self.messages = messages
        self.audit = audit
        self.clock = clock
        self.max_message_bytes = max_message_bytes

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
        """Apply, then log and claim with the answer, in one transaction: applied with its answer
        kept, or not at all. The claim comes last so a message costs two statements of its own;
        a repeat (rare: a sender that lost our ACK) is found there and its changes rolled back."""
        header = message.header
        key: Key = (header.sending_application, header.sending_facility, header.control_id)
        actor = "hl7:" + (header.sending_application.split(header.component_separator)[0] or "?")
        try:
            with unit_of_work(self.messages.engine):
                applied = self.intake.apply(message, actor)
                order_pk = applied.orders[0].pk if applied.orders else None
                pk, first = self.messages.claim(received, key, ack_code=ACCEPT, outcome=applied.outcome,
                                                order_pk=order_pk)
                if first is not None:
                    raise _Repeat(first)
        except _Repeat as repeat:
            return self._repeat(received, repeat.first, header)
        except Unavailable as exc:
            # Nothing was applied or claimed: the sender keeps the message and sends it again.
            log.error("HL7 %s from %s: AR, the database is unavailable", header.control_id, received.peer)
            answer = answer_for(exc)
            self._log(received, answer.code, answer.text)
            return build_ack(header, answer)
        except PacsError as exc:
            return self._refuse_once(received, key, message, actor, answer_for(exc))
        except Exception as exc:  # noqa: BLE001  # any other failure: AE, and the listener goes on
            # Not the exception's text: database errors quote the values (patient data) they held.
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            log.error("HL7 %s from %s could not be applied: %s at %s:%d", header.control_id, received.peer,
                      type(exc).__name__, frame.filename, frame.lineno)
            return self._refuse_once(received, key, message, actor, internal_error())
        self._audit(message, received, actor, Outcome.SUCCESS, applied, "")
        log.info("HL7 %s %s from %s: AA (log #%d)", header.message_type, header.control_id, received.peer, pk)
        return build_ack(header, Answer(ACCEPT, applied.outcome))

    def _refuse_once(self, received: Received, key: Key, message: Hl7Message, actor: str, answer: Answer) -> bytes:
        """A message refused for what it says: logged and claimed with its answer (AE), so a
        repeat gets the same answer without being looked at again."""
        header = message.header
        try:
            pk, first = self.messages.claim(received, key, ack_code=answer.code, outcome=answer.text)
        except Unavailable:
            log.error("HL7 %s from %s: %s, but it could not be logged", header.control_id, received.peer, answer.code)
            return build_ack(header, answer)
        if first is not None:  # claimed before: refused now only because it was applied then
            return self._answer_repeat(first, header)
        self._audit(message, received, actor, Outcome.FAILURE, None, answer.text)
        log.info("HL7 %s %s from %s: %s (log #%d)", header.message_type, header.control_id, received.peer,
                 answer.code, pk)
        return build_ack(header, answer)

    def _repeat(self, received: Received, first: Claim, header: Header) -> bytes:
        """A control ID seen before: what it changed was rolled back; logged as a repeat."""
        try:
            self.messages.record(received, ack_code=first.ack_code, outcome=repeat_outcome(first), duplicate=True)
        except Unavailable:
            log.error("HL7 %s from %s: a repeat that could not be logged", header.control_id, received.peer)
        return self._answer_repeat(first, header)

    def _answer_repeat(self, first: Claim, header: Header) -> bytes:
        """The first answer again."""
        log.info("HL7 %s %s: repeat of log #%d, %s", header.message_type, header.control_id, first.message_pk,
                 first.ack_code)
        return build_ack(header, Answer(first.ack_code, first.outcome))

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


class _Repeat(Exception):
    """Raised inside the unit of work to roll back a message whose control ID was claimed before."""

    def __init__(self, first: Claim) -> None:
        super().__init__(first.message_pk)
        self.first = first


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
