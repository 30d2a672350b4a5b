"""Accept header negotiation for WADO-RS (PS3.18 section 8.7).

The routes parse the Accept header once with :func:`parse_accept` and call the
``negotiate_*`` function of their resource. Each either returns what to send
or raises :class:`NotAcceptable` naming what the client asked for and what
this archive can offer.

Without a specific transfer syntax, instances and compressed frames are sent
as stored, uncompressed frames as raw little-endian octets. A client naming a
syntax we do not store gets it transcoded when the route's ``producible_from``
(what an object stored in a syntax can be converted to here) allows it; the
chosen answer says so, and a 406 names what could be produced.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from dicomweb.content_type import parse_content_type, split_unquoted, unquote
from pacs.errors import NotAcceptable, UnsupportedMediaType

__all__ = [
    "DICOM",
    "DICOM_JSON",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "OCTET_STREAM",
    "TRANSFER_SYNTAX_MEDIA_TYPES",
    "UNCOMPRESSED_TRANSFER_SYNTAXES",
    "FrameRepresentation",
    "MediaRange",
    "Producible",
    "negotiate_bulkdata",
    "negotiate_frames",
    "negotiate_instances",
    "negotiate_metadata",
    "parse_accept",
]

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
OCTET_STREAM = "application/octet-stream"

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
# PS3.5 A.4.11: encapsulated, but every fragment holds a raw little-endian
# frame, so its frames are served exactly like native uncompressed ones.
ENCAPSULATED_UNCOMPRESSED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.98"

# Native (non-encapsulated) pixel data: frames are plain octets, sent as
# application/octet-stream in Explicit VR Little Endian (PS3.18 Table 8.7.3-4);
# the route swaps bytes for Big Endian.
UNCOMPRESSED_TRANSFER_SYNTAXES: frozenset[str] = frozenset(
    {
        IMPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_BIG_ENDIAN,
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    }
)

# The media type each compressed transfer syntax is naturally served as
# (PS3.18 Table 8.7.3-5, spellings of the current edition).
TRANSFER_SYNTAX_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51": "image/jpeg",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57": "image/jpeg",  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70": "image/jpeg",  # JPEG Lossless, SV1
    "1.2.840.10008.1.2.4.80": "image/jls",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "image/jls",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": "image/jp2",  # JPEG 2000 Lossless Only
    "1.2.840.10008.1.2.4.91": "image/jp2",  # JPEG 2000
    "1.2.840.10008.1.2.4.92": "image/jpx",  # JPEG 2000 Part 2 Lossless Only
    "1.2.840.10008.1.2.4.93": "image/jpx",  # JPEG 2000 Part 2
    "1.2.840.10008.1.2.4.110": "image/jxl",  # JPEG XL Lossless
    "1.2.840.10008.1.2.4.111": "image/jxl",  # JPEG XL JPEG Recompression
    "1.2.840.10008.1.2.4.112": "image/jxl",  # JPEG XL
    "1.2.840.10008.1.2.4.201": "image/jphc",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": "image/jphc",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": "image/jphc",  # HTJ2K
    "1.2.840.10008.1.2.5": "image/dicom-rle",  # RLE Lossless
    "1.2.840.10008.1.2.4.100": "video/mpeg2",  # MPEG2 Main Profile / Main Level
    "1.2.840.10008.1.2.4.101": "video/mpeg2",  # MPEG2 Main Profile / High Level
    "1.2.840.10008.1.2.4.102": "video/mp4",  # MPEG-4 AVC/H.264 High Profile 4.1
    "1.2.840.10008.1.2.4.103": "video/mp4",  # ... BD-compatible High Profile 4.1
    "1.2.840.10008.1.2.4.104": "video/mp4",  # ... High Profile 4.2 for 2D video
    "1.2.840.10008.1.2.4.105": "video/mp4",  # ... High Profile 4.2 for 3D video
    "1.2.840.10008.1.2.4.106": "video/mp4",  # ... Stereo High Profile 4.2
    "1.2.840.10008.1.2.4.107": "video/H265",  # HEVC/H.265 Main Profile 5.1
    "1.2.840.10008.1.2.4.108": "video/H265",  # HEVC/H.265 Main 10 Profile 5.1
}

# Older PS3.18 editions and the clients written against them use other names
# (image/x-dicom-rle, image/x-jls, video/mpeg, HEVC as video/mp4); a client
# asking by such a name gets the stored bytes under the name it asked for.
_LEGACY_MEDIA_TYPES: dict[str, frozenset[str]] = {
    "image/dicom-rle": frozenset({"image/x-dicom-rle"}),
    "image/jls": frozenset({"image/x-jls"}),
    "video/mpeg2": frozenset({"video/mpeg"}),
    "video/h265": frozenset({"video/mp4"}),
}

_WILDCARDS = frozenset({"*/*", "multipart/*"})


@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept header, reduced to what WADO-RS looks at."""

    media_type: str
    part_type: str | None
    transfer_syntax: str | None
    q: float

    def __str__(self) -> str:
        text = self.media_type
        if self.part_type is not None:
            text += f'; type="{self.part_type}"'
        if self.transfer_syntax is not None:
            text += f"; transfer-syntax={self.transfer_syntax}"
        if self.q != 1.0:
            text += f"; q={self.q:g}"
        return text


