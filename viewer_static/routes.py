"""The viewer at the site root: /app-config.js is ours, files of the bundle are served as they
are, and every other path the viewer owns (/, /viewer, /mode/..., the study list) gets its
index.html, where OHIF's router takes over. These routes go last: our own routes win."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from pacs.errors import NotFound
from viewer_static import BUNDLE_DIR, CONFIG_FILE

# Paths of our API: never the viewer's, even when no route of ours matched them.
API_PREFIXES = ("/dicom-web", "/wado", "/api", "/login", "/health")
# What a browser fetches from the bundle (scripts, styles, WebAssembly, fonts, images, manifests).
ASSET_SUFFIXES = (
    ".js", ".mjs", ".css", ".wasm", ".map", ".woff", ".woff2", ".ttf", ".png", ".svg", ".ico", ".gif",
    ".jpg", ".json", ".jsonc", ".webapp", ".xml", ".txt",
)
# webpack's content-hashed names (app.bundle.<hash>.js, <hash>.wasm): safe to cache for good.
_HASHED = re.compile(r"(^|\.)[0-9a-f]{16}\.[a-z0-9]+$")
FAVICON = "/assets/favicon.ico"  # what browsers ask for at /favicon.ico (the login page, for one)
_NO_CACHE = {"Cache-Control": "no-cache"}
_IMMUTABLE = {"Cache-Control": "public, max-age=31536000, immutable"}


def is_api_path(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in API_PREFIXES)


def is_viewer_asset(path: str) -> bool:
    """A static file of the viewer: public, since it holds no patient data."""
    return path.lower().endswith(ASSET_SUFFIXES) and not is_api_path(path)


def bundle_file(bundle: Path, path: str) -> Path | None:
    """The file `path` names inside `bundle`, or None (missing, or not inside it)."""
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") or "\\" in p or "\x00" in p for p in parts):
        return None
    candidate = bundle.joinpath(*parts)
    try:
        resolved = candidate.resolve()
    except (OSError, ValueError):
        return None
    if not resolved.is_relative_to(bundle.resolve()) or not resolved.is_file():
        return None
    return resolved


def app_config(request: Request) -> Response:
    return FileResponse(CONFIG_FILE, media_type="text/javascript", headers=_NO_CACHE)


def study_viewer(request: Request) -> Response:
    """A stable link to a study in the viewer, for other systems and our own API answers."""
    study = request.path_params["study"]
    return RedirectResponse(viewer_url(study), status_code=303)


def viewer_url(study_instance_uid: str) -> str:
    return "/viewer?StudyInstanceUIDs=" + quote(study_instance_uid, safe="")


def viewer_file(request: Request) -> Response:
    path = "/" + request.path_params["path"]
    if is_api_path(path):
        raise NotFound(f"no route {path}")
    bundle = BUNDLE_DIR
    index = bundle / "index.html"
    if not index.is_file():
        if is_viewer_asset(path):
            raise NotFound(f"no file {path}")
        return HTMLResponse(NOT_INSTALLED_PAGE, status_code=503, headers=_NO_CACHE)
    found = bundle_file(bundle, FAVICON if path == "/favicon.ico" else path)
    if found is not None and found != index.resolve():
        return FileResponse(found, headers=_IMMUTABLE if _HASHED.search(found.name) else _NO_CACHE)
    if is_viewer_asset(path):
        raise NotFound(f"no file {path}")
    return FileResponse(index, media_type="text/html", headers=_NO_CACHE)


NOT_INSTALLED_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>minipacs: viewer not installed</title>
<style>body{font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem}
code,pre{background:#f3f3f3;padding:.1rem .3rem}</style></head><body>
<h1>The viewer is not installed</h1>
<p>minipacs serves the OHIF viewer from this address once its prebuilt bundle is installed.
On the server, with Node.js and npm available (Debian: <code>apt-get install npm</code>), run:</p>
<pre>minipacs viewer install</pre>
<p>then reload this page; the server need not restart. DICOMweb stays available at
<a href="/dicom-web/studies">/dicom-web</a> meanwhile.</p>
</body></html>
"""

ROUTES = [
    Route("/app-config.js", app_config, methods=["GET"]),
    Route("/viewer/study/{study}", study_viewer, methods=["GET"]),
    Route("/{path:path}", viewer_file, methods=["GET"]),
]
