"""The endpoints that operate on jobs once enqueued: cancel, retry, and Dramatiq's dead letters.

    POST   /jobs/{id}/cancel            optional {"by": who}  -> 200 {"job": record}, canceled
    POST   /jobs/{id}/retry                                   -> 202 {"job": record}, queued again
    GET    /dead-letters[?limit=100]                          -> 200 {"dead_letters": [...]}
    POST   /dead-letters/{id}/requeue                         -> 202 {"job_id", "status_url"}
    DELETE /dead-letters/{id}                                 -> 200 {"ok": true}

A cancel of a job that ended and a retry of a job that neither failed nor was canceled are
``409`` with ``error_class`` ``JobConflict`` and the job's ``state``; nothing changes. An
unknown job or dead letter is ``404``. What each does is :class:`~..jobs.client.Job`'s and
:class:`~..jobs.dead_letters.DeadLetters`' (the same calls as from Python and the CLI).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import InvalidInput
from ..jobs.client import ArtifactJobs, Job
from .limits import MAX_CANCEL_BODY_BYTES, MAX_DEAD_LETTER_LIST
from .responses import JobNotFound, ResourceNotFound

#: Dead letters ``GET /dead-letters`` returns when the request does not say.
DEFAULT_DEAD_LETTER_LIST = 100


class DeadLetterNotFound(ResourceNotFound):
    """No queue holds that dead letter (unknown, requeued, dropped or expired)."""


def _limit(request: Request) -> int:
    text = request.query_params.get("limit", str(DEFAULT_DEAD_LETTER_LIST))
    if not (text.isascii() and text.isdigit() and len(text) <= 6) or not 1 <= int(text) <= MAX_DEAD_LETTER_LIST:
        raise InvalidInput(f"invalid limit {text[:40]!r}: expected a whole number from 1 to {MAX_DEAD_LETTER_LIST}")
    return int(text)


async def _canceled_by(request: Request) -> str:
    """Who cancels: the body's ``by``, else the client's address."""
    raw = await request.body()
    if len(raw) > MAX_CANCEL_BODY_BYTES:
        raise InvalidInput(f"a cancel body is larger than {MAX_CANCEL_BODY_BYTES} bytes")
    client = f"http {request.client.host}" if request.client else "http"
    if not raw.strip():
        return client
    try:
        payload = json.loads(raw)
    except ValueError as exc:
        raise InvalidInput(f"a cancel body must be JSON: {exc}") from None
    if not isinstance(payload, dict) or set(payload) - {"by"}:
        raise InvalidInput('a cancel body is a JSON object with "by" (a string) at most')
    by = payload.get("by", client)
    if not isinstance(by, str) or not by.strip() or len(by) > 200:
        raise InvalidInput('"by" must be a non-empty string of at most 200 characters')
    return by


class JobControl:
    """The endpoints, bound to one job client.

    Parameters:
      jobs(ArtifactJobs): where the jobs and dead letters are.
    """

    def __init__(self, jobs: ArtifactJobs):
        self.jobs = jobs

    async def _sync(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

    async def _on_job(self, request: Request, act: Callable[[Job], Any]) -> Any:
        job_id = request.path_params["job_id"]
        try:
            return await self._sync(lambda: act(self.jobs.job(job_id)))
        except LookupError:
            raise JobNotFound(f"no job {job_id!r} (unknown, or its record expired)") from None

    async def cancel(self, request: Request) -> Response:
        by = await _canceled_by(request)
        record = await self._on_job(request, lambda job: job.cancel(by=by))
        return JSONResponse({"job": record.to_wire()})

    async def retry(self, request: Request) -> Response:
        record = await self._on_job(request, lambda job: job.retry())
        status_url = str(request.url_for("job", job_id=record.id))
        return JSONResponse({"job": record.to_wire()}, status_code=202, headers={"Location": status_url})

    async def dead_letters(self, request: Request) -> Response:
        letters = await self._sync(self.jobs.dead_letters.list, limit=_limit(request))
        return JSONResponse({"dead_letters": [letter.to_wire() for letter in letters]})

    async def requeue(self, request: Request) -> Response:
        letter_id = request.path_params["letter_id"]
        try:
            job_id = await self._sync(self.jobs.dead_letters.requeue, letter_id)
        except LookupError as exc:
            raise DeadLetterNotFound(str(exc)) from None
        status_url = str(request.url_for("job", job_id=job_id))
        body = {"job_id": job_id, "status_url": status_url}
        return JSONResponse(body, status_code=202, headers={"Location": status_url})

    async def drop(self, request: Request) -> Response:
        try:
            await self._sync(self.jobs.dead_letters.drop, request.path_params["letter_id"])
        except LookupError as exc:
            raise DeadLetterNotFound(str(exc)) from None
        return JSONResponse({"ok": True})

    def routes(self) -> list[Route]:
        return [
            Route("/jobs/{job_id}/cancel", self.cancel, methods=["POST"]),
            Route("/jobs/{job_id}/retry", self.retry, methods=["POST"]),
            Route("/dead-letters", self.dead_letters, methods=["GET"]),
            Route("/dead-letters/{letter_id}/requeue", self.requeue, methods=["POST"]),
            Route("/dead-letters/{letter_id}", self.drop, methods=["DELETE"]),
        ]