@dataclass(frozen=True)
class FrameRepresentation:
    """How to send frames: each part's Content-Type, the transfer-syntax
    parameter to announce, and whether frames must be converted to it."""

    part_media_type: str
    transfer_syntax: str
    transcode: bool = False


# Given a stored transfer syntax, the syntaxes it can be transcoded to.
Producible = Callable[[str], frozenset[str]]


def _stored_only(stored_ts: str) -> frozenset[str]:
    return frozenset()


_ANY = MediaRange("*/*", None, None, 1.0)


# --------------------------------------------------------------------------
# Accept parsing
# --------------------------------------------------------------------------


def parse_accept(header: str | None) -> list[MediaRange]:
    """Parse an Accept header into media ranges, most preferred first.

    No header means anything is acceptable (RFC 9110 12.5.1). Ranges that
    cannot be parsed or have q=0 are dropped; ties keep the client's order.
    """
    if header is None or not header.strip(" \t,"):
        return [_ANY]
    # Commas inside quoted parameters (e.g. a quoted type carrying its own
    # parameter list) do not separate ranges.
    ranges = [r for r in map(_parse_range, split_unquoted(header, ",")) if r is not None]
    return sorted(ranges, key=lambda r: -r.q)


def _parse_range(text: str) -> MediaRange | None:
    text = text.strip()
    if not text:
        return None
    # Quirk: Java's HttpURLConnection sends "*; q=.2" for "*/*; q=.2".
    head, semicolon, rest = text.partition(";")
    if head.strip() == "*":
        text = "*/*" + semicolon + rest
    try:
        parsed = parse_content_type(text)
    except UnsupportedMediaType:
        return None
    q = _parse_q(parsed.params.get("q"))
    if q == 0.0:
        return None
    part_type = None
    transfer_syntax = parsed.params.get("transfer-syntax")
    if parsed.media_type == "multipart/related" and parsed.params.get("type"):
        part_type, inner_syntax = _split_type_param(parsed.params["type"])
        transfer_syntax = transfer_syntax or inner_syntax
    return MediaRange(parsed.media_type, part_type, _clean(transfer_syntax), q)


