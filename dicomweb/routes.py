"""The DICOMweb route table (mounted under /dicom-web). Handlers only translate HTTP <-> services;
the table names the operation of each route, and `guarded` checks and audits it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dicomweb import qido, stow, ups, wado
from dicomweb import wado_uri as wado_uri_module
from dicomweb.media import parse_accept
from dicomweb.rendered import parse_render_params, render_instance, render_many
from dicomweb.rendered import thumbnail as make_thumbnail
from dicomweb.wado import parse_frame_list
from pacs.dicom.attributes import Level
from pacs.errors import InvalidInput
from pacs.security.http import guarded, principal_of
from pacs.security.policy import Operation
from pacs.services import Services


def _services(request: Request) -> Services:
    return request.app.state.services


def _p(request: Request, name: str) -> str | None:
    return request.path_params.get(name)


def _visible(request: Request) -> str | None:
    """The referring physician the caller is restricted to (providers), None for everyone else."""
    return principal_of(request).referred_by


async def store_instances(request: Request) -> Response:
    return await stow.store(request, _services(request), _p(request, "study"))


def search_studies(request: Request) -> Response:
    return qido.search(request, _services(request), Level.STUDY, {}, _visible(request))


def search_series(request: Request) -> Response:
    return qido.search(request, _services(request), Level.SERIES, _scope(request), _visible(request))


def search_instances(request: Request) -> Response:
    return qido.search(request, _services(request), Level.INSTANCE, _scope(request), _visible(request))


def _scope(request: Request) -> dict[str, str]:
    scope = {}
    if _p(request, "study"):
        scope["StudyInstanceUID"] = _p(request, "study") or ""
    if _p(request, "series"):
        scope["SeriesInstanceUID"] = _p(request, "series") or ""
    return scope


def retrieve(request: Request) -> Response:
    return wado.retrieve_instances(request, _services(request), *_target(request), _visible(request))


def metadata(request: Request) -> Response:
    return wado.retrieve_metadata(request, _services(request), *_target(request), _visible(request))


def frames(request: Request) -> Response:
    p = request.path_params
    return wado.retrieve_frames(
        request, _services(request), p["study"], p["series"], p["instance"], p["frames"], _visible(request)
    )


def bulk(request: Request) -> Response:
    p = request.path_params
    return wado.retrieve_bulk(
        request, _services(request), p["study"], p["series"], p["instance"], p["tag"], _visible(request)
    )


def _target(request: Request) -> tuple[str, str | None, str | None]:
    return request.path_params["study"], _p(request, "series"), _p(request, "instance")


def delete(request: Request) -> Response:
    services = _services(request)
    study = request.path_params["study"]
    # Recorded before the study may vanish with its last instance.
    request.state.audit["patient_id"] = services.index.patient_of_study(study)
    services.ingest.delete(*_target(request))
    return Response(status_code=204)


def rendered(request: Request) -> Response:
    wanted = parse_render_params(request.query_params.multi_items(), parse_accept(request.headers.get("accept")))
    services, (study, series, sop) = _services(request), _target(request)
    stored = services.retrieve.locate(study, series, sop, referred_by=_visible(request))
    if sop is None:
        return render_many(request, services, stored, wanted)
    return render_instance(request, services, stored[0], 1, wanted)


def rendered_frame(request: Request) -> Response:
    wanted = parse_render_params(request.query_params.multi_items(), parse_accept(request.headers.get("accept")))
    services, (study, series, sop) = _services(request), _target(request)
    frames = parse_frame_list(request.path_params["frames"])
    if len(frames) != 1:
        raise InvalidInput("a rendered frame is one frame number")
    stored = services.retrieve.locate(study, series, sop, referred_by=_visible(request))[0]
    return render_instance(request, services, stored, frames[0], wanted)


def thumbnail(request: Request) -> Response:
    services, (study, series, sop) = _services(request), _target(request)
    stored = services.retrieve.locate(study, series, sop, referred_by=_visible(request))
    return make_thumbnail(request, services, stored)


def wado_uri(request: Request) -> Response:
    params = request.query_params
    request.state.audit["study_uid"] = params.get("studyUID")
    request.state.audit["detail"] = {"series": params.get("seriesUID"), "instance": params.get("objectUID")}
    return wado_uri_module.retrieve(request, _services(request), _visible(request))


Endpoint = Callable[[Request], Response | Awaitable[Response]]
STUDY = "/studies/{study}"
SERIES = STUDY + "/series/{series}"
INSTANCE = SERIES + "/instances/{instance}"

# (path, method, operation, endpoint): every route and what it needs, in one table.
TABLE: list[tuple[str, str, Operation, Endpoint]] = [
    ("/studies", "POST", Operation.STORE, store_instances),
    ("/studies", "GET", Operation.SEARCH, search_studies),
    ("/series", "GET", Operation.SEARCH, search_series),
    ("/instances", "GET", Operation.SEARCH, search_instances),
    (STUDY, "POST", Operation.STORE, store_instances),
    (STUDY, "GET", Operation.READ, retrieve),
    (STUDY, "DELETE", Operation.DELETE, delete),
    (STUDY + "/metadata", "GET", Operation.READ, metadata),
    (STUDY + "/series", "GET", Operation.SEARCH, search_series),
    (STUDY + "/instances", "GET", Operation.SEARCH, search_instances),
    (SERIES, "GET", Operation.READ, retrieve),
    (SERIES, "DELETE", Operation.DELETE, delete),
    (SERIES + "/metadata", "GET", Operation.READ, metadata),
    (SERIES + "/instances", "GET", Operation.SEARCH, search_instances),
    (INSTANCE, "GET", Operation.READ, retrieve),
    (INSTANCE, "DELETE", Operation.DELETE, delete),
    (INSTANCE + "/metadata", "GET", Operation.READ, metadata),
    (INSTANCE + "/frames/{frames}", "GET", Operation.READ, frames),
    (INSTANCE + "/bulk/{tag}", "GET", Operation.READ, bulk),
    *[(path + "/rendered", "GET", Operation.READ, rendered) for path in (STUDY, SERIES, INSTANCE)],
    (INSTANCE + "/frames/{frames}/rendered", "GET", Operation.READ, rendered_frame),
    *[(path + "/thumbnail", "GET", Operation.READ, thumbnail) for path in (STUDY, SERIES, INSTANCE)],
    (INSTANCE + "/frames/{frames}/thumbnail", "GET", Operation.READ, thumbnail),
    *ups.TABLE,  # UPS-RS, the worklist (PS3.18 11)
]

# WADO-URI lives outside /dicom-web, at /wado (PS3.18 9).
WADO_URI_ROUTES = [Route("/wado", guarded(Operation.READ, wado_uri), methods=["GET"])]

ROUTES = [Route(path, guarded(operation, endpoint), methods=[method]) for path, method, operation, endpoint in TABLE]
