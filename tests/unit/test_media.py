from __future__ import annotations

import pytest

from dicomweb.media import (
    TRANSFER_SYNTAX_MEDIA_TYPES,
    UNCOMPRESSED_TRANSFER_SYNTAXES,
    FrameRepresentation,
    MediaRange,
    negotiate_frames,
    negotiate_instances,
    negotiate_metadata,
    parse_accept,
)
from pacs.errors import NotAcceptable

ELE = "1.2.840.10008.1.2.1"
ILE = "1.2.840.10008.1.2"
BIG = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG = "1.2.840.10008.1.2.4.50"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"
J2K = "1.2.840.10008.1.2.4.90"
RLE = "1.2.840.10008.1.2.5"
HEVC = "1.2.840.10008.1.2.4.107"
OCTET = "application/octet-stream"
OHIF_FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def mr(
    media_type: str, part_type: str | None = None, ts: str | None = None, q: float = 1.0
) -> MediaRange:
    return MediaRange(media_type, part_type, ts, q)


ANY = mr("*/*")


# --- parse_accept -------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, [ANY]),
        ("", [ANY]),
        (" , ", [ANY]),
        ("*/*", [ANY]),
        ("application/dicom+json", [mr("application/dicom+json")]),
        # quoted or unquoted type parameter
        (
            'multipart/related; type="application/dicom"',
            [mr("multipart/related", "application/dicom")],
        ),
        (
            "multipart/related; type=application/dicom",
            [mr("multipart/related", "application/dicom")],
        ),
        (
            'Multipart/Related; TYPE="Application/DICOM"',
            [mr("multipart/related", "application/dicom")],
        ),
        # OHIF viewer 3.13, verbatim
        (OHIF_FRAMES, [mr("multipart/related", OCTET, "*")]),
        # transfer-syntax outside or inside the quoted type
        (
            f'multipart/related; type="image/jpeg"; transfer-syntax={JPEG}',
            [mr("multipart/related", "image/jpeg", JPEG)],
        ),
        (
            f'multipart/related; type="image/jpeg; transfer-syntax={JPEG}"',
            [mr("multipart/related", "image/jpeg", JPEG)],
        ),
        (
            f'multipart/related; type="image/jpeg"; transfer-syntax="{JPEG}"',
            [mr("multipart/related", "image/jpeg", JPEG)],
        ),
        # a comma inside quotes does not split ranges
        (
            'multipart/related; type="application/dicom; x=a,b", application/json',
            [mr("multipart/related", "application/dicom"), mr("application/json")],
        ),
        # type is only meaningful on multipart/related
        ('application/dicom; type="x/y"; transfer-syntax=*', [mr("application/dicom", None, "*")]),
        ('multipart/related; type=""', [mr("multipart/related")]),
    ],
)
def test_parse_accept(header: str | None, expected: list[MediaRange]) -> None:
    assert parse_accept(header) == expected


def test_parse_accept_orders_by_q_stably() -> None:
    header = "a/one;q=0.5, a/two, a/three;q=0.9, a/four;q=0.5, a/five;q=1"
    assert [r.media_type for r in parse_accept(header)] == [
        "a/two",
        "a/five",
        "a/three",
        "a/one",
        "a/four",
    ]
    assert [r.q for r in parse_accept(header)] == [1.0, 1.0, 0.9, 0.5, 0.5]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("a/b;q=0", []),
        ("a/b;q=0.000, c/d;q=0.1", [mr("c/d", q=0.1)]),
        ("a/b;q=high", [mr("a/b")]),
        ("a/b;q=2", [mr("a/b")]),
        ("a/b;q=-1", [mr("a/b")]),
        ("a/b;q=nan", [mr("a/b")]),
        ("a/b;q=.2", [mr("a/b", q=0.2)]),
        # malformed ranges are dropped, the rest kept
        ("garbage, /x, a/b", [mr("a/b")]),
        # Java's HttpURLConnection default Accept
        (
            "text/html, image/gif, image/jpeg, *; q=.2, */*; q=.2",
            [
                mr("text/html"),
                mr("image/gif"),
                mr("image/jpeg"),
                mr("*/*", q=0.2),
                mr("*/*", q=0.2),
            ],
        ),
    ],
)
def test_parse_accept_weights_and_garbage(header: str, expected: list[MediaRange]) -> None:
    assert parse_accept(header) == expected


