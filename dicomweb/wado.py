"""WADO-RS (PS3.18 10.4): instances, metadata, frames and bulk data, streamed from storage.

Instances and frames asked for in a transfer syntax other than the stored one are converted on
the way out (pacs.pixels.transcode): one instance at a time through a temp file, one frame at a
time in memory. What is sent as stored is streamed untouched, never decoded.
"""

from __future__ import annotations

import io
import itertools
import logging
import re
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomweb.media import (
    DICOM,
    OCTET_STREAM,
    negotiate_bulkdata,
    negotiate_frames,
    negotiate_instances,
    negotiate_metadata,
    parse_accept,
)
from dicomweb.multipart import iter_multipart, multipart_content_type, new_boundary
from dicomweb.responses import CACHE_CONTROL, etag, not_modified, stored_json_response
from pacs.dicom.frames import frame_count, frame_ranges
from pacs.errors import InvalidInput, PacsError
from pacs.index.repository import StoredInstance
from pacs.pixels.transcode import frame_in_syntax, open_transcoded, producible_from, read_pixel_header
from pacs.retrieve import Frame
from pacs.services import Services
from storage.base import DEFAULT_CHUNK_SIZE, RangeChunks

log = logging.getLogger(__name__)
Part = tuple[dict[str, str], Iterable[bytes]]
T = TypeVar("T")


def retrieve_instances(
    request: Request, services: Services, study: str, series: str | None, sop: str | None, referred_by: str | None
) -> Response:
    accept = parse_accept(request.headers.get("accept"))
    stored = services.retrieve.locate(study, series, sop, referred_by=referred_by)
    syntaxes = {s.transfer_syntax_uid for s in stored}
    target = negotiate_instances(accept, syntaxes, producible_from=producible_from)
    boundary = new_boundary()
    parts: Iterator[Part]
    if target is None or syntaxes == {target}:
        parts = ((_instance_headers(s), chunks) for s, chunks in services.retrieve.iter_files(stored))
        params = {"transfer-syntax": next(iter(syntaxes))} if len(syntaxes) == 1 else {}
    else:
        parts = _started(_transcoded_instances(services, stored, target))
        params = {"transfer-syntax": target}
    return StreamingResponse(
        iter_multipart(parts, boundary),
        media_type=multipart_content_type(DICOM, boundary, **params),
    )


def _instance_headers(stored: StoredInstance) -> dict[str, str]:
    return {
        "Content-Type": f"{DICOM}; transfer-syntax={stored.transfer_syntax_uid}",
        "Content-Length": str(stored.blob_size),
    }


def _transcoded_instances(services: Services, stored: list[StoredInstance], target: str) -> Iterator[Part]:
    """Each instance in ``target``: as stored when it already is, else converted into a temp
    file just before its part is sent, so one instance at most is held at a time."""
    for item in stored:
        if item.transfer_syntax_uid == target:
            yield _instance_headers(item), services.retrieve.iter_file(item)
            continue
        try:
            handle, size = open_transcoded(services, item, target)
        except PacsError as exc:
            # Past the first part the status line is gone: the answer can only be cut short.
            # (The reason went to the client; it is not logged, as a message may quote PHI.)
            log.error("retrieve of %s in %s failed (%s)", item.sop_instance_uid, target, type(exc).__name__)
            raise
        headers = {"Content-Type": f"{DICOM}; transfer-syntax={target}", "Content-Length": str(size)}
        yield headers, RangeChunks(handle, None, DEFAULT_CHUNK_SIZE, nullcontext)


def _started(items: Iterator[T]) -> Iterator[T]:
    """Produce the first item now: a failure there is still answered with an HTTP error
    status, where a failure later can only cut the streamed answer short."""
    first = next(items, None)
    return iter(()) if first is None else itertools.chain([first], items)


def retrieve_metadata(
    request: Request, services: Services, study: str, series: str | None, sop: str | None, referred_by: str | None
) -> Response:
    negotiate_metadata(parse_accept(request.headers.get("accept")))
    return stored_json_response(request, services.retrieve.metadata(study, series, sop, referred_by=referred_by))


