"""HL7 v2 acknowledgements (original mode, HL7 v2.5 2.9.2): MSH with sender and receiver
swapped, MSA (AA, AE, AR and the received control ID), and ERR with the reason; written in the
received message's encoding characters, version and character set. Also the one table mapping
domain exceptions to acknowledgement codes and HL7 error codes (table 0357)."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from pacs.errors import (
    Conflict,
    InvalidInput,
    InvalidMessage,
    MissingField,
    NotFound,
    PacsError,
    Unavailable,
    UnsupportedMessage,
)
from worklist.hl7.messages import Header, codec_of

ACCEPT, ERROR, REJECT = "AA", "AE", "AR"  # HL7 table 0008
OWN_APPLICATION = "MINIPACS"
_MSA_TEXT_LIMIT = 80  # MSA-3 is ST(80)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass(frozen=True)
class Answer:
    code: str  # AA, AE, AR
    text: str = ""  # why, for MSA-3 and ERR
    error_code: str | None = None  # HL7 table 0357
    field: str | None = None  # where, e.g. "PID-3"


# Most specific first. AR: the message may be fine but is not taken (a type we do not process,
# HL7 v2.5 2.9.2.1; or the server cannot apply it now: the sender should send it again later).
# AE: the message itself is wrong; sending it again unchanged will not help.
ANSWERS: tuple[tuple[type[PacsError], str, str, str], ...] = (
    (UnsupportedMessage, REJECT, "200", "Unsupported message type"),
    (MissingField, ERROR, "101", "Required field missing"),
    (InvalidMessage, ERROR, "102", "Data type error"),
    (NotFound, ERROR, "204", "Unknown key identifier"),
    (Conflict, ERROR, "207", "Application error"),
    (InvalidInput, ERROR, "102", "Data type error"),
    (Unavailable, REJECT, "207", "Application internal error"),
)
_ERROR_NAMES = {code: name for _, _, code, name in ANSWERS}
_ERROR_NAMES["207"] = "Application internal error"


def answer_for(exc: PacsError) -> Answer:
    for kind, ack_code, error_code, _name in ANSWERS:
        if isinstance(exc, kind):
            return Answer(ack_code, str(exc), error_code, getattr(exc, "field", None))
    return Answer(ERROR, str(exc), "207")


def internal_error() -> Answer:
    """An unexpected failure: AE, so the sender's queue moves on; the traceback is in our log."""
    return Answer(ERROR, "internal error while applying the message; it is kept in the message log", "207")


def build_ack(header: Header, answer: Answer, *, now: datetime | None = None) -> bytes:
    """The ACK's payload (without MLLP framing), encoded as the message was."""
    sep, enc = header.field_separator, header.encoding_characters
    version = header.version or "2.5"
    kind = f"ACK{enc[0]}{header.trigger_event}" if header.trigger_event else "ACK"
    if header.trigger_event and _version(version) >= (2, 4):
        kind += f"{enc[0]}ACK"  # MSH-9.3 message structure, from v2.4
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S+0000")
    msh = [
        "MSH", enc, header.receiving_application or OWN_APPLICATION, header.receiving_facility,
        header.sending_application, header.sending_facility, stamp, "", kind, _control_id(),
        header.processing_id or "P", version,
    ]
    if header.character_set:
        msh += ["", "", "", "", "", header.character_set]  # MSH-18
    text = escape(answer.text, sep, enc)
    segments = [sep.join(msh), sep.join(["MSA", answer.code, escape(header.control_id, sep, enc), text[:_MSA_TEXT_LIMIT]])]
    if answer.code != ACCEPT:
        segments.append(_err(answer, text, version, sep, enc))
    return ("\r".join(segments) + "\r").encode(codec_of(header), errors="replace")


def _err(answer: Answer, text: str, version: str, sep: str, enc: str) -> str:
    component, subcomponent = enc[0], enc[3]
    code = answer.error_code or "207"
    name = _ERROR_NAMES.get(code, "")
    location = _location(answer.field, component)
    if _version(version) >= (2, 5):
        # ERR-2 location, ERR-3 HL7 error code, ERR-4 severity, ERR-8 user message.
        return sep.join(["ERR", "", location, component.join([code, name, "HL70357"]), "E", "", "", "", text])
    # Before v2.5: ERR-1, segment^sequence^field^code&text&table.
    coded = subcomponent.join([code, escape(name, sep, enc), "HL70357"])
    return sep.join(["ERR", component.join([*(location.split(component) + ["", "", ""])[:3], coded])])


def _location(field: str | None, component: str) -> str:
    if not field:
        return ""
    segment, _, number = field.partition("-")
    return component.join([segment, "1", number]) if number else component.join([segment, "1"])


def escape(text: str, sep: str, enc: str) -> str:
    """Text as an HL7 value: delimiters as escape sequences (2.7.1), line breaks as spaces."""
    component, repetition, escape_char, subcomponent = enc[0], enc[1], enc[2], enc[3]
    replaced = text.replace(escape_char, f"{escape_char}E{escape_char}")
    for character, name in ((sep, "F"), (component, "S"), (repetition, "R"), (subcomponent, "T")):
        replaced = replaced.replace(character, f"{escape_char}{name}{escape_char}")
    return _CONTROL.sub(" ", replaced)


def _version(text: str) -> tuple[int, ...]:
    parts = re.findall(r"\d+", text)
    return tuple(int(p) for p in parts[:3]) if parts else (2, 5)


def _control_id() -> str:
    return secrets.token_hex(10).upper()  # 20 characters: MSH-10 is ST(20) before v2.7
