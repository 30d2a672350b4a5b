"""Streaming multipart/related (RFC 2387) in both directions.

STOW-RS (PS3.18 section 10.5) receives DICOM instances as the parts of one
multipart/related request body, which may be several gigabytes; WADO-RS
(PS3.18 section 10.4) answers with one. Neither direction ever holds a whole
body or a whole part in memory: the reader is fed the request chunks as they
arrive and emits events, the writer is a generator pulling each part's chunks
lazily from storage.

Framing follows RFC 2046 section 5.1.1: a part starts after a delimiter line
``--boundary`` (optionally followed by transport padding), its header block
ends with an empty line, and its body ends just before the CRLF of the next
delimiter. ``--boundary--`` closes the body; what follows is the epilogue.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass

from dicomweb.content_type import (
    ContentType,
    boundary_of,
    check_boundary,
    is_token,
    parse_content_type,
    split_unquoted,
    unquote,
)
from pacs.errors import InvalidInput

__all__ = [
    "ContentType",
    "MultipartReader",
    "PartData",
    "PartEnd",
    "PartEvent",
    "PartStart",
    "boundary_of",
    "iter_multipart",
    "iter_parts",
    "multipart_content_type",
    "new_boundary",
    "parse_content_type",
    "split_unquoted",
    "unquote",
]

DEFAULT_MAX_HEADER_BYTES = 16384

# Pieces handed to the ASGI server cost a send() each (and, for a sync
# iterator under StreamingResponse, a thread-pool hop each), so the writer
# joins small pieces up to this size. Bigger chunks are passed through as-is
# rather than copied.
_COALESCE_BYTES = 64 * 1024

_CR = 0x0D
_PADDING = b" \t"


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PartStart:
    """A part begins; header names are lower-cased."""

    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class PartData:
    """A non-empty piece of the current part's body."""

    data: bytes


@dataclass(frozen=True, slots=True)
class PartEnd:
    """The current part's body is complete."""


PartEvent = PartStart | PartData | PartEnd


class _State(enum.Enum):
    PREAMBLE = enum.auto()
    DELIMITER = enum.auto()  # just after "--boundary": close marker or padding + line end
    HEADERS = enum.auto()
    BODY = enum.auto()
    EPILOGUE = enum.auto()


