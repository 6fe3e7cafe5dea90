"""The operator's dashboard: ``GET /ui``, one page to keep open.

    GET  /ui            the page: recent jobs (live progress), queue depths, workers, store use
    POST /ui/login      form field ``key``: with the API key, a session cookie, then /ui

Without JavaScript the page is a read-only server-rendered set of tables (refreshed every
30 seconds). With it, rows of running jobs follow ``GET /jobs/{id}/events`` (falling back to
polling ``GET /jobs/{id}`` every second when the stream is not there) and the cancel and
retry buttons call :mod:`.job_control`'s endpoints. Every text from a user or a record is
escaped with :func:`html.escape`; the records handed to the script are JSON inside a
``<script type="application/json">`` with ``<``, ``>`` and ``&`` escaped, so no text can close
the element. The page's script and style carry a fresh nonce each response and the
Content-Security-Policy allows nothing else. The login (the cookie and its checks) is
:mod:`.auth`'s.
"""

from __future__ import annotations

import functools
import html
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from ..jobs import contract
from ..jobs.client import ArtifactJobs
from ..jobs.dead_letters import QueueKeys
from ..jobs.records import JobRecord
from ..settings import Settings
from ..store.artifacts import ArtifactStore

#: Jobs the page shows (the most recent first).
DASHBOARD_JOBS = 50
#: Seconds between the refreshes of the page without JavaScript.
NOSCRIPT_REFRESH_SECONDS = 30

