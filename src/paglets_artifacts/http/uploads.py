"""Receiving upload bodies: the pace a body must keep, a blocking reader over an ASGI
body for the store's thread, and the admission of uploads (slots in all and per client)."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator

import anyio
import anyio.from_thread
import anyio.to_thread
from starlette.types import Message, Receive

from ..errors import (
    SizeMismatch,
    UploadTooSlow,
)

logger = logging.getLogger("paglets_artifacts.http")


class UploadSlotsBusy(Exception):
    """No upload slot freed in time (503 with ``Retry-After``, ``error_type`` RemoteHostError).

    Parameters:
      message(str): what was full.
      retry_after(int): seconds after which a slot is likely free.
    """

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


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