def retrieve_frames(
    request: Request, services: Services, study: str, series: str, sop: str, frame_list: str, referred_by: str | None
) -> Response:
    numbers = parse_frame_list(frame_list)
    stored = services.retrieve.locate(study, series, sop, referred_by=referred_by)[0]
    representation = negotiate_frames(
        parse_accept(request.headers.get("accept")), stored.transfer_syntax_uid, producible_from=producible_from
    )
    # A stored instance never changes (a replacement gets a new blob key): viewers may keep frames.
    caching = {"ETag": etag((stored.blob_key, tuple(numbers), representation)), "Cache-Control": CACHE_CONTROL,
               "Vary": "Accept, Authorization, Cookie"}
    if not_modified(request, caching["ETag"]):
        return Response(status_code=304, headers=caching)
    frames = services.retrieve.frames(stored, numbers)
    part_type = f"{representation.part_media_type}; transfer-syntax={representation.transfer_syntax}"
    boundary = new_boundary()
    parts: Iterator[Part] = (({"Content-Type": part_type}, frame.chunks) for frame in frames)
    if representation.transcode:
        converted = _transcoded_frames(services, stored, frames, representation.transfer_syntax)
        parts = _started(({"Content-Type": part_type}, [data]) for data in converted)
    return StreamingResponse(
        iter_multipart(parts, boundary),
        media_type=multipart_content_type(
            representation.part_media_type, boundary, **{"transfer-syntax": representation.transfer_syntax}
        ),
        headers=caching,
    )


def _transcoded_frames(services: Services, stored: StoredInstance, frames: list[Frame], target: str) -> Iterator[bytes]:
    """Each frame converted to ``target``, one at a time, from the frame's stored bytes and the
    file's header; from an object store both are ranged reads, never the whole object."""
    layout = stored.frame_layout
    if layout is not None and frame_count(layout):
        header_end = frame_ranges(layout, 0)[0][0]  # just past the pixel data element's header
        header = read_pixel_header(io.BytesIO(services.blobs.read_range(stored.blob_key, 0, header_end)))
    else:
        with services.blobs.open(stored.blob_key) as fh:
            header = read_pixel_header(fh)
    for frame in frames:
        try:
            yield frame_in_syntax(header, b"".join(frame.chunks), stored.transfer_syntax_uid, target)
        except PacsError as exc:
            log.error("frame %d of %s in %s failed (%s)", frame.number, stored.sop_instance_uid, target, type(exc).__name__)
            raise


def retrieve_bulk(
    request: Request, services: Services, study: str, series: str, sop: str, tag: str, referred_by: str | None
) -> Response:
    # Exactly eight hex digits: int(..., 16) alone also takes "0x10", "1_0" and tags above FFFFFFFF.
    if not re.fullmatch(r"[0-9A-Fa-f]{8}", tag):
        raise InvalidInput(f"bulk data reference {tag!r} is not an attribute tag")
    tag_value = int(tag, 16)
    stored = services.retrieve.locate(study, series, sop, referred_by=referred_by)[0]
    negotiate_bulkdata(parse_accept(request.headers.get("accept")))
    transfer_syntax, chunks = services.retrieve.bulk(stored, tag_value)
    boundary = new_boundary()
    part_headers = {"Content-Type": f"{OCTET_STREAM}; transfer-syntax={transfer_syntax}"}
    return StreamingResponse(
        iter_multipart(((part_headers, c) for c in chunks), boundary),
        media_type=multipart_content_type(OCTET_STREAM, boundary, **{"transfer-syntax": transfer_syntax}),
    )


def parse_frame_list(text: str) -> list[int]:
    """'1', '1,3,5' or '1%2C3' (already decoded by the router) -> [1, 3, 5]."""
    numbers: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not (part.isascii() and part.isdigit()):  # str.isdigit alone takes "²", which int() refuses
            raise InvalidInput(f"frame list {text!r} must be positive integers separated by commas")
        number = int(part)
        if number < 1:
            raise InvalidInput("frame numbers start at 1")
        numbers.append(number)
    if not numbers or len(numbers) > 10000:
        raise InvalidInput("frame list is empty or too long")
    return numbers
