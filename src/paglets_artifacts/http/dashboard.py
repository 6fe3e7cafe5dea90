"""The dashboard page: ``GET /ui``, what an operator keeps open.

    GET    /ui           the page (recent jobs, queue depths, workers, store vs quota, failures)
    POST   /ui/login     form field ``key`` -> sets the session cookie, redirects to /ui

Server-rendered HTML (it reads without JavaScript); a little inline script follows running
jobs over ``/jobs/{id}/events`` and calls ``/jobs/{id}/cancel`` and ``/jobs/{id}/retry``.
Every text a user supplied is HTML-escaped. Without a valid key (header or cookie) the
page is a login form; the cookie is :mod:`.auth`'s.
"""

from __future__ import annotations

import functools
import html
import json
import time
from typing import Any
from urllib.parse import parse_qs

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from ..jobs.client import ArtifactJobs
from ..jobs.dead_letters import QUEUES
from ..jobs.records import CANCELED, FAILED, FINAL_STATES, JobRecord
from ..settings import Settings
from ..store.artifacts import ArtifactStore
from .auth import COOKIE_NAME, cookie_value, key_matches

#: The largest login form read (a key and its field name).
MAX_LOGIN_BODY_BYTES = 4096
#: Jobs the page lists.
RECENT_JOBS = 50

_SCRIPT = """
document.querySelectorAll('tr[data-job]').forEach(function (row) {
  var id = row.dataset.job;
  row.querySelectorAll('button[data-act]').forEach(function (b) {
    b.disabled = false;
    b.addEventListener('click', function () {
      fetch('/jobs/' + encodeURIComponent(id) + '/' + b.dataset.act, {method: 'POST', credentials: 'same-origin'})
        .then(function (r) { return r.json(); })
        .then(function (body) { if (body.job) { show(row, body.job); } });
    });
  });
  if (row.dataset.final === '1') { return; }
  var events = new EventSource('/jobs/' + encodeURIComponent(id) + '/events');
  events.addEventListener('record', function (e) {
    var job = JSON.parse(e.data); show(row, job);
    if (job.state === 'succeeded' || job.state === 'failed' || job.state === 'canceled') { events.close(); }
  });
});
function show(row, job) {
  row.querySelector('.state').textContent = job.state;
  row.dataset.state = job.state;
  var bar = row.querySelector('progress');
  if (job.bytes_total > 0) { bar.max = job.bytes_total; bar.value = job.bytes_done; }
  if (job.state === 'succeeded') { bar.max = 1; bar.value = 1; }
}
"""

