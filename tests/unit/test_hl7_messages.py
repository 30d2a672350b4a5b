"""Reading HL7 v2 messages (header, character sets, segments, escapes), where order fields are
found in them, and the acknowledgements written back."""

from __future__ import annotations

from datetime import UTC, datetime

import hl7
import pytest

from pacs.errors import (
    Conflict,
    DatabaseUnavailable,
    InvalidInput,
    InvalidMessage,
    MissingField,
    NotFound,
    UnsupportedMessage,
)
from worklist.hl7.ack import Answer, answer_for, build_ack, escape
from worklist.hl7.intake import explained
from worklist.hl7.mapping import hl7_datetime, minutes, order_fields, order_groups, patient_fields, priority
from worklist.hl7.messages import Header, check_header, parse_message, patient_id_of, read_header

MSH = "MSH|^~\\&|RIS^1.2.3^ISO|HOSP|PACS|RAD|20260102030405||ORM^O01^ORM_O01|CTRL-1|P|2.5.1"


def parsed(*segments: str, msh: str = MSH, encoding: str = "utf-8") -> object:
    payload = "\r".join([msh, *segments]).encode(encoding)
    return parse_message(payload, read_header(payload))


def test_header_fields() -> None:
    header = read_header((MSH + "||||||UNICODE UTF-8\rPID|1").encode())
    assert (header.sending_application, header.sending_facility) == ("RIS^1.2.3^ISO", "HOSP")
    assert (header.receiving_application, header.receiving_facility) == ("PACS", "RAD")
    assert (header.message_code, header.trigger_event, header.message_type) == ("ORM", "O01", "ORM^O01")
    assert (header.control_id, header.processing_id, header.version) == ("CTRL-1", "P", "2.5.1")
    assert header.character_set == "UNICODE UTF-8" and header.problem is None


def test_header_with_other_delimiters_and_leading_whitespace() -> None:
    header = read_header(b"\r\n  MSH#!@$%#A#B#C#D#2026##ADT!A08#9#P#2.4")
    assert (header.field_separator, header.encoding_characters) == ("#", "!@$%")
    assert (header.message_type, header.control_id, header.version) == ("ADT^A08", "9", "2.4")


