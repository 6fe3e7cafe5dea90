"""The ``paglets-artifacts`` command line: enqueue and follow jobs, look at the store,
start the processes, run the demo.

Exit codes (also in ``--help``):

====  =====================================================================
0     success (a waited-for job succeeded)
1     the job failed or was canceled, or the operation was refused (unknown id, not
      allowed, a cancel of a job that ended, a retry of one that did not fail...)
2     usage error (unknown option, bad argument)
3     configuration error (a ``REDIS_URL`` / ``PAGLETS_ARTIFACTS_*`` value)
4     Redis cannot be reached (down, wrong address, wrong password, TLS), or a transient
      error (the index being rebuilt elsewhere): try again
5     ``--timeout`` passed before the job ended (the job goes on)
130   interrupted (Ctrl-C); a job already enqueued goes on
====  =====================================================================

Errors are one line on stderr; ``--debug`` (before the command) adds the traceback.
"""

from __future__ import annotations

import enum
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import redis
import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from ..errors import JobTimeout, TransferError, Transient
from ..jobs import contract
from ..jobs.client import ArtifactJobs, Job, connect
from ..jobs.records import CANCELED, FAILED, STATES
from ..jobs.worker_process import WorkerProcess, scheduler_available
from ..logging_setup import configure_logging
from ..redaction import redact_text, redact_url
from ..settings import PREFIX, Settings, SettingsError
from . import console as views

#: How many recent jobs a job id prefix is looked for in.
RECENT_JOBS_SEARCHED = 1000
#: The job states, as ``--state`` accepts them.
JobState = enum.Enum("JobState", {state: state for state in STATES}, type=str)  # type: ignore[misc]  # from STATES

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_UNAVAILABLE = 4
EXIT_TIMEOUT = 5
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = (
    "Exit codes: 0 success; 1 the job failed or was canceled, or the operation was refused; 2 usage error; "
    "3 configuration error; 4 Redis unreachable or a transient error (try again); "
    "5 --timeout passed (the job goes on); 130 interrupted."
)


def describe_failure(exc: BaseException, *, redis_url: str | None = None) -> tuple[int, str]:
    """The exit code and the one-line message for an error that ends a command."""
    text = redact_text(" ".join(str(exc).split())) or type(exc).__name__
    if isinstance(exc, SettingsError):
        return EXIT_CONFIG, f"configuration error: {text}"
    if isinstance(exc, Transient):  # before Redis's errors: an IndexUnavailable is one too, and says more
        return EXIT_UNAVAILABLE, f"unavailable for now, try again: {type(exc).__name__}: {text}"
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        where = f" at {redact_url(redis_url)}" if redis_url else ""
        return EXIT_UNAVAILABLE, f"cannot reach Redis{where}: {type(exc).__name__}: {text}"
    if isinstance(exc, JobTimeout):
        return EXIT_TIMEOUT, f"timeout: {text}"
    if isinstance(exc, LookupError):  # an unknown job id: the message says it all
        return EXIT_FAILED, f"error: {text}"
    return EXIT_FAILED, f"error: {type(exc).__name__}: {text}"


class ReportingGroup(TyperGroup):
    """Turns any error of a command into one line on stderr and a documented exit code."""

    def invoke(self, ctx: Any) -> Any:  # click's Context, as TyperGroup's
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as exc:
            settings = ctx.meta.get("settings")
            code, line = describe_failure(exc, redis_url=settings.redis_url if settings else None)
            if ctx.meta.get("debug"):
                traceback.print_exc()
            elif code == EXIT_FAILED and not isinstance(exc, (TransferError, LookupError)):
                line += " (run with --debug for the traceback)"
            if ctx.meta.get("json"):
                typer.echo(
                    json.dumps(
                        {"error": {"type": type(exc).__name__, "message": redact_text(str(exc)), "exit_code": code}}
                    )
                )
            typer.echo(line, err=True)
            raise typer.Exit(code) from None