_STYLE = """
body{font-family:sans-serif;margin:1em 2em}table{border-collapse:collapse;margin-bottom:1.5em}
td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left}th{background:#eee}
.failed .state{color:#b00}.succeeded .state{color:#070}.canceled .state{color:#777}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _progress(record: JobRecord) -> str:
    if record.state == "succeeded":
        return '<progress max="1" value="1">done</progress>'
    if record.bytes_total > 0:
        return f'<progress max="{record.bytes_total}" value="{record.bytes_done}">{record.bytes_done}</progress>'
    if record.state == "running":  # no size known yet: an indeterminate bar
        return "<progress></progress>"
    return '<progress max="1" value="0">-</progress>'


def _job_row(record: JobRecord) -> str:
    buttons = []
    if record.state not in FINAL_STATES:
        buttons.append('<button data-act="cancel" disabled>cancel</button>')
    if record.state in (FAILED, CANCELED):
        buttons.append('<button data-act="retry" disabled>retry</button>')
    arguments = json.dumps(record.arguments, sort_keys=True)
    final = "1" if record.done else "0"
    return (
        f'<tr data-job="{_e(record.id)}" data-final="{final}" class="{_e(record.state)}">'
        f"<td><code>{_e(record.id)}</code></td><td>{_e(record.kind)}</td>"
        f'<td class="state">{_e(record.state)}</td><td>{_progress(record)}</td>'
        f"<td>{_e(arguments)}</td><td>{_e(record.worker)}</td><td>{''.join(buttons)}</td></tr>"
    )


def _error_row(record: JobRecord) -> str:
    error = record.error or {}
    return (
        f"<tr><td><code>{_e(record.id)}</code></td><td>{_e(record.kind)}</td>"
        f"<td>{_e(error.get('type', ''))}</td><td>{_e(error.get('message', ''))}</td></tr>"
    )


def _page(title: str, body: str, script: str = "") -> HTMLResponse:
    tail = f"<script>{script}</script>" if script else ""
    return HTMLResponse(
        f'<!doctype html><html><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{_STYLE}</style></head><body>{body}{tail}</body></html>",
        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"},
    )


class Dashboard:
    """The page, bound to one store and one job client.

    Parameters:
      settings(Settings): the API key and namespace.
      store(ArtifactStore): whose used bytes and quota the page shows.
      jobs(ArtifactJobs): the jobs, queues and heartbeats.
    """

    def __init__(self, settings: Settings, store: ArtifactStore, jobs: ArtifactJobs):
        self.settings = settings
        self.store = store
        self.jobs = jobs

    def _authorized(self, request: Request) -> bool:
        if not self.settings.api_key:
            return True
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and key_matches(token.strip(), self.settings.api_key):
            return True
        cookie = request.cookies.get(COOKIE_NAME, "")
        return key_matches(cookie, cookie_value(self.settings.api_key))

    def _facts(self) -> dict[str, Any]:
        client = self.jobs.client
        namespace = self.settings.namespace
        queues = {name: int(client.llen(f"{namespace}:{name}")) for name in QUEUES}
        seen = client.zrange(f"{namespace}:__heartbeats__", 0, -1, withscores=True)
        records = self.jobs.jobs(limit=RECENT_JOBS)
        workers = sorted({r.worker for r in records if r.worker})
        return {
            "records": records,
            "queues": queues,
            "heartbeats": [(_text(beat[0]), float(beat[1])) for beat in seen],
            "workers": workers,
            "used": self.store.index.used_bytes(),
            "quota": self.store.quota_bytes,
        }

    async def page(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._login_form(status=401)
        facts = await anyio.to_thread.run_sync(functools.partial(self._facts))
        records: list[JobRecord] = facts["records"]
        now = time.time()
        quota = "no quota" if facts["quota"] is None else f"{facts['quota']} bytes"
        queues = "".join(f"<tr><td>{_e(n)}</td><td>{d}</td></tr>" for n, d in facts["queues"].items())
        beats = "".join(f"<tr><td>{_e(n)}</td><td>{now - s / 1000:.0f} s ago</td></tr>" for n, s in facts["heartbeats"])
        named = "".join(f"<li>{_e(w)}</li>" for w in facts["workers"])
        rows = "".join(_job_row(r) for r in records)
        failed = "".join(_error_row(r) for r in records if r.state == FAILED)
        body = (
            "<h1>paglets-artifacts</h1>"
            f'<p id="store">Store: <b>{facts["used"]}</b> bytes used of {_e(quota)}</p>'
            f'<h2>Queues</h2><table id="queues"><tr><th>queue</th><th>depth</th></tr>{queues}</table>'
            f'<h2>Workers</h2><table id="heartbeats"><tr><th>broker</th><th>heartbeat</th></tr>{beats}</table>'
            f'<ul id="workers">{named}</ul>'
            '<h2>Recent jobs</h2><table id="jobs"><tr><th>id</th><th>kind</th><th>state</th><th>progress</th>'
            f"<th>arguments</th><th>worker</th><th></th></tr>{rows}</table>"
            '<h2>Failed jobs</h2><table id="failed"><tr><th>id</th><th>kind</th><th>error</th><th>message</th></tr>'
            f"{failed}</table>"
        )
        return _page("paglets-artifacts", body, _SCRIPT)

    def _login_form(self, *, status: int, note: str = "") -> Response:
        body = (
            "<h1>paglets-artifacts</h1>"
            f"<p>{_e(note) if note else 'This page needs the API key.'}</p>"
            '<form method="post" action="/ui/login"><input type="password" name="key" autocomplete="off">'
            '<button type="submit">Sign in</button></form>'
        )
        response = _page("sign in", body)
        response.status_code = status
        return response

    async def login(self, request: Request) -> Response:
        raw = await request.body()
        fields = (
            parse_qs(raw[:MAX_LOGIN_BODY_BYTES].decode("utf-8", "replace")) if len(raw) <= MAX_LOGIN_BODY_BYTES else {}
        )
        key = fields.get("key", [""])[0]
        if not self.settings.api_key or not isinstance(key, str) or not key_matches(key, self.settings.api_key):
            return self._login_form(status=401, note="That key is not the API key.")
        response = RedirectResponse("/ui", status_code=303)
        response.set_cookie(
            COOKIE_NAME,
            cookie_value(self.settings.api_key),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    def routes(self) -> list[Route]:
        return [Route("/ui", self.page, methods=["GET"]), Route("/ui/login", self.login, methods=["POST"])]
