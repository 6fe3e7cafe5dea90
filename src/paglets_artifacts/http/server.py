"""Serving the application with uvicorn: the HTTP parser with a bound on the request
head, the exposure check, access-log redaction, ``serve`` and a server on a thread."""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..redaction import redact_url
from ..settings import Settings, SettingsError
from .app import create_app
from .limits import MAX_REQUEST_HEAD_BYTES
from .metrics import HostMetrics

logger = logging.getLogger("paglets_artifacts.http")


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
