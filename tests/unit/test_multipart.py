from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterable, Iterator

import pytest

from dicomweb.multipart import (
    ContentType,
    MultipartReader,
    PartData,
    PartEnd,
    PartEvent,
    PartStart,
    boundary_of,
    iter_multipart,
    iter_parts,
    multipart_content_type,
    new_boundary,
    parse_content_type,
)
from pacs.errors import InvalidInput, UnsupportedMediaType

BOUNDARY = "b0undary-XYZ"
Part = tuple[dict[str, str], bytes]


def collect(events: Iterable[PartEvent]) -> list[Part]:
    """Fold events into (headers, body) pairs, checking the event grammar."""
    parts: list[Part] = []
    current: list[bytes] | None = None
    headers: dict[str, str] = {}
    for event in events:
        if isinstance(event, PartStart):
            assert current is None, "PartStart inside a part"
            current, headers = [], event.headers
        elif isinstance(event, PartData):
            assert current is not None, "PartData outside a part"
            assert event.data, "empty PartData"
            current.append(event.data)
        else:
            assert isinstance(event, PartEnd)
            assert current is not None, "PartEnd outside a part"
            parts.append((headers, b"".join(current)))
            current = None
    assert current is None, "unterminated part"
    return parts


def feed_all(
    chunks: Iterable[bytes], boundary: str = BOUNDARY, **kwargs: int
) -> Iterator[PartEvent]:
    reader = MultipartReader(boundary, **kwargs)
    for chunk in chunks:
        yield from reader.feed(chunk)
    yield from reader.close()