def _split_type_param(value: str) -> tuple[str | None, str | None]:
    """Split a ``type`` parameter value into the part type and a
    transfer-syntax found inside it.

    Quirks handled here, all seen from real clients:
      * ``type="application/dicom"`` and ``type=application/dicom`` (unquoted,
        although ``/`` requires quoting) are the same; the parser accepts both.
      * some clients put the transfer syntax inside the quoted type:
        ``type="application/octet-stream; transfer-syntax=*"``.
      * OHIF viewer 3.13 sends exactly
        ``multipart/related; type="application/octet-stream"; transfer-syntax=*``
        where the transfer syntax is a sibling of ``type``; it needs no special
        code, but :func:`negotiate_frames` must read it as "stored bytes".
    """
    pieces = split_unquoted(value, ";")
    part_type = pieces[0].strip().lower() or None
    transfer_syntax = None
    for piece in pieces[1:]:
        name, _, raw = piece.partition("=")
        if name.strip().lower() == "transfer-syntax":
            transfer_syntax = unquote(raw.strip())
    return part_type, transfer_syntax


def _parse_q(raw: str | None) -> float:
    """The q weight (RFC 9110 12.4.2); anything malformed counts as 1."""
    if raw is None:
        return 1.0
    try:
        q = float(raw)
    except ValueError:
        return 1.0
    if math.isnan(q) or not 0.0 <= q <= 1.0:
        return 1.0
    return q


def _clean(transfer_syntax: str | None) -> str | None:
    if transfer_syntax is None:
        return None
    return transfer_syntax.strip() or None


# --------------------------------------------------------------------------
# Negotiation
# --------------------------------------------------------------------------


def negotiate_instances(
    accept: list[MediaRange], stored_ts: set[str], *, producible_from: Producible = _stored_only
) -> str | None:
    """Choose the transfer syntax of a study/series/instance retrieve answered as
    ``multipart/related; type="application/dicom"`` (PS3.18 8.7.3): None to send
    each instance as stored, else the syntax every instance is sent in.

    A bare ``application/dicom`` range is accepted too: such requests are
    answered in multipart/related like the rest (single-part answers are not
    implemented); a 406 would serve such a client no better.

    ``transfer-syntax`` absent or ``*``: we send each instance in its stored
    syntax (this archive's documented choice: streaming stored bytes costs no
    decoding; strictly, an absent parameter asks for Explicit VR Little
    Endian). A specific UID is honoured when every instance is stored in it or
    can be transcoded to it.
    """
    for media_range in accept:
        wanted = _wanted_part_type(media_range)
        if wanted is not None and not _type_matches(wanted, DICOM):
            continue
        syntax = media_range.transfer_syntax
        if syntax in (None, "*"):
            return None
        if all(stored == syntax or syntax in producible_from(stored) for stored in stored_ts):
            return syntax
    syntaxes = ", ".join(sorted(stored_ts)) or "none"
    common = frozenset.intersection(*(producible_from(stored) for stored in stored_ts)) if stored_ts else frozenset()
    converted = f", or transcoded to any of ({', '.join(sorted(common))})" if common else ""
    raise NotAcceptable(
        f"cannot satisfy Accept: {_describe(accept)}; available: "
        f'multipart/related; type="{DICOM}" in the stored transfer syntaxes ({syntaxes}){converted}'
    )


_METADATA_TYPES = frozenset({DICOM_JSON, "application/json", "application/*", "*/*"})


def negotiate_metadata(accept: list[MediaRange]) -> None:
    """Check that metadata can be answered as DICOM JSON (PS3.18 8.7.3).

    Plain application/json is accepted as well: browsers and scripts ask for it.
    """
    if any(media_range.media_type in _METADATA_TYPES for media_range in accept):
        return
    raise NotAcceptable(f"cannot satisfy Accept: {_describe(accept)}; available: {DICOM_JSON}")


_BULKDATA_TYPES = frozenset({"*/*", "multipart/*", "multipart/related", "application/*", OCTET_STREAM})


def negotiate_bulkdata(accept: list[MediaRange]) -> None:
    """Bulk data is answered as multipart/related; type="application/octet-stream" (PS3.18 8.7.3)."""
    if any(media_range.media_type in _BULKDATA_TYPES for media_range in accept):
        return
    raise NotAcceptable(
        f'cannot satisfy Accept: {_describe(accept)}; available: multipart/related; type="{OCTET_STREAM}"'
    )


