"""The Query model: parsing matching values (PS3.4 C.2.2.2), QIDO parameters, and the SQL
patterns the search compiler makes of them."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy.dialects import postgresql, sqlite

from dicomweb.qido import ParsedParams, parse_qido_params
from pacs.config import Settings
from pacs.dicom.attributes import BY_KEYWORD, Level, resolve_attribute_name
from pacs.dicom.query import Condition, MatchKind, parse_condition
from pacs.errors import InvalidQuery
from pacs.index.search import compile_query, condition_sql, wildcard_to_like

SETTINGS = Settings.from_mapping({"qido_default_limit": 10, "qido_max_limit": 50})


def parse(keyword: str, value: str, *, fuzzy: bool = False) -> Condition | None:
    return parse_condition(BY_KEYWORD[keyword], value, fuzzy=fuzzy)


def kind_and_values(keyword: str, value: str) -> tuple[MatchKind, tuple[str, ...]]:
    condition = parse(keyword, value)
    assert condition is not None
    return condition.kind, condition.values


# --- universal and single value ------------------------------------------------------------


@pytest.mark.parametrize("value", ["", "   ", "*"])
@pytest.mark.parametrize("keyword", ["PatientName", "StudyDate", "StudyInstanceUID", "SeriesNumber", "Modality"])
def test_empty_value_and_lone_star_are_universal(keyword: str, value: str) -> None:
    assert parse(keyword, value) is None


@pytest.mark.parametrize(
    ("keyword", "value", "expected"),
    [
        ("PatientID", "PID-1", ("PID-1",)),
        ("AccessionNumber", "  ACC 1  ", ("ACC 1",)),
        ("AccessionNumber", "A%B_C", ("A%B_C",)),  # no wildcard: matched literally
        ("PatientName", "Müller^Jürgen", ("Müller^Jürgen",)),
        ("StudyDate", "20240115", ("20240115",)),
        ("StudyDate", "2024.01.15", ("20240115",)),  # ACR-NEMA dotted form (PS3.5 6.2 note)
        ("StudyTime", "1015", ("101500",)),
        ("StudyTime", "10:15:30", ("101530",)),
        ("SeriesNumber", "+007", ("7",)),
        ("StudyInstanceUID", "1.2.3", ("1.2.3",)),
    ],
)
def test_single_value(keyword: str, value: str, expected: tuple[str, ...]) -> None:
    assert kind_and_values(keyword, value) == (MatchKind.SINGLE, expected)


# --- lists -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1.2.3,1.2.4", "1.2.3\\1.2.4", " 1.2.3 , 1.2.4 ,"])
def test_uid_lists_accept_comma_and_backslash(value: str) -> None:
    assert kind_and_values("StudyInstanceUID", value) == (MatchKind.LIST, ("1.2.3", "1.2.4"))


@pytest.mark.parametrize("value", ["1.2.*", "1.2.?", "1.2.3,abc", "1.2.3%", "' OR 1=1 --", "1" * 65])
def test_uid_values_must_be_uids(value: str) -> None:
    with pytest.raises(InvalidQuery, match="StudyInstanceUID"):
        parse("StudyInstanceUID", value)


def test_code_string_list_and_integer_list() -> None:
    assert kind_and_values("Modality", "CT,SR") == (MatchKind.LIST, ("CT", "SR"))
    assert kind_and_values("Modality", "CT\\MR") == (MatchKind.LIST, ("CT", "MR"))
    assert kind_and_values("InstanceNumber", "1,3") == (MatchKind.LIST, ("1", "3"))


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("StudyInstanceUID", ","), ("StudyInstanceUID", "\\"), ("SeriesNumber", ", ,"), ("Modality", "\\,")],
)
def test_a_list_of_nothing_is_refused(keyword: str, value: str) -> None:
    with pytest.raises(InvalidQuery, match=keyword):
        parse(keyword, value)


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("PatientID", "a\x00b"), ("PatientName", "DOE\x00*"), ("AccessionNumber", "A\x1bB"), ("Modality", "C\x7fT")],
)
def test_control_characters_are_refused(keyword: str, value: str) -> None:
    with pytest.raises(InvalidQuery, match="control characters"):
        parse(keyword, value)


@pytest.mark.parametrize("value", ["abc", "1.5", "1e3", "12345678901", "²", "٣"])
def test_integers_are_validated(value: str) -> None:
    with pytest.raises(InvalidQuery, match="SeriesNumber"):
        parse("SeriesNumber", value)


# --- wildcards -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["DOE*", "D?E", "*OE^J*"])
def test_star_and_question_mark_make_wildcard_matching(value: str) -> None:
    assert kind_and_values("PatientName", value) == (MatchKind.WILDCARD, (value,))


def test_fuzzy_flag_only_applies_to_person_names() -> None:
    name = parse("PatientName", "DOE", fuzzy=True)
    accession = parse("AccessionNumber", "DOE", fuzzy=True)
    assert name is not None and name.fuzzy
    assert accession is not None and not accession.fuzzy


@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        ("DOE*", "DOE%"),
        ("D?E", "D_E"),
        ("100%*", "100\\%%"),
        ("A_B*", "A\\_B%"),
        ("A\\B*", "A\\\\B%"),
        ("*", "%"),
    ],
)
def test_wildcard_to_like_escapes_like_metacharacters(value: str, pattern: str) -> None:
    assert wildcard_to_like(value) == pattern


@pytest.mark.parametrize(
    ("query", "candidate", "matches"),
    [
        ("100%*", "100%^PERCENT", True),
        ("100%*", "1000^X", False),
        ("ACC_*", "ACC_200", True),
        ("ACC_*", "ACCX200", False),
        ("ACC?200", "ACCX200", True),
        ("A\\B*", "A\\B C", True),
        ("A\\B*", "AB", False),
        ("山?^太郎", "山田^太郎", True),
    ],
)
def test_like_pattern_semantics(query: str, candidate: str, matches: bool) -> None:
    with sqlite3.connect(":memory:") as db:
        (found,) = db.execute("SELECT ? LIKE ? ESCAPE '\\'", (candidate, wildcard_to_like(query))).fetchone()
    assert bool(found) is matches


# --- dates and times -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20240101-20240131", ("20240101", "20240131")),
        ("-20240131", ("", "20240131")),
        ("20240101-", ("20240101", "")),
        ("20240101-20240101", ("20240101", "20240101")),
    ],
)
def test_date_ranges(value: str, expected: tuple[str, str]) -> None:
    assert kind_and_values("StudyDate", value) == (MatchKind.RANGE, expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1000-1100", ("100000", "110059.999999")),  # an upper bound covers its whole minute
        ("-0830", ("", "083059.999999")),
        ("23-", ("230000", "")),
        ("080000-120000", ("080000", "120000.999999")),
        ("101500.25-101501.5", ("101500.25", "101501.5")),
    ],
)
def test_time_ranges(value: str, expected: tuple[str, str]) -> None:
    assert kind_and_values("StudyTime", value) == (MatchKind.RANGE, expected)


@pytest.mark.parametrize(
    "value",
    [
        "2024-13-45",
        "abc",
        "20240101-20230101",
        "20241301",
        "20240230",
        "2024011",
        "-",
        "2024-01-01-",
        "2024010a",
        "٢٠٢٤٠١٠١",  # Arabic-Indic digits: \d would take them
    ],
)
def test_malformed_dates_are_refused_naming_the_attribute(value: str) -> None:
    with pytest.raises(InvalidQuery, match="StudyDate"):
        parse("StudyDate", value)


@pytest.mark.parametrize("value", ["24", "1060", "105961", "105999", "abc", "1100-1000", "10:15:3x", "1", "١٠"])
def test_malformed_times_are_refused(value: str) -> None:
    with pytest.raises(InvalidQuery, match="StudyTime"):
        parse("StudyTime", value)


def test_leap_second_is_a_valid_time() -> None:
    assert kind_and_values("StudyTime", "235960") == (MatchKind.SINGLE, ("235960",))


# --- QIDO parameters -----------------------------------------------------------------------


def qido(items: list[tuple[str, str]], level: Level = Level.STUDY, scope: dict[str, str] | None = None) -> ParsedParams:
    return parse_qido_params(items, level, SETTINGS, scope)


def test_attribute_named_by_keyword_or_tag() -> None:
    by_keyword = qido([("PatientID", "P1")]).query.conditions
    by_tag = qido([("00100020", "P1")]).query.conditions
    assert by_keyword == by_tag
    assert [c.attribute.keyword for c in by_tag] == ["PatientID"]


def test_modality_on_a_study_search_means_modalities_in_study() -> None:
    for name in ("Modality", "00080060", "ModalitiesInStudy"):
        [condition] = qido([(name, "SR")]).query.conditions
        assert condition.attribute.keyword == "ModalitiesInStudy"


def test_a_real_attribute_we_do_not_match_on_is_ignored_with_a_warning() -> None:
    parsed = qido([("SeriesDescription", "AXIAL"), ("00180050", "1.25"), ("PatientID", "P1")])
    assert [c.attribute.keyword for c in parsed.query.conditions] == ["PatientID"]
    assert parsed.query.ignored == ("SeriesDescription", "00180050")
    assert len(parsed.warnings) == 1 and "SeriesDescription" in parsed.warnings[0]


@pytest.mark.parametrize("name", ["NotAKeyword", "patientname", "0010002", "0010002G"])
def test_unknown_attribute_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidQuery, match="unknown attribute"):
        qido([(name, "x")])


def test_includefield_by_tag_keyword_list_repeat_and_all() -> None:
    slice_thickness = resolve_attribute_name("SliceThickness")[0]
    body_part = resolve_attribute_name("BodyPartExamined")[0]
    assert qido([("includefield", "00180050")]).query.include_tags == {slice_thickness}
    assert qido([("includefield", "SliceThickness,BodyPartExamined")]).query.include_tags == {
        slice_thickness,
        body_part,
    }
    repeated = qido([("includefield", "SliceThickness"), ("includefield", "00180015")]).query
    assert repeated.include_tags == {slice_thickness, body_part}
    everything = qido([("includefield", "all")]).query
    assert everything.include_all and not everything.include_tags
    with pytest.raises(InvalidQuery, match="includefield"):
        qido([("includefield", "NoSuchKeyword")])


@pytest.mark.parametrize(
    ("items", "limit", "offset", "warned"),
    [
        ([], 10, 0, False),
        ([("limit", "5"), ("offset", "7")], 5, 7, False),
        ([("limit", "0")], 10, 0, False),
        ([("limit", "50")], 50, 0, False),
        ([("limit", "51")], 50, 0, True),
    ],
)
def test_paging(items: list[tuple[str, str]], limit: int, offset: int, warned: bool) -> None:
    parsed = qido(items)
    assert (parsed.query.limit, parsed.query.offset) == (limit, offset)
    assert bool(parsed.warnings) is warned


@pytest.mark.parametrize(
    "items",
    [
        [("limit", "-1")],
        [("limit", "ten")],
        [("limit", "1.5")],
        [("limit", "99999999999999999999")],
        [("offset", "-5")],
        [("offset", "²")],
        [("limit", "²")],
        [("fuzzymatching", "maybe")],
    ],
)
def test_bad_control_parameters_are_refused(items: list[tuple[str, str]]) -> None:
    with pytest.raises(InvalidQuery):
        qido(items)


def test_fuzzymatching_and_cache_buster_are_control_parameters() -> None:
    parsed = qido([("fuzzymatching", "true"), ("PatientName", "doe"), ("_", "1700000000")])
    [condition] = parsed.query.conditions
    assert condition.fuzzy
    assert not parsed.warnings


def test_scope_becomes_conditions_and_hides_parent_attributes() -> None:
    parsed = qido([], Level.SERIES, {"StudyInstanceUID": "1.2.3"})
    [condition] = parsed.query.conditions
    assert (condition.attribute.keyword, condition.values) == ("StudyInstanceUID", ("1.2.3",))
    assert not parsed.query.include_parents
    assert qido([], Level.SERIES).query.include_parents


def test_sequence_attribute_matching_needs_its_sequence() -> None:
    [condition] = qido([("RequestAttributesSequence.RequestedProcedureID", "RP1")], Level.SERIES).query.conditions
    assert condition.attribute.keyword == "RequestedProcedureID"
    assert qido([("RequestedProcedureID", "RP1")], Level.SERIES).query.ignored == ("RequestedProcedureID",)


# --- SQL -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", [sqlite.dialect(), postgresql.dialect()])
def test_values_are_bound_never_inlined(dialect: object) -> None:
    hostile = "' OR 1=1 --"
    query = qido([("PatientName", hostile + "*"), ("AccessionNumber", hostile)]).query
    compiled = compile_query(query).compile(dialect=dialect)  # type: ignore[arg-type]
    assert hostile not in str(compiled)
    assert hostile in compiled.params.values()
    assert hostile.upper() + "%" in compiled.params.values()


def test_person_name_matching_uses_the_upper_cased_column() -> None:
    condition = parse("PatientName", "doe*")
    assert condition is not None
    compiled = condition_sql(condition).compile(dialect=sqlite.dialect())
    assert "patient_name_norm LIKE" in str(compiled)
    assert "ESCAPE" in str(compiled)
    assert list(compiled.params.values()) == ["DOE%"]
