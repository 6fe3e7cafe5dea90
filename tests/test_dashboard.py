"""The dashboard page (GET /ui) on a real server on loopback: rendering, escaping, auth."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from paglets_artifacts import ArtifactJobs, ArtifactStore, Settings
from paglets_artifacts.errors import TransferError
from paglets_artifacts.http.app import create_app
from paglets_artifacts.http.auth import COOKIE_NAME
from paglets_artifacts.http.server import ServerThread

KEY = "dashboard-key"
HOSTILE = '"><img src=x onerror=alert(1)><script>alert(2)</script>'


@pytest.fixture
def server(settings: Settings, jobs: ArtifactJobs) -> Iterator[ServerThread]:
    store = ArtifactStore.from_settings(settings)
    with ServerThread(create_app(settings.with_changes(api_key=KEY), store=store, jobs=jobs)) as running:
        yield running


def _login(http: httpx.Client) -> None:
    answer = http.post("/ui/login", data={"key": KEY})
    assert answer.status_code == 303 and COOKIE_NAME in http.cookies


def test_without_a_key_the_page_is_a_login_form(server):
    answer = httpx.get(server.url + "/ui")
    assert answer.status_code == 401 and '<form method="post" action="/ui/login">' in answer.text
    assert "Recent jobs" not in answer.text


def test_a_wrong_key_is_refused_and_sets_no_cookie(server):
    with httpx.Client(base_url=server.url) as http:
        answer = http.post("/ui/login", data={"key": "wrong"})
        assert answer.status_code == 401 and COOKIE_NAME not in http.cookies
        assert http.get("/ui").status_code == 401


def test_the_cookie_is_httponly_samesite_strict_and_not_the_key(server):
    answer = httpx.post(server.url + "/ui/login", data={"key": KEY})
    header = answer.headers["set-cookie"].lower()
    assert "httponly" in header and "samesite=strict" in header and KEY.lower() not in header


def test_the_cookie_opens_the_page_and_the_job_endpoints(server, jobs, files):
    job = jobs.import_file(str(files / "x.bin"))
    with httpx.Client(base_url=server.url) as http:
        assert http.get(f"/jobs/{job.id}").status_code == 401
        _login(http)
        assert "Recent jobs" in http.get("/ui").text
        assert http.get(f"/jobs/{job.id}").json()["job"]["id"] == job.id


def test_a_cross_origin_post_with_the_cookie_is_refused_and_changes_nothing(server, jobs, files):
    job = jobs.import_file(str(files / "x.bin"))
    with httpx.Client(base_url=server.url) as http:
        _login(http)
        refused = http.post(f"/jobs/{job.id}/cancel", headers={"Origin": "http://evil.example"})
        assert refused.status_code == 401 and job.status().state == "queued"
        host = server.url.partition("://")[2]
        accepted = http.post(f"/jobs/{job.id}/cancel", headers={"Origin": f"http://{host}"})
        assert accepted.status_code == 200 and job.status().state == "canceled"


def test_the_page_shows_queued_and_canceled_jobs_and_escapes_hostile_text(server, jobs, files):
    queued = jobs.import_file(str(files / "q.bin"), name=HOSTILE, owner_agent_id=HOSTILE)
    canceled = jobs.import_file(str(files / "c.bin"))
    canceled.cancel(by=HOSTILE)
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}) as http:
        page = http.get("/ui").text
    assert "<img src=x" not in page and "<script>alert" not in page
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in page
    assert f'data-job="{queued.id}" data-final="0" class="queued"' in page
    assert f'data-job="{canceled.id}" data-final="1" class="canceled"' in page
    assert 'data-act="retry"' in page and 'data-act="cancel"' in page
    assert "artifact-transfers</td><td>2</td>" in page  # both messages wait: no worker runs


def test_openapi_lists_the_page_and_its_login():
    from paglets_artifacts.http.openapi import openapi_document

    paths = openapi_document()["paths"]
    assert "get" in paths["/ui"] and "post" in paths["/ui/login"]


def test_the_page_shows_succeeded_and_failed_jobs_with_the_error(server, jobs, workers, files):
    source = files / "ok.bin"
    source.write_bytes(b"x" * 1000)
    workers.start()
    good = jobs.import_file(str(source))
    good.wait(timeout=60)
    bad = jobs.import_file(str(files / "<b>missing</b>.bin"))
    with pytest.raises(TransferError):
        bad.wait(timeout=60)
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}) as http:
        page = http.get("/ui").text
    assert f'data-job="{good.id}" data-final="1" class="succeeded"' in page
    assert f'data-job="{bad.id}" data-final="1" class="failed"' in page
    failed_table = page.split('id="failed"', 1)[1]
    assert bad.id in failed_table and bad.status().error["type"] in failed_table
    assert "<b>missing" not in page and "&lt;b&gt;missing" in page