def negotiate_frames(
    accept: list[MediaRange], stored_ts: str, *, producible_from: Producible = _stored_only
) -> FrameRepresentation:
    """Choose how to send frames stored in ``stored_ts`` (PS3.18 8.7.3.3).

    Ranges are tried in preference order and the first one we can satisfy
    wins. Uncompressed frames go out as application/octet-stream in Explicit
    VR Little Endian. Compressed frames go out as their stored bytes, labelled
    with the stored transfer syntax, unless the client asks for another
    syntax (or for octet-stream without one, i.e. decoded pixels): then they
    are transcoded when ``producible_from(stored_ts)`` has it.
    """
    producible = producible_from(stored_ts)
    for media_range in accept:
        choice = _frame_choice(media_range, stored_ts, producible)
        if choice is not None:
            return choice
    raise NotAcceptable(
        f"cannot satisfy Accept: {_describe(accept)}; available: "
        f"{_describe_frame_offers(stored_ts, producible)}{_frame_hint(accept, stored_ts, producible)}"
    )


def _frame_choice(media_range: MediaRange, stored_ts: str, producible: frozenset[str]) -> FrameRepresentation | None:
    wanted = _wanted_part_type(media_range)
    syntax = media_range.transfer_syntax
    if _is_raw_little_endian(stored_ts):
        if (wanted is None or _type_matches(wanted, OCTET_STREAM)) and syntax in (
            None,
            "*",
            EXPLICIT_VR_LITTLE_ENDIAN,
        ):
            return FrameRepresentation(OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN)
    elif syntax in (None, "*", stored_ts):
        as_stored = _stored_frames(wanted, syntax, stored_ts)
        if as_stored is not None:
            return as_stored
    if syntax == "*":
        return None  # "as stored", which the part type asked for does not fit
    return _transcoded_frames(wanted, syntax, producible)


def _stored_frames(wanted: str | None, syntax: str | None, stored_ts: str) -> FrameRepresentation | None:
    """Compressed frames sent as stored, when the range allows it."""
    if wanted is None:
        return FrameRepresentation(OCTET_STREAM, stored_ts)
    natural = TRANSFER_SYNTAX_MEDIA_TYPES.get(stored_ts)
    if natural is not None:
        if wanted == natural.lower():
            return FrameRepresentation(natural, stored_ts)
        if wanted in _LEGACY_MEDIA_TYPES.get(natural.lower(), frozenset()):
            return FrameRepresentation(wanted, stored_ts)
        if wanted.endswith("/*") and _type_matches(wanted, natural.lower()):
            return FrameRepresentation(natural, stored_ts)
    # application/octet-stream without transfer-syntax means Explicit VR
    # Little Endian (PS3.18 8.7.3.3), i.e. decoded pixels: see
    # _transcoded_frames. With transfer-syntax=* (what the OHIF viewer sends)
    # or the stored UID, the stored compressed bytes are what is asked for.
    if syntax is not None and _type_matches(wanted, OCTET_STREAM):
        return FrameRepresentation(OCTET_STREAM, stored_ts)
    return None


# The syntax a compressed media type stands for when no transfer-syntax is
# given: the RESTful default of PS3.18 Table 8.7.3-5 (legacy names too).
_DEFAULT_SYNTAXES: dict[str, str] = {
    "image/jpeg": "1.2.840.10008.1.2.4.70",
    "image/dicom-rle": "1.2.840.10008.1.2.5",
    "image/x-dicom-rle": "1.2.840.10008.1.2.5",
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/x-jls": "1.2.840.10008.1.2.4.80",
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jpx": "1.2.840.10008.1.2.4.92",
    "image/jphc": "1.2.840.10008.1.2.4.201",
}