app = typer.Typer(
    cls=ReportingGroup,
    name="paglets-artifacts",
    help="Artifact jobs for paglets hosts: enqueue and follow imports, exports, sweeps and owner "
    "deletions; look at the store; start workers, the scheduler and the HTTP API.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON (one document) for scripts.")]
WaitFlag = Annotated[bool, typer.Option("--wait", "-w", help="Follow the job with a progress bar until it ends.")]
TimeoutOpt = Annotated[
    float | None, typer.Option("--timeout", min=0.0, help="With --wait: give up after this many seconds (exit 5).")
]


def _doc(kind: contract.JobKind, argument: str) -> str:
    """The help of an option or argument that carries a job argument: its doc in the contract."""
    return kind.arguments[argument].doc


def _command_help(kind: contract.JobKind, note: str = "") -> str:
    """A job command's help: the kind's doc, and what the command adds to it."""
    return f"{kind.doc} {note}".strip()


# The job options several commands share; their docs are the same argument facts in each kind.
OwnerOpt = Annotated[str, typer.Option("--owner", help=_doc(contract.IMPORT, "owner_agent_id"))]
CompressionOpt = Annotated[str, typer.Option("--compression", help=_doc(contract.IMPORT, "compression"))]
ExpiresAtOpt = Annotated[float | None, typer.Option("--expires-at", help=_doc(contract.IMPORT, "expires_at"))]
ExpiresInOpt = Annotated[float | None, typer.Option("--expires-in", min=0.0, help="Expiry in seconds from now.")]
ShaOpt = Annotated[str | None, typer.Option("--sha256", help=_doc(contract.IMPORT, "expected_sha256"))]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--idempotency-key",
        help="A name for this request: run again with the same key (within the job retention time), "
        "it prints the job the first run enqueued instead of enqueueing another.",
    ),
]

CallbackOpt = Annotated[
    str | None,
    typer.Option(
        "--callback-url",
        help="POST the job's final record here, signed with PAGLETS_ARTIFACTS_CALLBACK_SECRET, once it ends "
        "(an http(s) URL under PAGLETS_ARTIFACTS_ALLOWED_HOSTS).",
    ),
]


def _stdout() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _stderr(quiet: bool = False) -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True, quiet=quiet)


def _emit_json(payload: Any) -> None:
    typer.echo(json.dumps(payload, sort_keys=True, default=str))


def _begin(ctx: typer.Context, as_json: bool = False) -> Settings:
    """Remember the output mode (errors use it) and read the configuration."""
    ctx.meta["json"] = as_json
    settings = Settings.from_env()
    ctx.meta["settings"] = settings
    return settings


def _expiry(expires_at: float | None, expires_in: float | None) -> float:
    if expires_at is not None and expires_in is not None:
        raise typer.BadParameter("give --expires-at or --expires-in, not both")
    if expires_in is not None:
        return time.time() + expires_in
    return expires_at or 0.0


@app.callback()
def root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error.")] = False,
) -> None:
    ctx.meta["debug"] = debug


# --------------------------------------------------------------------------- jobs


