"""WADO-RS (PS3.18 10.4): instances, metadata, frames and bulk data, streamed from storage."""

from __future__ import annotations

import re

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
from dicomweb.responses import stored_json_response
from pacs.errors import InvalidInput
from pacs.index.repository import StoredInstance
from pacs.services import Services


def retrieve_instances(
    request: Request, services: Services, study: str, series: str | None, sop: str | None, referred_by: str | None
) -> Response:
    accept = parse_accept(request.headers.get("accept"))
    stored = services.retrieve.locate(study, series, sop, referred_by=referred_by)
    syntaxes = {s.transfer_syntax_uid for s in stored}
    negotiate_instances(accept, syntaxes)
    boundary = new_boundary()
    parts = ((_instance_headers(s), chunks) for s, chunks in services.retrieve.iter_files(stored))
    params = {"transfer-syntax": next(iter(syntaxes))} if len(syntaxes) == 1 else {}
    return StreamingResponse(
        iter_multipart(parts, boundary),
        media_type=multipart_content_type(DICOM, boundary, **params),
    )


def _instance_headers(stored: StoredInstance) -> dict[str, str]:
    return {
        "Content-Type": f"{DICOM}; transfer-syntax={stored.transfer_syntax_uid}",
        "Content-Length": str(stored.blob_size),
    }


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
        parse_accept(request.headers.get("accept")), stored.transfer_syntax_uid
    )
    frames = services.retrieve.frames(stored, numbers)
    part_type = f"{representation.part_media_type}; transfer-syntax={representation.transfer_syntax}"
    boundary = new_boundary()
    parts = (({"Content-Type": part_type}, frame.chunks) for frame in frames)
    return StreamingResponse(
        iter_multipart(parts, boundary),
        media_type=multipart_content_type(
            representation.part_media_type, boundary, **{"transfer-syntax": representation.transfer_syntax}
        ),
    )


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