class MultipartReader:
    """Incremental parser fed with the request body chunks.

    Memory stays bounded: while in a part body, everything except the last
    ``len(boundary) + 3`` bytes (a possible partial delimiter) is emitted on
    each ``feed``; a header block may use up to ``max_header_bytes``.
    """

    def __init__(self, boundary: str, *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> None:
        check_boundary(boundary)
        self._boundary = boundary
        # Searching for LF + "--boundary" rather than CRLF + "--boundary" also
        # accepts bodies written with bare LF line ends; the CR, when present,
        # is trimmed from the part body afterwards (see _body).
        self._delimiter = b"\n--" + boundary.encode("latin-1")
        self._max_header_bytes = max_header_bytes
        # Seeding with CRLF lets a body that opens directly with "--boundary"
        # (no preamble, no leading CRLF: what nearly every client sends) match
        # the same delimiter as every later part.
        self._buf = bytearray(b"\r\n")
        self._state = _State.PREAMBLE
        self._in_preamble = True

    def feed(self, chunk: bytes) -> Iterator[PartEvent]:
        """Consume one chunk of the body and return the events it completes."""
        if not chunk or self._state is _State.EPILOGUE:
            return iter(())
        self._buf += chunk
        events: list[PartEvent] = []
        while self._step(events):
            pass
        return iter(events)

    def close(self) -> Iterator[PartEvent]:
        """Signal the end of the body; it must have been properly closed."""
        if self._state is _State.EPILOGUE:
            return iter(())
        if self._in_preamble:
            raise InvalidInput(
                f"multipart body has no part delimited by boundary {self._boundary!r}"
            )
        raise InvalidInput(
            f"multipart body is truncated: closing delimiter --{self._boundary}-- never seen"
        )

    def _step(self, events: list[PartEvent]) -> bool:
        """Advance the state machine once; False when more input is needed."""
        state = self._state
        if state is _State.BODY:
            return self._body(events)
        if state is _State.HEADERS:
            return self._headers(events)
        if state is _State.DELIMITER:
            return self._delimiter_line()
        if state is _State.PREAMBLE:
            return self._preamble()
        return False

    def _preamble(self) -> bool:
        buf = self._buf
        index = buf.find(self._delimiter)
        if index < 0:
            # Keep only what might be the start of a delimiter.
            excess = len(buf) - len(self._delimiter)
            if excess > 0:
                del buf[:excess]
            return False
        del buf[: index + len(self._delimiter)]
        self._state = _State.DELIMITER
        return True

    def _delimiter_line(self) -> bool:
        """Classify what follows ``--boundary``: ``--`` closes the body; else
        transport padding (RFC 2046 5.1.1) then a line end opens a part."""
        buf = self._buf
        if len(buf) < 2:
            return False
        if buf.startswith(b"--"):
            self._state = _State.EPILOGUE
            buf.clear()
            return False
        line_end = buf.find(b"\n")
        if line_end < 0:
            if len(buf) > self._max_header_bytes:
                return self._bad_delimiter_line(len(buf))
            return False
        if buf[:line_end].rstrip(b"\r").strip(_PADDING):
            return self._bad_delimiter_line(line_end)
        del buf[: line_end + 1]
        self._state = _State.HEADERS
        self._in_preamble = False
        return True

    def _bad_delimiter_line(self, skip: int) -> bool:
        # In the preamble, text that merely starts like a delimiter is just
        # preamble; inside the body, the boundary must not occur (RFC 2046
        # 5.1.1), so its presence means the body is malformed.
        if not self._in_preamble:
            raise InvalidInput("malformed multipart delimiter line")
        del self._buf[:skip]
        self._state = _State.PREAMBLE
        return True

    def _headers(self, events: list[PartEvent]) -> bool:
        buf = self._buf
        end, resume = _find_header_block_end(buf)
        if end < 0:
            if len(buf) > self._max_header_bytes:
                raise InvalidInput(f"multipart part headers exceed {self._max_header_bytes} bytes")
            return False
        if end > self._max_header_bytes:
            raise InvalidInput(f"multipart part headers exceed {self._max_header_bytes} bytes")
        headers = _parse_header_block(bytes(buf[:end]))
        del buf[:resume]
        events.append(PartStart(headers))
        self._state = _State.BODY
        return True

    def _body(self, events: list[PartEvent]) -> bool:
        buf = self._buf
        index = buf.find(self._delimiter)
        if index < 0:
            # A delimiter may straddle this chunk and the next: hold back just
            # enough bytes for it (plus its CR) and emit the rest in one slice.
            ready = len(buf) - len(self._delimiter)
            if ready > 0:
                events.append(PartData(_take(buf, ready)))
            return False
        end = index - 1 if index > 0 and buf[index - 1] == _CR else index
        if end > 0:
            events.append(PartData(_take(buf, end)))
            index -= end
        events.append(PartEnd())
        del buf[: index + len(self._delimiter)]
        self._state = _State.DELIMITER
        return True


def _take(buf: bytearray, size: int) -> bytes:
    """Remove and return the first ``size`` bytes with a single copy."""
    with memoryview(buf) as view:
        data = bytes(view[:size])
    del buf[:size]  # CPython trims a bytearray's head without moving the rest
    return data


def _find_header_block_end(buf: bytearray) -> tuple[int, int]:
    """Locate the empty line ending a header block.

    Returns (end of the header lines, start of the body), or (-1, -1) when the
    block is incomplete. Bare LF line ends are accepted as well as CRLF.
    """
    if buf.startswith(b"\r\n"):
        return 0, 2
    if buf.startswith(b"\n"):
        return 0, 1
    crlf = buf.find(b"\n\r\n")
    lf = buf.find(b"\n\n")
    if crlf < 0 and lf < 0:
        return -1, -1
    if lf < 0 or 0 <= crlf < lf:
        return crlf + 1, crlf + 3
    return lf + 1, lf + 2


def _parse_header_block(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    last = ""
    # Latin-1 decodes any byte, as HTTP header fields have always been read.
    for raw_line in block.decode("latin-1").split("\n"):
        line = raw_line.rstrip("\r")
        if not line:
            continue
        if line[0] in " \t" and last:
            # Obsolete line folding (RFC 5322 2.2.3): continue the last value.
            headers[last] = f"{headers[last]} {line.strip()}"
            continue
        name, colon, value = line.partition(":")
        name = name.strip().lower()
        if not colon or not name:
            raise InvalidInput(f"malformed multipart part header line {line[:80]!r}")
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
        last = name
    return headers


async def iter_parts(
    chunks: AsyncIterable[bytes],
    boundary: str,
    *,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> AsyncIterator[PartEvent]:
    """Parse a streamed multipart body (e.g. ``request.stream()``) into events."""
    reader = MultipartReader(boundary, max_header_bytes=max_header_bytes)
    async for chunk in chunks:
        for event in reader.feed(chunk):
            yield event
    for event in reader.close():
        yield event


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------


def new_boundary() -> str:
    """A fresh boundary: 32 hex digits cannot collide with a part body in practice."""
    return uuid.uuid4().hex


def multipart_content_type(part_type: str, boundary: str, **params: str) -> str:
    """Content-Type of a multipart/related answer, as PS3.18 8.7.3 spells it.

    ``type`` is always quoted (``/`` is not a token character, RFC 9110 5.6.6).
    Keyword names use ``_`` for ``-``: ``transfer_syntax="1.2.840.10008.1.2.1"``
    becomes ``transfer-syntax=1.2.840.10008.1.2.1``.
    """
    check_boundary(boundary)
    pieces = [
        "multipart/related",
        f"type={_quote(part_type)}",
        f"boundary={_quote_if_needed(boundary)}",
    ]
    pieces += [
        f"{name.replace('_', '-')}={_quote_if_needed(value)}" for name, value in params.items()
    ]
    return "; ".join(pieces)


def iter_multipart(
    parts: Iterable[tuple[dict[str, str], Iterable[bytes]]],
    boundary: str,
) -> Iterator[bytes]:
    """Yield a multipart/related body.

    Each part is ``--boundary CRLF headers CRLF body``, parts are separated by
    CRLF and the body ends with ``--boundary--`` CRLF. Parts and their bodies
    are pulled lazily; small pieces (delimiters, headers, small frames) are
    joined up to 64 KiB, never a whole large part.
    """
    check_boundary(boundary)
    delimiter = b"--" + boundary.encode("latin-1")
    pending = _Coalescer()
    separator = b""
    for headers, body in parts:
        yield from pending.add(separator + delimiter + b"\r\n" + _encode_headers(headers))
        for chunk in body:
            yield from pending.add(chunk)
        # The CRLF ending a part body belongs to the next delimiter (RFC 2046).
        separator = b"\r\n"
    yield from pending.add(separator + delimiter + b"--\r\n")
    yield from pending.flush()


class _Coalescer:
    """Join small pieces into bigger ones; pass big pieces through uncopied."""

    def __init__(self) -> None:
        self._pieces: list[bytes] = []
        self._size = 0

    def add(self, piece: bytes) -> Iterator[bytes]:
        if not piece:
            return
        if len(piece) >= _COALESCE_BYTES:
            yield from self.flush()
            yield piece
            return
        self._pieces.append(piece)
        self._size += len(piece)
        if self._size >= _COALESCE_BYTES:
            yield from self.flush()

    def flush(self) -> Iterator[bytes]:
        if self._pieces:
            joined = self._pieces[0] if len(self._pieces) == 1 else b"".join(self._pieces)
            self._pieces = []
            self._size = 0
            yield joined


def _encode_headers(headers: dict[str, str]) -> bytes:
    lines = []
    for name, value in headers.items():
        if any(c in "\r\n" for c in name + value) or not is_token(name):
            raise ValueError(f"invalid part header {name!r}: {value!r}")
        lines.append(f"{name}: {value}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _quote_if_needed(value: str) -> str:
    return value if is_token(value) else _quote(value)
