"""Response helpers: DICOM JSON (gzip when the client accepts it) and the DICOMweb base URL."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from pacs.dicom.instance import BASE_URL_TOKEN

PREFIX = "/dicom-web"
# Private: images carry PHI, so shared caches must not keep them; stored instances never change.
CACHE_CONTROL = "private, max-age=86400"
DICOM_JSON = "application/dicom+json"
_GZIP_MIN_BYTES = 1024


def base_url(request: Request) -> str:
    """The DICOMweb root as the client reached it (used in RetrieveURL and BulkDataURI).

    MINIPACS_PUBLIC_URL wins when set (reverse proxies). Otherwise the Host header decides;
    dicomweb-client sends ``Host: 127.0.0.1`` without the port, so a port-less Host with no
    proxy headers gets the port this server actually listens on.
    """
    public = request.app.state.services.settings.public_url if hasattr(request.app.state, "services") else ""
    if public:
        return public.rstrip("/") + PREFIX
    headers = request.headers
    server = request.scope.get("server")
    key = (request.scope.get("scheme"), headers.get("host", ""), tuple(server) if server else None, request.scope.get("root_path"),
           headers.get("x-forwarded-host"), headers.get("x-forwarded-proto"), headers.get("forwarded"))
    root = _ROOTS.get(key)
    if root is None:
        if len(_ROOTS) > 256:
            _ROOTS.clear()
        root = _ROOTS[key] = _root(request)
    return root


# Per host a client names: building the URL is a few hundred microseconds a request otherwise.
_ROOTS: dict[tuple[Any, ...], str] = {}


def _root(request: Request) -> str:
    url = request.base_url
    host = request.headers.get("host", "")
    server = request.scope.get("server")
    proxied = any(h in request.headers for h in ("x-forwarded-host", "x-forwarded-proto", "forwarded"))
    if host and ":" not in host.rsplit("]", 1)[-1] and not proxied and server and server[1] not in (80, 443, None):
        url = url.replace(port=server[1])
    root = str(url).rstrip("/")
    return root if root.endswith(PREFIX) else root + PREFIX


def dicom_json_response(
    request: Request, body: Any, *, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return encoded_json_response(request, data, status_code=status_code, headers=headers)


def stored_json_response(request: Request, documents: list[str]) -> Response:
    """Join stored DICOM JSON documents without parsing them; resolve the base URL token."""
    text = "[" + ",".join(documents) + "]"
    data = text.replace(BASE_URL_TOKEN, base_url(request)).encode("utf-8")
    return encoded_json_response(request, data)


def accepts_gzip(header: str) -> bool:
    """RFC 9110 12.5.3: gzip (or *) with a q value above zero."""
    weights: dict[str, float] = {}
    for item in header.split(","):
        name, _, params = item.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        weights[name.strip().lower()] = q
    return weights.get("gzip", weights.get("*", 0.0)) > 0


def encoded_json_response(
    request: Request, data: bytes, *, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    out_headers = dict(headers or {})
    out_headers["Vary"] = "Accept-Encoding"
    if len(data) >= _GZIP_MIN_BYTES and accepts_gzip(request.headers.get("accept-encoding", "")):
        # Level 1: series metadata runs to megabytes and speed matters more than the last bytes.
        data = gzip.compress(data, compresslevel=1, mtime=0)
        out_headers["Content-Encoding"] = "gzip"
    return Response(data, status_code=status_code, media_type=DICOM_JSON, headers=out_headers)


def etag(parts: Sequence[object]) -> str:
    """A strong validator for a representation made from immutable stored data."""
    return '"' + hashlib.sha256(repr(tuple(parts)).encode()).hexdigest()[:32] + '"'


def not_modified(request: Request, tag: str) -> bool:
    return tag in (t.strip() for t in request.headers.get("if-none-match", "").split(","))
