"""Prometheus metrics of the HTTP host: requests, their durations, artifact bytes up and down.

The host is one uvicorn process, so its metrics live in a registry of its own (no
multiprocess files, unlike the workers'). ``paglets-artifacts serve`` with
``PAGLETS_ARTIFACTS_METRICS_PORT`` set serves them on
``http://<host>:<port>/metrics``, a port apart from the API's, so that scraping needs no
API key and the API's routes stay paglets'.

Requests are counted by route template (``/artifacts/{artifact_id}``, not the id), method
and status; a request that matched no route (or was refused before routing, a 401) is
counted under ``route="unmatched"``.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("paglets_artifacts.http")

#: Request duration buckets, in seconds: metadata answers take milliseconds, uploads hours.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
#: The route label of a request no route answered.
UNMATCHED = "unmatched"
#: Methods counted under their own name; any other (a client may send any token) is ``other``,
#: so that requests cannot grow the label set without bound.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


class HostMetrics:
    """The host's metric objects, in a registry of their own (``registry``).

    Not for a process with ``PROMETHEUS_MULTIPROC_DIR`` set (the workers' variable):
    prometheus_client would write these metrics into that directory instead.
    """

    def __init__(self) -> None:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            raise RuntimeError(
                "PROMETHEUS_MULTIPROC_DIR is set: it is the workers' metrics directory; unset it for the HTTP host"
            )
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "paglets_artifacts_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.durations = Histogram(
            "paglets_artifacts_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by route template and method.",
            ["route", "method"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "paglets_artifacts_http_requests_in_flight", "HTTP requests being answered now.", registry=self.registry
        )
        self.uploaded = Counter(
            "paglets_artifacts_http_uploaded_bytes",
            "Bytes of artifacts stored from upload request bodies.",
            registry=self.registry,
        )
        self.downloaded = Counter(
            "paglets_artifacts_http_downloaded_bytes",
            "Bytes of artifact bodies sent to clients.",
            registry=self.registry,
        )

    def serve(self, port: int, address: str = "127.0.0.1") -> bool:
        """Serve the registry on ``address``:``port`` from a daemon thread.

        A port that cannot be opened is logged, and the host runs on without metrics
        (as a worker does): returns ``False`` then.
        """
        try:
            start_http_server(port, addr=address, registry=self.registry)
        except OSError as exc:
            reason = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be opened: {exc}"
            logger.error("metrics port %d %s; metrics are not served", port, reason)
            return False
        logger.info("serving metrics on port %d", port)
        return True


class RequestMetrics:
    """ASGI middleware counting every HTTP request the wrapped application answers.

    Parameters:
      app: the application (outermost, so refused requests count too).
      metrics(HostMetrics): where the figures go.
      routes: the route template of each endpoint, to label requests by.
    """

    def __init__(self, app: ASGIApp, metrics: HostMetrics, routes: dict[Any, str]):
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets if the application fails before answering
        started = time.monotonic()
        counted = False

        def count() -> None:
            nonlocal counted
            if counted:
                return
            counted = True
            route = self.routes.get(scope.get("endpoint"), UNMATCHED)  # the router notes the endpoint in scope
            method = scope.get("method", "")
            method = method if method in METHODS else "other"
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.durations.labels(route, method).observe(time.monotonic() - started)
            self.metrics.in_flight.dec()

        async def send_and_count(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                count()  # before the closing message goes: a client that sees the answer end sees it counted
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_and_count)
        finally:
            count()