def _transcoded_frames(wanted: str | None, syntax: str | None, producible: frozenset[str]) -> FrameRepresentation | None:
    """Frames converted to the syntax a range asks for, if it can be produced."""
    octets = wanted is None or _type_matches(wanted, OCTET_STREAM)
    if syntax is None:
        if wanted is None:
            return None  # anything goes: the stored form was the answer
        syntax = EXPLICIT_VR_LITTLE_ENDIAN if octets else _DEFAULT_SYNTAXES.get(wanted)
    if syntax not in producible:
        return None
    if syntax in UNCOMPRESSED_TRANSFER_SYNTAXES:
        # Uncompressed frames are only ever Explicit VR Little Endian octets (PS3.18 8.7.3.3.1).
        ok = octets and syntax == EXPLICIT_VR_LITTLE_ENDIAN
        return FrameRepresentation(OCTET_STREAM, syntax, transcode=True) if ok else None
    if octets:
        return FrameRepresentation(OCTET_STREAM, syntax, transcode=True)
    assert wanted is not None
    natural = TRANSFER_SYNTAX_MEDIA_TYPES.get(syntax, "")
    if wanted in _LEGACY_MEDIA_TYPES.get(natural.lower(), ()):
        return FrameRepresentation(wanted, syntax, transcode=True)
    if natural and (wanted == natural.lower() or wanted.endswith("/*") and _type_matches(wanted, natural.lower())):
        return FrameRepresentation(natural, syntax, transcode=True)
    return None


def _is_raw_little_endian(stored_ts: str) -> bool:
    return (
        stored_ts in UNCOMPRESSED_TRANSFER_SYNTAXES
        or stored_ts == ENCAPSULATED_UNCOMPRESSED_EXPLICIT_VR_LITTLE_ENDIAN
    )


def _wanted_part_type(media_range: MediaRange) -> str | None:
    """The part media type a range asks for, None when any will do.

    A single-part range (``application/dicom``, ``image/jpeg``) is read as
    asking for that part type: we answer it in multipart/related.
    """
    if media_range.media_type in _WILDCARDS:
        return None
    if media_range.media_type == "multipart/related":
        return None if media_range.part_type in (None, "*/*") else media_range.part_type
    return media_range.media_type


def _type_matches(pattern: str, media_type: str) -> bool:
    if pattern in ("*/*", media_type):
        return True
    return pattern.endswith("/*") and media_type.startswith(pattern[:-1])


def _describe(accept: Iterable[MediaRange]) -> str:
    described = ", ".join(str(media_range) for media_range in accept)
    return described or "(no usable media range)"


def _describe_frame_offers(stored_ts: str, producible: frozenset[str]) -> str:
    if _is_raw_little_endian(stored_ts):
        offers = [f'multipart/related; type="{OCTET_STREAM}"; transfer-syntax={EXPLICIT_VR_LITTLE_ENDIAN}']
    else:
        offers = [f'multipart/related; type="{OCTET_STREAM}"; transfer-syntax={stored_ts}']
        natural = TRANSFER_SYNTAX_MEDIA_TYPES.get(stored_ts)
        if natural is not None:
            offers.append(f'multipart/related; type="{natural}"; transfer-syntax={stored_ts}')
    converted = sorted(s for s in producible - UNCOMPRESSED_TRANSFER_SYNTAXES if s != stored_ts)
    if EXPLICIT_VR_LITTLE_ENDIAN in producible and not _is_raw_little_endian(stored_ts):
        converted.insert(0, EXPLICIT_VR_LITTLE_ENDIAN)
    if converted:
        offers.append(f'multipart/related; type="{OCTET_STREAM}" transcoded to any of ({", ".join(converted)})')
    return " or ".join(offers)


def _frame_hint(accept: Iterable[MediaRange], stored_ts: str, producible: frozenset[str]) -> str:
    asked_decompressed = any(
        _wanted_part_type(r) == OCTET_STREAM and r.transfer_syntax is None for r in accept
    )
    if _is_raw_little_endian(stored_ts) or not asked_decompressed or EXPLICIT_VR_LITTLE_ENDIAN in producible:
        return ""
    return (
        " (application/octet-stream without transfer-syntax means Explicit VR Little Endian,"
        f" which cannot be decoded from {stored_ts} here; add transfer-syntax=* for the stored bytes)"
    )
