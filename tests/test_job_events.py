"""Job events over HTTP (Server-Sent Events) against a real worker, Redis and server."""

from __future__ import annotations

import json
import os

import httpx
import pytest

from paglets_artifacts.http import limits
from paglets_artifacts.http.app import create_app
from paglets_artifacts.http.server import ServerThread


def _events(response: httpx.Response) -> list[tuple[str, dict]]:
    """Every event of a stream, read to its end: (id, record)."""
    found: list[tuple[str, dict]] = []
    entry_id, data = "", ""
    for line in response.iter_lines():
        if line.startswith("id: "):
            entry_id = line[4:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and data:
            found.append((entry_id, json.loads(data)))
            data = ""
    return found


@pytest.fixture
def server(settings, jobs):
    with ServerThread(create_app(settings, jobs=jobs), log_level="warning") as running:
        yield running


def test_an_import_is_followed_from_start_to_end_and_a_reconnect_misses_nothing(server, jobs, workers, files):
    source = files / "big.bin"
    source.write_bytes(os.urandom(8 * 1024 * 1024))
    job = jobs.import_file(str(source))
    with httpx.Client(base_url=server.url, timeout=60) as http:
        with http.stream("GET", f"/jobs/{job.id}/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = response.iter_lines()
            first: list[str] = []
            for line in lines:
                first.append(line)
                if line == "":
                    break
        assert first[1] == "event: record" and first[0].startswith("id: ")
        first_id = first[0][4:]
        assert json.loads(first[2][6:])["state"] == "queued"
        workers.start()
        with http.stream("GET", f"/jobs/{job.id}/events", headers={"Last-Event-ID": first_id}) as response:
            rest = _events(response)
    states = [record["state"] for _, record in rest]
    assert states[-1] == "succeeded" and states[0] == "running"
    done = [record["bytes_done"] for _, record in rest]
    assert done == sorted(done) and len([s for s in states if s == "running"]) >= 3
    log = jobs.client.xrange(jobs.records.events_key(job.id))
    assert [first_id] + [entry_id for entry_id, _ in rest] == [entry_id.decode() for entry_id, _ in log]


def test_an_ended_job_is_one_event_then_the_end(server, jobs, workers, files):
    job = jobs.import_file(str(files / "missing.bin"))
    job.cancel(by="t")
    with httpx.Client(base_url=server.url, timeout=30) as http:
        with http.stream("GET", f"/jobs/{job.id}/events") as response:
            events = _events(response)
    assert [record["state"] for _, record in events] == ["canceled"]
    # A reconnect from that last event (as a browser's EventSource does) ends at once.
    with httpx.Client(base_url=server.url, timeout=30) as http:
        last = {"Last-Event-ID": events[0][0]}
        with http.stream("GET", f"/jobs/{job.id}/events", headers=last) as response:
            assert _events(response) == []
        # An id this stream never sent is bad input, not an unreachable Redis.
        for bad in ("not-an-id", "1-2-3", "9" * 30 + "-0", "1-"):
            refused = http.get(f"/jobs/{job.id}/events", headers={"Last-Event-ID": bad})
            assert refused.status_code == 400, (bad, refused.text)
            assert refused.json()["error_class"] == "InvalidInput" and "Last-Event-ID" in refused.json()["error"]


def test_unknown_job_is_404_and_the_stream_bound_is_503(settings, jobs, monkeypatch):
    monkeypatch.setattr(limits, "MAX_CONCURRENT_EVENT_STREAMS", 0)
    with ServerThread(create_app(settings, jobs=jobs), log_level="critical") as running:
        with httpx.Client(base_url=running.url, timeout=30) as http:
            response = http.get("/jobs/nope/events")
            assert response.status_code == 503 and response.headers["Retry-After"]
            assert "event streams are open" in response.text
            assert response.json()["error_class"] == "EventStreamsBusy"
    monkeypatch.undo()
    with ServerThread(create_app(settings, jobs=jobs), log_level="critical") as running:
        with httpx.Client(base_url=running.url, timeout=30) as http:
            assert http.get("/jobs/nope/events").status_code == 404


def test_wrong_api_key_is_401_and_redis_down_is_503(settings, jobs):
    import socket

    keyed = settings.with_changes(api_key="right-key")
    with ServerThread(create_app(keyed, jobs=jobs), log_level="critical") as running:
        with httpx.Client(base_url=running.url, timeout=30) as http:
            response = http.get("/jobs/x/events", headers={"Authorization": "Bearer wrong"})
            assert response.status_code == 401
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        down = settings.with_changes(redis_url=f"redis://127.0.0.1:{probe.getsockname()[1]}/0")
        with ServerThread(create_app(down), log_level="critical") as running:
            with httpx.Client(base_url=running.url, timeout=30) as http:
                response = http.get("/jobs/x/events")
                assert response.status_code == 503 and "ConnectionError" in response.text


def test_an_idle_stream_sends_keepalives_and_a_cancel_ends_it(settings, jobs, files, monkeypatch):
    from paglets_artifacts.http import events

    monkeypatch.setattr(events, "KEEPALIVE_SECONDS", 0.0)
    job = jobs.import_file(str(files / "never.bin"))  # no worker: it stays queued
    with ServerThread(create_app(settings, jobs=jobs), log_level="critical") as running:
        with httpx.Client(base_url=running.url, timeout=30) as http:
            with http.stream("GET", f"/jobs/{job.id}/events") as response:
                lines = response.iter_lines()
                for line in lines:
                    if line == ": keepalive":
                        break
                job.cancel(by="t")
                states = [json.loads(line[6:])["state"] for line in lines if line.startswith("data: ")]
    assert states == ["canceled"]