@pytest.mark.parametrize("start, field", [("PID|1|", "MSH"), ("MSH", "MSH"), ("MSHA^~\\&A", "MSH-1")])
def test_no_header(start: str, field: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        read_header(start.encode())
    assert caught.value.field == field


@pytest.mark.parametrize("encoding", ["^~&", "^^\\&", "^~|&", "^~\\A", "^~\\& x"])
def test_unusable_encoding_characters_are_reported(encoding: str) -> None:
    header = read_header(f"MSH|{encoding}|RIS|H|P|R|2026||ORM^O01|C1|P|2.5".encode())
    if "|" not in encoding:
        assert header.control_id == "C1"  # still read, to answer it
    with pytest.raises(InvalidMessage, match="MSH-2 encoding characters"):
        check_header(header)


def test_truncation_character_of_v27_is_accepted() -> None:
    check_header(read_header(b"MSH|^~\\&#|RIS|H|P|R|2026||ORM^O01|C1|P|2.7"))


@pytest.mark.parametrize("change, error, field", [
    (("|CTRL-1|", "||"), MissingField, "MSH-10"),
    (("ORM^O01^ORM_O01", "ORM"), MissingField, "MSH-9"),
    (("|2.5.1", "|"), MissingField, "MSH-12"),
    (("|2.5.1", "|3.0"), UnsupportedMessage, None),
    (("CTRL-1", "C" * 65), InvalidMessage, "MSH-10"),
])
def test_header_checks(change: tuple[str, str], error: type[Exception], field: str | None) -> None:
    with pytest.raises(error) as caught:
        check_header(read_header(MSH.replace(*change).encode()))
    assert getattr(caught.value, "field", None) == field


def test_segments_line_endings_and_escapes() -> None:
    message = parsed("PID|1||A\\T\\B^^^HOSP||O\\S\\Brien^Ann", "PV1|1")
    assert [str(s[0]) for s in message.parsed] == ["MSH", "PID", "PV1"]
    fields = patient_fields(message)
    assert (fields["patient_id"], fields["patient_name"]) == ("A&B", "O^Brien^Ann")
    unix = parse_message((MSH + "\nPID|1||X\n").encode(), read_header(MSH.encode()))
    assert [str(s[0]) for s in unix.parsed] == ["MSH", "PID"]


def test_a_segment_without_a_name_is_refused() -> None:
    with pytest.raises(InvalidMessage, match="segment 2 begins 'pi'"):
        parsed("pi|1")


def test_character_sets() -> None:
    latin = parsed("PID|1||X||Müller", msh=MSH + "||||||8859/1", encoding="latin-1")
    assert patient_fields(latin)["patient_name"] == "Müller"
    undeclared = parsed("PID|1||X||Müller", encoding="latin-1")  # not UTF-8: read as Latin-1
    assert patient_fields(undeclared)["patient_name"] == "Müller"
    with pytest.raises(InvalidMessage, match="not valid UNICODE UTF-8"):
        parsed("PID|1||X||Müller", msh=MSH + "||||||UNICODE UTF-8", encoding="latin-1")
    with pytest.raises(InvalidMessage, match="MSH-18 character set 'KLINGON'"):
        parsed("PID|1", msh=MSH + "||||||KLINGON")


def test_order_fields() -> None:
    message = parsed(
        "PID|1||ID1^^^H1^PI~MRN1^^^H2^MR||Doe^John^^III^Dr|",
        "PV1|1|I|W1^R2^B3",
        "ORC|NW|PL1^RIS|FL1||||^^^20300102030405+0100^^A|||||7^Who^Ordered",
        "OBR|1|||CT1^CT head|||||||||hist|||||ACC1||||||NMR|||||||^indication",
        "NTE|1||first note",
        "NTE|2||second note",
    )
    assert patient_fields(message) == {
        "patient_id": "MRN1", "issuer_of_patient_id": "H2", "patient_name": "Doe^John^^Dr^III",
    }
    [group] = order_groups(message)
    assert order_fields(group, message) == {
        "placer_order_number": "PL1", "filler_order_number": "FL1", "accession_number": "ACC1",
        "location": "W1 R2 B3", "ordering_provider": "Who^Ordered", "procedure_code": "CT1",
        "procedure_description": "CT head", "clinical_history": "hist", "clinical_indication": "indication",
        "modality": "MR", "special_instructions": "first note\nsecond note",
        "scheduled_at": "2030-01-02T03:04:05+01:00", "priority": "URGENT",
    }


def test_hl7_null_clears_and_empty_keeps() -> None:
    message = parsed('PID|1||X||""||""|""')
    assert patient_fields(message, identifier=False) == {
        "patient_name": None, "patient_birth_date": None, "patient_sex": None,
    }


def test_order_groups_need_an_orc() -> None:
    with pytest.raises(MissingField, match="no ORC"):
        order_groups(parsed("PID|1||X", "OBR|1"))


@pytest.mark.parametrize("text, expected", [
    ("20300102", "2030-01-02T00:00:00+00:00"),
    ("203001020304", "2030-01-02T03:04:00+00:00"),
    ("20300102030405.1234-0500", "2030-01-02T03:04:05-05:00"),
    ('""', None),
])
def test_hl7_datetime(text: str, expected: str | None) -> None:
    assert hl7_datetime(text, "TQ1-7") == expected


@pytest.mark.parametrize("text", ["2030", "2030-01-02", "20301302", "tomorrow"])
def test_bad_hl7_datetime(text: str) -> None:
    with pytest.raises(InvalidMessage):
        hl7_datetime(text, "TQ1-7")


def test_priority_and_duration() -> None:
    assert [priority(p) for p in ("S", "a", "R", "STAT", '""')] == ["STAT", "URGENT", "ROUTINE", "STAT", None]
    with pytest.raises(InvalidMessage, match="priority 'Q'"):
        priority("Q")
    assert (minutes("30", ""), minutes("1.5", "H"), minutes("90", "s"), minutes('""', "")) == (30, 90, 2, None)
    for bad in (("0", "min"), ("x", "min"), ("5", "fortnight")):
        with pytest.raises(InvalidMessage):
            minutes(*bad)


def test_explained_names_the_hl7_field() -> None:
    assert explained("patient_name is longer than 324 characters") == \
        "patient_name (PID-5) is longer than 324 characters"
    assert explained("unknown modality 'XX'; one of CT") == "unknown modality (OBR-24 / IPC-5) 'XX'; one of CT"
    assert explained("nothing to do with fields") == "nothing to do with fields"


def test_patient_id_of_a_logged_message() -> None:
    assert patient_id_of(MSH + "\rPID|1||MRN1^^^H~X2||Doe") == "MRN1"
    assert patient_id_of(MSH + "\rPV1|1") is None
    assert patient_id_of("not hl7") is None


# ---- acknowledgements -----------------------------------------------------------------------


def ack_of(header: Header, answer: Answer) -> hl7.Message:
    return hl7.parse(build_ack(header, answer, now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)).decode("latin-1"))