# --- negotiate_instances --------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "stored"),
    [
        (None, {ELE, JPEG}),
        ("*/*", {ELE}),
        ("multipart/*", {ELE}),
        ("multipart/related", {ELE, JPEG}),
        ('multipart/related; type="application/dicom"', {ELE, JPEG}),
        ("multipart/related; type=application/dicom", {JPEG}),
        ('multipart/related; type="application/dicom"; transfer-syntax=*', {ELE, JPEG}),
        (f'multipart/related; type="application/dicom"; transfer-syntax={JPEG}', {JPEG}),
        (f'multipart/related; type="application/dicom; transfer-syntax={ELE}"', {ELE}),
        ("application/dicom", {ELE}),
        (f"application/dicom; transfer-syntax={ELE}", {ELE}),
        ('application/dicom+json, multipart/related; type="application/dicom"; q=0.1', {ELE}),
        (f'multipart/related; type="application/dicom"; transfer-syntax={JPEG}, */*;q=0.5', {ELE}),
    ],
)
def test_negotiate_instances_accepts(header: str | None, stored: set[str]) -> None:
    negotiate_instances(parse_accept(header), stored)  # does not raise


@pytest.mark.parametrize(
    ("header", "stored"),
    [
        ("application/dicom+json", {ELE}),
        ("application/json, text/html", {ELE}),
        ('multipart/related; type="application/octet-stream"', {ELE}),
        ('multipart/related; type="image/jpeg"', {JPEG}),
        (f'multipart/related; type="application/dicom"; transfer-syntax={ELE}', {ELE, JPEG}),
        (f'multipart/related; type="application/dicom"; transfer-syntax={JPEG}', {ELE}),
        (f"application/dicom; transfer-syntax={JPEG}", {ELE}),
        ("*/*;q=0", {ELE}),
    ],
)
def test_negotiate_instances_refuses(header: str, stored: set[str]) -> None:
    with pytest.raises(NotAcceptable):
        negotiate_instances(parse_accept(header), stored)


def test_not_acceptable_names_request_and_offer() -> None:
    with pytest.raises(NotAcceptable) as caught:
        negotiate_instances(parse_accept("application/dicom+json"), {JPEG, ELE})
    message = str(caught.value)
    assert "application/dicom+json" in message
    assert 'type="application/dicom"' in message and JPEG in message and ELE in message


# --- negotiate_metadata ---------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        None,
        "application/dicom+json",
        "application/json",
        "*/*",
        "application/*",
        "text/html, application/dicom+json;q=0.1",
    ],
)
def test_negotiate_metadata_accepts(header: str | None) -> None:
    negotiate_metadata(parse_accept(header))  # does not raise


@pytest.mark.parametrize(
    "header",
    [
        "application/dicom+xml",
        'multipart/related; type="application/dicom"',
        "text/html",
        "application/json;q=0",
    ],
)
def test_negotiate_metadata_refuses(header: str) -> None:
    with pytest.raises(NotAcceptable, match="application/dicom\\+json"):
        negotiate_metadata(parse_accept(header))


# --- negotiate_frames -----------------------------------------------------------

UNCOMPRESSED_ANSWER = FrameRepresentation(OCTET, ELE)


