"""The HTTP API of a host: paglets' artifact endpoints, job endpoints, an OpenAPI page.

An ASGI application (Starlette) served by uvicorn. The artifact endpoints are wire-compatible
with a paglets host, so paglets' own HTTP client works against it unchanged:

    POST   /artifacts                 raw body (Content-Length or chunked) -> {"artifact": ref}
    GET    /artifacts/{id}            the bytes, Content-Length, X-Paglets-Artifact-Sha256
    GET    /artifacts[?owner_agent_id=]                                  -> {"artifacts": [...]}
    GET    /artifacts/{id}/metadata                                      -> {"artifact": ref}
    DELETE /artifacts/{id}                                               -> {"ok": true}

Our own endpoints: ``POST /jobs/{kind}`` (202 with the job id and a status URL),
``GET /jobs/{id}``, ``GET /jobs`` and ``GET /openapi.json``.

Errors are ``{"error_type", "error", "error_class"}``. ``error_type`` is always a name
paglets' client maps to one of its classes: ``TransferError`` for every store or transfer
error, ``AuthenticationError`` (401), ``ForbiddenError`` (403), ``HostError`` for an unknown
route, method or job, ``RemoteHostError`` for a 5xx. ``error_class`` is our precise class
(``ChecksumMismatch``, ``ArtifactNotFound``, ``QuotaExceeded``, ...).

Bodies stream both ways with flat memory: an upload is read by the store's own atomic
``create_from_stream`` on a worker thread, pulling one ASGI message at a time from the
event loop; a download reads the blob a chunk at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hmac
import ipaddress
import json
import logging
import math
import threading
import time
import types
import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import redis
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..errors import (
    ArtifactNotFound,
    ArtifactTooLarge,
    AuthenticationError,
    ChecksumMismatch,
    ForbiddenError,
    InvalidInput,
    QuotaExceeded,
    SizeMismatch,
    StorageFull,
    TransferError,
    UploadTooSlow,
)
from ..jobs import contract
from ..jobs.client import ArtifactJobs
from ..jobs.records import STATES, JobRecord
from ..redaction import redact_url
from ..refs import STREAM_CHUNK_BYTES, ArtifactRef, validate_artifact_id, validate_expires_at
from ..settings import Settings, SettingsError
from ..store.artifacts import ArtifactStore, parse_content_length
from .metrics import HostMetrics, RequestMetrics
from .remote import SHA256_HEADER

logger = logging.getLogger("paglets_artifacts.http")

#: Largest JSON body the job endpoints accept.
MAX_JOB_BODY_BYTES = 64 * 1024
#: Most job records ``GET /jobs`` returns.
MAX_JOB_LIST = 1000
#: Deepest nesting of arrays and objects a job body may have. Job arguments are one flat
#: object; the bound is checked before parsing, since Python's parser recurses per level.
MAX_JSON_DEPTH = 32
#: Uploads received at once; more wait their turn (``upload_slot_wait_seconds`` at most).
#: Uploads hold a thread each for as long as the client sends, so they get their own pool
#: and never starve the other endpoints.
MAX_CONCURRENT_UPLOADS = 64
#: How far an upload's quota reservation may run ahead of the bytes that arrived: a client
#: that declares a size and sends nothing holds this much, not the size it declared.
UPLOAD_RESERVATION_STEP_BYTES = 16 * 1024 * 1024
#: ``Retry-After`` of a 503 answered while Redis cannot be reached.
REDIS_RETRY_AFTER_SECONDS = 5
#: Largest request line plus headers accepted (h11 stopped at 16 KiB; httptools has no bound).
MAX_REQUEST_HEAD_BYTES = 64 * 1024

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


class UploadSlotsBusy(Exception):
    """No upload slot freed in time (503 with ``Retry-After``, ``error_type`` RemoteHostError).

    Parameters:
      message(str): what was full.
      retry_after(int): seconds after which a slot is likely free.
    """

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


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


def _transfer_error_response(exc: TransferError, *, close: bool = False) -> JSONResponse:
    """The answer to ``exc``; ``close`` ends the connection after it (a body left unread)."""
    error_type = "TransferError"
    for cls in type(exc).__mro__:
        if cls in PAGLETS_ERROR_TYPE:
            error_type = PAGLETS_ERROR_TYPE[cls]
            break
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthenticationError) else {}
    if close:
        headers["Connection"] = "close"
    return JSONResponse(error_body(error_type, exc), status_code=status_for(exc), headers=headers or None)


# ---------------------------------------------------------------------- the HTTP parser


class RequestHeadTooLarge(Exception):
    """Raised inside the parser: uvicorn answers it 400 and closes the connection."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bound on the request head.

    httptools, not h11: h11 refuses a request with two ``Host`` headers, and paglets'
    ``HostClient`` sends two on every upload and download (``http.client.putrequest`` adds
    one, then it puts its own). httptools has no bound of its own: the URL and headers it
    hands over are counted here (a head past :data:`MAX_REQUEST_HEAD_BYTES` is answered 400
    and the connection closed), and so are the bytes received while a head is incomplete
    (one endless header never reaches a callback).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._head_bytes = 0  # of the URL and headers the parser handed over
        self._raw_head_bytes = 0  # received while the head is incomplete
        self._in_head = True

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = self._raw_head_bytes = 0
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_REQUEST_HEAD_BYTES:
            raise RequestHeadTooLarge(f"request head larger than {MAX_REQUEST_HEAD_BYTES} bytes")

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._raw_head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._raw_head_bytes > MAX_REQUEST_HEAD_BYTES and not self.transport.is_closing():
            message = f"request head larger than {MAX_REQUEST_HEAD_BYTES} bytes"
            self.logger.warning("%s: refused", message)
            self.send_400_response(message)


