"""WADO-RS rendered resources and thumbnails (PS3.18 8.3.5, 10.4.1.1.3, 10.7): consumer-format
images of stored instances, with the standard's query parameters, content negotiation and
HTTP caching (instances are immutable while stored, so a rendering is too)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomweb.media import MediaRange, parse_accept
from dicomweb.multipart import iter_multipart, multipart_content_type, new_boundary
from dicomweb.responses import CACHE_CONTROL, etag, not_modified
from pacs.errors import InvalidInput, NotAcceptable
from pacs.index.repository import StoredInstance
from pacs.pixels.render import MAX_VIEWPORT, RenderOptions, Window
from pacs.services import Services

JPEG, PNG, GIF = "image/jpeg", "image/png", "image/gif"
RENDERED_TYPES = (JPEG, PNG, GIF)  # the first is the default (PS3.18 8.7.4)
WINDOW_FUNCTIONS = {"linear": "linear", "linear-exact": "linear_exact", "linear_exact": "linear_exact",
                    "sigmoid": "sigmoid"}
THUMBNAIL_SIZE = 128


@dataclass(frozen=True)
class RenderRequest:
    options: RenderOptions
    warnings: tuple[str, ...] = ()


def parse_render_params(items: Sequence[tuple[str, str]], accept: list[MediaRange]) -> RenderRequest:
    """The rendered resources' query parameters (PS3.18 Table 8.3.5-1) and the media type."""
    params = {name.lower(): value for name, value in items}
    warnings = []
    window = None
    if "window" in params:
        parts = [p.strip() for p in params["window"].split(",")]
        if len(parts) != 3:
            raise InvalidInput("window must be center,width,function (function: linear, linear-exact or sigmoid)")
        center, width = _number("window center", parts[0]), _number("window width", parts[1])
        if width <= 0:
            raise InvalidInput(f"window width must be greater than 0, not {parts[1]}")
        function = WINDOW_FUNCTIONS.get(parts[2].lower())
        if function is None:
            raise InvalidInput(f"window function {parts[2]!r} is not linear, linear-exact or sigmoid")
        window = Window(center, width, function)
    viewport = None
    if "viewport" in params:
        parts = [p.strip() for p in params["viewport"].split(",")]
        if len(parts) not in (2, 6):
            raise InvalidInput("viewport must be vw,vh or vw,vh,sx,sy,sw,sh")
        width, height = (_positive_int("viewport", p) for p in parts[:2])
        if width > MAX_VIEWPORT or height > MAX_VIEWPORT:
            warnings.append(f"viewport larger than {MAX_VIEWPORT} pixels was reduced")
        viewport = (min(width, MAX_VIEWPORT), min(height, MAX_VIEWPORT))
        if len(parts) == 6:
            warnings.append("viewport source region (sx,sy,sw,sh) is not supported; the whole image is rendered")
    quality = 90
    if "quality" in params:
        quality = _positive_int("quality", params["quality"])
        if quality > 100:
            raise InvalidInput(f"quality must be 1 to 100, not {quality}")
    if params.get("annotation"):
        warnings.append("annotation is not supported; images are rendered without burned-in text")
    if "accept" in params:  # PS3.18 8.3.3.1: the accept query parameter overrides the header
        accept = parse_accept(params["accept"])
    media_type = choose_image_type(accept)
    return RenderRequest(RenderOptions(media_type, quality, window, viewport), tuple(warnings))


def choose_image_type(accept: list[MediaRange]) -> str:
    for media_range in accept:  # most preferred first
        wanted = media_range.media_type
        if wanted in RENDERED_TYPES:
            return wanted
        if wanted in ("*/*", "image/*"):
            return JPEG
    offered = ", ".join(RENDERED_TYPES)
    asked = ", ".join(str(r) for r in accept)
    raise NotAcceptable(f"rendered images are available as {offered}; the request accepts {asked}")


def _number(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidInput(f"{name} must be a number, not {text!r}") from None
    if not math.isfinite(value):
        raise InvalidInput(f"{name} must be a finite number, not {text!r}")
    return value


def _positive_int(name: str, text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise InvalidInput(f"{name} must be a positive integer, not {text!r}")
    return int(text)


def image_response(
    request: Request, tag: str, media_type: str, body: bytes | Iterator[bytes], warnings: Sequence[str] = ()
) -> Response:
    headers = {"ETag": tag, "Cache-Control": CACHE_CONTROL, "Vary": "Accept, Authorization, Cookie"}
    if warnings:
        headers["Warning"] = ", ".join(f'299 minipacs "{w}"' for w in warnings)
    if not_modified(request, tag):
        return Response(status_code=304, headers=headers)
    if isinstance(body, bytes):
        return Response(body, media_type=media_type, headers=headers)
    return StreamingResponse(body, media_type=media_type, headers=headers)


def render_instance(
    request: Request, services: Services, stored: StoredInstance, frame: int, wanted: RenderRequest
) -> Response:
    options = wanted.options
    tag = etag((stored.blob_key, frame, options))
    body = b"" if not_modified(request, tag) else services.pixels.render(stored, frame, options)
    return image_response(request, tag, options.media_type, body, wanted.warnings)


def render_many(request: Request, services: Services, stored: list[StoredInstance], wanted: RenderRequest) -> Response:
    """A study or series: each instance's first frame, one image per part."""
    options = wanted.options
    tag = etag((tuple(s.blob_key for s in stored), options))
    boundary = new_boundary()
    media_type = multipart_content_type(options.media_type, boundary)
    if not_modified(request, tag):
        return image_response(request, tag, media_type, b"", wanted.warnings)
    # The first image is made before answering, so a failure is a clean 4xx, not a cut stream.
    first = services.pixels.render(stored[0], 1, options)

    def parts() -> Iterator[tuple[dict[str, str], list[bytes]]]:
        yield {"Content-Type": options.media_type}, [first]
        for item in stored[1:]:
            yield {"Content-Type": options.media_type}, [services.pixels.render(item, 1, options)]

    return image_response(request, tag, media_type, iter_multipart(parts(), boundary), wanted.warnings)


def thumbnail(request: Request, services: Services, stored: list[StoredInstance]) -> Response:
    """A small JPEG of a representative frame (of the first series, for a study)."""
    if choose_image_type(parse_accept(request.headers.get("accept"))) != JPEG and not any(
        r.media_type == JPEG for r in parse_accept(request.headers.get("accept"))
    ):
        raise NotAcceptable("thumbnails are image/jpeg")
    first_series = [s for s in stored if s.series_instance_uid == stored[0].series_instance_uid]
    tag = etag(("thumbnail", tuple(s.blob_key for s in first_series), THUMBNAIL_SIZE))
    body = b"" if not_modified(request, tag) else services.pixels.thumbnail(first_series, THUMBNAIL_SIZE)
    return image_response(request, tag, JPEG, body)