@pytest.mark.parametrize(
    "stored", sorted(UNCOMPRESSED_TRANSFER_SYNTAXES) + ["1.2.840.10008.1.2.1.98"]
)
@pytest.mark.parametrize(
    "header",
    [
        None,
        "*/*",
        "multipart/*",
        "multipart/related",
        'multipart/related; type="application/octet-stream"',
        "multipart/related; type=application/octet-stream",
        OHIF_FRAMES,
        f'multipart/related; type="application/octet-stream"; transfer-syntax={ELE}',
        f'multipart/related; type="application/octet-stream; transfer-syntax={ELE}"',
        "application/octet-stream",
        f'multipart/related; type="image/jpeg", {OHIF_FRAMES};q=0.5',
    ],
)
def test_negotiate_frames_uncompressed(header: str | None, stored: str) -> None:
    assert negotiate_frames(parse_accept(header), stored) == UNCOMPRESSED_ANSWER


@pytest.mark.parametrize(
    "header",
    [
        'multipart/related; type="image/jpeg"',
        f'multipart/related; type="application/octet-stream"; transfer-syntax={JPEG}',
        f'multipart/related; type="application/octet-stream"; transfer-syntax={ILE}',
        f"multipart/related; transfer-syntax={J2K}",
        "application/dicom",
        "application/dicom+json",
    ],
)
def test_negotiate_frames_uncompressed_refuses(header: str) -> None:
    with pytest.raises(NotAcceptable, match=ELE):
        negotiate_frames(parse_accept(header), ILE)


@pytest.mark.parametrize(
    ("header", "stored", "expected"),
    [
        # stored bytes as application/octet-stream
        (OHIF_FRAMES, JPEG, FrameRepresentation(OCTET, JPEG)),
        (OHIF_FRAMES, HEVC, FrameRepresentation(OCTET, HEVC)),
        (
            "multipart/related; type=application/octet-stream; transfer-syntax=*",
            J2K,
            FrameRepresentation(OCTET, J2K),
        ),
        (
            f'multipart/related; type="application/octet-stream"; transfer-syntax={J2K}',
            J2K,
            FrameRepresentation(OCTET, J2K),
        ),
        (
            f'multipart/related; type="application/octet-stream; transfer-syntax={RLE}"',
            RLE,
            FrameRepresentation(OCTET, RLE),
        ),
        (None, JPEG, FrameRepresentation(OCTET, JPEG)),
        ("*/*", J2K, FrameRepresentation(OCTET, J2K)),
        ("multipart/related", RLE, FrameRepresentation(OCTET, RLE)),
        (f"multipart/related; transfer-syntax={JPEG}", JPEG, FrameRepresentation(OCTET, JPEG)),
        ("*/*", "1.2.840.10008.1.2.4.999", FrameRepresentation(OCTET, "1.2.840.10008.1.2.4.999")),
        # stored bytes under their natural media type (PS3.18 Table 8.7.3-5)
        ('multipart/related; type="image/jpeg"', JPEG, FrameRepresentation("image/jpeg", JPEG)),
        (
            'multipart/related; type="image/jpeg"',
            JPEG_LOSSLESS,
            FrameRepresentation("image/jpeg", JPEG_LOSSLESS),
        ),
        (
            'multipart/related; type="image/jpeg"; transfer-syntax=*',
            JPEG,
            FrameRepresentation("image/jpeg", JPEG),
        ),
        (
            f'multipart/related; type="image/jp2"; transfer-syntax={J2K}',
            J2K,
            FrameRepresentation("image/jp2", J2K),
        ),
        (
            "multipart/related; type=image/jls",
            "1.2.840.10008.1.2.4.80",
            FrameRepresentation("image/jls", "1.2.840.10008.1.2.4.80"),
        ),
        (
            'multipart/related; type="image/jphc"',
            "1.2.840.10008.1.2.4.201",
            FrameRepresentation("image/jphc", "1.2.840.10008.1.2.4.201"),
        ),
        (
            'multipart/related; type="image/dicom-rle"',
            RLE,
            FrameRepresentation("image/dicom-rle", RLE),
        ),
        (
            'multipart/related; type="video/mp4"',
            "1.2.840.10008.1.2.4.102",
            FrameRepresentation("video/mp4", "1.2.840.10008.1.2.4.102"),
        ),
        ('multipart/related; type="video/H265"', HEVC, FrameRepresentation("video/H265", HEVC)),
        ("multipart/related; type=image/*", J2K, FrameRepresentation("image/jp2", J2K)),
        ("image/jpeg", JPEG, FrameRepresentation("image/jpeg", JPEG)),
        # legacy names answered under the name asked for
        (
            'multipart/related; type="image/x-dicom-rle"',
            RLE,
            FrameRepresentation("image/x-dicom-rle", RLE),
        ),
        (
            'multipart/related; type="video/mpeg"',
            "1.2.840.10008.1.2.4.100",
            FrameRepresentation("video/mpeg", "1.2.840.10008.1.2.4.100"),
        ),
        # preference order decides between acceptable ranges
        (
            f'multipart/related; type="image/jpeg";q=0.5, {OHIF_FRAMES}',
            JPEG,
            FrameRepresentation(OCTET, JPEG),
        ),
        (
            f'{OHIF_FRAMES};q=0.5, multipart/related; type="image/jpeg"',
            JPEG,
            FrameRepresentation("image/jpeg", JPEG),
        ),
        # an unusable preferred range falls through to the next one
        (
            f'multipart/related; type="image/jp2", {OHIF_FRAMES};q=0.1',
            JPEG,
            FrameRepresentation(OCTET, JPEG),
        ),
        (
            f'multipart/related; type="application/octet-stream", {OHIF_FRAMES};q=0.1',
            J2K,
            FrameRepresentation(OCTET, J2K),
        ),
    ],
)
def test_negotiate_frames_compressed(
    header: str | None, stored: str, expected: FrameRepresentation
) -> None:
    assert negotiate_frames(parse_accept(header), stored) == expected