def split_every(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def parse(body: bytes, boundary: str = BOUNDARY, chunk_size: int | None = None) -> list[Part]:
    chunks = [body] if chunk_size is None else split_every(body, chunk_size)
    return collect(feed_all(chunks, boundary))


def write(parts: list[Part], boundary: str = BOUNDARY) -> bytes:
    return b"".join(iter_multipart([(h, [b]) for h, b in parts], boundary))


def lowered(parts: list[Part]) -> list[Part]:
    return [({k.lower(): v for k, v in h.items()}, b) for h, b in parts]


SMALL_PARTS: list[Part] = [
    ({"Content-Type": "application/dicom"}, b"first\r\nbody\r\n"),
    ({"Content-Type": "application/dicom", "Content-Location": "x"}, b""),
    ({"Content-Type": "application/dicom"}, b"\r\n--b0undary-XY\r\n-" + b"--b0undary-XYZ tail\r"),
]


# --- Content-Type parsing ---------------------------------------------------


@pytest.mark.parametrize(
    ("value", "media_type", "params"),
    [
        ("multipart/related; boundary=abc", "multipart/related", {"boundary": "abc"}),
        (
            'Multipart/Related; Type="application/dicom"; Boundary="a b"',
            "multipart/related",
            {"type": "application/dicom", "boundary": "a b"},
        ),
        (
            'multipart/related;boundary="x;y=z";type=application/dicom',
            "multipart/related",
            {"boundary": "x;y=z", "type": "application/dicom"},
        ),
        (
            "  application/dicom  ;  transfer-syntax = 1.2.840.10008.1.2.1 ",
            "application/dicom",
            {"transfer-syntax": "1.2.840.10008.1.2.1"},
        ),
        ('a/b; x="q\\"uote\\\\d"', "a/b", {"x": 'q"uote\\d'}),
        ("a/b; ; stray; x=1; x=2", "a/b", {"x": "1"}),
        ("*/*", "*/*", {}),
    ],
)
def test_parse_content_type(value: str, media_type: str, params: dict[str, str]) -> None:
    assert parse_content_type(value) == ContentType(media_type, params)


@pytest.mark.parametrize(
    "value", ["", "   ", "multipart", "/related", "multipart/", "a b/c", "; boundary=x", "a/b/c"]
)
def test_parse_content_type_rejects_garbage(value: str) -> None:
    with pytest.raises(UnsupportedMediaType):
        parse_content_type(value)


def test_boundary_of() -> None:
    assert boundary_of(parse_content_type('multipart/related; boundary="abc"')) == "abc"
    for value in [
        "multipart/related",
        "multipart/related; boundary=",
        "application/dicom; boundary=x",
    ]:
        with pytest.raises(UnsupportedMediaType):
            boundary_of(parse_content_type(value))


@pytest.mark.parametrize("boundary", ["", "a\r\nb", "x" * 300])
def test_reader_rejects_unusable_boundary(boundary: str) -> None:
    with pytest.raises(UnsupportedMediaType):
        MultipartReader(boundary)


# --- Reading ------------------------------------------------------------------


def test_round_trip_three_parts_with_empty_body() -> None:
    body = write(SMALL_PARTS)
    assert parse(body) == lowered(SMALL_PARTS)


def test_every_chunk_size() -> None:
    body = write(SMALL_PARTS)
    expected = lowered(SMALL_PARTS)
    for size in range(1, len(body) + 1):
        assert parse(body, chunk_size=size) == expected, size


def test_every_split_point() -> None:
    body = write(SMALL_PARTS)
    expected = lowered(SMALL_PARTS)
    for cut in range(len(body) + 1):
        assert collect(feed_all([body[:cut], body[cut:]])) == expected, cut


def near_boundary_noise(rng: random.Random, boundary: str) -> bytes:
    """Random binary with CRLFs and prefixes of the delimiter sprinkled in,
    but never the delimiter itself (RFC 2046 forbids it in a body)."""
    delimiter = f"\r\n--{boundary}".encode()
    while True:
        noise = _noise(rng, boundary, delimiter)
        if delimiter[1:] not in noise:
            return noise


def _noise(rng: random.Random, boundary: str, delimiter: bytes) -> bytes:
    pieces = []
    for _ in range(rng.randrange(0, 12)):
        kind = rng.randrange(4)
        if kind == 0:
            pieces.append(rng.randbytes(rng.randrange(0, 40)))
        elif kind == 1:
            pieces.append(delimiter[: rng.randrange(1, len(delimiter))])
        elif kind == 2:
            pieces.append(rng.choice([b"\r\n", b"\r", b"\n", b"--", b"\r\r\n"]))
        else:
            pieces.append(f"--{boundary}".encode())  # not a delimiter without the line break
    return b"".join(pieces)


def test_random_round_trips() -> None:
    rng = random.Random(20240611)
    for _ in range(150):
        boundary = new_boundary()[: rng.randrange(1, 33)]
        parts = [
            (
                {"Content-Type": "application/dicom", "X-Index": str(i)},
                near_boundary_noise(rng, boundary),
            )
            for i in range(rng.randrange(1, 4))
        ]
        body = write(parts, boundary)
        expected = lowered(parts)
        assert parse(body, boundary) == expected
        for size in (1, 2, 3, 7, len(boundary) + 3, len(boundary) + 4, 64):
            assert parse(body, boundary, chunk_size=size) == expected


def test_preamble_epilogue_and_leading_crlf_are_ignored() -> None:
    core = write(SMALL_PARTS)
    expected = lowered(SMALL_PARTS)
    decoy = f"--{BOUNDARY}x not a delimiter\r\n".encode()
    for body in (
        b"\r\n" + core,
        b"This is the preamble.\r\n"
        + decoy
        + core
        + b"This is the epilogue\r\n--"
        + BOUNDARY.encode(),
        decoy + core,
    ):
        assert parse(body) == expected
        assert parse(body, chunk_size=5) == expected


def test_lf_only_line_ends_are_accepted() -> None:
    body = (
        f"--{BOUNDARY}\nContent-Type: application/dicom\nX-A: 1\n\npayload\n"
        f"--{BOUNDARY}\n\nsecond\n--{BOUNDARY}--\n"
    ).encode()
    expected = [({"content-type": "application/dicom", "x-a": "1"}, b"payload"), ({}, b"second")]
    for size in (1, 3, len(body)):
        assert parse(body, chunk_size=size) == expected


def test_transport_padding_after_boundary() -> None:
    body = f"--{BOUNDARY} \t \r\nA: b\r\n\r\nxyz\r\n--{BOUNDARY}--  \r\n".encode()
    assert parse(body) == [({"a": "b"}, b"xyz")]


def test_header_names_lower_cased_repeated_and_folded() -> None:
    body = (
        f"--{BOUNDARY}\r\nContent-TYPE:application/dicom\r\nX-Note: one\r\n"
        f"X-Note: two\r\nX-Long: first\r\n  second\r\n\r\n\r\n--{BOUNDARY}--"
    ).encode()
    [(headers, data)] = parse(body)
    assert headers == {
        "content-type": "application/dicom",
        "x-note": "one, two",
        "x-long": "first second",
    }
    assert data == b""


def test_zero_parts() -> None:
    assert parse(f"--{BOUNDARY}--\r\n".encode()) == []


def test_truncated_body_raises_at_close() -> None:
    body = write(SMALL_PARTS)
    # Everything shorter than "...--BOUNDARY--" is incomplete; the final CRLF
    # already belongs to the epilogue.
    for cut in range(len(body) - 2):
        with pytest.raises(InvalidInput):
            list(feed_all([body[:cut]]))
    assert collect(feed_all([body[: len(body) - 2]])) == lowered(SMALL_PARTS)


@pytest.mark.parametrize(
    "body",
    [
        f"--{BOUNDARY}\r\nA: b\r\n\r\ndata".encode(),
        f"--{BOUNDARY}\r\nA: b\r\n\r\ndata\r\n--{BOUNDARY}\r\n".encode(),
        f"--{BOUNDARY}\r\nA: b\r\n\r\ndata\r\n--{BOUNDARY}".encode(),
        b"no delimiter at all",
    ],
)
def test_missing_closing_delimiter_raises(body: bytes) -> None:
    with pytest.raises(InvalidInput):
        list(feed_all([body]))


def test_headers_too_large_raise() -> None:
    header = "X-Big: " + "a" * 600 + "\r\n"
    body = (f"--{BOUNDARY}\r\n" + header * 4 + f"\r\nxyz\r\n--{BOUNDARY}--").encode()
    assert parse(body) == [({"x-big": ", ".join(["a" * 600] * 4)}, b"xyz")]
    for chunks in ([body], split_every(body, 100)):
        with pytest.raises(InvalidInput, match="headers"):
            list(feed_all(chunks, max_header_bytes=1024))


def test_unterminated_headers_raise_once_over_limit() -> None:
    reader = MultipartReader(BOUNDARY, max_header_bytes=1024)
    list(reader.feed(f"--{BOUNDARY}\r\n".encode()))
    list(reader.feed(b"X: " + b"a" * 1000))
    with pytest.raises(InvalidInput):
        list(reader.feed(b"a" * 100))


@pytest.mark.parametrize(
    "body",
    [
        f"--{BOUNDARY}\r\nnot a header\r\n\r\nx\r\n--{BOUNDARY}--".encode(),
        f"--{BOUNDARY}\r\n: empty name\r\n\r\nx\r\n--{BOUNDARY}--".encode(),
        f"--{BOUNDARY}\r\nA: b\r\n\r\nx\r\n--{BOUNDARY}garbage\r\n".encode(),
    ],
)
def test_malformed_parts_raise(body: bytes) -> None:
    with pytest.raises(InvalidInput):
        list(feed_all([body]))


def test_big_chunk_yields_few_events() -> None:
    payload = random.Random(1).randbytes(1 << 20)
    body = write([({"Content-Type": "application/dicom"}, payload)])
    events = list(feed_all([body]))
    assert len(events) <= 4
    assert collect(events) == [({"content-type": "application/dicom"}, payload)]
    events = list(feed_all(split_every(body, 1 << 18)))
    assert sum(isinstance(e, PartData) for e in events) <= 6


def test_unemitted_data_stays_bounded() -> None:
    payload = random.Random(2).randbytes(300_000)
    head = f"--{BOUNDARY}\r\nA: b\r\n\r\n".encode()
    reader = MultipartReader(BOUNDARY)
    list(reader.feed(head))
    emitted = 0
    for fed, chunk in enumerate(split_every(payload, 4096), start=1):
        emitted += sum(len(e.data) for e in reader.feed(chunk) if isinstance(e, PartData))
        assert min(fed * 4096, len(payload)) - emitted <= len(BOUNDARY) + 3
    list(reader.feed(f"\r\n--{BOUNDARY}--".encode()))


def test_iter_parts_async() -> None:
    body = write(SMALL_PARTS)

    async def chunks() -> AsyncIterator[bytes]:
        for chunk in split_every(body, 10):
            yield chunk
        yield b""  # Starlette's request.stream() ends with an empty chunk

    async def run() -> list[PartEvent]:
        return [event async for event in iter_parts(chunks(), BOUNDARY)]

    assert collect(asyncio.run(run())) == lowered(SMALL_PARTS)

    async def truncated() -> list[PartEvent]:
        async def short() -> AsyncIterator[bytes]:
            yield body[:40]

        return [event async for event in iter_parts(short(), BOUNDARY)]

    with pytest.raises(InvalidInput):
        asyncio.run(truncated())


# --- Writing ------------------------------------------------------------------


def test_writer_exact_bytes() -> None:
    parts = [({"Content-Type": "application/dicom"}, [b"ab", b"c"]), ({}, [])]
    body = b"".join(iter_multipart(parts, "xyz"))
    assert body == (
        b"--xyz\r\nContent-Type: application/dicom\r\n\r\nabc\r\n--xyz\r\n\r\n\r\n--xyz--\r\n"
    )


def test_writer_zero_parts() -> None:
    assert b"".join(iter_multipart([], "xyz")) == b"--xyz--\r\n"


def test_writer_is_lazy() -> None:
    pulled: list[str] = []
    big = b"x" * (1 << 20)

    def body(name: str) -> Iterator[bytes]:
        pulled.append(f"{name} body")
        yield big
        yield big

    def parts() -> Iterator[tuple[dict[str, str], Iterable[bytes]]]:
        for name in ("one", "two"):
            pulled.append(name)
            yield {"X-Name": name}, body(name)

    stream = iter_multipart(parts(), "xyz")
    next(stream)
    assert pulled == ["one", "one body"]
    assert next(stream) is big  # large chunks pass through uncopied
    assert pulled == ["one", "one body"]
    rest = b"".join(stream)
    assert pulled == ["one", "one body", "two", "two body"]
    assert rest.endswith(b"--xyz--\r\n")


def test_writer_coalesces_small_pieces() -> None:
    frames = [({"Content-Type": "application/octet-stream"}, [bytes([i]) * 100]) for i in range(50)]
    pieces = list(iter_multipart(frames, "xyz"))
    assert len(pieces) == 1
    assert parse(pieces[0], "xyz") == lowered([(h, b[0]) for h, b in frames])


def test_writer_rejects_header_injection() -> None:
    for headers in ({"X": "a\r\nEvil: 1"}, {"Bad Name": "v"}):
        with pytest.raises(ValueError):
            b"".join(iter_multipart([(headers, [b""])], "xyz"))


def test_multipart_content_type() -> None:
    value = multipart_content_type(
        "application/dicom", "xyz", transfer_syntax="1.2.840.10008.1.2.1"
    )
    assert value == (
        'multipart/related; type="application/dicom"; boundary=xyz; '
        "transfer-syntax=1.2.840.10008.1.2.1"
    )
    parsed = parse_content_type(multipart_content_type("image/jpeg", "a b", transfer_syntax="*"))
    assert parsed.params == {"type": "image/jpeg", "boundary": "a b", "transfer-syntax": "*"}
    assert boundary_of(parsed) == "a b"


def test_new_boundary() -> None:
    boundaries = {new_boundary() for _ in range(100)}
    assert len(boundaries) == 100
    for boundary in boundaries:
        assert boundary.isalnum() and 1 <= len(boundary) <= 70
        MultipartReader(boundary)