def _submit(
    ctx: typer.Context,
    enqueue: Callable[[ArtifactJobs], Job],
    *,
    wait: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Enqueue a job; print its id, or follow it and end with its report."""
    settings = _begin(ctx, as_json)
    with ArtifactJobs(settings=settings) as jobs:
        job = enqueue(jobs)
        if job.replayed:
            _stderr(quiet=as_json).print(
                views.Text("this idempotency key already holds this job: nothing new was enqueued", style="dim")
            )
        if not wait:
            if as_json:
                record = job.status()
                _emit_json({"id": job.id, "kind": record.kind, "state": record.state, "replayed": job.replayed})
            else:
                typer.echo(job.id)
                _stderr().print(views.Text(f"follow it with: paglets-artifacts jobs {job.id} --wait", style="dim"))
            return
        _follow_to_end(job, timeout=timeout, as_json=as_json)


def _follow_to_end(job: Job, *, timeout: float | None, as_json: bool) -> None:
    try:
        record = views.follow(job, _stderr(quiet=as_json), timeout=timeout)
    except KeyboardInterrupt:
        typer.echo(f"stopped waiting; job {job.id} goes on", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if as_json:
        _emit_json(record.to_wire())
    else:
        _stdout().print(views.job_report(record))
    if record.state in (FAILED, CANCELED):
        typer.echo(views.error_line(record), err=True)
        raise typer.Exit(EXIT_FAILED)


@app.command("import", help=_command_help(contract.IMPORT, "The worker reads it; the path is made absolute here."))
def import_(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help=_doc(contract.IMPORT, "path"))],
    owner: OwnerOpt = "",
    name: Annotated[str | None, typer.Option("--name", help=_doc(contract.IMPORT, "name"))] = None,
    compression: CompressionOpt = "",
    expires_at: ExpiresAtOpt = None,
    expires_in: ExpiresInOpt = None,
    sha256: ShaOpt = None,
    delete_source: Annotated[
        bool, typer.Option("--delete-source", help=_doc(contract.IMPORT, "delete_source"))
    ] = False,
    wait: WaitFlag = False,
    timeout: TimeoutOpt = None,
    as_json: JsonFlag = False,
    idempotency_key: KeyOpt = None,
    callback_url: CallbackOpt = None,
) -> None:
    expiry = _expiry(expires_at, expires_in)
    source = os.path.abspath(path)
    _submit(
        ctx,
        lambda jobs: jobs.import_file(
            source,
            owner_agent_id=owner,
            name=name,
            compression=compression,
            expires_at=expiry,
            expected_sha256=sha256,
            delete_source=delete_source,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
        ),
        wait=wait,
        timeout=timeout,
        as_json=as_json,
    )


@app.command("export", help=_command_help(contract.EXPORT))
def export(
    ctx: typer.Context,
    artifact_id: Annotated[str, typer.Argument(metavar="ID", help=_doc(contract.EXPORT, "artifact_id"))],
    target: Annotated[Path, typer.Argument(help=_doc(contract.EXPORT, "target"))],
    sha256: ShaOpt = None,
    move: Annotated[bool, typer.Option("--move", help=_doc(contract.EXPORT, "move"))] = False,
    wait: WaitFlag = False,
    timeout: TimeoutOpt = None,
    as_json: JsonFlag = False,
    idempotency_key: KeyOpt = None,
    callback_url: CallbackOpt = None,
) -> None:
    destination = os.path.abspath(target)
    _submit(
        ctx,
        lambda jobs: jobs.export(
            artifact_id,
            destination,
            expected_sha256=sha256,
            move=move,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
        ),
        wait=wait,
        timeout=timeout,
        as_json=as_json,
    )


@app.command("import-url", help=_command_help(contract.IMPORT_URL))
def import_url(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(help=_doc(contract.IMPORT_URL, "url"))],
    owner: OwnerOpt = "",
    name: Annotated[str | None, typer.Option("--name", help=_doc(contract.IMPORT_URL, "name"))] = None,
    compression: CompressionOpt = "",
    expires_at: ExpiresAtOpt = None,
    expires_in: ExpiresInOpt = None,
    sha256: ShaOpt = None,
    size: Annotated[int | None, typer.Option("--size", min=0, help=_doc(contract.IMPORT_URL, "expected_size"))] = None,
    wait: WaitFlag = False,
    timeout: TimeoutOpt = None,
    as_json: JsonFlag = False,
    idempotency_key: KeyOpt = None,
    callback_url: CallbackOpt = None,
) -> None:
    expiry = _expiry(expires_at, expires_in)
    _submit(
        ctx,
        lambda jobs: jobs.import_url(
            url,
            owner_agent_id=owner,
            name=name,
            compression=compression,
            expires_at=expiry,
            expected_sha256=sha256,
            expected_size=size,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
        ),
        wait=wait,
        timeout=timeout,
        as_json=as_json,
    )


@app.command("push", help=_command_help(contract.EXPORT_TO_HOST))
def push(
    ctx: typer.Context,
    artifact_id: Annotated[str, typer.Argument(metavar="ID", help=_doc(contract.EXPORT_TO_HOST, "artifact_id"))],
    host_url: Annotated[str, typer.Argument(help=_doc(contract.EXPORT_TO_HOST, "host_url"))],
    owner: Annotated[str | None, typer.Option("--owner", help=_doc(contract.EXPORT_TO_HOST, "owner_agent_id"))] = None,
    name: Annotated[str | None, typer.Option("--name", help=_doc(contract.EXPORT_TO_HOST, "name"))] = None,
    expires_at: Annotated[
        float | None, typer.Option("--expires-at", help=_doc(contract.EXPORT_TO_HOST, "expires_at"))
    ] = None,
    move: Annotated[bool, typer.Option("--move", help=_doc(contract.EXPORT_TO_HOST, "move"))] = False,
    wait: WaitFlag = False,
    timeout: TimeoutOpt = None,
    as_json: JsonFlag = False,
    idempotency_key: KeyOpt = None,
    callback_url: CallbackOpt = None,
) -> None:
    _submit(
        ctx,
        lambda jobs: jobs.export_to_host(
            artifact_id,
            host_url,
            owner_agent_id=owner,
            name=name,
            expires_at=expires_at,
            move=move,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
        ),
        wait=wait,
        timeout=timeout,
        as_json=as_json,
    )


@app.command("sweep", help=_command_help(contract.SWEEP))
def sweep(
    ctx: typer.Context,
    now: Annotated[float | None, typer.Option("--now", help=_doc(contract.SWEEP, "now"))] = None,
    wait: WaitFlag = False,
    timeout: TimeoutOpt = None,
    as_json: JsonFlag = False,
    idempotency_key: KeyOpt = None,
    callback_url: CallbackOpt = None,
) -> None:
    _submit(
        ctx,
        lambda jobs: jobs.sweep(now=now, idempotency_key=idempotency_key, callback_url=callback_url),
        wait=wait,
        timeout=timeout,
        as_json=as_json,
    )


@app.command("delete-owner", help=_command_help(contract.DELETE_OWNER))
def delete_owner(
    ctx: typer.Context,
    owner: Annotated[str, typer.Argument(metavar="OWNER", help=_doc(contract.DELETE_OWNER, "owner_agent_id"))],
    wait: WaitFlag = False,
    timeout: TimeoutOpt = None,
    as_json: JsonFlag = False,
    idempotency_key: KeyOpt = None,
    callback_url: CallbackOpt = None,
) -> None:
    _submit(
        ctx,
        lambda jobs: jobs.delete_owner(owner, idempotency_key=idempotency_key, callback_url=callback_url),
        wait=wait,
        timeout=timeout,
        as_json=as_json,
    )


@app.command("reindex", help=_command_help(contract.REINDEX))
def reindex(
    ctx: typer.Context,
    wait: WaitFlag = False,
    timeout: TimeoutOpt = None,
    as_json: JsonFlag = False,
    idempotency_key: KeyOpt = None,
    callback_url: CallbackOpt = None,
) -> None:
    _submit(
        ctx,
        lambda jobs: jobs.reindex(idempotency_key=idempotency_key, callback_url=callback_url),
        wait=wait,
        timeout=timeout,
        as_json=as_json,
    )


class _JobIdOrCommand(TyperGroup):
    """``jobs ID`` is ``jobs show ID``: a first word that names no subcommand is a job id."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["show", *args]
        return super().resolve_command(ctx, args)


jobs_app = typer.Typer(
    cls=_JobIdOrCommand,
    invoke_without_command=True,
    help="List recent jobs (jobs), show one (jobs ID), cancel or retry one.",
    epilog=EXIT_CODES_HELP,
)
app.add_typer(jobs_app, name="jobs")
JobIdArg = Annotated[str, typer.Argument(metavar="ID", help="Job id, or a prefix of it unique among recent jobs.")]


@jobs_app.callback()
def jobs_(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="How many recent jobs.")] = 20,
    kind: Annotated[str | None, typer.Option("--kind", help="Only jobs of this kind.")] = None,
    state: Annotated[JobState | None, typer.Option("--state", help="Only jobs in this state.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List recent jobs (failed ones with their error), or show one job (its progress, result or error)."""
    if ctx.invoked_subcommand is not None:
        return
    settings = _begin(ctx, as_json)
    with ArtifactJobs(settings=settings) as client:
        records = client.jobs(limit=limit, kind=kind, state=state.value if state else None)
        if as_json:
            _emit_json([record.to_wire() for record in records])
        elif records:
            _stdout().print(views.jobs_table(records))
        else:
            _stderr().print("no jobs")


@jobs_app.command("show")
def jobs_show(
    ctx: typer.Context,
    job_id: JobIdArg,
    wait: Annotated[bool, typer.Option("--wait", "-w", help="Follow the job until it ends.")] = False,
    timeout: TimeoutOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Show one job (also: jobs ID); exit code 1 when it failed or was canceled."""
    settings = _begin(ctx, as_json)
    with ArtifactJobs(settings=settings) as client:
        job = _find_job(client, job_id)
        if wait:
            _follow_to_end(job, timeout=timeout, as_json=as_json)
            return
        record = job.status()
        if as_json:
            _emit_json(record.to_wire())
        else:
            _stdout().print(views.job_report(record))
        if record.state in (FAILED, CANCELED):
            raise typer.Exit(EXIT_FAILED)


@jobs_app.command("cancel")
def jobs_cancel(
    ctx: typer.Context,
    job_id: JobIdArg,
    by: Annotated[str | None, typer.Option("--by", help="Who cancels (default user@host:pid).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Cancel a job: a queued one never starts, a running one stops and leaves nothing. A job
    that already ended is an error (exit code 1) and is left as it was."""
    settings = _begin(ctx, as_json)
    with ArtifactJobs(settings=settings) as client:
        record = _find_job(client, job_id).cancel(by=by)
    if as_json:
        _emit_json(record.to_wire())
    else:
        _stdout().print(views.job_report(record))


@jobs_app.command("retry")
def jobs_retry(
    ctx: typer.Context,
    job_id: JobIdArg,
    wait: WaitFlag = False,
    timeout: TimeoutOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Run a failed or canceled job again under its id (any other state: exit code 1)."""
    settings = _begin(ctx, as_json)
    with ArtifactJobs(settings=settings) as client:
        job = _find_job(client, job_id)
        record = job.retry()
        if wait:
            _follow_to_end(job, timeout=timeout, as_json=as_json)
        elif as_json:
            _emit_json({"id": record.id, "kind": record.kind, "state": record.state, "retries": record.retries})
        else:
            typer.echo(record.id)


dead_letters_app = typer.Typer(
    cls=TyperGroup,
    invoke_without_command=True,
    help="Messages Dramatiq gave up on (failed jobs, undecodable messages, unknown actors): "
    "list them, requeue or drop one.",
    epilog=EXIT_CODES_HELP,
)
app.add_typer(dead_letters_app, name="dead-letters")
LetterIdArg = Annotated[str, typer.Argument(metavar="ID", help="Dead letter id (as the list shows it).")]


@dead_letters_app.callback()
def dead_letters(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="How many, newest first.")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """List dead letters, newest first, with why each is there."""
    if ctx.invoked_subcommand is not None:
        return
    settings = _begin(ctx, as_json)
    with ArtifactJobs(settings=settings) as client:
        letters = client.dead_letters.list(limit=limit)
    if as_json:
        _emit_json([letter.to_wire() for letter in letters])
    elif letters:
        _stdout().print(views.dead_letters_table(letters))
    else:
        _stderr().print("no dead letters")


@dead_letters_app.command("requeue")
def dead_letters_requeue(ctx: typer.Context, letter_id: LetterIdArg, as_json: JsonFlag = False) -> None:
    """Queue a dead letter again (its job, if it has a record, as a retry); print the job id."""
    settings = _begin(ctx, as_json)
    with ArtifactJobs(settings=settings) as client:
        job_id = client.dead_letters.requeue(letter_id)
    if as_json:
        _emit_json({"id": job_id, "requeued": letter_id})
    else:
        typer.echo(job_id)


@dead_letters_app.command("drop")
def dead_letters_drop(ctx: typer.Context, letter_id: LetterIdArg, as_json: JsonFlag = False) -> None:
    """Remove a dead letter for good."""
    settings = _begin(ctx, as_json)
    with ArtifactJobs(settings=settings) as client:
        client.dead_letters.drop(letter_id)
    if as_json:
        _emit_json({"dropped": letter_id})
    else:
        _stdout().print(views.plain(f"dropped {letter_id}"))


def _find_job(client: ArtifactJobs, job_id: str) -> Job:
    """A job by id, or by a prefix of its id that only one recent job has (as tables show)."""
    try:
        return client.job(job_id)
    except LookupError:
        if not job_id or len(job_id) >= 36:
            raise
    matches = [record.id for record in client.jobs(limit=RECENT_JOBS_SEARCHED) if record.id.startswith(job_id)]
    if len(matches) > 1:
        raise LookupError(f"job id prefix {job_id!r} is ambiguous: {', '.join(matches[:5])}")
    if not matches:
        raise LookupError(f"no job {job_id!r} (unknown, or its record expired)")
    return client.job(matches[0])


# --------------------------------------------------------------------------- the store


def _open_store(settings: Settings) -> Any:
    from ..store.artifacts import ArtifactStore

    return ArtifactStore.from_settings(settings, redis=connect(settings))


@app.command("list")
def list_(
    ctx: typer.Context,
    owner: Annotated[str | None, typer.Option("--owner", help="Only this owner's artifacts.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List the artifacts in the store (read directly from the store directory)."""
    settings = _begin(ctx, as_json)
    store = _open_store(settings)
    refs = store.list(owner_agent_id=owner)
    if as_json:
        _emit_json([ref.to_wire() for ref in refs])
        return
    out = _stdout()
    if refs:
        out.print(views.artifacts_table(refs))
    total = sum(ref.size_bytes for ref in refs)
    quota = "no quota" if settings.quota_bytes is None else f"quota {views.human_bytes(settings.quota_bytes)}"
    out.print(views.plain(f"{len(refs)} artifact(s), {views.human_bytes(total)} ({quota}) in {store.root}"))


@app.command("info")
def info(
    ctx: typer.Context,
    artifact_id: Annotated[str, typer.Argument(metavar="ID", help="Artifact id.")],
    as_json: JsonFlag = False,
) -> None:
    """Show one artifact's metadata and where its blob lies."""
    settings = _begin(ctx, as_json)
    store = _open_store(settings)
    ref = store.ref(artifact_id)
    blob = store.blob_path(artifact_id)
    if as_json:
        _emit_json({**ref.to_wire(), "blob_path": str(blob)})
        return
    _stdout().print(views.ref_report(ref, {"blob_path": str(blob)}))


@app.command("rm")
def rm(
    ctx: typer.Context,
    artifact_id: Annotated[str, typer.Argument(metavar="ID", help="Artifact id.")],
    as_json: JsonFlag = False,
) -> None:
    """Delete one artifact from the store, here and now (not through a job)."""
    settings = _begin(ctx, as_json)
    store = _open_store(settings)
    store.ref(artifact_id)  # unknown ids are an error, not a silent no-op
    freed = store.remove(artifact_id)
    if as_json:
        _emit_json({"artifact_id": artifact_id, "removed": True, "bytes_freed": freed})
        return
    _stdout().print(views.plain(f"removed {artifact_id} ({views.human_bytes(freed)} freed)"))


# --------------------------------------------------------------------------- processes

_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def _exec(args: list[str], env: dict[str, str]) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(args[0], args, env)


@app.command("worker", context_settings=_PASSTHROUGH)
def worker(
    ctx: typer.Context,
    processes: Annotated[int | None, typer.Option("--processes", "-p", min=1, help="Worker processes.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", "-t", min=1, help="Threads per process.")] = None,
    queues: Annotated[
        list[str] | None,
        typer.Option(
            "--queues", "-Q", help="Only these queues (artifact-transfers, artifact-maintenance); repeatable."
        ),
    ] = None,
) -> None:
    """Start Dramatiq workers (python -m dramatiq workers.registry); other options pass through.

    An idle worker process polls each queue every 100 ms at most, about 50 Redis calls a
    second in all (``dramatiq_worker_timeout``, in ms, when set, chooses another interval).
    """
    _begin(ctx)
    command = WorkerProcess(processes=processes, threads=threads, queues=queues or (), options=ctx.args)
    _exec(command.argv(), command.exec_env())


@app.command("scheduler", context_settings=_PASSTHROUGH)
def scheduler(ctx: typer.Context) -> None:
    """Start the scheduler (python -m workers.scheduler): periodic sweeps and reindexing."""
    _begin(ctx)
    if not scheduler_available():
        raise RuntimeError("the scheduler (workers.scheduler) is not installed")
    _exec([sys.executable, "-m", "workers.scheduler", *ctx.args], dict(os.environ))


@app.command("serve")
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int | None, typer.Option("--port", min=0, max=65535, help="Port (default: PAGLETS_ARTIFACTS_HOST_URL's).")
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Serve on a non-loopback address without an API key (PAGLETS_ARTIFACTS_ALLOW_INSECURE=1).",
        ),
    ] = False,
) -> None:
    """Serve the HTTP API (paglets' /artifacts routes and job endpoints).

    Beyond loopback it needs PAGLETS_ARTIFACTS_API_KEY, or --insecure (logged as a warning).
    """
    settings = _begin(ctx)
    if insecure:
        settings = settings.with_changes(allow_insecure=True)
    try:
        from ..http.server import serve as serve_http
    except ModuleNotFoundError as exc:
        if exc.name != "paglets_artifacts.http.server":
            raise
        raise RuntimeError("the HTTP API (paglets_artifacts.http.server) is not installed") from None
    if port is None:
        parts = urlsplit(settings.host_url)
        port = parts.port or (443 if parts.scheme == "https" else 8470)
    configure_logging(settings, keep_existing=True)  # uvicorn sets up its own loggers, not ours
    serve_http(settings, host, port)


@app.command("paglets-host")
def paglets_host(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", "-n", help="Host name, e.g. alpha.")],
    host: Annotated[str, typer.Option("--host", help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="Port (0: any free one).")] = 8765,
    api_key_env: Annotated[
        str, typer.Option("--api-key-env", help="Environment variable holding the host's API key.")
    ] = "PAGLETS_API_KEY",
    persistence_dir: Annotated[
        Path | None,
        typer.Option(
            "--persistence-dir",
            help="The host's directory (artifacts/ and work/ below it); default paglets' ~/.paglets/hosts/NAME.",
        ),
    ] = None,
    max_size: Annotated[
        int | None,
        typer.Option(
            "--artifact-max-size",
            min=0,
            help="Largest artifact in bytes (default PAGLETS_ARTIFACTS_MAX_ARTIFACT_BYTES).",
        ),
    ] = None,
    quota: Annotated[
        int | None,
        typer.Option(
            "--artifact-storage-quota", min=0, help="Bytes the store may hold (default PAGLETS_ARTIFACTS_QUOTA_BYTES)."
        ),
    ] = None,
    spool_ttl: Annotated[
        float | None,
        typer.Option(
            "--artifact-spool-ttl",
            min=1.0,
            help="Age of a stale .part in seconds (default PAGLETS_ARTIFACTS_SPOOL_TTL_SECONDS).",
        ),
    ] = None,
    mesh: Annotated[bool, typer.Option("--mesh/--no-mesh", help="paglets' host mesh discovery.")] = True,
    peer: Annotated[list[str] | None, typer.Option("--peer", help="Peer host URL to join; repeatable.")] = None,
    public_url: Annotated[str | None, typer.Option("--public-url", help="Externally reachable base URL.")] = None,
    keep_on_dispose: Annotated[
        bool, typer.Option("--keep-on-dispose", help="Keep a disposed paglet's artifacts (no delete_owner job).")
    ] = False,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Listen beyond loopback without an API key (logged as a warning).")
    ] = False,
) -> None:
    """Run a real paglets host with offloading attached: its artifact work runs as jobs."""
    settings = _begin(ctx)
    try:
        from ..paglets_host import run_host
    except ImportError as exc:
        raise RuntimeError(str(exc)) from None
    changes: dict[str, Any] = {}
    if max_size is not None:
        changes["max_artifact_bytes"] = max_size
    if quota is not None:
        changes["quota_bytes"] = quota
    if spool_ttl is not None:
        changes["spool_ttl_seconds"] = spool_ttl
    if insecure:
        changes["allow_insecure"] = True
    api_key = os.environ.get(api_key_env) or None
    if api_key_env != "PAGLETS_API_KEY" and not api_key:
        raise typer.BadParameter(f"{api_key_env} is not set or is empty", param_hint="--api-key-env")

    def started(running: Any, offloading: Any) -> None:
        _stdout().print(
            Text(
                f"paglets host {running.name!r} listening at {running.address}, offloading to Redis "
                f"{redact_url(settings.redis_url)} (namespace {settings.namespace}, store {offloading.store.root})"
            )
        )

    run_host(
        settings.with_changes(**changes),
        name=name,
        bind=host,
        port=port,
        api_key=api_key,
        persistence_dir=persistence_dir.expanduser().resolve() if persistence_dir else None,
        mesh=mesh,
        peers=peer,
        public_url=public_url,
        delete_on_dispose=not keep_on_dispose,
        on_started=started,
        # set explicitly, the store root must be the host's own (offloading checks); else it is
        adopt_store_root=not os.environ.get(PREFIX + "STORE_ROOT"),
    )