# ---------------------------------------------------------------------- authentication


class BearerAuth:
    """ASGI middleware: every request must carry ``Authorization: Bearer <api_key>``.

    Parameters:
      app: the wrapped ASGI application.
      api_key(str): the expected key; compared in constant time.
    """

    def __init__(self, app: ASGIApp, api_key: str):
        self.app = app
        self._expected = api_key.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        response = _transfer_error_response(AuthenticationError("Authentication required"))
        await response(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return (
                    scheme.lower() == b"bearer" and bool(token) and hmac.compare_digest(token.strip(), self._expected)
                )
        return False


# ---------------------------------------------------------------------- request bodies


class BodyPace:
    """The pace a request body must keep: at least ``min_bytes_per_second`` on average over
    every ``idle_seconds`` spent waiting for the client, and at least one byte.

    Only time spent waiting for the client counts (not the time the store takes to write
    what arrived), so a slow disk never cuts a client.

    Parameters:
      idle_seconds(float): the window over which the rate is measured.
      min_bytes_per_second(int): the rate asked; 0 asks for one byte per window.
    """

    def __init__(self, idle_seconds: float, min_bytes_per_second: int):
        self.idle_seconds = float(idle_seconds)
        self.min_bytes_per_second = int(min_bytes_per_second)
        self.need = max(1, math.ceil(self.min_bytes_per_second * self.idle_seconds))
        self.total = 0
        self._waited = 0.0
        self._arrived = 0

    def remaining(self) -> float:
        """Seconds of waiting left in the current window."""
        return max(0.0, self.idle_seconds - self._waited)

    def account(self, waited: float, received: int) -> None:
        """Count ``waited`` seconds and ``received`` bytes; raise ``UploadTooSlow`` when the
        window is used up with fewer bytes than it needs."""
        self._waited += waited
        self._arrived += received
        self.total += received
        if self._arrived >= self.need:
            self._waited, self._arrived = 0.0, 0  # this window is satisfied: the next begins
        elif self._waited >= self.idle_seconds:
            if self._arrived == 0:
                raise UploadTooSlow(
                    f"upload body cut after {self.total} bytes: no byte arrived for {self.idle_seconds:g} s "
                    "(PAGLETS_ARTIFACTS_UPLOAD_IDLE_SECONDS)"
                )
            raise UploadTooSlow(
                f"upload body cut after {self.total} bytes: {self._arrived} bytes in {self.idle_seconds:g} s, "
                f"under the minimum of {self.min_bytes_per_second} bytes per second "
                "(PAGLETS_ARTIFACTS_UPLOAD_MIN_BYTES_PER_SECOND)"
            )


class RequestBodyReader:
    """A blocking ``read(n)`` over an ASGI request body, for a thread started by anyio.

    Each ``read`` fetches the next ``http.request`` message from the event loop, so at most
    one message (uvicorn hands over ~64 KiB) is held at a time. A client that goes away
    mid-body raises ``SizeMismatch`` inside the read, and one that falls below ``pace``
    raises ``UploadTooSlow``, so the store removes its ``.part`` and releases its quota.

    Parameters:
      receive: the ASGI receive callable of the request.
      pace(BodyPace|None): the pace the body must keep (none: wait for ever).
    """

    def __init__(self, receive: Receive, pace: BodyPace | None = None):
        self._receive = receive
        self._pace = pace
        self._more = True
        self.bytes_read = 0

    @property
    def finished(self) -> bool:
        """Whether the whole body was received (or the client went away)."""
        return not self._more

    def read(self, size: int = -1) -> bytes:
        if not self._more:
            return b""
        data = anyio.from_thread.run(self._next)
        self.bytes_read += len(data)
        return data

    async def _next(self) -> bytes:
        while self._more:
            message: Message = await self._paced_receive()
            if message["type"] == "http.disconnect":
                self._more = False
                raise SizeMismatch(f"client disconnected after {self.bytes_read} bytes of the request body")
            self._more = bool(message.get("more_body", False))
            body = message.get("body", b"")
            if body:
                return body
        return b""

    async def _paced_receive(self) -> Message:
        if self._pace is None:
            return await self._receive()
        while True:
            started = time.monotonic()
            with anyio.move_on_after(self._pace.remaining()):
                message = await self._receive()
                self._pace.account(time.monotonic() - started, len(message.get("body", b"")))
                return message
            self._pace.account(time.monotonic() - started, 0)  # raises once the window is used up


class UploadSlots:
    """Admission of uploads: at most ``total`` at once and ``per_client`` per client address;
    an upload waits at most ``wait_seconds`` for its turn, then gets ``UploadSlotsBusy``.

    Parameters:
      total(int): uploads at once.
      per_client(int): uploads at once from one client address (0: no such limit).
      wait_seconds(float): how long an upload waits for a slot.
      retry_after(int): the ``Retry-After`` of a refusal.
    """

    def __init__(self, total: int, per_client: int, wait_seconds: float, *, retry_after: int):
        self.total = total
        self.per_client = per_client
        self.wait_seconds = wait_seconds
        self.retry_after = retry_after
        self.running = 0
        self.by_client: dict[str, int] = {}
        self._changed: anyio.Condition | None = None  # made in the event loop that serves

    def _free_for(self, client: str) -> bool:
        if self.running >= self.total:
            return False
        return not self.per_client or self.by_client.get(client, 0) < self.per_client

    @contextlib.asynccontextmanager
    async def slot(self, client: str) -> AsyncIterator[None]:
        if self._changed is None:
            self._changed = anyio.Condition()
        changed = self._changed
        taken = False
        with anyio.move_on_after(self.wait_seconds):
            async with changed:
                while not self._free_for(client):
                    await changed.wait()
                self.running += 1
                self.by_client[client] = self.by_client.get(client, 0) + 1
                taken = True
        if not taken:
            raise UploadSlotsBusy(self._busy_message(client), retry_after=self.retry_after)
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):  # a slot is given back even by a cancelled upload
                async with changed:
                    self.running -= 1
                    left = self.by_client[client] - 1
                    if left:
                        self.by_client[client] = left
                    else:
                        del self.by_client[client]
                    changed.notify_all()

    def _busy_message(self, client: str) -> str:
        if self.per_client and self.by_client.get(client, 0) >= self.per_client:
            return (
                f"this client already runs {self.by_client[client]} uploads, its limit "
                f"(PAGLETS_ARTIFACTS_UPLOADS_PER_CLIENT), and none ended within {self.wait_seconds:g} s: retry later"
            )
        return f"all {self.total} upload slots are busy and none freed within {self.wait_seconds:g} s: retry later"


