"""The dashboard ``GET /ui``: what it shows, how it escapes, its login, and a real browser on it."""

from __future__ import annotations

import html
import os
import re
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from conftest import wait_until
from paglets_artifacts import ArtifactStore
from paglets_artifacts.http.app import create_app
from paglets_artifacts.http.auth import SESSION_COOKIE, session_token
from paglets_artifacts.http.dashboard import error_text, json_for_script
from paglets_artifacts.http.openapi import openapi_document
from paglets_artifacts.http.server import ServerThread
from paglets_artifacts.jobs import contract

KEY = "dash-s3cret"
HOSTILE_NAME = "<script>alert(1)</script>"
HOSTILE_OWNER = '"><img src=x onerror=alert(1)>'


@pytest.fixture
def page_server(settings, jobs) -> Iterator[ServerThread]:
    quota = settings.with_changes(quota_bytes=10 * 1024 * 1024)
    store = ArtifactStore.from_settings(quota, redis=jobs.client)
    with ServerThread(create_app(quota, store=store, jobs=jobs)) as running:
        yield running


@pytest.fixture
def keyed(settings, jobs) -> Iterator[ServerThread]:
    with ServerThread(create_app(settings.with_changes(api_key=KEY), jobs=jobs)) as running:
        yield running


def _row(page: str, job_id: str) -> str:
    match = re.search(rf'<tr id="job-{job_id}".*?</tr>', page)
    assert match, f"no row for {job_id}"
    return match.group(0)