@app.command("demo")
def demo(
    ctx: typer.Context,
    size_mib: Annotated[int, typer.Option("--size-mib", min=1, help="Size of the generated file in MiB.")] = 256,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the demo's directory (the path is printed).")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Run the whole pipeline here: Redis, a worker, the scheduler; import, export, owner deletion, sweep."""
    _begin(ctx, as_json)
    from .demo import Demo

    report = Demo(size_mib=size_mib, keep=keep, console=_stderr() if as_json else _stdout()).run()
    if as_json:
        _emit_json(report)


# --------------------------------------------------------------------------- configuration


@app.command("config")
def config(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Show every configuration variable with its value here (secrets masked)."""
    settings = _begin(ctx, as_json)
    values = settings.redacted().to_env()
    rows = [(var, values[var], var in os.environ, doc) for var, _default, doc in Settings.documented()]
    if as_json:
        _emit_json({var: value for var, value, _set, _doc in rows})
        return
    from rich.table import Table

    table = Table(title="configuration")
    for column in ("variable", "value", "from", "meaning"):
        table.add_column(column, overflow="fold")
    for var, value, is_set, doc in rows:
        table.add_row(var, views.plain(value), "environment" if is_set else "default", doc)
    _stdout().print(table)


@app.command("check")
def check(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Check the configuration, that Redis answers and that the store is writable (a health check)."""
    settings = _begin(ctx, as_json)
    client = connect(settings)
    try:
        client.ping()
    finally:
        client.close()
    store = _open_store(settings)
    probe = store.tmp_dir / f".check-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()
    if as_json:
        _emit_json({"ok": True, "redis_url": redact_url(settings.redis_url), "store_root": str(store.root)})
        return
    _stdout().print(
        views.plain(f"ok: Redis at {redact_url(settings.redis_url)} answers; store {store.root} is writable")
    )


def main() -> None:
    """The console script."""
    app(prog_name="paglets-artifacts")


__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "app",
    "main",
]

if __name__ == "__main__":
    main()
