"""The long fault-injection suite: workers killed with SIGKILL at random points of every job kind.

    .venv/bin/python benchmarks/stress.py --runs 50 [--seed N] [--keep DIR]

Each run seeds a fresh store (artifacts to export, an owner to delete, expired artifacts,
stale ``.part`` files and interrupted commits for the sweep, bystanders nobody may touch),
enqueues a workload of every job kind (imports, one of them moving its source in, exports,
one of them a move, a sweep, an owner deletion), and kills the worker once with SIGKILL
while a job of the run's target kind runs. Two ways, alternating:

- ``step``: the worker kills its own process group just before the N-th file-system step
  (a write or kernel copy, ``os.replace``, ``os.rename``, ``os.link``, ``os.unlink``, and
  ``os.fsync`` for a store with fsync on) of a job of that kind, N drawn
  at random: every point between two steps of a commit, a deletion or a sweep is reachable;
- ``signal``: the suite sends SIGKILL from outside a random few milliseconds after a job of
  that kind reported ``running``.

A clean worker then finishes the work (the broker redelivers what the dead one held), a
final sweep runs, and the run checks: every job ended ``succeeded`` or ``failed`` with a
reason; exactly the expected artifacts exist (no duplicate, nothing lost, every blob's
SHA-256 matches its metadata); no ``.part`` file or orphan is left; the quota figure
(``store.index.used_bytes()``) equals the sum of the blobs; export targets hold the right
bytes. The table lists each run, what was injected and what was lost: it must be nothing.

Uses ``REDIS_URL`` when set (in its own namespaces), else an embedded Redis. A worker
started by this suite imports this module (``dramatiq workers.registry benchmarks.stress``), which is
how the ``step`` crash point gets into the worker process.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from paglets_artifacts import ArtifactJobs, ArtifactStore, Settings  # noqa: E402
from paglets_artifacts.jobs.records import FINAL_STATES  # noqa: E402
from paglets_artifacts.jobs.worker_process import WorkerProcess  # noqa: E402
from paglets_artifacts.redis_client import connect_redis  # noqa: E402
from paglets_artifacts.redis_server import delete_namespace  # noqa: E402

#: The job kinds a crash can target.
KINDS = ("import", "export", "sweep", "delete_owner")
#: The two ways a crash is injected.
MODES = ("step", "signal")
#: Environment of a worker that must crash: the kind, and the step before which it dies.
CRASH_KIND_ENV = "PAGLETS_STRESS_CRASH_KIND"
CRASH_STEP_ENV = "PAGLETS_STRESS_CRASH_STEP"
#: The file-system calls counted as steps (pathlib's unlink goes through os.unlink too;
#: a kernel-side copy writes through copy_file_range or sendfile instead of write; fsync,
#: made only with fsync on, reaches the points between a commit's renames and its index update).
STEP_CALLS = tuple(
    name
    for name in (
        "write",
        "pwrite",
        "writev",
        "copy_file_range",
        "sendfile",
        "replace",
        "rename",
        "link",
        "unlink",
        "fsync",
    )
    if hasattr(os, name)
)
#: Longest delay (s) between a job's start and the SIGKILL in ``signal`` mode: about as long
#: as such a job runs here, so most kills land while it runs.
SIGNAL_WINDOW = {"import": 0.03, "export": 0.02, "sweep": 0.06, "delete_owner": 0.06}

MiB = 1024 * 1024


# --------------------------------------------------------------------- in the worker process


def install_crash_point(kind: str, step: str) -> None:
    """SIGKILL this worker's whole process group just before the ``step``-th file-system
    call made while a job of ``kind`` runs: ``"7"`` counts every call of ``STEP_CALLS``,
    ``"unlink:2"`` only the calls of one of them (a point that does not move when the way
    bytes are copied changes).

    The worker runs one thread, so every call made meanwhile (the store's copy threads
    included) belongs to that job. A middleware tells which messages are running.
    """
    import dramatiq

    from paglets_artifacts.jobs.contract import KINDS_BY_ACTOR

    only, _, number = step.rpartition(":")
    target = int(number)
    running: set[str] = set()
    lock = threading.Lock()
    calls = [0]

    class CrashPoint(dramatiq.Middleware):
        def before_process_message(self, broker: Any, message: Any) -> None:
            job_kind = KINDS_BY_ACTOR.get(message.actor_name)
            if job_kind is not None and job_kind.name == kind:
                running.add(message.message_id)

        def after_process_message(
            self, broker: Any, message: Any, *, result: Any = None, exception: Any = None
        ) -> None:
            running.discard(message.message_id)

        def after_skip_message(self, broker: Any, message: Any) -> None:
            running.discard(message.message_id)

    def counted(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            if running:
                with lock:
                    calls[0] += 1
                    if calls[0] == target:
                        os.killpg(os.getpgrp(), signal.SIGKILL)
            return fn(*args, **kwargs)

        return call

    dramatiq.get_broker().add_middleware(CrashPoint())
    for name in STEP_CALLS:
        if not only or name == only:
            setattr(os, name, counted(getattr(os, name)))


def count_steps(fn: Callable[[], Any]) -> int:
    """How many file-system steps ``fn`` makes (in this process; used to size crash points)."""
    calls = [0]
    originals = {name: getattr(os, name) for name in STEP_CALLS}

    def counted(original: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            return original(*args, **kwargs)

        return call

    try:
        for name, original in originals.items():
            setattr(os, name, counted(original))
        fn()
    finally:
        for name, original in originals.items():
            setattr(os, name, original)
    return calls[0]


if __name__ != "__main__" and os.environ.get(CRASH_KIND_ENV):
    install_crash_point(os.environ[CRASH_KIND_ENV], os.environ.get(CRASH_STEP_ENV, "1"))


# --------------------------------------------------------------------- worker processes


def start_worker(
    settings: Settings,
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    threads: int = 2,
    queues: tuple[str, ...] = (),
) -> subprocess.Popen:
    """A real worker process loading this module (in its own session, so one signal kills it all);
    ``queues`` limits it to those queues."""
    command = WorkerProcess(
        settings=settings,
        processes=1,
        threads=threads,
        queues=queues,
        modules=["benchmarks.stress"],
        pythonpath=[ROOT],
        extra_env=env,
    )
    with open(log_path, "ab") as log:
        return command.start(stdout=log, cwd=ROOT)


def kill_worker(process: subprocess.Popen) -> None:
    """SIGKILL the worker's process group, as a crash of the machine's worker would."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


