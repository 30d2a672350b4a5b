"""WADO-URI (PS3.18 9): GET /wado?requestType=WADO&studyUID=&seriesUID=&objectUID=...

contentType image/jpeg (the default), image/png, image/gif: a rendered frame (frameNumber,
windowCenter/windowWidth, rows/columns, imageQuality); application/dicom: the stored file, or
transcoded to `transferSyntax`. `anonymize=yes` is refused: this archive does not de-identify."""

from __future__ import annotations

import math

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomweb.rendered import RENDERED_TYPES, image_response
from dicomweb.responses import etag, not_modified
from pacs.errors import InvalidInput, NotAcceptable
from pacs.index.repository import StoredInstance
from pacs.pixels.render import MAX_VIEWPORT, RenderOptions, Window
from pacs.pixels.transcode import transcoded_stream
from pacs.services import Services

DICOM = "application/dicom"
_REQUIRED = ("studyUID", "seriesUID", "objectUID")


def retrieve(request: Request, services: Services, referred_by: str | None) -> Response:
    params = request.query_params
    if params.get("requestType") != "WADO":
        raise InvalidInput("requestType must be WADO")
    missing = [name for name in _REQUIRED if not params.get(name)]
    if missing:
        raise InvalidInput(f"missing {', '.join(missing)}")
    if params.get("anonymize", "").lower() == "yes":
        raise InvalidInput("anonymize=yes is not supported: this archive does not de-identify")
    if params.get("region"):
        raise InvalidInput("region is not supported")
    stored = services.retrieve.locate(
        params["studyUID"], params["seriesUID"], params["objectUID"], referred_by=referred_by
    )[0]
    content_type = _content_type(params.get("contentType", ""))
    if content_type == DICOM:
        return _dicom(services, stored, params.get("transferSyntax", ""))
    options = RenderOptions(
        media_type=content_type,
        quality=_int(params, "imageQuality", 90, 1, 100),
        window=_window(params.get("windowCenter"), params.get("windowWidth")),
        viewport=_viewport(params.get("columns"), params.get("rows")),
    )
    frame = _int(params, "frameNumber", 1, 1, None)
    tag = etag((stored.blob_key, frame, options))
    body = b"" if not_modified(request, tag) else services.pixels.render(stored, frame, options)
    return image_response(request, tag, options.media_type, body)


def _content_type(text: str) -> str:
    """The first supported type of a comma-separated list (PS3.18 9.1.2.1.5); JPEG by default."""
    asked = [t.split(";")[0].strip().lower() for t in text.split(",") if t.strip()]
    if not asked:
        return RENDERED_TYPES[0]
    for media_type in asked:
        if media_type in RENDERED_TYPES or media_type == DICOM:
            return media_type
        if media_type in ("*/*", "image/*"):
            return RENDERED_TYPES[0]
    raise NotAcceptable(f"contentType {text!r}: available are {', '.join((*RENDERED_TYPES, DICOM))}")


def _dicom(services: Services, stored: StoredInstance, transfer_syntax: str) -> Response:
    headers = {"Content-Disposition": f'attachment; filename="{stored.sop_instance_uid}.dcm"'}
    wanted = transfer_syntax.strip()
    if wanted and wanted != stored.transfer_syntax_uid:
        return StreamingResponse(transcoded_stream(services, stored, wanted), media_type=DICOM, headers=headers)
    headers["Content-Length"] = str(stored.blob_size)
    return StreamingResponse(services.retrieve.iter_file(stored), media_type=DICOM, headers=headers)


def _window(center: str | None, width: str | None) -> Window | None:
    if center is None and width is None:
        return None
    if center is None or width is None:
        raise InvalidInput("windowCenter and windowWidth go together")
    try:
        c, w = float(center), float(width)
    except ValueError:
        raise InvalidInput("windowCenter and windowWidth must be numbers") from None
    if not (math.isfinite(c) and math.isfinite(w) and w > 0):
        raise InvalidInput(f"windowWidth must be a finite number above 0, not {width!r}")
    return Window(c, w)


def _viewport(columns: str | None, rows: str | None) -> tuple[int, int] | None:
    if columns is None and rows is None:
        return None
    limit = MAX_VIEWPORT
    width = _positive(columns, "columns") if columns else limit
    height = _positive(rows, "rows") if rows else limit
    return min(width, limit), min(height, limit)


def _positive(text: str, name: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise InvalidInput(f"{name} must be a positive integer, not {text!r}")
    return int(text)


def _int(params: object, name: str, default: int, low: int, high: int | None) -> int:
    text = params.get(name)  # type: ignore[attr-defined]
    if text is None or text == "":
        return default
    value = _positive(text, name) if low >= 1 else int(text)
    if value < low or (high is not None and value > high):
        raise InvalidInput(f"{name} must be between {low} and {high}, not {value}")
    return value