def _query_float(request: Request, name: str) -> float:
    text = request.query_params.get(name, "")
    if not text.isascii():  # float() reads other scripts' digits: a query takes ASCII only
        raise InvalidInput(f"invalid {name} {text[:40]!r}: expected a Unix time in seconds (ASCII digits)")
    return validate_expires_at(text or 0.0)


def _query_size(request: Request) -> int | None:
    text = request.query_params.get("size", "")
    if text == "":
        return None
    try:
        return parse_content_length(text)
    except InvalidInput:
        raise InvalidInput(f"invalid size {text[:40]!r}: expected a whole number of bytes") from None


def _query_limit(request: Request) -> int:
    text = request.query_params.get("limit", "50")
    # isdigit() alone admits '²' and '①', which int() refuses: ASCII digits, a few of them
    if not (text.isascii() and text.isdigit() and len(text) <= 6) or not 1 <= int(text) <= MAX_JOB_LIST:
        raise InvalidInput(f"invalid limit {text[:40]!r}: expected a whole number from 1 to {MAX_JOB_LIST}")
    return int(text)


# ---------------------------------------------------------------------- the application


class ArtifactAPI:
    """The endpoints, bound to one store and one job client.

    Parameters:
      settings(Settings): the host's configuration (API key, host URL).
      store(ArtifactStore): the store the artifact endpoints serve.
      jobs(ArtifactJobs): where the job endpoints enqueue and read records.
    """

    def __init__(
        self, settings: Settings, store: ArtifactStore, jobs: ArtifactJobs, metrics: HostMetrics | None = None
    ):
        self.settings = settings
        self.store = store
        self.jobs = jobs
        self.metrics = metrics
        self.upload_slots = UploadSlots(
            MAX_CONCURRENT_UPLOADS,
            settings.uploads_per_client,
            settings.upload_slot_wait_seconds,
            retry_after=max(1, math.ceil(settings.upload_idle_seconds)),  # idle holders are cut by then
        )
        # Admission bounds the uploads, so this pool of as many threads never makes one wait.
        self.upload_threads = anyio.CapacityLimiter(MAX_CONCURRENT_UPLOADS)

    async def _sync(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # Store and Redis calls block; they run on anyio's worker threads.
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

    # ------------------------------------------------------------ artifacts

    async def upload(self, request: Request) -> Response:
        params = request.query_params
        transfer_encoding = request.headers.get("transfer-encoding", "").casefold()
        declared = _query_size(request)
        if "chunked" in transfer_encoding:
            size = -1 if declared is None else declared
        else:
            size = parse_content_length(request.headers.get("content-length"))
            if declared is not None and declared != size:
                raise SizeMismatch(f"query size={declared} does not match Content-Length {size}")
        expires_at = _query_float(request, "expires_at")
        pace = BodyPace(self.settings.upload_idle_seconds, self.settings.upload_min_bytes_per_second)
        reader = RequestBodyReader(request.receive, pace)
        create = functools.partial(
            self.store.create_from_stream,
            reader,
            size_bytes=size,
            owner_agent_id=params.get("owner_agent_id", ""),
            name=params.get("name", ""),
            compression=params.get("compression", ""),
            expires_at=expires_at,
            expected_sha256=params.get("sha256") or None,
            # A client may declare a size and never send it: hold quota for what arrives.
            reserve_ahead_bytes=UPLOAD_RESERVATION_STEP_BYTES,
        )
        async with self.upload_slots.slot(request.client.host if request.client else ""):
            try:
                result = await anyio.to_thread.run_sync(create, limiter=self.upload_threads)
            except TransferError as exc:
                # Refused mid-body (too slow, too large, over quota): the rest of the body is
                # never read, so end the connection instead of leaving the client sending into it.
                return _transfer_error_response(exc, close=not reader.finished)
        if self.metrics is not None:
            self.metrics.uploaded.inc(result.ref.size_bytes)
        return JSONResponse({"artifact": result.ref.to_wire()})

    async def download(self, request: Request) -> Response:
        artifact_id = validate_artifact_id(request.path_params["artifact_id"])
        ref = await self._sync(self.store.ref, artifact_id)
        headers = {"Content-Length": str(ref.size_bytes), SHA256_HEADER: ref.sha256}
        if request.method == "HEAD":  # the headers only: no blob to open, no body to read
            return Response(headers=headers, media_type="application/octet-stream")
        reader = await self._sync(self.store.open_reader, artifact_id)
        sent = self.metrics.downloaded.inc if self.metrics is not None else None
        chunks = _blob_chunks(reader, ref.size_bytes, sent)
        return StreamingResponse(chunks, media_type="application/octet-stream", headers=headers)

    async def list(self, request: Request) -> Response:
        owner = request.query_params.get("owner_agent_id")
        refs = await self._sync(self.store.list, owner_agent_id=owner)
        return JSONResponse({"artifacts": [ref.to_wire() for ref in refs]})

    async def metadata(self, request: Request) -> Response:
        artifact_id = validate_artifact_id(request.path_params["artifact_id"])
        ref = await self._sync(self.store.ref, artifact_id)
        return JSONResponse({"artifact": ref.to_wire()})

    async def delete(self, request: Request) -> Response:
        # Idempotent, as in paglets: deleting a missing artifact answers ok (a retried
        # move or a client's second try must not fail).
        artifact_id = validate_artifact_id(request.path_params["artifact_id"])
        await self._sync(self.store.delete, artifact_id)
        return JSONResponse({"ok": True})

    # ------------------------------------------------------------ jobs

    async def enqueue(self, request: Request) -> Response:
        kind = contract.KINDS.get(request.path_params["kind"])
        if kind is None:
            raise UnknownJobKind(
                f"no job kind {request.path_params['kind']!r}; expected one of {', '.join(contract.KINDS)}"
            )
        arguments = await _json_object(request)
        # Checked before the call: a key such as "kind" or "self" would collide with
        # enqueue()'s own parameters.
        kind.validate(arguments)
        job = await self._sync(self.jobs.enqueue, kind, **arguments)
        status_url = str(request.url_for("job", job_id=job.id))
        return JSONResponse(
            {"job_id": job.id, "kind": kind.name, "status_url": status_url},
            status_code=202,
            headers={"Location": status_url},
        )

    async def job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        record = await self._sync(self.jobs.records.get, job_id)
        if record is None:
            raise JobNotFound(f"no job {job_id!r} (unknown, or its record expired)")
        return JSONResponse({"job": record.to_wire()})

    async def recent_jobs(self, request: Request) -> Response:
        params = request.query_params
        records = await self._sync(
            self.jobs.jobs,
            limit=_query_limit(request),
            kind=params.get("kind") or None,
            state=params.get("state") or None,
        )
        return JSONResponse({"jobs": [record.to_wire() for record in records]})

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document())


