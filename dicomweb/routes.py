"""The DICOMweb route table (mounted under /dicom-web). Handlers only translate HTTP <-> services."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dicomweb import qido, stow, wado
from pacs.dicom.attributes import Level
from pacs.errors import NotAcceptable
from pacs.services import Services


def _services(request: Request) -> Services:
    return request.app.state.services


def _p(request: Request, name: str) -> str | None:
    return request.path_params.get(name)


async def store_instances(request: Request) -> Response:
    return await stow.store(request, _services(request), _p(request, "study"))


def search_studies(request: Request) -> Response:
    return qido.search(request, _services(request), Level.STUDY, {})


def search_series(request: Request) -> Response:
    return qido.search(request, _services(request), Level.SERIES, _scope(request))


def search_instances(request: Request) -> Response:
    return qido.search(request, _services(request), Level.INSTANCE, _scope(request))


def _scope(request: Request) -> dict[str, str]:
    scope = {}
    if _p(request, "study"):
        scope["StudyInstanceUID"] = _p(request, "study") or ""
    if _p(request, "series"):
        scope["SeriesInstanceUID"] = _p(request, "series") or ""
    return scope


def retrieve(request: Request) -> Response:
    return wado.retrieve_instances(
        request, _services(request), request.path_params["study"], _p(request, "series"), _p(request, "instance")
    )


def metadata(request: Request) -> Response:
    return wado.retrieve_metadata(
        request, _services(request), request.path_params["study"], _p(request, "series"), _p(request, "instance")
    )


def frames(request: Request) -> Response:
    p = request.path_params
    return wado.retrieve_frames(request, _services(request), p["study"], p["series"], p["instance"], p["frames"])


def bulk(request: Request) -> Response:
    p = request.path_params
    return wado.retrieve_bulk(request, _services(request), p["study"], p["series"], p["instance"], p["tag"])


def delete(request: Request) -> Response:
    _services(request).ingest.delete(request.path_params["study"], _p(request, "series"), _p(request, "instance"))
    return Response(status_code=204)


def not_yet_rendered(request: Request) -> Response:
    raise NotAcceptable("rendered images and thumbnails are not available on this server yet")


Endpoint = Callable[[Request], Response | Awaitable[Response]]
STUDY = "/studies/{study}"
SERIES = STUDY + "/series/{series}"
INSTANCE = SERIES + "/instances/{instance}"

ROUTES = [
    Route("/studies", store_instances, methods=["POST"]),
    Route("/studies", search_studies, methods=["GET"]),
    Route("/series", search_series, methods=["GET"]),
    Route("/instances", search_instances, methods=["GET"]),
    Route(STUDY, store_instances, methods=["POST"]),
    Route(STUDY, retrieve, methods=["GET"]),
    Route(STUDY, delete, methods=["DELETE"]),
    Route(STUDY + "/metadata", metadata, methods=["GET"]),
    Route(STUDY + "/series", search_series, methods=["GET"]),
    Route(STUDY + "/instances", search_instances, methods=["GET"]),
    Route(SERIES, retrieve, methods=["GET"]),
    Route(SERIES, delete, methods=["DELETE"]),
    Route(SERIES + "/metadata", metadata, methods=["GET"]),
    Route(SERIES + "/instances", search_instances, methods=["GET"]),
    Route(INSTANCE, retrieve, methods=["GET"]),
    Route(INSTANCE, delete, methods=["DELETE"]),
    Route(INSTANCE + "/metadata", metadata, methods=["GET"]),
    Route(INSTANCE + "/frames/{frames}", frames, methods=["GET"]),
    Route(INSTANCE + "/bulk/{tag}", bulk, methods=["GET"]),
    *[
        Route(path + suffix, not_yet_rendered, methods=["GET"])
        for path in (STUDY, SERIES, INSTANCE, INSTANCE + "/frames/{frames}")
        for suffix in ("/rendered", "/thumbnail")
    ],
]
