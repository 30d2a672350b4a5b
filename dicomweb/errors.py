"""Map domain exceptions to HTTP answers: one table, one handler."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pacs import errors

log = logging.getLogger(__name__)

STATUS_FOR: list[tuple[type[errors.PacsError], int]] = [
    (errors.TooManyAttempts, 429),
    (errors.NotAuthenticated, 401),
    (errors.Forbidden, 403),
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.NotAcceptable, 406),
    (errors.UnsupportedMediaType, 415),
    (errors.InvalidInput, 400),
    (errors.Unavailable, 503),
]


def http_status(exc: errors.PacsError) -> int:
    for kind, status in STATUS_FOR:
        if isinstance(exc, kind):
            return status
    return 500


def error_response(status: int, message: str) -> Response:
    return JSONResponse({"error": message, "status": status}, status_code=status)


async def handle_pacs_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.PacsError)
    status = http_status(exc)
    if status >= 500:
        log.error("%s %s: %s", request.method, request.url.path, exc)
    response = error_response(status, str(exc))
    if isinstance(exc, errors.TooManyAttempts):
        response.headers["Retry-After"] = str(exc.retry_after)
    elif status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="minipacs"'
    return response


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, exc.detail)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    # The traceback goes to the log; the client gets a message without internals.
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, "internal error; the server log has the details")


EXCEPTION_HANDLERS = {
    errors.PacsError: handle_pacs_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