def test_accept_swaps_sender_and_receiver() -> None:
    ack = ack_of(read_header(MSH.encode()), Answer("AA", "done"))
    assert str(ack.segment("MSH")).startswith("MSH|^~\\&|PACS|RAD|RIS^1.2.3^ISO|HOSP|20260102030405+0000||ACK^O01^ACK|")
    msh = ack.segment("MSH")
    assert [str(msh[11]), str(msh[12])] == ["P", "2.5.1"]
    assert len(str(msh[10])) == 20
    assert str(ack.segment("MSA")) == "MSA|AA|CTRL-1|done"
    assert ack.segments("MSA") and not any(str(s[0]) == "ERR" for s in ack)


def test_error_in_v25_and_before() -> None:
    answer = answer_for(MissingField("PID-3 (patient identifier) is empty", "PID-3"))
    ack = ack_of(read_header(MSH.encode()), answer)
    assert str(ack.segment("ERR")) == (
        "ERR||PID^1^3|101^Required field missing^HL70357|E||||PID-3 (patient identifier) is empty"
    )
    old = read_header(MSH.replace("2.5.1", "2.3").encode())
    ack = ack_of(old, answer)
    assert str(ack.segment("MSH")[9]) == "ACK^O01"  # no message structure before v2.4
    assert str(ack.segment("ERR")) == "ERR|PID^1^3^101&Required field missing&HL70357"


def test_answer_in_the_message_delimiters_and_character_set() -> None:
    header = read_header(b"MSH#!@$%#RIS#H#PACS#R#2026##ORM!O01#C!9#P#2.5######8859/1")
    payload = build_ack(header, Answer("AE", "Mü#ller!x", "102"))
    assert payload.startswith(b"MSH#!@$%#PACS#R#RIS#H#")
    assert b"MSA#AE#C$S$9#M\xfc$F$ller$S$x" in payload  # escaped with $, encoded as Latin-1
    assert payload.split(b"\r")[0].endswith(b"#8859/1")


def test_a_message_without_header_is_answered_with_defaults() -> None:
    ack = ack_of(Header(), Answer("AE", "the message does not begin with an MSH segment", "102", "MSH"))
    assert str(ack.segment("MSH")[3]) == "MINIPACS" and str(ack.segment("MSH")[9]) == "ACK"
    assert str(ack.segment("MSA")) == "MSA|AE||the message does not begin with an MSH segment"


def test_reasons_are_escaped_and_kept_on_one_line() -> None:
    assert escape("a|b^c~d\\e&f\r\ng", "|", "^~\\&") == "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f g"


@pytest.mark.parametrize("exc, code, error_code", [
    (UnsupportedMessage("x"), "AR", "200"),
    (MissingField("x", "PID-3"), "AE", "101"),
    (InvalidMessage("x"), "AE", "102"),
    (InvalidInput("x"), "AE", "102"),
    (NotFound("x"), "AE", "204"),
    (Conflict("x"), "AE", "207"),
    (DatabaseUnavailable("x"), "AR", "207"),
])
def test_answer_table(exc: Exception, code: str, error_code: str) -> None:
    answer = answer_for(exc)  # type: ignore[arg-type]
    assert (answer.code, answer.error_code, answer.text) == (code, error_code, "x")
