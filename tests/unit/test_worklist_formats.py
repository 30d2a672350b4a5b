"""Pure pieces of the worklist's exchange formats: HL7 v2 escaping (2.7), DICOM date-times
(PS3.5 6.2) and the UPS-RS search ranges built from them, UPS <-> order mapping rules."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pacs.errors import InvalidInput, InvalidQuery
from worklist.export_formats import escape
from worklist.ups import ORDER_STATUSES_OF, parse_dicom_datetime
from worklist.ups_query import parse_search


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("plain", "plain"),
        ("a|b^c~d&e\\f", "a\\F\\b\\S\\c\\R\\d\\T\\e\\E\\f"),
        ("\\F\\", "\\E\\F\\E\\"),  # an escape sequence in the data is data
        ("two\r\nlines\t", "two\\X0D\\\\X0A\\lines\\X09\\"),
        ("Müller", "Müller"),  # UTF-8 (MSH-18), not hex
        (None, ""),
    ],
)
def test_hl7_escape(text: str | None, escaped: str) -> None:
    assert escape(text) == escaped


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("2030", datetime(2030, 1, 1, tzinfo=UTC)),
        ("20300405", datetime(2030, 4, 5, tzinfo=UTC)),
        ("20300405103000", datetime(2030, 4, 5, 10, 30, tzinfo=UTC)),
        ("20300405103000.25", datetime(2030, 4, 5, 10, 30, 0, 250000, tzinfo=UTC)),
        ("20300405103000+0200", datetime(2030, 4, 5, 8, 30, tzinfo=UTC)),
        ("203004051030-0130", datetime(2030, 4, 5, 12, 0, tzinfo=UTC)),
    ],
)
def test_dicom_datetimes(text: str, moment: datetime) -> None:
    assert parse_dicom_datetime(text, "DT") == moment


@pytest.mark.parametrize("text", ["2030-04-05", "20301305", "20300405+02", "203004051", "x"])
def test_bad_dicom_datetimes(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_dicom_datetime(text, "DT")


def _start(value: str) -> tuple[datetime | None, datetime | None]:
    query = parse_search([("ScheduledProcedureStepStartDateTime", value)], None).query
    return query.scheduled_from, query.scheduled_to


def test_search_ranges_cover_whole_periods() -> None:
    day, next_day = datetime(2030, 1, 31, tzinfo=UTC), datetime(2030, 2, 1, tzinfo=UTC)
    assert _start("20300131") == (day, next_day)
    assert _start("203001") == (datetime(2030, 1, 1, tzinfo=UTC), next_day)
    assert _start("2030") == (datetime(2030, 1, 1, tzinfo=UTC), datetime(2031, 1, 1, tzinfo=UTC))
    assert _start("20300131-") == (day, None)
    assert _start("-20300131") == (None, next_day)
    assert _start("203001311015-203001311016") == (
        datetime(2030, 1, 31, 10, 15, tzinfo=UTC), datetime(2030, 1, 31, 10, 17, tzinfo=UTC))


def test_search_states_and_names() -> None:
    query = parse_search([("00741000", "SCHEDULED,CANCELED"), ("limit", "5000")], "DOC^OWN").query
    assert set(query.statuses or ()) == {*ORDER_STATUSES_OF["SCHEDULED"], *ORDER_STATUSES_OF["CANCELED"]}
    assert (query.limit, query.referred_by) == (1000, "DOC^OWN")
    [condition] = parse_search([("0040A370.00080050", "ACC*")], None).query.conditions
    assert (condition.attribute.column, condition.values) == ("accession_number", ("ACC*",))
    with pytest.raises(InvalidQuery):
        parse_search([("ReferencedRequestSequence.NoSuchThing", "1")], None)
