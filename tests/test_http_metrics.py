"""The HTTP host's Prometheus metrics: requests by route, method and status, artifact bytes
up and down, served on a port of their own by ``paglets-artifacts serve``."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, wait_until
from paglets_artifacts import ArtifactJobs, ArtifactStore, Settings
from paglets_artifacts.http.app import create_app
from paglets_artifacts.http.metrics import UNMATCHED, HostMetrics, RequestMetrics
from paglets_artifacts.http.server import ServerThread
from paglets_artifacts.redis_server import free_port

KEY = "metrics-test-key"


def sample(metrics: HostMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def metrics() -> HostMetrics:
    return HostMetrics()


@pytest.fixture
def http(settings: Settings, jobs: ArtifactJobs, metrics: HostMetrics) -> Iterator[httpx.Client]:
    app = create_app(settings, store=ArtifactStore.from_settings(settings), jobs=jobs, metrics=metrics)
    with ServerThread(app) as running, httpx.Client(base_url=running.url, timeout=30) as client:
        yield client


def test_requests_are_counted_by_route_template_method_and_status(http: httpx.Client, metrics: HostMetrics):
    body = os.urandom(3 * 1024 * 1024 + 5)
    uploaded = http.post("/artifacts", content=body, params={"owner_agent_id": "agent-1"})
    assert uploaded.status_code == 200
    artifact_id = uploaded.json()["artifact"]["artifact_id"]
    assert http.get(f"/artifacts/{artifact_id}").content == body
    assert http.get(f"/artifacts/{'0' * 32}/metadata").status_code == 404  # no such artifact: a routed 404
    assert http.get("/no-such-route").status_code == 404

    requests = "paglets_artifacts_http_requests_total"
    assert sample(metrics, requests, route="/artifacts", method="POST", status="200") == 1
    assert sample(metrics, requests, route="/artifacts/{artifact_id}", method="GET", status="200") == 1
    assert sample(metrics, requests, route="/artifacts/{artifact_id}/metadata", method="GET", status="404") == 1
    assert sample(metrics, requests, route=UNMATCHED, method="GET", status="404") == 1
    assert sample(metrics, "paglets_artifacts_http_uploaded_bytes_total") == len(body)
    # counted as the server takes each chunk: the client may hold the whole body a moment sooner
    wait_until(lambda: sample(metrics, "paglets_artifacts_http_downloaded_bytes_total") == len(body), timeout=10)
    durations = "paglets_artifacts_http_request_duration_seconds_count"
    assert sample(metrics, durations, route="/artifacts", method="POST") == 1
    assert sample(metrics, "paglets_artifacts_http_requests_in_flight") == 0


def test_a_failed_upload_counts_its_status_and_no_bytes(http: httpx.Client, metrics: HostMetrics):
    answer = http.post("/artifacts", content=b"x" * 100, params={"sha256": "0" * 64})
    assert answer.status_code == 422 and answer.json()["error_class"] == "ChecksumMismatch"
    # a request is counted once its response is sent: the client may read it a moment sooner
    wait_until(
        lambda: (
            sample(metrics, "paglets_artifacts_http_requests_total", route="/artifacts", method="POST", status="422")
            == 1
        ),
        timeout=10,
    )
    assert sample(metrics, "paglets_artifacts_http_uploaded_bytes_total") == 0


def test_requests_refused_for_want_of_a_key_count_as_unmatched(
    settings: Settings, jobs: ArtifactJobs, metrics: HostMetrics
):
    app = create_app(
        settings.with_changes(api_key=KEY), store=ArtifactStore.from_settings(settings), jobs=jobs, metrics=metrics
    )
    with ServerThread(app) as running, httpx.Client(base_url=running.url, timeout=30) as client:
        assert client.get("/artifacts").status_code == 401
        assert client.get("/artifacts", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    requests = "paglets_artifacts_http_requests_total"
    assert sample(metrics, requests, route=UNMATCHED, method="GET", status="401") == 1
    assert sample(metrics, requests, route="/artifacts", method="GET", status="200") == 1


def test_without_metrics_the_app_is_not_wrapped_and_serves_all_the_same(settings: Settings, jobs: ArtifactJobs):
    app = create_app(settings, store=ArtifactStore.from_settings(settings), jobs=jobs)
    assert not isinstance(app, RequestMetrics)
    with ServerThread(app) as running, httpx.Client(base_url=running.url, timeout=30) as client:
        assert client.post("/artifacts", content=b"abc").status_code == 200


def test_a_head_request_answers_the_headers_without_reading_the_blob_or_counting_bytes(
    http: httpx.Client, metrics: HostMetrics, monkeypatch
):
    body = os.urandom(2 * 1024 * 1024)
    artifact = http.post("/artifacts", content=body).json()["artifact"]
    opened = []
    monkeypatch.setattr(ArtifactStore, "open_reader", lambda self, artifact_id: opened.append(artifact_id))
    answer = http.head(f"/artifacts/{artifact['artifact_id']}")
    assert answer.status_code == 200 and answer.content == b""
    assert answer.headers["content-length"] == str(len(body))
    assert answer.headers["x-paglets-artifact-sha256"] == artifact["sha256"]
    assert opened == []
    assert sample(metrics, "paglets_artifacts_http_downloaded_bytes_total") == 0
    route = "/artifacts/{artifact_id}"
    wait_until(
        lambda: sample(metrics, "paglets_artifacts_http_requests_total", route=route, method="HEAD", status="200") == 1,
        timeout=10,
    )


def test_methods_outside_the_usual_set_share_one_label(http: httpx.Client, metrics: HostMetrics):
    # methods the HTTP parser knows (it refuses made-up tokens with a 400 before routing)
    for method in ("PROPFIND", "MKCOL", "PURGE"):
        assert http.request(method, "/artifacts").status_code == 405
    requests = "paglets_artifacts_http_requests_total"
    wait_until(lambda: sample(metrics, requests, route="/artifacts", method="other", status="405") == 3, timeout=10)
    labels = {
        sample.labels["method"]
        for metric in metrics.registry.collect()
        for sample in metric.samples
        if sample.name == requests
    }
    assert labels == {"other"}


def test_the_host_refuses_to_count_into_the_workers_multiprocess_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with pytest.raises(RuntimeError, match="PROMETHEUS_MULTIPROC_DIR is set"):
        HostMetrics()


def test_a_metrics_port_in_use_is_logged_and_not_served(caplog):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.ERROR, logger="paglets_artifacts.http"):
            assert HostMetrics().serve(port) is False
    assert f"metrics port {port} is in use" in caplog.text


def test_serve_exposes_the_hosts_metrics_on_the_metrics_port(settings: Settings, tmp_path: Path):
    api_port, metrics_port = free_port(), free_port()
    env = {**os.environ, **settings.with_changes(metrics_port=metrics_port).to_env()}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH", "")]))
    log = open(tmp_path / "serve.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "paglets_artifacts.cli", "serve", "--port", str(api_port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    try:

        def answers(url: str) -> httpx.Response | None:
            try:
                return httpx.get(url, timeout=5)
            except httpx.TransportError:
                return None

        wait_until(lambda: answers(f"http://127.0.0.1:{api_port}/openapi.json"), timeout=60)
        body = b"counted" * 1000
        assert httpx.post(f"http://127.0.0.1:{api_port}/artifacts", content=body).status_code == 200
        scraped = answers(f"http://127.0.0.1:{metrics_port}/metrics")
        assert scraped is not None and scraped.status_code == 200, (tmp_path / "serve.log").read_text()
        lines = scraped.text.splitlines()
        assert f"paglets_artifacts_http_uploaded_bytes_total {float(len(body))}" in lines
        assert 'paglets_artifacts_http_requests_total{method="POST",route="/artifacts",status="200"} 1.0' in lines
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
