"""Reading HL7 v2 messages: the character set (MSH-18), the header (MSH), and the segments,
parsed with python-hl7. No I/O, no database.

The header is read by hand from the first segment, before anything else: an answer needs its
control ID and encoding characters even when the rest cannot be parsed (HL7 v2.5 2.9.2).
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

import hl7
from hl7.exceptions import HL7Exception

from pacs.errors import InvalidMessage, MissingField, UnsupportedMessage

DEFAULT_ENCODING_CHARACTERS = "^~\\&"  # component, repetition, escape, subcomponent (HL7 v2 2.5.4)
# HL7 table 0211 (alternate character sets) -> Python codecs. Empty MSH-18 means ASCII; senders
# often send UTF-8 or Latin-1 without saying so, so an undeclared set is read as UTF-8 if it is,
# else Latin-1 (which reads any byte).
CHARACTER_SETS = {
    "ASCII": "ascii", "ISO IR6": "ascii", "UNICODE UTF-8": "utf-8", "ISO IR192": "utf-8",
    "8859/1": "latin-1", "ISO IR100": "latin-1", "8859/2": "iso8859-2", "8859/3": "iso8859-3",
    "8859/4": "iso8859-4", "8859/5": "iso8859-5", "8859/6": "iso8859-6", "8859/7": "iso8859-7",
    "8859/8": "iso8859-8", "8859/9": "iso8859-9", "8859/15": "iso8859-15", "GB 18030-2000": "gb18030",
    "KS X 1001": "euc-kr", "BIG-5": "big5", "ISO IR14": "shift_jis", "ISO IR87": "iso2022_jp",
}
CONTROL_ID_LIMIT = 64  # the log's column; MSH-10 is ST(20) before v2.7, ST(199) since
APPLICATION_LIMIT = 227  # HD
_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
_VERSION = re.compile(r"2\.[1-9](\.\d+)?")


@dataclass(frozen=True)
class Header:
    """MSH as received. Fields are text with their components; empty when absent."""

    field_separator: str = "|"
    encoding_characters: str = DEFAULT_ENCODING_CHARACTERS
    sending_application: str = ""  # MSH-3
    sending_facility: str = ""  # MSH-4
    receiving_application: str = ""  # MSH-5
    receiving_facility: str = ""  # MSH-6
    message_code: str = ""  # MSH-9.1, e.g. ORM
    trigger_event: str = ""  # MSH-9.2, e.g. O01
    control_id: str = ""  # MSH-10
    processing_id: str = ""  # MSH-11.1: P, D, T
    version: str = ""  # MSH-12.1, e.g. 2.5.1
    character_set: str = ""  # MSH-18 (first repetition)
    problem: str | None = None  # why the encoding characters cannot be used

    @property
    def message_type(self) -> str:
        return f"{self.message_code}^{self.trigger_event}" if self.trigger_event else self.message_code

    @property
    def component_separator(self) -> str:
        return self.encoding_characters[0]


@dataclass(frozen=True)
class Hl7Message:
    header: Header
    text: str  # decoded, segments ended by <CR>
    parsed: hl7.Message

    def segments(self, segment_id: str) -> list[hl7.Segment]:
        return [segment for segment in self.parsed if str(segment[0]) == segment_id]

    def first(self, segment_id: str) -> hl7.Segment | None:
        found = self.segments(segment_id)
        return found[0] if found else None


def first_segment(payload: bytes) -> str:
    """The payload's first segment, read byte for byte (MSH is ASCII whatever MSH-18 says)."""
    text = payload.lstrip(b" \t\r\n")[:65536].decode("latin-1")
    return re.split(r"[\r\n]", text, maxsplit=1)[0]


def read_header(payload: bytes) -> Header:
    """MSH; InvalidMessage only when there is no MSH or no usable field separator. Problems with
    the encoding characters are kept in `problem`, for check_header to report."""
    segment = first_segment(payload)
    if not segment.startswith("MSH") or len(segment) < 8:
        raise InvalidMessage("the message does not begin with an MSH segment", "MSH")
    separator = segment[3]
    if separator.isalnum() or separator.isspace():
        raise InvalidMessage(f"MSH-1 field separator {separator!r} is a letter, digit or space", "MSH-1")
    fields = segment.split(separator)  # fields[n - 1] is MSH-n (MSH-1 is the separator itself)
    encoding = fields[1]
    problem = _encoding_problem(separator, encoding)
    if problem is not None:
        encoding = DEFAULT_ENCODING_CHARACTERS
    get = (lambda n: fields[n - 1] if len(fields) >= n else "")
    component, repetition = encoding[0], encoding[1]
    kind = get(9).split(component)
    return Header(
        field_separator=separator, encoding_characters=encoding[:4],
        sending_application=get(3), sending_facility=get(4),
        receiving_application=get(5), receiving_facility=get(6),
        message_code=kind[0].strip().upper(), trigger_event=(kind[1] if len(kind) > 1 else "").strip().upper(),
        control_id=get(10).strip(), processing_id=get(11).split(component)[0].strip(),
        version=get(12).split(component)[0].strip(),
        character_set=get(18).split(repetition)[0].strip().upper(), problem=problem,
    )