async def _blob_chunks(reader: Any, size: int, sent: Callable[[int], None] | None = None) -> AsyncIterator[bytes]:
    """The blob in chunks, never more than its recorded size; the reader is closed at the end.
    ``sent`` is told the size of each chunk once the server has sent it."""
    try:
        remaining = size
        while remaining > 0:
            chunk = await anyio.to_thread.run_sync(reader.read, min(STREAM_CHUNK_BYTES, remaining))
            if not chunk:
                # A blob shorter than its metadata: end early, and uvicorn aborts the
                # response, so a client never takes a short body for a whole one.
                logger.error("blob ended %d bytes short of its recorded size", remaining)
                return
            remaining -= len(chunk)
            yield chunk
            if sent is not None:
                sent(len(chunk))
    finally:
        reader.close()


async def _json_object(request: Request) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > MAX_JOB_BODY_BYTES:
        raise InvalidInput(f"job arguments are larger than {MAX_JOB_BODY_BYTES} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_JOB_BODY_BYTES:
            raise InvalidInput(f"job arguments are larger than {MAX_JOB_BODY_BYTES} bytes")
    if not raw.strip():
        return {}
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise InvalidInput(f"job arguments are nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        payload = json.loads(raw)
    except ValueError as exc:
        raise InvalidInput(f"job arguments are not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidInput(f"job arguments must be a JSON object, got {type(payload).__name__}")
    return payload


def json_depth(raw: bytes | bytearray) -> int:
    """The deepest nesting of arrays and objects in a JSON text, brackets inside strings
    not counted (a linear scan: no parser, no recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # closing quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


# ---------------------------------------------------------------------- error answers


async def _on_transfer_error(request: Request, exc: Exception) -> Response:
    return _transfer_error_response(exc)  # type: ignore[arg-type]


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
    body = error_body("RemoteHostError", exc, "UploadSlotsBusy")
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(exc.retry_after)})


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    body = error_body("RemoteHostError", f"internal error: {type(exc).__name__}: {exc}", type(exc).__name__)
    return JSONResponse(body, status_code=500)


# ---------------------------------------------------------------------- assembly


def create_app(
    settings: Settings,
    *,
    store: ArtifactStore | None = None,
    jobs: ArtifactJobs | None = None,
    metrics: HostMetrics | None = None,
) -> ASGIApp:
    """The ASGI application of a host.

    ``store`` defaults to the store of ``settings``; ``jobs`` to an :class:`ArtifactJobs`
    on ``settings.redis_url`` (closed when the application shuts down). With
    ``settings.api_key`` set, every request needs ``Authorization: Bearer <key>``. With
    ``metrics``, every request and every artifact byte up and down is counted there.
    """
    owned_jobs = jobs is None
    jobs = jobs if jobs is not None else ArtifactJobs(settings=settings)
    store = store if store is not None else ArtifactStore.from_settings(settings, redis=jobs.client)
    api = ArtifactAPI(settings, store, jobs, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if owned_jobs:
            jobs.close()

    routes = [
        Route("/artifacts", api.upload, methods=["POST"]),
        Route("/artifacts", api.list, methods=["GET"]),
        Route("/artifacts/{artifact_id}", api.download, methods=["GET"]),
        Route("/artifacts/{artifact_id}", api.delete, methods=["DELETE"]),
        Route("/artifacts/{artifact_id}/metadata", api.metadata, methods=["GET"]),
        Route("/jobs", api.recent_jobs, methods=["GET"]),
        Route("/jobs/{job_id}", api.job, methods=["GET"], name="job"),
        Route("/jobs/{kind}", api.enqueue, methods=["POST"]),
        Route("/openapi.json", api.openapi, methods=["GET"]),
    ]
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        TransferError: _on_transfer_error,
        HTTPException: _on_http_exception,
        ResourceNotFound: _on_not_found,
        UploadSlotsBusy: _on_upload_slots_busy,
        redis.RedisError: _on_redis_error,
        Exception: _on_unexpected,
    }
    app: ASGIApp = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    if settings.api_key:
        app = BearerAuth(app, settings.api_key)
    if metrics is not None:
        app = RequestMetrics(app, metrics, {route.endpoint: route.path for route in routes})
    return app


class RedactedAccessLog(logging.Filter):
    """uvicorn's access lines quote each request's path with its query string: secret
    parameters (``token``, ``X-Amz-Signature``, ...) are masked by the one rule."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (*args[:2], redact_url(args[2]), *args[3:])
        return True


def redact_access_log() -> None:
    """Put :class:`RedactedAccessLog` on uvicorn's access logger (once; a logger's filters
    outlive uvicorn's logging configuration, which replaces only its handlers)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(item, RedactedAccessLog) for item in access.filters):
        access.addFilter(RedactedAccessLog())


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` reaches this machine only (``localhost``, 127/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any address
        return False


def check_exposure(settings: Settings, host: str) -> None:
    """Refuse to listen beyond loopback without an API key, unless told so explicitly
    (``settings.allow_insecure``), which is then logged as a warning at every start: the
    job endpoints import and export files under the allowed roots."""
    if settings.api_key or is_loopback(host):
        return
    if not settings.allow_insecure:
        raise SettingsError(
            f"refusing to serve on {host} without an API key: anyone who reaches it could enqueue jobs; "
            f"set PAGLETS_ARTIFACTS_API_KEY, or listen on 127.0.0.1, or pass --insecure "
            f"(PAGLETS_ARTIFACTS_ALLOW_INSECURE=1) to serve without one"
        )
    logger.warning(
        "serving on %s without an API key (PAGLETS_ARTIFACTS_ALLOW_INSECURE): anyone who reaches "
        "this address can enqueue jobs",
        host,
    )


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8470, *, log_level: str = "info") -> None:
    """Serve the API with uvicorn until interrupted (``paglets-artifacts serve``); with
    ``settings.metrics_port`` set, Prometheus metrics on that port too. A non-loopback
    ``host`` needs an API key or ``settings.allow_insecure`` (:func:`check_exposure`)."""
    check_exposure(settings, host)
    redact_access_log()
    metrics = None
    if settings.metrics_port > 0:
        metrics = HostMetrics()
        metrics.serve(settings.metrics_port, host)
    uvicorn.run(
        create_app(settings, metrics=metrics), host=host, port=port, log_level=log_level, http=BoundedHttpToolsProtocol
    )


class ServerThread:
    """Runs the API with uvicorn on a background thread of this process.

    For a host process that serves the API beside its own work, and for tests.

    Parameters:
      app: the ASGI application (see :func:`create_app`).
      host(str): the address to listen on.
      port(int): the port; 0 picks a free one (see :attr:`url` after :meth:`start`).
    """

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning"):
        self.config = uvicorn.Config(
            app, host=host, port=port, log_level=log_level, lifespan="on", http=BoundedHttpToolsProtocol
        )
        redact_access_log()
        self.server = uvicorn.Server(self.config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        sock = self.server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def start(self, timeout: float = 10.0) -> ServerThread:
        self._thread = threading.Thread(target=self.server.run, name="paglets-artifacts-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------- OpenAPI


#: JSON schema types of the Python types that refs and job records hold.
_JSON_TYPES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    dict: "object",
    list: "array",
}


def _json_schema_of(hint: Any) -> dict[str, Any]:
    """The JSON schema of a field's type: ``Any`` is any value, ``X | None`` also null."""
    if hint is Any:
        return {}
    members = typing.get_args(hint)
    if type(None) in members and typing.get_origin(hint) in (typing.Union, types.UnionType):
        (inner,) = [member for member in members if member is not type(None)]
        schema = _json_schema_of(inner)
        return {**schema, "type": [schema["type"], "null"]}
    return {"type": _JSON_TYPES[typing.get_origin(hint) or hint]}


def _fields_schema(cls: type, **overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The properties of a dataclass's wire form (its fields), from their type hints."""
    hints = typing.get_type_hints(cls)
    return {item.name: overrides.get(item.name, _json_schema_of(hints[item.name])) for item in dataclasses.fields(cls)}


def _error_responses(*statuses: int) -> dict[str, Any]:
    return {
        str(status): {
            "description": "error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for status in statuses
    }


def _query(name: str, schema: dict[str, Any], text: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": text}


def _json(schema_ref: str, description: str = "OK") -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}},
    }


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of every endpoint this application serves."""
    artifact_id = {"name": "artifact_id", "in": "path", "required": True, "schema": dict(contract.ARTIFACT_ID.schema)}
    job_kinds = {kind.name: kind.arguments_schema() for kind in contract.KINDS.values()}
    ref_properties = _fields_schema(ArtifactRef)
    record_properties = _fields_schema(JobRecord, state={"type": "string", "enum": list(STATES)})
    return {
        "openapi": "3.1.0",
        "info": {"title": "paglets-artifacts host API", "version": "1"},
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "when PAGLETS_ARTIFACTS_API_KEY is set"}
            },
            "schemas": {
                "ArtifactRef": {"type": "object", "properties": ref_properties, "required": list(ref_properties)},
                "Artifact": {
                    "type": "object",
                    "properties": {"artifact": {"$ref": "#/components/schemas/ArtifactRef"}},
                },
                "Artifacts": {
                    "type": "object",
                    "properties": {
                        "artifacts": {"type": "array", "items": {"$ref": "#/components/schemas/ArtifactRef"}}
                    },
                },
                "Error": {
                    "type": "object",
                    "properties": {
                        "error_type": {
                            "type": "string",
                            "description": "a class paglets' client knows: TransferError, AuthenticationError, "
                            "ForbiddenError, HostError, RemoteHostError",
                        },
                        "error": {"type": "string"},
                        "error_class": {
                            "type": "string",
                            "description": "the precise class: ChecksumMismatch, ArtifactNotFound, QuotaExceeded, ...",
                        },
                    },
                    "required": ["error_type", "error"],
                },
                "JobAccepted": {
                    "type": "object",
                    "properties": {
                        "job_id": {"type": "string"},
                        "kind": {"type": "string"},
                        "status_url": {"type": "string"},
                    },
                },
                "JobRecord": {"type": "object", "properties": record_properties},
                "Job": {"type": "object", "properties": {"job": {"$ref": "#/components/schemas/JobRecord"}}},
                "Jobs": {
                    "type": "object",
                    "properties": {"jobs": {"type": "array", "items": {"$ref": "#/components/schemas/JobRecord"}}},
                },
                **{f"{name}_arguments": schema for name, schema in job_kinds.items()},
            },
        },
        "security": [{"bearer": []}, {}],
        "paths": {
            "/artifacts": {
                "post": {
                    "summary": "Upload an artifact (raw body, Content-Length or chunked)",
                    "parameters": [
                        _query("owner_agent_id", {"type": "string"}, "owner of the artifact"),
                        _query("name", {"type": "string"}, "logical name"),
                        _query("compression", {"type": "string"}, "compression label"),
                        _query("expires_at", {"type": "number"}, "Unix time; 0 = never"),
                        _query("sha256", {"type": "string"}, "expected SHA-256; checked before commit"),
                        _query("size", {"type": "integer"}, "expected size in bytes"),
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    "responses": {"200": _json("Artifact"), **_error_responses(400, 401, 408, 413, 422, 503)},
                },
                "get": {
                    "summary": "List artifacts",
                    "parameters": [_query("owner_agent_id", {"type": "string"}, "only this owner's")],
                    "responses": {"200": _json("Artifacts"), **_error_responses(401)},
                },
            },
            "/artifacts/{artifact_id}": {
                "get": {
                    "summary": "Download an artifact's bytes",
                    "parameters": [artifact_id],
                    "responses": {
                        "200": {
                            "description": "the bytes",
                            "headers": {
                                SHA256_HEADER: {"schema": {"type": "string"}},
                                "Content-Length": {"schema": {"type": "integer"}},
                            },
                            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                        },
                        **_error_responses(400, 401, 404),
                    },
                },
                "delete": {
                    "summary": "Delete an artifact",
                    "parameters": [artifact_id],
                    "responses": {
                        "200": {
                            "description": "deleted",
                            "content": {
                                "application/json": {
                                    "schema": {"type": "object", "properties": {"ok": {"type": "boolean"}}}
                                }
                            },
                        },
                        **_error_responses(400, 401, 404),
                    },
                },
            },
            "/artifacts/{artifact_id}/metadata": {
                "get": {
                    "summary": "An artifact's ref",
                    "parameters": [artifact_id],
                    "responses": {"200": _json("Artifact"), **_error_responses(400, 401, 404)},
                },
            },
            **{
                f"/jobs/{name}": {
                    "post": {
                        "summary": f"Enqueue a {name} job: {contract.KINDS[name].doc}",
                        "requestBody": {
                            "required": False,
                            "content": {
                                "application/json": {"schema": {"$ref": f"#/components/schemas/{name}_arguments"}}
                            },
                        },
                        "responses": {"202": _json("JobAccepted", "enqueued"), **_error_responses(400, 401, 503)},
                    }
                }
                for name in job_kinds
            },
            "/jobs/{job_id}": {
                "get": {
                    "summary": "A job's record",
                    "parameters": [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {"200": _json("Job"), **_error_responses(401, 404, 503)},
                }
            },
            "/jobs": {
                "get": {
                    "summary": "Recent jobs, newest first",
                    "parameters": [
                        _query(
                            "limit",
                            {"type": "integer", "minimum": 1, "maximum": MAX_JOB_LIST, "default": 50},
                            "how many",
                        ),
                        _query("kind", {"type": "string"}, "only this kind"),
                        _query("state", {"type": "string"}, "only this state"),
                    ],
                    "responses": {"200": _json("Jobs"), **_error_responses(400, 401, 503)},
                }
            },
            "/openapi.json": {
                "get": {"summary": "This description", "responses": {"200": {"description": "OpenAPI 3.1"}}}
            },
        },
    }
