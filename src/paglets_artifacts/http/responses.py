"""How errors are answered over HTTP: the status of each error class, the error body,
and the exception handlers of the application.

Errors are ``{"error_type", "error", "error_class"}``. ``error_type`` is always a name
paglets' client maps to one of its classes: ``TransferError`` for every store or transfer
error, ``AuthenticationError`` (401), ``ForbiddenError`` (403), ``HostError`` for an unknown
route, method or job, ``RemoteHostError`` for a 5xx. ``error_class`` is our precise class
(``ChecksumMismatch``, ``ArtifactNotFound``, ``QuotaExceeded``, ...).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import (
    ArtifactNotFound,
    ArtifactTooLarge,
    AuthenticationError,
    ChecksumMismatch,
    ForbiddenError,
    IdempotencyConflict,
    InvalidInput,
    JobConflict,
    QuotaExceeded,
    SizeMismatch,
    StorageFull,
    TransferError,
    UploadTooSlow,
)
from .limits import REDIS_RETRY_AFTER_SECONDS
from .uploads import UploadSlotsBusy

logger = logging.getLogger("paglets_artifacts.http")


#: HTTP status of each error class (its nearest base class decides for the others).
STATUS_BY_ERROR: dict[type[Exception], int] = {
    TransferError: 400,
    InvalidInput: 400,
    SizeMismatch: 400,
    AuthenticationError: 401,
    ForbiddenError: 403,
    ArtifactNotFound: 404,
    ArtifactTooLarge: 413,
    QuotaExceeded: 413,
    ChecksumMismatch: 422,
    UploadTooSlow: 408,  # Request Timeout: the body stopped or crawled
    StorageFull: 507,  # Insufficient Storage: the store's filesystem is full
    JobConflict: 409,  # cancel of a job that ended, retry of one that did not fail: ``state`` says
    IdempotencyConflict: 422,  # a key reused by a different request
}

#: The ``error_type`` paglets' client knows for each of our classes (TransferError otherwise).
PAGLETS_ERROR_TYPE: dict[type[Exception], str] = {
    AuthenticationError: "AuthenticationError",
    ForbiddenError: "ForbiddenError",
}


class ResourceNotFound(Exception):
    """A job endpoint names something that does not exist (404, ``error_type`` HostError)."""


class JobNotFound(ResourceNotFound):
    """No record of that job (unknown id, or past its retention)."""


class UnknownJobKind(ResourceNotFound):
    """``POST /jobs/{kind}`` names no kind of the job contract."""


def status_for(exc: BaseException) -> int:
    """The HTTP status of an error: that of its nearest class in :data:`STATUS_BY_ERROR`."""
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 400


def error_body(error_type: str, exc: BaseException | str, error_class: str | None = None) -> dict[str, str]:
    """The JSON of an error answer."""
    message = str(exc) or (type(exc).__name__ if isinstance(exc, BaseException) else "error")
    cls = error_class or (type(exc).__name__ if isinstance(exc, BaseException) else error_type)
    return {"error_type": error_type, "error": message, "error_class": cls}


def transfer_error_response(exc: TransferError, *, close: bool = False) -> JSONResponse:
    """The answer to ``exc``; ``close`` ends the connection after it (a body left unread)."""
    error_type = "TransferError"
    for cls in type(exc).__mro__:
        if cls in PAGLETS_ERROR_TYPE:
            error_type = PAGLETS_ERROR_TYPE[cls]
            break
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthenticationError) else {}
    if close:
        headers["Connection"] = "close"
    body: dict[str, Any] = error_body(error_type, exc)
    if isinstance(exc, JobConflict):
        body["state"] = exc.state
    if isinstance(exc, IdempotencyConflict):
        body["job_id"] = exc.job_id
    return JSONResponse(body, status_code=status_for(exc), headers=headers or None)


async def _on_transfer_error(request: Request, exc: Exception) -> Response:
    return transfer_error_response(exc)  # type: ignore[arg-type]


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message, name = f"No route for {request.method} {request.url.path}", "NotFound"
    elif exc.status_code == 405:
        message, name = f"Method {request.method} is not allowed for {request.url.path}", "MethodNotAllowed"
    else:
        message, name = str(exc.detail), "HTTPException"
    return JSONResponse(error_body("HostError", message, name), status_code=exc.status_code, headers=exc.headers)


async def _on_not_found(request: Request, exc: Exception) -> Response:
    return JSONResponse(error_body("HostError", exc), status_code=404)


async def _on_redis_error(request: Request, exc: Exception) -> Response:
    # Reached by what needs Redis: uploads and deletions (the index keeps the quota exact)
    # and the job endpoints. Downloads, metadata and listings read the directory.
    logger.warning("Redis is unavailable for %s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
    message = f"Redis is unavailable: {type(exc).__name__}: {exc}; try again later"
    body = error_body("RemoteHostError", message, type(exc).__name__)
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(REDIS_RETRY_AFTER_SECONDS)})


async def _on_upload_slots_busy(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, UploadSlotsBusy)
    body = error_body("RemoteHostError", exc, type(exc).__name__)  # UploadSlotsBusy or a subclass
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(exc.retry_after)})


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    body = error_body("RemoteHostError", f"internal error: {type(exc).__name__}: {exc}", type(exc).__name__)
    return JSONResponse(body, status_code=500)


#: The application's exception handlers, most precise first.
EXCEPTION_HANDLERS: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    TransferError: _on_transfer_error,
    HTTPException: _on_http_exception,
    ResourceNotFound: _on_not_found,
    UploadSlotsBusy: _on_upload_slots_busy,
    redis.RedisError: _on_redis_error,
    Exception: _on_unexpected,
}
