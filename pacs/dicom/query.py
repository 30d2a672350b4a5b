"""One query model for QIDO-RS, C-FIND and (later) the worklist.

Matching types follow PS3.4 C.2.2.2: single value, list of UIDs, universal (empty value),
wildcard (``*`` and ``?``) and range (dates and times). Parsing validates values and raises
InvalidQuery with a message that names the attribute.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from dataclasses import dataclass, field

from pacs.dicom.attributes import INTEGER_VRS, Attribute, Level, normalize_time
from pacs.errors import InvalidQuery


class MatchKind(enum.Enum):
    SINGLE = "single"
    LIST = "list"
    WILDCARD = "wildcard"
    RANGE = "range"


@dataclass(frozen=True)
class Condition:
    attribute: Attribute
    kind: MatchKind
    values: tuple[str, ...]  # RANGE: (low, high), either may be "" for an open end
    fuzzy: bool = False  # person names: also match the value at the start of any name component


@dataclass(frozen=True)
class Query:
    level: Level
    conditions: tuple[Condition, ...] = ()
    include_tags: frozenset[int] = frozenset()  # extra attributes asked for (includefield)
    include_all: bool = False
    limit: int | None = None
    offset: int = 0
    include_parents: bool = True  # return the attributes of the enclosing study/patient too
    ignored: tuple[str, ...] = field(default=())  # attributes not supported for matching
    # Only studies whose (normalised) ReferringPhysicianName is this: what a provider may see.
    referred_by: str | None = None


# re.ASCII: DICOM numbers are ASCII digits (PS3.5 6.2); without it \d also takes "٣" or "²".
_DATE = re.compile(r"\d{8}", re.ASCII)
_TIME = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?", re.ASCII)
_DATETIME = re.compile(r"\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?", re.ASCII)
_INTEGER = re.compile(r"[+-]?[0-9]{1,10}")
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


def parse_condition(attribute: Attribute, raw: str, *, fuzzy: bool = False) -> Condition | None:
    """Turn one matching value into a Condition; None means universal matching."""
    value = raw.strip()
    if value in ("", "*"):
        return None
    if _CONTROL_CHARACTER.search(value):
        # No DICOM string value holds them, and PostgreSQL refuses NUL in any text parameter.
        raise InvalidQuery(f"{attribute.keyword}: control characters are not allowed: {value!r}")
    vr = attribute.vr
    if vr in ("DA", "TM", "DT"):
        return _range_or_single(attribute, value)
    if vr == "UI":
        uids = _split_list(attribute, value)
        if any(not re.fullmatch(r"[0-9.]{1,64}", uid) for uid in uids):
            raise InvalidQuery(f"{attribute.keyword}: not a UID or list of UIDs: {value!r}")
        return Condition(attribute, MatchKind.LIST if len(uids) > 1 else MatchKind.SINGLE, uids)
    if vr in INTEGER_VRS:
        return _integer(attribute, value)
    if "*" in value or "?" in value:
        return Condition(attribute, MatchKind.WILDCARD, (value,), fuzzy=fuzzy and vr == "PN")
    if vr == "CS" and ("\\" in value or "," in value):
        values = _split_list(attribute, value)
        return Condition(attribute, MatchKind.LIST if len(values) > 1 else MatchKind.SINGLE, values)
    return Condition(attribute, MatchKind.SINGLE, (value,), fuzzy=fuzzy and vr == "PN")


def _split_list(attribute: Attribute, value: str) -> tuple[str, ...]:
    """Values separated by backslashes (PS3.4 C.2.2.2.2) or commas (PS3.18 8.3.4.1)."""
    values = tuple(v.strip() for v in re.split(r"[\\,]", value) if v.strip())
    if not values:
        raise InvalidQuery(f"{attribute.keyword}: a list needs at least one value: {value!r}")
    return values


def _integer(attribute: Attribute, value: str) -> Condition:
    values = _split_list(attribute, value)
    for item in values:
        if not _INTEGER.fullmatch(item):
            raise InvalidQuery(f"{attribute.keyword}: not an integer: {item!r}")
    normalised = tuple(str(int(v)) for v in values)
    return Condition(attribute, MatchKind.LIST if len(values) > 1 else MatchKind.SINGLE, normalised)


def _range_or_single(attribute: Attribute, value: str) -> Condition:
    if value.count("-") > 1 and attribute.vr != "DT":
        raise InvalidQuery(f"{attribute.keyword}: malformed range {value!r}")
    if "-" in value and not (attribute.vr == "DT" and _looks_like_single_datetime(value)):
        low, _, high = value.partition("-") if attribute.vr != "DT" else _split_datetime_range(value)
        if not low and not high:
            raise InvalidQuery(f"{attribute.keyword}: a range needs at least one end")
        low, high = _checked(attribute, low, low_end=True), _checked(attribute, high, low_end=False)
        if low and high and low > high:
            raise InvalidQuery(f"{attribute.keyword}: range start {low} is after its end {high}")
        return Condition(attribute, MatchKind.RANGE, (low, high))
    return Condition(attribute, MatchKind.SINGLE, (_checked(attribute, value, low_end=True),))


def _checked(attribute: Attribute, value: str, *, low_end: bool) -> str:
    """Validate one date/time value and return it in the index's sortable form."""
    value = value.strip()
    if not value:
        return ""
    vr = attribute.vr
    if vr == "DA":
        text = value.replace(".", "") if re.fullmatch(r"\d{4}\.\d{2}\.\d{2}", value) else value
        if not _DATE.fullmatch(text):
            raise InvalidQuery(f"{attribute.keyword}: {value!r} is not a date (YYYYMMDD)")
        try:
            dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
        except ValueError:
            raise InvalidQuery(f"{attribute.keyword}: {value!r} is not a valid date") from None
        return text
    if vr == "TM":
        text = value.replace(":", "")
        if not _TIME.fullmatch(text) or not _valid_time_fields(text):
            raise InvalidQuery(f"{attribute.keyword}: {value!r} is not a time (HHMMSS.FFFFFF)")
        normalised = normalize_time(text) or ""
        # An open-ended upper bound "-1000" must include 10:00:59.999999.
        return normalised if low_end or "." in normalised else _upper_time(text)
    if not _DATETIME.fullmatch(value):
        raise InvalidQuery(f"{attribute.keyword}: {value!r} is not a datetime")
    return value


def _valid_time_fields(text: str) -> bool:
    """HH 00-23, MM 00-59, SS 00-60 (60 for a leap second, PS3.5 Table 6.2-1)."""
    limits = (23, 59, 60)
    return all(int(text[i * 2 : i * 2 + 2]) <= limit for i, limit in enumerate(limits) if len(text) >= i * 2 + 2)


def _upper_time(text: str) -> str:
    filled = text + "235959"[len(text) :] if len(text) < 6 else text
    if len(text) == 2:
        filled = text + "5959"
    elif len(text) == 4:
        filled = text + "59"
    return filled + ".999999"


def _looks_like_single_datetime(value: str) -> bool:
    return bool(_DATETIME.fullmatch(value))


def _split_datetime_range(value: str) -> tuple[str, str, str]:
    if value.startswith("-"):
        return "", "-", value[1:]
    if value.endswith("-"):
        return value[:-1], "-", ""
    # The separating hyphen is the one followed by a digit run of at least 4 (a year).
    match = re.fullmatch(r"(.+?)-(\d{4}.*)", value)
    if not match:
        raise InvalidQuery(f"malformed datetime range {value!r}")
    return match.group(1), "-", match.group(2)