@pytest.mark.parametrize(
    ("header", "stored"),
    [
        # Explicit VR Little Endian asked for (PS3.18 8.7.3.3): needs decoding
        ('multipart/related; type="application/octet-stream"', JPEG),
        ("application/octet-stream", J2K),
        (f'multipart/related; type="application/octet-stream"; transfer-syntax={ELE}', JPEG),
        # another compressed syntax: needs transcoding
        (f'multipart/related; type="application/octet-stream"; transfer-syntax={J2K}', JPEG),
        (f'multipart/related; type="image/jpeg"; transfer-syntax={JPEG_LOSSLESS}', JPEG),
        ('multipart/related; type="image/jp2"', JPEG),
        ("multipart/related; type=video/*", JPEG),
        (f"*/*; transfer-syntax={ELE}", RLE),
        ("application/dicom", JPEG),
        ("text/html", JPEG),
    ],
)
def test_negotiate_frames_compressed_refuses(header: str, stored: str) -> None:
    with pytest.raises(NotAcceptable) as caught:
        negotiate_frames(parse_accept(header), stored)
    assert stored in str(caught.value)


def test_frames_refusal_explains_transfer_syntax_default() -> None:
    with pytest.raises(NotAcceptable, match="transfer-syntax=\\*") as caught:
        negotiate_frames(parse_accept('multipart/related; type="application/octet-stream"'), JPEG)
    assert 'type="image/jpeg"' in str(caught.value)


def test_media_type_table() -> None:
    assert not UNCOMPRESSED_TRANSFER_SYNTAXES & TRANSFER_SYNTAX_MEDIA_TYPES.keys()
    assert UNCOMPRESSED_TRANSFER_SYNTAXES == {ILE, ELE, BIG, DEFLATED}
    for syntax in (JPEG, "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", JPEG_LOSSLESS):
        assert TRANSFER_SYNTAX_MEDIA_TYPES[syntax] == "image/jpeg"
    assert TRANSFER_SYNTAX_MEDIA_TYPES[J2K] == "image/jp2"
    assert TRANSFER_SYNTAX_MEDIA_TYPES[RLE] == "image/dicom-rle"
