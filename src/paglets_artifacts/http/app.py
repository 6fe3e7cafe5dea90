"""The HTTP API of a host: paglets' artifact endpoints, job endpoints, an OpenAPI page.

An ASGI application (Starlette) served by uvicorn. The artifact endpoints are wire-compatible
with a paglets host, so paglets' own HTTP client works against it unchanged:

    POST   /artifacts                 raw body (Content-Length or chunked) -> {"artifact": ref}
    GET    /artifacts/{id}            the bytes, Content-Length, X-Paglets-Artifact-Sha256
    GET    /artifacts[?owner_agent_id=]                                  -> {"artifacts": [...]}
    GET    /artifacts/{id}/metadata                                      -> {"artifact": ref}
    DELETE /artifacts/{id}                                               -> {"ok": true}

Our own endpoints: ``POST /jobs/{kind}`` (202 with the job id and a status URL; an
``Idempotency-Key`` header makes a repeated request return the same job; with a JSON
array, a batch: ``{"jobs": [...]}``, read by :mod:`.job_bodies`), ``GET /jobs/{id}``,
``GET /jobs`` and ``GET /openapi.json``; cancel, retry and dead letters are :mod:`.job_control`'s.

Errors are answered as :mod:`.responses` says; the API key is checked by :mod:`.auth`;
upload bodies are paced and admitted by :mod:`.uploads`; :mod:`.server` serves the
application with uvicorn; :mod:`.openapi` describes it; :mod:`.limits` holds the bounds.

Bodies stream both ways with flat memory: an upload is read by the store's own atomic
``create_from_stream`` on a worker thread, pulling one ASGI message at a time from the
event loop; a download reads the blob a chunk at a time.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from ..errors import (
    InvalidInput,
    SizeMismatch,
    TransferError,
)
from ..jobs import contract
from ..jobs.client import ArtifactJobs
from ..refs import STREAM_CHUNK_BYTES, validate_artifact_id, validate_expires_at
from ..settings import Settings
from ..store.artifacts import ArtifactStore, parse_content_length
from .auth import BearerAuth
from .dashboard import Dashboard
from .job_bodies import read_job_body
from .job_control import JobControl
from .limits import (
    MAX_CONCURRENT_UPLOADS,
    MAX_JOB_LIST,
    UPLOAD_RESERVATION_STEP_BYTES,
)
from .metrics import HostMetrics, RequestMetrics
from .openapi import openapi_document
from .remote import SHA256_HEADER
from .responses import EXCEPTION_HANDLERS, JobNotFound, UnknownJobKind, transfer_error_response
from .uploads import BodyPace, RequestBodyReader, UploadSlots

logger = logging.getLogger("paglets_artifacts.http")

#: The request header that carries a client's idempotency key for an enqueue.
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: Set (``true``) on the answer of an enqueue whose key already held the job.
REPLAYED_HEADER = "Idempotent-Replayed"


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
                return transfer_error_response(exc, close=not reader.finished)
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
        body = await read_job_body(request)
        if isinstance(body, list):  # a batch: every item checked, then all enqueued at once
            if request.headers.get(IDEMPOTENCY_HEADER) is not None:
                raise InvalidInput(
                    f"a batch takes no {IDEMPOTENCY_HEADER} header: enqueue its jobs one by one to key them"
                )
            jobs = await self._sync(self.jobs.enqueue_many, kind, body)
            return JSONResponse({"jobs": [self._accepted(request, kind, job.id) for job in jobs]}, status_code=202)
        # Checked before the call: a key such as "kind" or "self" would collide with
        # enqueue()'s own parameters.
        kind.validate(body)
        # A client's name for this request: the same key again returns the same job.
        key = request.headers.get(IDEMPOTENCY_HEADER)
        job = await self._sync(self.jobs.enqueue, kind, idempotency_key=key, **body)
        accepted = self._accepted(request, kind, job.id)
        accepted["replayed"] = job.replayed
        headers = {"Location": accepted["status_url"]}
        if job.replayed:
            headers[REPLAYED_HEADER] = "true"
        return JSONResponse(accepted, status_code=202, headers=headers)

    @staticmethod
    def _accepted(request: Request, kind: contract.JobKind, job_id: str) -> dict[str, Any]:
        return {"job_id": job_id, "kind": kind.name, "status_url": str(request.url_for("job", job_id=job_id))}

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
        *JobControl(jobs).routes(),
        *Dashboard(settings, store, jobs).routes(),
    ]
    app: ASGIApp = Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan)
    if settings.api_key:
        app = BearerAuth(app, settings.api_key)
    if metrics is not None:
        app = RequestMetrics(app, metrics, {route.endpoint: route.path for route in routes})
    return app