def stop_worker(process: subprocess.Popen) -> None:
    """Stop a worker gracefully (SIGTERM), or kill it after 15 s."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            kill_worker(process)
        except ProcessLookupError:
            pass
    process.wait(timeout=30)


# --------------------------------------------------------------------- one run


@dataclass(frozen=True)
class Plan:
    """What one run injects.

    Parameters:
      run(int): the run's number.
      seed(int): seeds the workload's sizes and order and the crash point.
      kind(str): the job kind the crash targets (one of ``KINDS``).
      mode(str): ``step`` or ``signal`` (see the module docstring).
    """

    run: int
    seed: int
    kind: str
    mode: str


@dataclass
class Outcome:
    """What one run did and found."""

    plan: Plan
    injected: str = ""
    jobs: int = 0
    succeeded: int = 0
    failed: list[str] = field(default_factory=list)
    redeliveries: int = 0
    parts_swept: int = 0
    target_litter: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        """Nothing lost and every invariant held."""
        return not self.lost and not self.problems


@dataclass
class _Job:
    id: str
    kind: str
    spec: dict[str, Any]


def plans(runs: int, seed: int) -> list[Plan]:
    """``runs`` plans cycling through every (kind, mode) pair, each with its own seed."""
    rng = random.Random(seed)
    pairs = [(kind, mode) for mode in MODES for kind in KINDS]
    return [Plan(i + 1, rng.randrange(1 << 30), *pairs[i % len(pairs)]) for i in range(runs)]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


class CrashRun:
    """One run: seed a store, enqueue every kind of job, crash a worker once, finish with
    a clean worker, sweep, check every invariant.

    Parameters:
      settings(Settings): this run's Redis, namespace, store root and allowed root
        (``allowed_roots[0]``, where sources and export targets live).
      plan(Plan): what to inject.
      log_dir(Path): where the workers' output goes.
      timeout(float): how long the jobs may take after the crash.
    """

    def __init__(self, settings: Settings, plan: Plan, log_dir: Path, *, timeout: float = 120.0):
        self.settings = settings
        self.plan = plan
        self.log_dir = log_dir
        self.timeout = timeout
        self.rng = random.Random(plan.seed)
        self.files = Path(settings.allowed_roots[0])
        self.client = connect_redis(settings)
        self.jobs = ArtifactJobs(client=self.client, settings=settings)
        self.store = ArtifactStore.from_settings(settings, redis=self.client)
        self.seeded: dict[str, dict[str, Any]] = {}  # artifact id -> role, sha, owner
        self.planned: list[_Job] = []
        self.steps: dict[str, int] = dict.fromkeys(KINDS, 0)  # estimated file-system steps per kind

    # ---------------------------------------------------------------- the workload

    def _seed_artifact(self, role: str, size: int, **options: Any) -> str:
        data = self.rng.randbytes(size)
        ref = self.store.create_from_stream(io.BytesIO(data), size_bytes=size, **options).ref
        self.seeded[ref.artifact_id] = {"role": role, "sha": _sha(data), "owner": ref.owner_agent_id}
        return ref.artifact_id

    def seed(self) -> None:
        rng = self.rng
        for i in range(3):
            self._seed_artifact("bystander", rng.randint(1, 64 * 1024), owner_agent_id="bystander", name=f"b{i}")
        for i in range(120):
            self._seed_artifact("doomed", rng.randint(1, 8192), owner_agent_id="doomed", name=f"d{i}")
        for _ in range(120):
            self._seed_artifact("expiring", rng.randint(1, 8192), owner_agent_id="expiring", expires_at=1.0)
        self.steps["delete_owner"] = 2 * 120
        self.steps["sweep"] = 2 * 120
        for _ in range(8):  # stale uploads
            part = self.store.layout.part(uuid.uuid4().hex)
            part.write_bytes(rng.randbytes(1024))
            os.utime(part, (0, 0))
        for _ in range(2):  # commits interrupted between the blob and the metadata rename
            artifact_id = uuid.uuid4().hex
            self.store.layout.blob(artifact_id).write_bytes(rng.randbytes(2048))
            staged = self.store.layout.staged_metadata(artifact_id)
            staged.write_text("{}")
            os.utime(staged, (0, 0))
        self.steps["sweep"] += 8 + 2 * 2

        # A scratch store beside the real one measures how many steps each transfer makes.
        scratch = ArtifactStore(
            self.store.root.parent / "calibration" / "store",
            host_url="http://scratch",
            quota_bytes=None,
            fsync=self.store.fsync,
        )
        exports = []
        for i in range(3):
            size = rng.randint(1, 12) * MiB + rng.randint(0, 4095)
            artifact_id = self._seed_artifact("export-source", size, owner_agent_id="exports", name=f"e{i}")
            move = i == 0
            target = self.files / "out" / f"export-{i}.bin"
            exports.append(_Job("", "export", {"artifact_id": artifact_id, "target": str(target), "move": move}))
            with self.store.open_reader(artifact_id) as reader:
                copy = scratch.create_from_stream(reader, size_bytes=size).ref.artifact_id
            self.steps["export"] += count_steps(
                lambda copy=copy: scratch.export_to_path(copy, scratch.root.parent / "out.bin", part_token=copy)
            ) + (2 if move else 0)

        imports = []
        for i in range(4):
            size = rng.randint(1, 24) * MiB + rng.randint(0, 4095)
            source = self.files / "in" / f"source-{i}.bin"
            source.parent.mkdir(parents=True, exist_ok=True)
            data = rng.randbytes(size)
            source.write_bytes(data)
            delete_source = i == 0  # same filesystem: hashed in place and renamed in
            imports.append(
                _Job(
                    "",
                    "import",
                    {
                        "path": str(source),
                        "owner": f"importer-{i}",
                        "delete_source": delete_source,
                        "sha": _sha(data),
                        "size": size,
                    },
                )
            )
            twin = scratch.root.parent / f"source-{i}.bin"
            twin.write_bytes(data)
            self.steps["import"] += count_steps(
                lambda twin=twin, delete_source=delete_source: scratch.create_from_path(
                    twin, artifact_id=uuid.uuid4().hex, delete_source=delete_source
                )
            )
        shutil.rmtree(scratch.root.parent)

        work = imports + exports + [_Job("", "sweep", {}), _Job("", "delete_owner", {"owner": "doomed"})]
        rng.shuffle(work)
        self.planned = work

    def enqueue(self) -> None:
        for job in self.planned:
            spec = job.spec
            if job.kind == "import":
                handle = self.jobs.import_file(
                    spec["path"], owner_agent_id=spec["owner"], delete_source=spec["delete_source"]
                )
            elif job.kind == "export":
                handle = self.jobs.export(spec["artifact_id"], spec["target"], move=spec["move"])
            elif job.kind == "sweep":
                handle = self.jobs.sweep()
            else:
                handle = self.jobs.delete_owner(spec["owner"])
            job.id = handle.id

    # ---------------------------------------------------------------- the crash

    def execute(self) -> Outcome:
        """Run the whole plan; return what happened and what the checks found."""
        started = time.monotonic()
        outcome = Outcome(self.plan)
        workers: list[subprocess.Popen] = []
        try:
            self.seed()
            self.enqueue()
            outcome.jobs = len(self.planned)
            if self.plan.mode == "step":
                outcome.injected = self._crash_at_step(workers)
            else:
                outcome.injected = self._crash_by_signal(workers)
            if workers[-1].poll() is not None:
                workers.append(start_worker(self.settings, self.log_dir / "worker.log"))
            self._wait_for_jobs(outcome)
            outcome.parts_swept = len(list(self.store.tmp_dir.glob("*.part")))
            # Every .part made stale: a sweep judges them by the real clock, not by its ``now``.
            stale = time.time() - self.settings.spool_ttl_seconds - 1
            for part in self.store.tmp_dir.iterdir():
                os.utime(part, (stale, stale), follow_symlinks=False)
            self.jobs.sweep().wait(self.timeout)
            self._check(outcome)
        except Exception as exc:  # a harness failure is a finding too: report it, never hide it
            outcome.problems.append(f"run aborted: {type(exc).__name__}: {exc}")
        finally:
            for process in workers:  # every job has ended (or the run failed): no need to wait
                kill_worker(process)
            outcome.seconds = time.monotonic() - started
        return outcome

    def _crash_at_step(self, workers: list[subprocess.Popen]) -> str:
        kind = self.plan.kind
        step = self.rng.randint(1, max(1, self.steps[kind]))
        env = {CRASH_KIND_ENV: kind, CRASH_STEP_ENV: str(step)}
        first = start_worker(self.settings, self.log_dir / "worker.log", env=env, threads=1)
        workers.append(first)
        deadline = time.monotonic() + self.timeout
        while first.poll() is None:
            if self._all_done() or time.monotonic() > deadline:
                stop_worker(first)
                return f"none: step {step} of ~{self.steps[kind]} {kind} steps not reached"
            time.sleep(0.02)
        return f"SIGKILL before {kind} step {step}/~{self.steps[kind]}"

    def _crash_by_signal(self, workers: list[subprocess.Popen]) -> str:
        kind = self.plan.kind
        ids = {job.id for job in self.planned if job.kind == kind}
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self.jobs.records.channel)
        try:
            first = start_worker(self.settings, self.log_dir / "worker.log")
            workers.append(first)
            deadline = time.monotonic() + self.timeout
            victim = None
            while victim is None and time.monotonic() < deadline:
                message = pubsub.get_message(timeout=0.5)
                if message and message.get("type") == "message":
                    event = json.loads(message["data"])
                    if event.get("id") in ids and event.get("state") == "running":
                        victim = event["id"]
            if victim is None:
                return f"none: no {kind} job started"
            delay = self.rng.uniform(0.0, SIGNAL_WINDOW[kind])
            time.sleep(delay)
            kill_worker(first)
            record = self.jobs.records.get(victim)
            where = f"{record.state}, {record.bytes_done}/{record.bytes_total} B" if record else "no record"
            return f"SIGKILL {delay * 1000:.0f} ms after {kind} {victim[:8]} started ({where})"
        finally:
            pubsub.close()

    def _all_done(self) -> bool:
        for job in self.planned:
            record = self.jobs.records.get(job.id)
            if record is None or not record.done:
                return False
        return True

    def _wait_for_jobs(self, outcome: Outcome) -> None:
        deadline = time.monotonic() + self.timeout
        while not self._all_done():
            if time.monotonic() > deadline:
                for job in self.planned:
                    record = self.jobs.records.get(job.id)
                    if record is None or not record.done:
                        state = record.state if record else "no record"
                        outcome.problems.append(f"{job.kind} job {job.id[:8]} never ended ({state})")
                return
            time.sleep(0.05)

    # ---------------------------------------------------------------- the checks

    def _check(self, outcome: Outcome) -> None:
        store = self.store
        done: dict[str, bool] = {}
        for job in self.planned:
            record = self.jobs.records.get(job.id)
            if record is None or record.state not in FINAL_STATES:
                done[job.id] = False
                continue
            outcome.redeliveries += max(0, record.attempts - 1)
            ok = record.state == "succeeded"
            done[job.id] = ok
            if ok:
                outcome.succeeded += 1
            else:
                error = record.error or {}
                if not error.get("type") or not error.get("message"):
                    outcome.problems.append(f"{job.kind} job {job.id[:8]} failed without a reason: {error}")
                outcome.failed.append(f"{job.kind}: {error.get('type')}: {error.get('message')}")

        metas = set(store.layout.metadata_files())
        blobs = set(store.layout.blobs())
        for artifact_id in sorted(blobs - metas):
            outcome.problems.append(f"orphan blob {artifact_id[:8]} left after the sweep")
        for artifact_id in sorted(metas - blobs):
            outcome.problems.append(f"metadata without blob {artifact_id[:8]}")
        leftovers = sorted(p.name for p in store.tmp_dir.iterdir())
        if leftovers:
            outcome.problems.append(f"left in tmp/ after the sweep: {leftovers[:5]}")

        present = metas & blobs
        expected: dict[str, str] = {}  # id -> sha
        sweep_ok = any(done.get(j.id) for j in self.planned if j.kind == "sweep")
        deletion_ok = any(done.get(j.id) for j in self.planned if j.kind == "delete_owner")
        moved = {
            j.spec["artifact_id"] for j in self.planned if j.kind == "export" and j.spec["move"] and done.get(j.id)
        }
        for artifact_id, seed in self.seeded.items():
            role = seed["role"]
            if role == "doomed" and deletion_ok:
                if artifact_id in present:
                    outcome.problems.append(f"artifact {artifact_id[:8]} of the deleted owner survived")
                continue
            if role == "expiring" and sweep_ok:
                if artifact_id in present:
                    outcome.problems.append(f"expired artifact {artifact_id[:8]} survived the sweep")
                continue
            if artifact_id in moved:
                if artifact_id in present:
                    outcome.problems.append(f"moved artifact {artifact_id[:8]} still in the store")
                continue
            expected[artifact_id] = seed["sha"]

        for job in self.planned:
            spec = job.spec
            if job.kind == "import":
                artifact_id = uuid.UUID(job.id).hex
                source = Path(spec["path"])
                if done.get(job.id):
                    expected[artifact_id] = spec["sha"]
                    if spec["delete_source"] and source.exists():
                        outcome.problems.append(f"import {job.id[:8]} succeeded but kept its source")
                else:
                    if artifact_id in present:
                        outcome.problems.append(f"failed import {job.id[:8]} left its artifact")
                    if not source.exists():
                        outcome.lost.append(f"source of failed import {job.id[:8]} is gone")
            elif job.kind == "export" and done.get(job.id):
                target = Path(spec["target"])
                want = self.seeded[spec["artifact_id"]]["sha"]
                if not target.is_file() or _file_sha(target) != want:
                    outcome.lost.append(f"export {job.id[:8]} succeeded but {target.name} is missing or wrong")

        for artifact_id, sha in expected.items():
            if artifact_id not in present:
                outcome.lost.append(f"artifact {artifact_id[:8]} is gone")
            elif _file_sha(store.layout.blob(artifact_id)) != sha:
                outcome.lost.append(f"artifact {artifact_id[:8]} has the wrong bytes")
        for artifact_id in sorted(present - set(expected)):
            outcome.problems.append(f"unexpected artifact {artifact_id[:8]} (a duplicate?)")

        blob_bytes = store.layout.blob_bytes()
        used = store.index.used_bytes()
        if used != blob_bytes:
            outcome.problems.append(f"quota figure {used} B != {blob_bytes} B of blobs")
        indexed = set(store.index.all_ids())
        if indexed != present:
            outcome.problems.append(
                f"index holds {len(indexed)} ids, disk {len(present)} (extra {sorted(indexed - present)[:3]}, "
                f"missing {sorted(present - indexed)[:3]})"
            )
        outcome.target_litter = sorted(str(p.relative_to(self.files)) for p in self.files.rglob(".*.part"))

    def close(self) -> None:
        self.jobs.close()


def run_one(plan: Plan, *, redis_url: str, base: Path, timeout: float = 120.0) -> Outcome:
    """Run ``plan`` in its own namespace and directory under ``base``; remove its Redis keys after."""
    work = base / f"run-{plan.run:03d}"
    files = work / "files"
    files.mkdir(parents=True)
    namespace = f"stress-{uuid.uuid4().hex[:10]}"
    settings = Settings(
        redis_url=redis_url,
        namespace=namespace,
        store_root=work / "store",
        host_url="http://127.0.0.1:8470",
        allowed_roots=(files.resolve(),),
        fsync=False,
        quota_bytes=None,
        heartbeat_timeout_ms=2000,
        maintenance_chance=1_000_000,
        min_backoff_ms=100,
        max_backoff_ms=1000,
        progress_every_bytes=MiB,
    )
    run = CrashRun(settings, plan, work, timeout=timeout)
    try:
        return run.execute()
    finally:
        run.close()
        client = connect_redis(Settings(redis_url=redis_url))
        delete_namespace(client, namespace)
        client.close()


# --------------------------------------------------------------------- the report


def table(outcomes: list[Outcome]) -> str:
    """The runs as a text table: what was injected, how the jobs ended, what was lost."""
    lines = [
        f"{'run':>3}  {'target':<12} {'mode':<6} {'jobs':>4} {'ok':>3} {'fail':>4} {'redeliv':>7} "
        f"{'parts':>5} {'lost':>4} {'probs':>5} {'s':>5}  injected",
    ]
    for o in outcomes:
        lines.append(
            f"{o.plan.run:>3}  {o.plan.kind:<12} {o.plan.mode:<6} {o.jobs:>4} {o.succeeded:>3} {len(o.failed):>4} "
            f"{o.redeliveries:>7} {o.parts_swept:>5} {len(o.lost):>4} {len(o.problems):>5} {o.seconds:>5.1f}  "
            f"{o.injected}"
        )
        for item in o.failed + o.lost + o.problems:
            lines.append(f"{'':>5}! {item}")
        if o.target_litter:
            lines.append(f"{'':>5}~ left in export target directories: {', '.join(o.target_litter)}")
    return "\n".join(lines)


def breakdown(outcomes: list[Outcome]) -> str:
    """Runs grouped by target kind and way of injection."""
    lines = [
        f"{'target':<12} {'mode':<6} {'runs':>4} {'kills':>5} {'in job':>6} {'jobs ok':>7} {'failed':>6} "
        f"{'redeliv':>7} {'lost':>4} {'probs':>5}"
    ]
    for mode in MODES:
        for kind in KINDS:
            group = [o for o in outcomes if o.plan.kind == kind and o.plan.mode == mode]
            if not group:
                continue
            lines.append(
                f"{kind:<12} {mode:<6} {len(group):>4} {sum(o.injected.startswith('SIGKILL') for o in group):>5} "
                f"{sum(_hit_a_running_job(o) for o in group):>6} {sum(o.succeeded for o in group):>7} "
                f"{sum(len(o.failed) for o in group):>6} {sum(o.redeliveries for o in group):>7} "
                f"{sum(len(o.lost) for o in group):>4} {sum(len(o.problems) for o in group):>5}"
            )
    return "\n".join(lines)


def _hit_a_running_job(outcome: Outcome) -> bool:
    """Whether the kill landed inside a job of the target kind (always so for a step kill)."""
    return outcome.injected.startswith("SIGKILL before") or "(running" in outcome.injected


def summary(outcomes: list[Outcome]) -> str:
    kills = sum(1 for o in outcomes if o.injected.startswith("SIGKILL"))
    by_kind = {
        kind: sum(1 for o in outcomes if o.plan.kind == kind and o.injected.startswith("SIGKILL")) for kind in KINDS
    }
    jobs = sum(o.jobs for o in outcomes)
    return "\n".join(
        [
            f"runs: {len(outcomes)}   SIGKILLs injected: {kills} "
            f"({', '.join(f'{kind} {count}' for kind, count in by_kind.items())}), "
            f"{sum(_hit_a_running_job(o) for o in outcomes)} of them inside a running job of the target kind   "
            f"time: {sum(o.seconds for o in outcomes):.0f} s",
            f"jobs: {jobs}   succeeded: {sum(o.succeeded for o in outcomes)}   "
            f"failed with a reason: {sum(len(o.failed) for o in outcomes)}   "
            f"redeliveries: {sum(o.redeliveries for o in outcomes)}",
            f".part files the final sweeps removed: {sum(o.parts_swept for o in outcomes)}   "
            f"export-target leftovers: {sum(len(o.target_litter) for o in outcomes)}",
            f"lost: {sum(len(o.lost) for o in outcomes)}   "
            f"invariant violations: {sum(len(o.problems) for o in outcomes)}",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=None, help="seed of the whole suite (default: random)")
    parser.add_argument("--keep", type=Path, default=None, help="keep every run's store and worker log here")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds the jobs of one run may take")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)

    from paglets_artifacts.redis_server import redis_url_or_embedded

    with redis_url_or_embedded() as url, tempfile.TemporaryDirectory(prefix="paglets-stress-") as tmp:
        base = args.keep or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        print(f"stress: {args.runs} runs, seed {seed}, redis {url.split('@')[-1]}, work in {base}")
        outcomes = []
        print(table([]), flush=True)
        for plan in plans(args.runs, seed):
            outcome = run_one(plan, redis_url=url, base=base, timeout=args.timeout)
            outcomes.append(outcome)
            print(table([outcome]).split("\n", 1)[1], flush=True)  # live, without the header
        print()
        print(table(outcomes))
        print()
        print(breakdown(outcomes))
        print()
        print(summary(outcomes))
        print(f"reproduce: .venv/bin/python benchmarks/stress.py --runs {args.runs} --seed {seed}")
    return 0 if all(o.clean for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
