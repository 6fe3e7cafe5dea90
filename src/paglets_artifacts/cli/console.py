"""What people see of jobs and artifacts in a terminal: progress bars, reports, tables.

Shared by the CLI and the demo. Progress goes to stderr, so stdout stays clean for
``--json`` and for scripts that capture a job id.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from ..errors import JobTimeout
from ..jobs import contract
from ..jobs.client import Job
from ..jobs.dead_letters import DeadLetter
from ..jobs.records import CANCELED, FAILED, RETRYING, RUNNING, SUCCEEDED, JobRecord
from ..refs import ArtifactRef

#: Job kinds that move bytes and report byte progress.
TRANSFER_KINDS = contract.TRANSFER_KINDS
#: Characters of a job id the jobs table shows (``jobs ID`` accepts such a prefix).
SHORT_ID = 8
#: How often a followed job's record is read while it runs.
POLL_SECONDS = 0.2


def human_bytes(size: int | float | None) -> str:
    if size is None or size < 0:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def duration(record: JobRecord) -> float | None:
    """Seconds from start to end (or to now, while running)."""
    if record.started_at is None:
        return None
    end = record.finished_at if record.finished_at is not None else time.time()
    return max(0.0, end - record.started_at)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}s" if value < 10 else f"{value:.0f}s"


def follow(
    job: Job,
    console: Console,
    *,
    timeout: float | None = None,
    label: str | None = None,
    check: Callable[[], None] | None = None,
) -> JobRecord:
    """Show a live progress bar for ``job`` until it ends; return its final record.

    Transfers show bytes, rate and time left from the record's ``bytes_done`` and
    ``bytes_total``; other jobs a spinner and their state. ``JobTimeout`` after ``timeout``;
    ``check`` is called at each poll and may raise to stop following (a worker that died).
    """
    record = job.status()
    transfer = record.kind in TRANSFER_KINDS
    # The description holds a caller's label and the record's kind: text, never markup.
    columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}", markup=False)]
    if transfer:
        columns += [
            BarColumn(),
            TaskProgressColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        ]
    else:
        columns += [TimeElapsedColumn()]
    name = label or f"{record.kind} {job.id[:8]}"
    deadline = None if timeout is None else time.monotonic() + timeout
    attempt = record.attempts
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"{name} {record.state}", total=None)
        while True:
            if record.attempts != attempt:  # a new attempt starts from zero: restart the rate
                attempt = record.attempts
                progress.reset(task)
            total = record.bytes_total if transfer and record.bytes_total >= 0 else None
            progress.update(
                task, total=total, completed=record.bytes_done if transfer else 0, description=f"{name} {record.state}"
            )
            if record.done:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeout(f"job {job.id} is still {record.state} after {timeout:g} s")
            if check is not None:
                check()
            time.sleep(POLL_SECONDS)
            record = job.status()
    return record


def error_line(record: JobRecord) -> str:
    if record.state == CANCELED:
        return f"{record.kind} job {record.id} was canceled by {record.canceled_by or 'someone'}"
    error = record.error or {}
    return f"{record.kind} job {record.id} failed: {error.get('type', 'Error')}: {error.get('message', '')}"


def plain(value: Any) -> Text:
    """A value as a table cell or a line: text as it is, never read as rich markup (names,
    owners, paths, errors and URLs come from clients and remote hosts)."""
    return Text(str(value))


def job_report(record: JobRecord) -> Table:
    """One job: its state, timing, attempts, progress, and its result or error."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("job", plain(record.id))
    table.add_row("kind", plain(record.kind))
    table.add_row("state", _styled_state(record.state))
    table.add_row("enqueued", when(record.enqueued_at))
    table.add_row("started", when(record.started_at))
    table.add_row("finished", when(record.finished_at))
    table.add_row("duration", _seconds(duration(record)))
    table.add_row("attempts", str(record.attempts))
    table.add_row("worker", plain(record.worker or "-"))
    if record.canceled_at is not None:
        table.add_row("canceled", plain(f"{when(record.canceled_at)} by {record.canceled_by}"))
        table.add_row("stopped", when(record.stopped_at))
    if record.retries:
        table.add_row("retries", str(record.retries))
    if record.bytes_total >= 0 or record.bytes_done:
        table.add_row("progress", f"{human_bytes(record.bytes_done)} of {human_bytes(record.bytes_total)}")
        spent = duration(record)
        if record.done and spent and record.bytes_done:
            table.add_row("rate", f"{human_bytes(record.bytes_done / spent)}/s")
    for key, value in sorted(record.arguments.items()):
        if value not in ("", None, False, 0.0) or key == "move":
            table.add_row(plain(f"arg {key}"), plain(_value(key, value)))
    if isinstance(record.result, dict):
        for key, value in record.result.items():
            if value not in ("", None, []):
                table.add_row(plain(key), plain(_value(key, value)))
    elif record.result is not None:
        table.add_row("result", plain(record.result))
    if record.error:
        table.add_row("error", Text(f"{record.error.get('type', '')}: {record.error.get('message', '')}", style="red"))
    return table