def test_the_page_shows_jobs_of_each_state_with_their_errors_queues_workers_and_store_use(
    settings, jobs, workers, files, page_server
):
    good = files / "good.bin"
    good.write_bytes(os.urandom(2048))
    workers.start()
    done = jobs.import_file(str(good), name=HOSTILE_NAME, owner_agent_id=HOSTILE_OWNER)
    done.wait(30)
    missing = jobs.import_file(str(files / "<img src=x onerror=alert(1)>.bin"))
    wait_until(lambda: missing.status().state == "failed", timeout=60)
    workers.stop_all()
    waiting = [jobs.import_file(str(good)) for _ in range(3)]
    canceled = jobs.import_file(str(good))
    canceled.cancel(by=HOSTILE_OWNER)

    response = httpx.get(f"{page_server.url}/ui", timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "succeeded" in _row(page, done.id) and "100%" in _row(page, done.id)
    failed_row = _row(page, missing.id)
    error = error_text(missing.status().error)
    assert error and "failed" in failed_row and html.escape(error) in failed_row
    assert html.escape(error) in page.split('id="failed"')[1]  # and in the failed jobs' table
    assert "queued" in _row(page, waiting[0].id) and "canceled" in _row(page, canceled.id)
    # queue depths: the three queued and the canceled message wait; dead letters as Dramatiq holds them
    dead = len([letter for letter in jobs.dead_letters.list() if letter.queue == contract.TRANSFER_QUEUE])
    assert f"<tr><td>{contract.TRANSFER_QUEUE}</td><td>4</td><td>{dead}</td></tr>" in page
    assert f"<tr><td>{contract.MAINTENANCE_QUEUE}</td><td>0</td><td>0</td></tr>" in page
    worker = done.status().worker
    assert worker and f"<td>{html.escape(worker)}</td>" in page.split('id="workers"')[1].split("</table>")[0]
    assert '<span id="store-used">2.0 KiB</span>' in page and '<span id="store-quota">10.0 MiB</span>' in page


def test_hostile_names_owners_errors_and_arguments_are_escaped_and_cannot_leave_the_json(jobs, files, page_server):
    job = jobs.import_file(str(files / "x.bin"), name=HOSTILE_NAME, owner_agent_id=HOSTILE_OWNER)
    page = httpx.get(f"{page_server.url}/ui", timeout=30).text
    assert HOSTILE_NAME not in page and "<img" not in page
    assert page.count("</script>") == 2  # the JSON's element and the page's script, nothing else
    assert html.escape(HOSTILE_OWNER) in _row(page, job.id)
    data = re.search(r'<script type="application/json" id="initial">(.*?)</script>', page, re.S).group(1)
    assert "<" not in data and ">" not in data and "\\u003cscript\\u003e" in data
    assert json_for_script({"a": "</script>&"}) == '{"a":"\\u003c/script\\u003e\\u0026"}'


def test_the_page_has_a_strict_content_security_policy_with_a_fresh_nonce(page_server):
    first, second = (httpx.get(f"{page_server.url}/ui", timeout=30) for _ in range(2))
    policy = first.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    nonce = re.search(r"script-src 'nonce-([^']+)'", policy).group(1)
    assert f'<script nonce="{nonce}">' in first.text and nonce not in second.text
    assert "<noscript>" in first.text and 'http-equiv="refresh"' in first.text


def test_without_an_api_key_the_page_is_open_and_a_login_goes_to_it(page_server):
    assert "<h2>Jobs</h2>" in httpx.get(f"{page_server.url}/ui", timeout=30).text
    answer = httpx.post(f"{page_server.url}/ui/login", data={"key": "anything"}, timeout=30)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui" and "set-cookie" not in answer.headers


def _login(server: ServerThread, key: str, **headers: str) -> httpx.Response:
    headers = {"Origin": server.url, **headers}
    return httpx.post(f"{server.url}/ui/login", data={"key": key}, headers=headers, timeout=30)


def test_with_an_api_key_the_page_asks_for_it_and_the_right_key_sets_an_hmac_cookie(keyed):
    form = httpx.get(f"{keyed.url}/ui", timeout=30)
    assert form.status_code == 401 and 'action="/ui/login"' in form.text and "<h2>Jobs</h2>" not in form.text
    bearer = httpx.get(f"{keyed.url}/ui", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert bearer.status_code == 200 and "<h2>Jobs</h2>" in bearer.text

    signed_in = _login(keyed, KEY)
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/ui"
    cookie = signed_in.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}={session_token(KEY)};") and KEY not in cookie
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and "Path=/" in cookie
    with httpx.Client(base_url=keyed.url, cookies={SESSION_COOKIE: session_token(KEY)}, timeout=30) as browser:
        assert "<h2>Jobs</h2>" in browser.get("/ui").text
        assert browser.get("/jobs").status_code == 200  # the cookie is a credential for the API too


def test_a_wrong_key_shows_the_form_again_with_an_error_and_sets_no_cookie(keyed):
    wrong = _login(keyed, "not-" + KEY)
    assert wrong.status_code == 401 and 'id="login-error"' in wrong.text and "set-cookie" not in wrong.headers
    assert KEY not in wrong.text
    forged = httpx.get(f"{keyed.url}/ui", cookies={SESSION_COOKIE: session_token("other")}, timeout=30)
    assert forged.status_code == 401 and 'action="/ui/login"' in forged.text
    api = httpx.get(f"{keyed.url}/jobs", cookies={SESSION_COOKIE: KEY}, timeout=30)
    assert api.status_code == 401  # the key itself is not the cookie


def test_a_login_from_another_origin_or_too_large_is_refused(keyed):
    foreign = _login(keyed, KEY, Origin="http://evil.example")
    assert foreign.status_code == 403 and "set-cookie" not in foreign.headers
    no_origin = httpx.post(f"{keyed.url}/ui/login", data={"key": KEY}, timeout=30)
    assert no_origin.status_code == 403 and "set-cookie" not in no_origin.headers
    large = httpx.post(f"{keyed.url}/ui/login", data={"key": "k" * 5000}, headers={"Origin": keyed.url}, timeout=30)
    assert large.status_code == 413 and "set-cookie" not in large.headers


def test_a_state_change_by_cookie_needs_this_hosts_origin_or_referer(keyed, jobs, files):
    cookies = {SESSION_COOKIE: session_token(KEY)}
    job_ids = [jobs.import_file(str(files / f"{i}.bin")).id for i in range(3)]
    with httpx.Client(base_url=keyed.url, cookies=cookies, timeout=30) as browser:
        assert browser.post(f"/jobs/{job_ids[0]}/cancel").status_code == 403
        assert browser.post(f"/jobs/{job_ids[0]}/cancel", headers={"Origin": "http://evil.example"}).status_code == 403
        assert browser.post(f"/jobs/{job_ids[0]}/cancel", headers={"Origin": "null"}).status_code == 403
        assert browser.delete("/dead-letters/1-0", headers={"Referer": "http://evil.example/ui"}).status_code == 403
        assert jobs.job(job_ids[0]).status().state == "queued"  # nothing changed
        assert browser.post(f"/jobs/{job_ids[0]}/cancel", headers={"Origin": keyed.url}).status_code == 200
        assert browser.post(f"/jobs/{job_ids[1]}/cancel", headers={"Referer": f"{keyed.url}/ui"}).status_code == 200
    # the bearer header is not a browser's ambient credential: no Origin needed
    bearer = httpx.post(f"{keyed.url}/jobs/{job_ids[2]}/cancel", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert bearer.status_code == 200
    assert [jobs.job(i).status().state for i in job_ids] == ["canceled"] * 3


def test_openapi_lists_the_page_and_the_login():
    paths = openapi_document()["paths"]
    assert "get" in paths["/ui"] and "post" in paths["/ui/login"]


# ---------------------------------------------------------------------- in a real browser

STEP = 1024 * 1024  # the transfers read and report in chunks of this size
STEPS = 6


class SteppedSource:
    """An HTTP source whose body the test releases step by step (a transfer slow enough to watch)."""

    def __init__(self) -> None:
        self.released = threading.Semaphore(0)
        source = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the standard library's name
                self.send_response(200)
                self.send_header("Content-Length", str(STEP * STEPS))
                self.end_headers()
                for _ in range(STEPS):
                    if not source.released.acquire(timeout=120):
                        return
                    try:
                        self.wfile.write(b"x" * STEP)
                        self.wfile.flush()
                    except OSError:
                        return

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def release(self, steps: int = 1) -> None:
        for _ in range(steps):
            self.released.release()

    def close(self) -> None:
        self.release(STEPS * 4)
        self.server.shutdown()
        self.server.server_close()


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.skip("no Chromium and chromedriver on this machine (.ci/run installs them where it can)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000"):
        options.add_argument(flag)
    from selenium.webdriver.chrome.service import Service

    return webdriver.Chrome(service=Service(driver_path), options=options)


@pytest.fixture
def source() -> Iterator[SteppedSource]:
    stepped = SteppedSource()
    yield stepped
    stepped.close()


@pytest.fixture
def browser() -> Iterator:
    driver = _browser()
    yield driver
    driver.quit()


@pytest.fixture
def watched(settings, jobs, workers, source) -> Iterator[ServerThread]:
    pulls = settings.with_changes(allowed_hosts=(source.url,), progress_every_bytes=STEP)
    workers.start(settings=pulls, threads=4)
    with ServerThread(create_app(pulls, jobs=jobs)) as running:
        yield running


def _cell(browser, job_id: str, index: int) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return browser.find_element("css selector", f"#job-{job_id} td:nth-child({index})").text
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def _progress(browser, job_id: str) -> int:
    text = _cell(browser, job_id, 4).strip().rstrip("%")
    return int(text) if text.isdigit() else -1


def test_in_a_browser_a_running_jobs_progress_bar_moves_to_done(browser, watched, source, jobs):
    browser.get(f"{watched.url}/ui")
    assert browser.find_element("css selector", "h1").text == "paglets-artifacts"
    job = jobs.import_url(f"{source.url}/artifacts/slow.bin", name=HOSTILE_NAME)
    wait_until(lambda: _cell(browser, job.id, 3) == "running", timeout=60)
    seen = {_progress(browser, job.id)}
    for _ in range(STEPS):
        before = job.status().bytes_done or 0
        source.release()
        wait_until(lambda b=before: (job.status().bytes_done or 0) > b or job.status().done, timeout=60)
        wait_until(
            lambda: _progress(browser, job.id) >= min(100, 100 * (job.status().bytes_done or 0) // (STEP * STEPS))
        )
        seen.add(_progress(browser, job.id))
    wait_until(lambda: _cell(browser, job.id, 3) == "succeeded", timeout=60)
    assert _progress(browser, job.id) == 100
    assert len([p for p in seen if 0 < p < 100]) >= 2  # the bar moved through steps on the way
    assert browser.find_elements("css selector", "img") == []  # the hostile name stayed text


def test_in_a_browser_the_cancel_button_cancels_a_running_job(browser, watched, source, jobs, files):
    good = files / "done.bin"
    good.write_bytes(os.urandom(3000))
    jobs.import_file(str(good), name="nightly-report.tar").wait(30)
    failed = jobs.import_file(str(files / HOSTILE_OWNER))
    wait_until(lambda: failed.status().state == "failed", timeout=60)
    earlier = jobs.import_file(str(good))
    earlier.cancel(by="operator")
    job = jobs.import_url(f"{source.url}/artifacts/big.bin", name="big.bin")
    source.release(3)
    wait_until(lambda: (job.status().bytes_done or 0) > 0, timeout=60)
    browser.get(f"{watched.url}/ui")
    wait_until(lambda: _cell(browser, job.id, 3) == "running" and _progress(browser, job.id) > 0, timeout=60)
    screenshot = os.environ.get("PAGLETS_ARTIFACTS_DASHBOARD_SCREENSHOT")
    if screenshot:
        browser.save_screenshot(screenshot)
    browser.find_element("css selector", f"#job-{job.id} button.cancel").click()
    source.release(STEPS)  # the next chunk's progress report finds the cancel
    wait_until(lambda: job.status().state == "canceled", timeout=60)
    wait_until(lambda: _cell(browser, job.id, 3) == "canceled", timeout=60)
    assert browser.find_elements("css selector", f"#job-{job.id} button.retry")
    assert browser.find_element("id", "message").text == ""