_QUEUES = (contract.TRANSFER_QUEUE, contract.MAINTENANCE_QUEUE)


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _when(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def _bytes(n: int | None) -> str:
    if n is None:
        return "no quota"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def error_text(error: Any) -> str:
    """A record's error as one line: ``Type: message``."""
    if not error:
        return ""
    if isinstance(error, dict):
        return f"{error.get('type', 'Error')}: {error.get('message', '')}"
    return str(error)


def _percent(record: JobRecord) -> int:
    if record.state == "succeeded":
        return 100
    if record.bytes_total:
        return max(0, min(100, int(100 * (record.bytes_done or 0) / record.bytes_total)))
    return 0


def json_for_script(value: Any) -> str:
    """JSON safe inside a ``<script>`` element: no ``<``, ``>`` or ``&`` left to close it."""
    text = json.dumps(value, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def content_security_policy(nonce: str) -> str:
    return (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
        "img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )


def _html_response(body: str, nonce: str, status_code: int = 200) -> HTMLResponse:
    headers = {
        "Content-Security-Policy": content_security_policy(nonce),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
    }
    return HTMLResponse(body, status_code=status_code, headers=headers)


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em;width:100%}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top;font-size:.9em}
th{background:#eee}.state-failed{color:#b00}.state-succeeded{color:#070}.state-canceled{color:#777}
.state-running{color:#05a}.err{white-space:pre-wrap;max-width:40em}.msg{color:#b00}
code{word-break:break-all}.args{max-width:24em}
"""


def login_page(error: str | None = None, status_code: int = 200) -> HTMLResponse:
    """The small form ``GET /ui`` shows without a valid credential."""
    nonce = secrets.token_urlsafe(16)
    note = f'<p class="msg" id="login-error">{_e(error)}</p>' if error else ""
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>paglets-artifacts: sign in</title>'
        f'<style nonce="{nonce}">{_STYLE}</style></head><body><h1>paglets-artifacts</h1>{note}'
        '<form method="post" action="/ui/login"><label>API key <input type="password" name="key" '
        'autocomplete="current-password" required></label> <button type="submit">Sign in</button></form>'
        "</body></html>"
    )
    return _html_response(body, nonce, status_code)


class Dashboard:
    """The page, bound to one store and one job client.

    Parameters:
      settings(Settings): the namespace of the queues.
      store(ArtifactStore): whose use and quota the page shows.
      jobs(ArtifactJobs): where the records and queues are.
    """

    def __init__(self, settings: Settings, store: ArtifactStore, jobs: ArtifactJobs):
        self.settings = settings
        self.store = store
        self.jobs = jobs

    async def _sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await anyio.to_thread.run_sync(functools.partial(fn, *args))

    def snapshot(self) -> dict[str, Any]:
        """What the page shows, read now: records, queue depths, workers, store use."""
        records = self.jobs.jobs(limit=DASHBOARD_JOBS)
        client = self.jobs.client
        queues = []
        for name in _QUEUES:
            keys = QueueKeys.of(self.settings.namespace, name)
            queues.append(
                {"queue": name, "waiting": int(client.llen(keys.queue)), "dead": int(client.zcard(keys.dead))}
            )
        workers: dict[str, float] = {}
        for record in records:
            if record.worker:
                seen = record.finished_at or record.started_at or record.enqueued_at or 0.0
                workers[record.worker] = max(workers.get(record.worker, 0.0), seen)
        return {
            "records": records,
            "queues": queues,
            "workers": sorted(workers.items(), key=lambda item: -item[1]),
            "used_bytes": self.store.index.used_bytes(),
            "quota_bytes": self.store.quota_bytes,
        }

    async def page(self, request: Request) -> Response:
        data = await self._sync(self.snapshot)
        nonce = secrets.token_urlsafe(16)
        return _html_response(render_page(data, nonce), nonce)

    async def login_without_key(self, request: Request) -> Response:
        # Without an API key the page is open; a stale login form just goes there.
        return RedirectResponse("/ui", status_code=303)

    def routes(self) -> list[Route]:
        return [
            Route("/ui", self.page, methods=["GET"]),
            Route("/ui/login", self.login_without_key, methods=["POST"]),
        ]


def _job_row(record: JobRecord) -> str:
    percent = _percent(record)
    progress = f'<progress max="100" value="{percent}">{percent}%</progress> {percent}%'
    return (
        f'<tr id="job-{_e(record.id)}" data-state="{_e(record.state)}"><td><code>{_e(record.id)}</code></td>'
        f'<td>{_e(record.kind)}</td><td class="state-{_e(record.state)}">{_e(record.state)}</td>'
        f"<td>{progress}</td><td>{_e(_when(record.started_at))}</td><td>{_e(_when(record.finished_at))}</td>"
        f'<td>{_e(record.worker)}</td><td class="err">{_e(error_text(record.error))}</td>'
        f'<td class="args"><code>{_e(json.dumps(record.arguments, sort_keys=True))}</code></td><td></td></tr>'
    )


_JOB_HEAD = (
    "<tr><th>job</th><th>kind</th><th>state</th><th>progress</th><th>started</th><th>finished</th>"
    "<th>worker</th><th>error</th><th>arguments</th><th></th></tr>"
)


def render_page(data: dict[str, Any], nonce: str) -> str:
    """The page's HTML for one :meth:`Dashboard.snapshot`."""
    records: list[JobRecord] = data["records"]
    failed = [r for r in records if r.state == "failed"]
    queue_rows = "".join(
        f"<tr><td>{_e(q['queue'])}</td><td>{q['waiting']}</td><td>{q['dead']}</td></tr>" for q in data["queues"]
    )
    worker_rows = "".join(f"<tr><td>{_e(name)}</td><td>{_e(_when(seen))}</td></tr>" for name, seen in data["workers"])
    used, quota = data["used_bytes"], data["quota_bytes"]
    share = f" ({100 * used / quota:.1f}%)" if quota else ""
    initial = json_for_script({"jobs": [record.to_wire() for record in records]})
    failed_rows = "".join(
        f'<tr><td><code>{_e(r.id)}</code></td><td>{_e(r.kind)}</td><td class="err">{_e(error_text(r.error))}</td></tr>'
        for r in failed
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>paglets-artifacts</title>'
        f'<noscript><meta http-equiv="refresh" content="{NOSCRIPT_REFRESH_SECONDS}"></noscript>'
        f'<style nonce="{nonce}">{_STYLE}</style></head><body><h1>paglets-artifacts</h1>'
        "<noscript><p>JavaScript is off: this page is read-only and refreshes every "
        f"{NOSCRIPT_REFRESH_SECONDS} seconds; cancel and retry need JavaScript.</p></noscript>"
        f'<p id="store">Store: <span id="store-used">{_e(_bytes(used))}</span> used of '
        f'<span id="store-quota">{_e(_bytes(quota))}</span>{_e(share)}</p>'
        f'<h2>Queues</h2><table id="queues"><tr><th>queue</th><th>waiting</th><th>dead letters</th></tr>'
        f"{queue_rows}</table>"
        f'<h2>Workers</h2><table id="workers"><tr><th>worker</th><th>last seen</th></tr>{worker_rows}</table>'
        f'<h2>Jobs</h2><p class="msg" id="message"></p><table id="jobs"><thead>{_JOB_HEAD}</thead>'
        f"<tbody>{''.join(_job_row(r) for r in records)}</tbody></table>"
        f'<h2>Failed</h2><table id="failed"><tr><th>job</th><th>kind</th><th>error</th></tr>{failed_rows}</table>'
        f'<script type="application/json" id="initial">{initial}</script>'
        f'<script nonce="{nonce}">{_SCRIPT}</script></body></html>'
    )


_SCRIPT = r"""
(function () {
  "use strict";
  var FINAL = {succeeded: 1, failed: 1, canceled: 1};
  var following = {};
  var tbody = document.querySelector("#jobs tbody");
  var message = document.getElementById("message");
  function when(ts) { return ts ? new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 19) : ""; }
  function percent(r) {
    if (r.state === "succeeded") return 100;
    if (r.bytes_total) return Math.max(0, Math.min(100, Math.floor(100 * (r.bytes_done || 0) / r.bytes_total)));
    return 0;
  }
  function cell(tr, text, cls) {
    var td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = text == null ? "" : String(text);
    tr.appendChild(td);
    return td;
  }
  function act(r, what) {
    message.textContent = "";
    fetch("/jobs/" + encodeURIComponent(r.id) + "/" + what, {method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json"}, body: what === "cancel" ? JSON.stringify({by: "dashboard"}) : ""})
      .then(function (resp) {
        return resp.json().then(function (body) {
          if (!resp.ok) { message.textContent = what + " " + r.id + ": " + (body.error || resp.status); return; }
          render(body.job);
          follow(body.job);
        });
      }).catch(function (err) { message.textContent = what + " " + r.id + ": " + err; });
  }
  function render(r) {
    var tr = document.createElement("tr");
    tr.id = "job-" + r.id;
    tr.setAttribute("data-state", r.state);
    var code = document.createElement("code"); code.textContent = r.id; cell(tr, "").appendChild(code);
    cell(tr, r.kind);
    cell(tr, r.state, "state-" + r.state);
    var p = percent(r);
    var td = cell(tr, "");
    var bar = document.createElement("progress"); bar.max = 100; bar.value = p; td.appendChild(bar);
    td.appendChild(document.createTextNode(" " + p + "%"));
    cell(tr, when(r.started_at)); cell(tr, when(r.finished_at)); cell(tr, r.worker);
    cell(tr, r.error ? (r.error.type || "Error") + ": " + (r.error.message || "") : "", "err");
    var args = document.createElement("code"); args.textContent = JSON.stringify(r.arguments);
    cell(tr, "", "args").appendChild(args);
    var buttons = cell(tr, "");
    function button(label, what) {
      var b = document.createElement("button"); b.type = "button"; b.textContent = label;
      b.className = what; b.addEventListener("click", function () { act(r, what); }); buttons.appendChild(b);
    }
    if (r.state === "queued" || r.state === "running" || r.state === "retrying") button("Cancel", "cancel");
    if (r.state === "failed" || r.state === "canceled") button("Retry", "retry");
    var old = document.getElementById("job-" + r.id);
    if (old) tbody.replaceChild(tr, old); else tbody.insertBefore(tr, tbody.firstChild);
  }
  function poll(id) {
    fetch("/jobs/" + encodeURIComponent(id), {credentials: "same-origin"}).then(function (resp) {
      return resp.ok ? resp.json() : null;
    }).then(function (body) {
      if (body) render(body.job);
      if (body && !FINAL[body.job.state]) setTimeout(function () { poll(id); }, 1000);
      else delete following[id];
    }).catch(function () { setTimeout(function () { poll(id); }, 1000); });
  }
  function follow(r) {
    if (FINAL[r.state] || following[r.id]) return;
    following[r.id] = true;
    if (!window.EventSource) { poll(r.id); return; }
    var source = new EventSource("/jobs/" + encodeURIComponent(r.id) + "/events");
    var got = false;
    source.addEventListener("record", function (ev) {
      got = true;
      var rec = JSON.parse(ev.data);
      render(rec);
      if (FINAL[rec.state]) { source.close(); delete following[r.id]; }
    });
    source.onerror = function () { source.close(); if (following[r.id]) poll(r.id); };
  }
  var initial = JSON.parse(document.getElementById("initial").textContent);
  while (tbody.firstChild) tbody.removeChild(tbody.firstChild);
  initial.jobs.slice().reverse().forEach(function (r) { render(r); follow(r); });
  setInterval(function () {
    fetch("/jobs?limit=50", {credentials: "same-origin"}).then(function (resp) {
      return resp.ok ? resp.json() : {jobs: []};
    }).then(function (body) {
      body.jobs.slice().reverse().forEach(function (r) {
        if (!document.getElementById("job-" + r.id)) { render(r); follow(r); }
      });
    }).catch(function () {});
  }, 5000);
})();
"""
