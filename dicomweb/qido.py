"""QIDO-RS (PS3.18 10.6): query parameters -> Query -> DICOM JSON."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response

from dicomweb.media import negotiate_metadata, parse_accept
from dicomweb.responses import base_url, dicom_json_response
from pacs.config import Settings
from pacs.dicom.attributes import BY_KEYWORD, BY_TAG, Attribute, Level, resolve_attribute_name
from pacs.dicom.dicomjson import render_row, returned_attributes
from pacs.dicom.query import Condition, Query, parse_condition
from pacs.errors import InvalidQuery
from pacs.services import Services

_CONTROL = {"limit", "offset", "fuzzymatching", "includefield", "orderby", "_"}
_LIMIT_CEILING = 2**31 - 1
# Series/instance attributes named on a study search: Modality stands for ModalitiesInStudy,
# as in dcm4chee, because viewers send it that way.
_STUDY_ALIASES = {"Modality": "ModalitiesInStudy"}


@dataclass
class ParsedParams:
    query: Query
    warnings: list[str] = field(default_factory=list)


def parse_qido_params(
    items: Sequence[tuple[str, str]], level: Level, settings: Settings, scope: dict[str, str] | None = None
) -> ParsedParams:
    scope = scope or {}
    warnings: list[str] = []
    fuzzy = _boolean(items, "fuzzymatching")
    conditions: list[Condition] = []
    for keyword, uid in scope.items():
        condition = parse_condition(BY_KEYWORD[keyword], uid)
        if condition:
            conditions.append(condition)
    unsupported: list[str] = []
    for name, value in items:
        if name.lower() in _CONTROL:
            continue
        attribute = _matching_attribute(name, level)
        if attribute is None:
            unsupported.append(name)
            continue
        condition = parse_condition(attribute, value, fuzzy=fuzzy)
        if condition:
            conditions.append(condition)
    if unsupported:
        warnings.append("The following attributes are not supported for matching: " + ", ".join(unsupported))
    include_tags, include_all = _include_fields(items)
    limit, offset = _paging(items, settings, warnings)
    query = Query(
        level=level,
        conditions=tuple(conditions),
        include_tags=frozenset(include_tags),
        include_all=include_all,
        limit=limit,
        offset=offset,
        include_parents=not scope or level == Level.STUDY,
        ignored=tuple(unsupported),
    )
    return ParsedParams(query, warnings)


def _matching_attribute(name: str, level: Level) -> Attribute | None:
    """The catalogue attribute a parameter names, None if it is a real attribute we do not
    match on; InvalidQuery if it is not an attribute at all."""
    head, _, child = name.partition(".")
    try:
        tag, keyword = resolve_attribute_name(child or head)
        if child:
            parent_tag, parent_keyword = resolve_attribute_name(head)
    except KeyError:
        raise InvalidQuery(f"unknown attribute {name!r}") from None
    attribute = BY_TAG.get(tag)
    if level == Level.STUDY and keyword in _STUDY_ALIASES:
        attribute = BY_KEYWORD[_STUDY_ALIASES[keyword]]
    if attribute is None or attribute.level > level:
        return None
    if bool(child) != bool(attribute.parent) or (child and attribute.parent != parent_keyword):
        return None
    return attribute


def _include_fields(items: Sequence[tuple[str, str]]) -> tuple[set[int], bool]:
    tags: set[int] = set()
    include_all = False
    for name, value in items:
        if name.lower() != "includefield":
            continue
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            if part.lower() == "all":
                include_all = True
                continue
            try:
                tags.add(resolve_attribute_name(part.split(".")[0])[0])
            except KeyError:
                raise InvalidQuery(f"includefield: unknown attribute {part!r}") from None
    return tags, include_all


def _paging(items: Sequence[tuple[str, str]], settings: Settings, warnings: list[str]) -> tuple[int, int]:
    values = {name.lower(): value for name, value in items if name.lower() in ("limit", "offset")}
    limit = _non_negative(values, "limit", settings.qido_default_limit)
    offset = _non_negative(values, "offset", 0)
    if limit == 0:
        limit = settings.qido_default_limit
    if limit > settings.qido_max_limit:
        warnings.append(f"limit {limit} exceeds the maximum; {settings.qido_max_limit} results at most are returned")
        limit = settings.qido_max_limit
    return limit, offset


def _non_negative(values: dict[str, str], name: str, default: int) -> int:
    raw = values.get(name)
    if raw is None or raw.strip() == "":
        return default
    text = raw.strip()
    if not (text.isascii() and text.isdigit()):  # str.isdigit alone takes "²", which int() refuses
        raise InvalidQuery(f"{name} must be a non-negative integer, not {raw!r}")
    number = int(text)
    if number > _LIMIT_CEILING:
        raise InvalidQuery(f"{name} {text} is out of range (at most {_LIMIT_CEILING})")
    return number


def _boolean(items: Sequence[tuple[str, str]], name: str) -> bool:
    for key, value in items:
        if key.lower() == name:
            lowered = value.strip().lower()
            if lowered not in ("true", "false", ""):
                raise InvalidQuery(f"{name} must be true or false, not {value!r}")
            return lowered == "true"
    return False


def search(
    request: Request, services: Services, level: Level, scope: dict[str, str], referred_by: str | None
) -> Response:
    negotiate_metadata(parse_accept(request.headers.get("accept")))
    parsed = parse_qido_params(request.query_params.multi_items(), level, services.settings, scope)
    query = dataclasses.replace(parsed.query, referred_by=referred_by)
    rows = services.index.search(query)
    if not rows:
        _ensure_scope_exists(services, scope, referred_by)  # any row proves the scope exists
    attributes = returned_attributes(parsed.query)
    root = base_url(request)
    body = [render_row(row, query, attributes, root) for row in rows]
    # Several warnings form one comma-separated list (RFC 7234 5.5: Warning = 1#warning-value).
    headers = {"Warning": ", ".join(f'299 minipacs "{w}"' for w in parsed.warnings)} if parsed.warnings else None
    return dicom_json_response(request, body, headers=headers)


def _ensure_scope_exists(services: Services, scope: dict[str, str], referred_by: str | None) -> None:
    """/studies/{unknown}/series is a 404, not an empty list (also when the study is not the caller's)."""
    if scope:
        services.index.locate_scope(
            scope.get("StudyInstanceUID", ""), scope.get("SeriesInstanceUID"), referred_by=referred_by
        )
