"""build_app(settings) -> Starlette. Services are created once, in the lifespan."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from dicomweb.errors import EXCEPTION_HANDLERS
from dicomweb.routes import ROUTES as DICOMWEB_ROUTES
from dicomweb.routes import WADO_URI_ROUTES
from pacs.api.admin_routes import ROUTES as ADMIN_ROUTES
from pacs.api.export_routes import ROUTES as EXPORT_ROUTES
from pacs.api.hl7_routes import ROUTES as HL7_ROUTES
from pacs.api.openapi import ROUTES as OPENAPI_ROUTES
from pacs.api.order_routes import ROUTES as ORDER_ROUTES
from pacs.api.reconcile_routes import ROUTES as RECONCILE_ROUTES
from pacs.api.reference_routes import ROUTES as REFERENCE_ROUTES
from pacs.api.session_routes import ROUTES as SESSION_ROUTES
from pacs.config import Settings
from pacs.security.http import AuthenticationMiddleware
from pacs.services import Services
from viewer_static.routes import ROUTES as VIEWER_ROUTES

log = logging.getLogger(__name__)


def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def build_app(settings: Settings, services: Services | None = None, *, migrate: bool = True) -> Starlette:
    if services is not None and services.settings != settings:
        services = dataclasses.replace(services, settings=settings)  # the same parts, these settings
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        owned = services is None
        app.state.services = services or Services.build(settings, migrate=migrate)
        try:
            yield
        finally:
            if owned:
                app.state.services.close()

    middleware = []
    if settings.cors_origins:
        # Outermost: preflights are answered, and refusals carry CORS headers too.
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
                allow_headers=["*"],
                expose_headers=["Content-Type", "Content-Length", "Warning", "Content-Location"],
                max_age=600,
                # Cookies cross origins only towards named origins, never to "any".
                allow_credentials="*" not in settings.cors_origins,
            )
        )
    middleware.append(Middleware(AuthenticationMiddleware))
    routes = [
        Route("/health", health, methods=["GET"]),
        *SESSION_ROUTES,
        *ADMIN_ROUTES,
        *ORDER_ROUTES,
        *REFERENCE_ROUTES,
        *EXPORT_ROUTES,
        *OPENAPI_ROUTES,
        *RECONCILE_ROUTES,
        *HL7_ROUTES,
        Mount("/dicom-web", routes=DICOMWEB_ROUTES),
        *WADO_URI_ROUTES,
        *VIEWER_ROUTES,  # last: the viewer owns every path no route above took
    ]
    return Starlette(routes=routes, middleware=middleware, exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan)