def _encoding_problem(separator: str, encoding: str) -> str | None:
    # HL7 v2.5 2.5.4: component ^, repetition ~, escape \, subcomponent &; v2.7 adds truncation #.
    usable = len(encoding) in (4, 5) and len(set(encoding + separator)) == len(encoding) + 1
    if usable and not any(c.isalnum() or c.isspace() for c in encoding):
        return None
    return (
        f"MSH-2 encoding characters {encoding!r} are not 4 distinct separators other than the field "
        f"separator {separator!r} (component, repetition, escape, subcomponent: ^~\\&)"
    )


def check_header(header: Header) -> None:
    """What every message must have before it is looked at further (HL7 v2.5 2.9.2.1)."""
    if header.problem is not None:
        raise InvalidMessage(header.problem, "MSH-2")
    if not header.control_id:
        raise MissingField("MSH-10 (message control ID) is empty", "MSH-10")
    if len(header.control_id) > CONTROL_ID_LIMIT:
        raise InvalidMessage(f"MSH-10 (message control ID) is longer than {CONTROL_ID_LIMIT} characters", "MSH-10")
    for name, value in (("MSH-3", header.sending_application), ("MSH-4", header.sending_facility)):
        if len(value) > APPLICATION_LIMIT:
            raise InvalidMessage(f"{name} is longer than {APPLICATION_LIMIT} characters", name)
    if not header.message_code or not header.trigger_event:
        raise MissingField("MSH-9 (message type) needs a message code and a trigger event, e.g. ORM^O01", "MSH-9")
    if not header.version:
        raise MissingField("MSH-12 (version ID) is empty", "MSH-12")
    if not _VERSION.fullmatch(header.version):
        raise UnsupportedMessage(f"MSH-12 version {header.version!r} is not an HL7 v2 version (2.1 to 2.9)")


def decode(payload: bytes, header: Header) -> str:
    """The message as text, in the character set MSH-18 names."""
    declared = header.character_set
    if not declared:
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            return payload.decode("latin-1")
    codec = CHARACTER_SETS.get(declared)
    if codec is None:
        raise InvalidMessage(f"MSH-18 character set {declared!r} is not one we read: {', '.join(CHARACTER_SETS)}", "MSH-18")
    try:
        return payload.decode(codec)
    except UnicodeDecodeError as exc:
        raise InvalidMessage(f"the message is not valid {declared} (MSH-18): byte {exc.start} cannot be read") from None


def parse_message(payload: bytes, header: Header) -> Hl7Message:
    """The whole message; InvalidMessage when it cannot be read."""
    check_header(header)
    text = decode(payload, header).strip(" \t\r\n")
    if "\x00" in text:  # no HL7 value holds one, and PostgreSQL text cannot
        raise InvalidMessage(f"the message holds a NUL character (at character {text.index(chr(0))})")
    # Segments end with <CR> (2.5.2); senders on other systems sometimes send <CR><LF> or <LF>.
    text = text.replace("\r\n", "\r").replace("\n", "\r")
    try:
        parsed = hl7.parse(text)
    except (HL7Exception, ValueError, IndexError) as exc:
        raise InvalidMessage(f"the message cannot be parsed: {exc}") from None
    for number, segment in enumerate(parsed, start=1):
        name = str(segment[0])
        if not _SEGMENT_ID.fullmatch(name):
            raise InvalidMessage(f"segment {number} begins {name[:20]!r}: not a segment name (three letters or digits)")
    return Hl7Message(header, text + "\r", parsed)


def value(segment: hl7.Segment | None, field: int, component: int = 1, repetition: int = 1,
          subcomponent: int = 1) -> str:
    """One value, unescaped (2.7); empty when absent."""
    if segment is None:
        return ""
    try:
        found = segment.extract_field(1, field, repetition, component, subcomponent)
    except IndexError:
        return ""
    return str(found).strip()


def repetitions(segment: hl7.Segment | None, field: int) -> int:
    if segment is None or field >= len(segment):
        return 0
    found = segment[field]
    return len(found) if isinstance(found, hl7.Field) else 1


def codec_of(header: Header) -> str:
    """The codec the answer is written in: the message's own (2.9.2: answer as asked)."""
    codec = CHARACTER_SETS.get(header.character_set, "utf-8")
    return codecs.lookup(codec).name


def patient_id_of(text: str) -> str | None:
    """PID-3's first identifier, read loosely from a logged message (for audit records)."""
    try:
        header = read_header(text[:65536].encode("latin-1", errors="replace"))
    except InvalidMessage:
        return None
    for segment in re.split(r"[\r\n]+", text):
        if segment.startswith("PID" + header.field_separator):
            fields = segment.split(header.field_separator)
            identifier = fields[3].split(header.encoding_characters[1])[0] if len(fields) > 3 else ""
            return identifier.split(header.component_separator)[0][:64] or None
    return None
