"""Header values: Content-Type / media-range parsing shared by STOW (request bodies) and
media negotiation (Accept). Lenient where real clients are sloppy, strict where it matters."""

from __future__ import annotations

from dataclasses import dataclass

from pacs.errors import UnsupportedMediaType

# RFC 2046 caps boundaries at 70 characters. Real clients stay well below it,
# but we allow some slack for sloppy ones; the cap only exists to bound how
# much unemitted data the reader keeps back while looking for a delimiter.
MAX_BOUNDARY_CHARS = 256


@dataclass(frozen=True)
class ContentType:
    """A parsed media type: ``media_type`` and ``params`` are normalised so
    callers compare them directly (names lower-cased, values unquoted)."""

    media_type: str
    params: dict[str, str]


def parse_content_type(value: str) -> ContentType:
    """Parse a Content-Type (or a single Accept media range).

    Lenient where clients are known to be sloppy: spaces around ``;`` and
    ``=``, unquoted values containing ``/`` (e.g. ``type=application/dicom``,
    which RFC 9110 would require to be quoted), and ``;`` inside quoted values.
    """
    pieces = split_unquoted(value, ";")
    media_type = pieces[0].strip().lower()
    major, slash, minor = media_type.partition("/")
    if not slash or not is_token(major) or not is_token(minor):
        raise UnsupportedMediaType(f"malformed media type {value!r}")
    params: dict[str, str] = {}
    for piece in pieces[1:]:
        name, equals, raw = piece.partition("=")
        name = name.strip().lower()
        if not equals or not name:
            continue  # stray ';' or a bare word: ignore rather than reject
        # First occurrence wins, like most HTTP stacks.
        params.setdefault(name, unquote(raw.strip()))
    return ContentType(media_type, params)


def boundary_of(content_type: ContentType) -> str:
    """The boundary of a multipart Content-Type, checked for usability."""
    if not content_type.media_type.startswith("multipart/"):
        raise UnsupportedMediaType(f"expected a multipart body, got {content_type.media_type}")
    boundary = content_type.params.get("boundary", "")
    check_boundary(boundary)
    return boundary


def split_unquoted(text: str, separator: str) -> list[str]:
    """Split on ``separator`` except inside double quotes (with ``\\`` escapes)."""
    pieces: list[str] = []
    start = 0
    quoted = escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            pieces.append(text[start:index])
            start = index + 1
    pieces.append(text[start:])
    return pieces


def unquote(value: str) -> str:
    """Remove the quotes of an RFC 9110 quoted-string; other values unchanged."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner = value[1:-1]
        if "\\" not in inner:
            return inner
        out: list[str] = []
        chars = iter(inner)
        for char in chars:
            out.append(next(chars, "") if char == "\\" else char)
        return "".join(out)
    return value


_TOKEN_SPECIALS = frozenset('()<>@,;:\\"/[]?={} \t')


def is_token(text: str) -> bool:
    return bool(text) and all(33 <= ord(c) < 127 and c not in _TOKEN_SPECIALS for c in text)


def check_boundary(boundary: str) -> None:
    if not boundary:
        raise UnsupportedMediaType("multipart Content-Type has no boundary parameter")
    if len(boundary) > MAX_BOUNDARY_CHARS:
        raise UnsupportedMediaType("multipart boundary is too long")
    if any(c in "\r\n" or ord(c) > 0xFF for c in boundary):
        raise UnsupportedMediaType("multipart boundary contains invalid characters")
