"""Job events over HTTP as Server-Sent Events.

    GET /jobs/{id}/events   -> text/event-stream

Each event is ``id: <entry id>``, ``event: record``, ``data: <the record's wire JSON>``. The
first is the current record, at once; then one per change of the record (state, progress),
read from the job's event log (:meth:`~..jobs.records.JobRecords.events_after`); after the
event of a final state the stream ends. A client that reconnects with ``Last-Event-ID`` gets
every event after that id. ``: keepalive`` comment lines are sent when idle. Unknown job:
``404``; too many streams at once: ``503`` with ``Retry-After``.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import AsyncIterator

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ..errors import InvalidInput
from ..jobs.client import ArtifactJobs
from ..jobs.records import JobRecord
from . import limits
from .responses import JobNotFound
from .uploads import UploadSlotsBusy

#: Seconds between keepalive comments on an idle stream.
KEEPALIVE_SECONDS = 15.0
#: A Redis stream entry id, what ``Last-Event-ID`` carries back.
_ENTRY_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
#: How long one read of the log waits for an entry: also how soon a closed stream lets go.
BLOCK_MS = 1000


class EventStreamsBusy(UploadSlotsBusy):
    """As many event streams as the server serves are open (503 with ``Retry-After``)."""


def _event(entry_id: str, record: JobRecord) -> bytes:
    return f"id: {entry_id}\nevent: record\ndata: {json.dumps(record.to_wire())}\n\n".encode()


class JobEvents:
    """The endpoint, bound to one job client.

    Parameters:
      jobs(ArtifactJobs): where the records and their event logs are.
    """

    def __init__(self, jobs: ArtifactJobs):
        self.jobs = jobs
        self.max_streams = limits.MAX_CONCURRENT_EVENT_STREAMS
        self.open = 0
        self._threads = anyio.CapacityLimiter(max(1, self.max_streams))

    async def events(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        if self.open >= self.max_streams:
            raise EventStreamsBusy(f"{self.max_streams} event streams are open; try again later", retry_after=5)
        records = self.jobs.records
        last_id = request.headers.get("last-event-id", "").strip()
        if last_id and not _ENTRY_ID.fullmatch(last_id):
            raise InvalidInput(f"invalid Last-Event-ID {last_id[:40]!r}: expected an event id this stream sent")
        current = await anyio.to_thread.run_sync(records.current_event, job_id)
        if current is None:
            raise JobNotFound(f"no job {job_id!r} (unknown, or its record expired)")
        self.open += 1
        return StreamingResponse(
            self._stream(job_id, current, last_id),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _stream(self, job_id: str, current: tuple[str, JobRecord], last_id: str) -> AsyncIterator[bytes]:
        records = self.jobs.records
        try:
            if last_id:
                after = last_id
                if current[1].done:  # ended: what follows that id, then the end (no wait)
                    ended = functools.partial(records.events_after, job_id, after)
                    for entry_id, record in await anyio.to_thread.run_sync(ended, limiter=self._threads):
                        yield _event(entry_id, record)
                    return
            else:
                after, record = current
                yield _event(after, record)
                if record.done:
                    return
            idle_since = time.monotonic()
            while True:
                read = functools.partial(records.events_after, job_id, after, BLOCK_MS)
                found = await anyio.to_thread.run_sync(read, limiter=self._threads)
                for entry_id, record in found:
                    yield _event(entry_id, record)
                    after = entry_id
                    if record.done:
                        return
                if found:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since >= KEEPALIVE_SECONDS:
                    yield b": keepalive\n\n"
                    idle_since = time.monotonic()
        finally:
            self.open -= 1

    def routes(self) -> list[Route]:
        return [Route("/jobs/{job_id}/events", self.events, methods=["GET"])]