def _value(key: str, value: Any) -> str:
    if key.endswith("bytes") or key.endswith("bytes_freed") or key == "bytes_freed":
        if isinstance(value, int):
            return f"{value} ({human_bytes(value)})"
    if key in ("created_at", "expires_at") and isinstance(value, (int, float)):
        return when(value) if value else "never" if key == "expires_at" else "-"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    return str(value)


def _styled_state(state: str) -> Text:
    colour = {SUCCEEDED: "green", FAILED: "red", RETRYING: "yellow", RUNNING: "cyan", CANCELED: "magenta"}.get(state)
    return Text(state, style=colour or "")


def jobs_table(records: Iterable[JobRecord]) -> Table:
    table = Table(title="recent jobs", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("job", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("enqueued", no_wrap=True)
    table.add_column("took", no_wrap=True, justify="right")
    table.add_column("outcome", overflow="fold", min_width=16)
    for record in records:
        if record.error:
            outcome = f"{record.error.get('type', '')}: {record.error.get('message', '')}"
        elif record.done and isinstance(record.result, dict):
            outcome = result_summary(record.kind, record.result)
        elif record.bytes_total >= 0:
            outcome = f"{human_bytes(record.bytes_done)} of {human_bytes(record.bytes_total)}"
        else:
            outcome = ""
        if record.attempts > 1:
            outcome = f"{outcome} (attempt {record.attempts})"
        table.add_row(
            plain(record.id[:SHORT_ID]),
            plain(record.kind),
            _styled_state(record.state),
            _clock(record.enqueued_at),
            _seconds(duration(record)),
            plain(outcome),
        )
    return table


def dead_letters_table(letters: Iterable[DeadLetter]) -> Table:
    table = Table(title="dead letters", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("id", no_wrap=True)
    table.add_column("queue", no_wrap=True)
    table.add_column("since", no_wrap=True)
    table.add_column("job", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("why", overflow="fold", min_width=16)
    for letter in letters:
        error = letter.error or {}
        table.add_row(
            plain(letter.id),
            plain(letter.queue),
            _clock(letter.dead_lettered_at),
            plain(letter.job_id[:SHORT_ID] or "-"),
            plain(letter.kind or letter.actor or "-"),
            _styled_state(letter.state) if letter.state else Text("-"),
            plain(f"{error.get('type', '')}: {error.get('message', '')}" if error else ""),
        )
    return table


def _clock(timestamp: float | None) -> str:
    """Time of day for today's times, the full date and time otherwise."""
    if not timestamp:
        return "-"
    moment = datetime.fromtimestamp(timestamp)
    return moment.strftime("%H:%M:%S" if moment.date() == datetime.now().date() else "%Y-%m-%d %H:%M")


def result_summary(kind: str, result: dict[str, Any]) -> str:
    """A job's result in one short line."""
    if kind in TRANSFER_KINDS:
        text = f"{str(result.get('artifact_id', ''))[:12]} {human_bytes(result.get('size_bytes'))}"
        if result.get("target"):
            text += f" -> {result['target']}"
        return text
    if kind == contract.SWEEP.name:
        return (
            f"parts {result.get('parts_removed', 0)}, expired {result.get('expired_removed', 0)}, "
            f"orphans {result.get('orphans_removed', 0)}, freed {human_bytes(result.get('bytes_freed', 0))}"
        )
    if kind == contract.DELETE_OWNER.name:
        return f"deleted {result.get('deleted', 0)}, freed {human_bytes(result.get('bytes_freed', 0))}"
    return ", ".join(f"{key} {value}" for key, value in result.items())


def artifacts_table(refs: Iterable[ArtifactRef]) -> Table:
    table = Table(title="artifacts", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("artifact", no_wrap=True)
    table.add_column("name", overflow="fold", min_width=8)
    table.add_column("size", no_wrap=True, justify="right")
    table.add_column("owner", overflow="fold", min_width=5)
    table.add_column("created", no_wrap=True)
    table.add_column("expires", no_wrap=True)
    for ref in refs:
        table.add_row(
            plain(ref.artifact_id),
            plain(ref.name),
            human_bytes(ref.size_bytes),
            plain(ref.owner_agent_id or "-"),
            _clock(ref.created_at),
            _clock(ref.expires_at) if ref.expires_at else "-",
        )
    return table


def ref_report(ref: ArtifactRef, extra: dict[str, str] | None = None) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in ref.to_wire().items():
        table.add_row(plain(key), plain(_value(key, value)))
    for key, value in (extra or {}).items():
        table.add_row(plain(key), plain(value))
    return table
